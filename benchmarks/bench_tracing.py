"""Benchmark: what OpenTelemetry tracing costs end to end, on vs off in one run.

Run: .venv/bin/python benchmarks/bench_tracing.py [--quick]

Two real daemons (`runner run --fsync interval`), started alternately: one
without tracing (`OTEL_SDK_DISABLED=true`: the trace context still travels in
the headers, as in any daemon without the extra configured), one with the
`otel` extra's SDK on (`OTEL_TRACES_EXPORTER=console`, the batch span
processor writing every span as JSON to the daemon's log file: the SDK's whole
cost, span creation, attributes, export thread, serialisation; an OTLP
exporter adds the network instead of the file). Each round:

* HTTP publishes: CLIENTS threads (keep-alive) POST one 200-byte message per
  request with a `traceparent` to an exchange routing into `in-q` for the same
  wall time; msgs/s acknowledged (each publish makes a `publish` and a `route`
  span when on);
* through a handler: an `async def` handler (at-least-once) publishes each
  message onward (exchange `onward`) to `out-q`; msgs/s from the first
  publish until `out-q` holds them all (each message makes deliver, handle
  and settle spans when on).

A fourth mode, when opentelemetry-exporter-otlp-proto-http is installed (the
`bench` extra has it): `otlp`, the SDK with the OTLP/HTTP exporter
(`OTEL_TRACES_EXPORTER=otlp`, protobuf) sending to a local sink this bench
starts in a process of its own (it decodes each export request, counts its
spans and answers 200, as a collector would).

Printed: the median of each side over the rounds and the ratio to off.
Needs the otel extra (`pip install -e '.[otel]'`; `make install` has it).
"""

from __future__ import annotations

import argparse
import gzip
import http.client
import http.server
import multiprocessing
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent
RUNNER = ROOT / ".venv" / "bin" / "runner"
CLIENTS = 8
BODY = "x" * 186  # {"b": BODY} is 200 bytes of JSON
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

TOPOLOGY = """\
version: 1
name: bench-tracing
exchanges:
  orders: {type: direct}
  onward: {type: direct}
queues:
  in-q: {}
  out-q: {}
bindings:
  - {exchange: orders, queue: in-q, routing_key: new}
  - {exchange: onward, queue: out-q, routing_key: out}
consumers:
  forward: {queue: in-q, handler: "bench_tracing_handler:forward", concurrency: 16}
"""

HANDLER = '''\
async def forward(msg, ctx):
    ctx.publish("onward", "out", msg.body)
'''

ON = {"OTEL_TRACES_EXPORTER": "console", "OTEL_SERVICE_NAME": "bench-tracing"}
MODES = {"off": {"OTEL_SDK_DISABLED": "true"}, "on": ON,
         "unsampled": {**ON, "OTEL_TRACES_SAMPLER": "always_off"}}


def otlp_available() -> bool:
    try:
        import opentelemetry.exporter.otlp.proto.http.trace_exporter  # noqa: F401
    except ImportError:
        return False
    return True


def otlp_sink(port: Any, spans: Any) -> None:
    """In its own process: an OTLP/HTTP trace receiver on 127.0.0.1 (port written to
    `port`) that decodes each request and adds its spans to `spans`."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
        ExportTraceServiceResponse,
    )

    empty = ExportTraceServiceResponse().SerializeToString()

    class Receiver(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            data = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            if self.headers.get("Content-Encoding") == "gzip":
                data = gzip.decompress(data)
            request = ExportTraceServiceRequest()
            request.ParseFromString(data)
            n = sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)
            with spans.get_lock():
                spans.value += n
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(empty)))
            self.end_headers()
            self.wfile.write(empty)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    port.value = server.server_address[1]
    server.serve_forever()


class Daemon:
    """`runner run --fsync interval` in a tmp dir with `env` added."""

    def __init__(self, workdir: Path, env: dict[str, str]) -> None:
        (workdir / "topology.yaml").write_text(TOPOLOGY)
        (workdir / "bench_tracing_handler.py").write_text(HANDLER)
        self.log = workdir / "daemon.log"
        clean = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [str(RUNNER), "run", "topology.yaml", "--data-dir", "data", "--fsync",
                 "interval", "--listen", "127.0.0.1:0"],
                cwd=workdir, stdout=out, stderr=subprocess.STDOUT, env={**clean, **env},
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            match = re.search(r"listening on http://[^:]+:(\d+)", self.log.read_text())
            if match:
                self.port = int(match.group(1))
                return
            if self.proc.poll() is not None:
                raise SystemExit(f"daemon exited:\n{self.log.read_text()}")
            time.sleep(0.05)
        raise SystemExit("daemon did not start")

    def connect(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)

    def spans_logged(self) -> int:
        return self.log.read_text(errors="replace").count('"trace_id"')

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=60)


def call(conn: http.client.HTTPConnection, method: str, path: str,
         body: bytes | None = None) -> Any:
    headers = {"traceparent": TRACEPARENT}
    if body is not None:
        headers["Content-Type"] = "application/json"
    conn.request(method, path, body=body, headers=headers)
    resp = conn.getresponse()
    data = resp.read()
    if resp.status >= 300:
        raise RuntimeError(f"{method} {path}: {resp.status} {data[:200]!r}")
    return orjson.loads(data) if data else None


def out_ready(conn: http.client.HTTPConnection) -> int:
    queues = {q["name"]: q for q in call(conn, "GET", "/v1/queues")["queues"]}
    return int(queues["out-q"]["ready"])


def one_round(env: dict[str, str], seconds: float, backlog: int,
              ) -> tuple[float, float, float, int]:
    """(publishes/s, end-to-end msgs/s through the handler, backlog drained msgs/s,
    spans logged)."""
    workdir = Path(tempfile.mkdtemp(prefix="bench-tracing-"))
    d = Daemon(workdir, env)
    try:
        body = orjson.dumps({"messages": [{"routing_key": "new", "body": {"b": BODY}}]})
        stop = threading.Event()
        counts: list[int] = []
        errors: list[BaseException] = []

        def work() -> None:
            conn = d.connect()
            n = 0
            try:
                while not stop.is_set():
                    call(conn, "POST", "/v1/exchanges/orders/messages", body)
                    n += 1
            except BaseException as exc:  # reported below
                errors.append(exc)
            conn.close()
            counts.append(n)

        threads = [threading.Thread(target=work) for _ in range(CLIENTS)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        time.sleep(seconds)
        stop.set()
        for t in threads:
            t.join()
        published_s = time.perf_counter() - t0
        if errors:
            raise RuntimeError(f"a client failed: {errors[0]!r}")
        n = sum(counts)
        conn = d.connect()
        deadline = time.monotonic() + 300
        while out_ready(conn) < n:
            if time.monotonic() > deadline:
                raise RuntimeError(f"not handled in 300 s: {out_ready(conn)} of {n}")
            time.sleep(0.01)
        through_s = time.perf_counter() - t0
        # a backlog published 500 a request: the handler's side dominates
        batches = [orjson.dumps({"messages": [
            {"routing_key": "new", "body": {"b": BODY, "i": i}}
            for i in range(s, min(backlog, s + 500))]})
            for s in range(0, backlog, 500)]
        t0 = time.perf_counter()
        for b in batches:
            call(conn, "POST", "/v1/exchanges/orders/messages", b)
        while out_ready(conn) < n + backlog:
            if time.monotonic() > deadline:
                raise RuntimeError(f"backlog not handled: {out_ready(conn)} of {n + backlog}")
            time.sleep(0.01)
        drained_s = time.perf_counter() - t0
        conn.close()
        d.stop()
        return n / published_s, n / through_s, backlog / drained_s, d.spans_logged()
    finally:
        if d.proc.poll() is None:
            d.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (< 60 s)")
    args = parser.parse_args()
    try:
        import opentelemetry.sdk  # noqa: F401
    except ImportError:
        print("bench_tracing: needs the otel extra: pip install -e '.[otel]'", file=sys.stderr)
        return 1
    seconds, rounds, backlog = (2.0, 3, 3000) if args.quick else (6.0, 5, 20000)
    modes = dict(MODES)
    sink: multiprocessing.Process | None = None
    exported: Any = None
    if otlp_available():
        port, exported = multiprocessing.Value("i", 0), multiprocessing.Value("q", 0)
        sink = multiprocessing.Process(target=otlp_sink, args=(port, exported), daemon=True)
        sink.start()
        deadline = time.monotonic() + 30
        while not port.value and time.monotonic() < deadline:
            time.sleep(0.05)
        modes["otlp"] = {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SERVICE_NAME": "bench-tracing",
                         "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
                         "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT":
                             f"http://127.0.0.1:{port.value}/v1/traces"}
    else:
        print("bench_tracing: opentelemetry-exporter-otlp-proto-http is not installed "
              "(pip install -e '.[bench]'): the otlp mode is left out", file=sys.stderr)
    got: dict[str, list[tuple[float, float, float, int]]] = {m: [] for m in modes}
    try:
        for _ in range(rounds):  # alternately, so drift in the machine's load hits all
            for mode, env in modes.items():
                before = exported.value if exported is not None else 0
                result = one_round(env, seconds, backlog)
                if mode == "otlp":  # the daemon flushed at its stop: all are in
                    result = (*result[:3], exported.value - before)
                got[mode].append(result)
    finally:
        if sink is not None:
            sink.terminate()
            sink.join(10)
    spans = {m: [r[3] for r in v] for m, v in got.items()}
    if (any(spans["off"]) or any(spans["unsampled"]) or not all(spans["on"])
            or not all(spans.get("otlp", [1]))):
        print(f"bench_tracing: spans logged {spans}: tracing was not what it should be",
              file=sys.stderr)
        return 1
    print(f"median of {rounds} rounds each, modes alternating; --fsync interval; "
          f"{CLIENTS} HTTP clients for {seconds:.0f} s, then {backlog} messages 500 a request")
    print("on = SDK + batch processor + console exporter to a file "
          f"({statistics.median(spans['on']):.0f} spans a round); unsampled = the same "
          "with OTEL_TRACES_SAMPLER=always_off (spans made, not recorded)")
    if "otlp" in modes:
        print("otlp = SDK + batch processor + OTLP/HTTP protobuf exporter to a local sink "
              f"process ({statistics.median(spans['otlp']):.0f} spans received a round)")
    shown = [m for m in ("off", "on", "otlp", "unsampled") if m in modes]
    print(f"{'':34}" + "".join(f"{m:>10}" for m in shown)
          + "".join(f"{m[:4] + '/off':>10}" for m in shown[1:]))
    for i, label in enumerate(("HTTP publishes/s (1 a request)", "  through the handler, msgs/s",
                               "backlog through the handler/s")):
        med = {m: statistics.median(r[i] for r in v) for m, v in got.items()}
        print(f"{label:34}" + "".join(f"{med[m]:>10.0f}" for m in shown)
              + "".join(f"{med[m] / med['off']:>10.2f}" for m in shown[1:]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
