"""Benchmark: what rate limits cost when they do not limit, off vs on in one run.

Run: .venv/bin/python benchmarks/bench_limits.py [--quick]

Real daemons (`runner run --fsync interval`), the same workload with and
without limits, the two modes alternating round by round (off, on, off, on,
...) so that drift in the machine's load hits both alike. `on` sets every
limit to 1000000/s, far above what is reached, so nothing is ever refused or
held back: what is left is the limiter's own cost on its admitting path.

Each round, in one daemon:

* HTTP publishes: CLIENTS threads (keep-alive, each with its own bearer token,
  so each is a producer with its own bucket) POST to the durable queue `in-q`
  for the same wall time, first one 200-byte message a request, then batches
  of BATCH; msgs/s acknowledged. `on`: `publish_rate` on `in-q` (the HTTP
  path takes a token bucket per request: producer digest, clock, bucket).
* a backlog of N messages in the durable queue `drain-q` and N records in the
  4-partition topic `events`, published before any handler runs; then the
  daemon is restarted on the same data directory with a consumer of
  `drain-q`, and again with a consumer group on `events`, each an `async def`
  no-op handler (it counts, and notes the time of its first and last call).
  msgs/s = (N - 1) / (last call - first call), measured inside the daemon, so
  start-up is left out. `on`: `rate_limit` on the consumer and the group (the
  pipeline's pacer takes a token before every call).

Printed: the median of each mode over the rounds, on/off, and the cost in %.
"""

from __future__ import annotations

import argparse
import http.client
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
CLIENTS = 16
BATCH = 100
BODY = "x" * 186  # {"b": BODY} is 200 bytes of JSON
FAR = "1000000/s"  # far above any rate reached here: the limiter admits everything

BASE = """\
version: 1
name: bench-limits
queues:
  in-q: {{durable: true{publish_rate}}}
  drain-q: {{durable: true}}
topics:
  events: {{partitions: 4}}
"""
CONSUMER = """\
consumers:
  drain: {{queue: drain-q, handler: "bench_limits_handler:queue"{rate_limit}}}
"""
GROUP = """\
consumer_groups:
  drain-g: {{topic: events, handler: "bench_limits_handler:group"{rate_limit}}}
"""

HANDLER = '''\
import os
import time

_N = int(os.environ["BENCH_LIMITS_N"])
_OUT = os.environ["BENCH_LIMITS_OUT"]
_seen = {}


def _count(kind):
    n, first = _seen.get(kind, (0, 0.0))
    now = time.perf_counter()
    n += 1
    _seen[kind] = (n, first if n > 1 else now)
    if n == _N:
        with open(_OUT, "a") as out:
            out.write(f"{kind} {(_N - 1) / (now - _seen[kind][1])}\\n")


async def queue(msg):
    _count("queue")


async def group(msg):
    _count("group")
'''


def topology(mode: str, *parts: str) -> str:
    on = mode == "on"
    text = BASE.format(publish_rate=f", publish_rate: {FAR}" if on else "")
    for part in parts:
        text += part.format(rate_limit=f", rate_limit: {FAR}" if on else "")
    return text


class Daemon:
    """`runner run --fsync interval` on `workdir` (its data directory survives restarts)."""

    def __init__(self, workdir: Path, text: str, n: int) -> None:
        (workdir / "topology.yaml").write_text(text)
        (workdir / "bench_limits_handler.py").write_text(HANDLER)
        self.out = workdir / "drained.txt"
        self.log = workdir / "daemon.log"
        env = dict(os.environ, BENCH_LIMITS_N=str(n), BENCH_LIMITS_OUT=str(self.out))
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [str(RUNNER), "run", "topology.yaml", "--data-dir", "data", "--fsync",
                 "interval", "--listen", "127.0.0.1:0", "--no-watch"],
                cwd=workdir, stdout=out, stderr=subprocess.STDOUT, env=env,
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

    def drained(self, kind: str) -> float:
        """msgs/s the handler of `kind` drained the backlog at (waits for it)."""
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.out.exists():
                for line in self.out.read_text().splitlines():
                    got, rate = line.split()
                    if got == kind:
                        return float(rate)
            if self.proc.poll() is not None:
                raise SystemExit(f"daemon exited:\n{self.log.read_text()}")
            time.sleep(0.02)
        raise RuntimeError(f"the {kind} handler did not drain its backlog in 300 s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=60)


def call(conn: http.client.HTTPConnection, path: str, body: bytes,
         headers: dict[str, str] | None = None) -> Any:
    conn.request("POST", path, body=body,
                 headers={"Content-Type": "application/json", **(headers or {})})
    resp = conn.getresponse()
    data = resp.read()
    if resp.status >= 300:
        raise RuntimeError(f"POST {path}: {resp.status} {data[:200]!r}")
    return orjson.loads(data) if data else None


def publish_for(d: Daemon, seconds: float, per_request: int) -> float:
    """msgs/s CLIENTS producers publish to in-q in `seconds`, `per_request` a request."""
    body = orjson.dumps({"messages": [{"body": {"b": BODY}}] * per_request})
    stop = threading.Event()
    counts: list[int] = []
    errors: list[BaseException] = []

    def work(client: int) -> None:
        conn = d.connect()
        auth = {"Authorization": f"Bearer bench-producer-{client}"}
        n = 0
        try:
            while not stop.is_set():
                call(conn, "/v1/queues/in-q/messages", body, auth)
                n += per_request
        except BaseException as exc:  # reported below
            errors.append(exc)
        conn.close()
        counts.append(n)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(CLIENTS)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError(f"a client failed: {errors[0]!r}")
    return sum(counts) / (time.perf_counter() - t0)


def one_round(mode: str, seconds: float, n: int) -> tuple[float, float, float, float]:
    """(single publishes msgs/s, batched publishes msgs/s, consumer drain msgs/s,
    group drain msgs/s) with limits `mode` ("off" or "on")."""
    workdir = Path(tempfile.mkdtemp(prefix="bench-limits-"))
    try:
        d = Daemon(workdir, topology(mode), n)
        try:
            single = publish_for(d, seconds, 1)
            batched = publish_for(d, seconds, BATCH)
            conn = d.connect()
            for start in range(0, n, 500):
                size = min(500, n - start)
                call(conn, "/v1/queues/drain-q/messages",
                     orjson.dumps({"messages": [{"body": {"b": BODY}}] * size}))
                call(conn, "/v1/topics/events/records", orjson.dumps(
                    {"records": [{"key": f"k{start + i}", "value": {"b": BODY}}
                                 for i in range(size)]}))
            conn.close()
        finally:
            d.stop()
        drained = []
        for part, kind in ((CONSUMER, "queue"), (GROUP, "group")):
            d = Daemon(workdir, topology(mode, part), n)
            try:
                drained.append(d.drained(kind))
            finally:
                d.stop()
        return single, batched, drained[0], drained[1]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (< 60 s)")
    args = parser.parse_args()
    seconds, rounds, n = (1.5, 3, 20_000) if args.quick else (5.0, 5, 100_000)
    got: dict[str, list[tuple[float, float, float, float]]] = {"off": [], "on": []}
    for _ in range(rounds):  # alternately, so drift in the machine's load hits both
        for mode in ("off", "on"):
            got[mode].append(one_round(mode, seconds, n))
    load = os.getloadavg()[0]
    print(f"median of {rounds} rounds each, off and on alternating; --fsync interval; "
          f"load average {load:.1f} on {os.cpu_count()} cores")
    print(f"on = publish_rate and rate_limit of {FAR} (never reached: nothing refused or "
          "held back)")
    print(f"{'':50}{'off':>10}{'on':>10}{'on/off':>8}{'cost':>8}")
    labels = (f"HTTP publish, 1 a request, {CLIENTS} clients",
              f"HTTP publish, {BATCH} a request, {CLIENTS} clients",
              f"consumer drains {n} (async no-op)",
              f"group drains {n} (async no-op, 4 part.)")
    for i, label in enumerate(labels):
        off = statistics.median(r[i] for r in got["off"])
        on = statistics.median(r[i] for r in got["on"])
        print(f"{label + ', msgs/s':50}{off:>10.0f}{on:>10.0f}{on / off:>8.3f}"
              f"{(1 - on / off) * 100:>7.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
