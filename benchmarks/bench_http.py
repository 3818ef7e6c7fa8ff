"""Benchmark of the daemon's HTTP API against RabbitMQ, the same workload side by side.

Run: .venv/bin/python benchmarks/bench_http.py [--quick]

Workload (both sides, one run, median of >= 3 repeats): 200-byte messages
published in batches of 500 through a topic exchange into a durable priority
queue, then pulled and acked in batches of 500.

* runner: the real daemon (`runner run --fsync interval`) over HTTP with
  keep-alive; a 2xx means stored as `interval` promises.
* RabbitMQ (127.0.0.1:5672 guest/guest, pika): publisher confirms, each batch
  of 500 published then all its confirms awaited; consume with prefetch 1000
  and `basic_ack(multiple=True)` per 500.

Also: publish-to-handler latency p50/p99 at 5k msgs/s (an `async def`
handler, which runs on the loop, records `now - sent_at`); the rate at which a
sync handler (thread pool, concurrency 4) drains a backlog; and reload latency
(topology file saved -> change visible in /v1/status; includes the 100 ms
debounce).
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
import time
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent
RUNNER = ROOT / ".venv" / "bin" / "runner"
BATCH = 500
BODY = "x" * 186  # the JSON string is 188 bytes; with {"b":...} 200 bytes
PAYLOAD = b'{"b":"' + BODY.encode() + b'"}'

TOPOLOGY = """\
version: 1
name: bench
exchanges:
  bench-x: {type: topic}
  lat-x: {type: topic}
queues:
  bench-q: {durable: true, max_priority: 10}
  lat-q: {durable: true}
  sync-q: {durable: true}
bindings:
  - {exchange: bench-x, queue: bench-q, routing_key: "bench.#"}
  - {exchange: lat-x, queue: lat-q, routing_key: "lat.#"}
  - {exchange: lat-x, queue: sync-q, routing_key: "sync.#"}
consumers:
  latency: {queue: lat-q, handler: "bench_latency_handler:record", concurrency: 4}
  sync-drain: {queue: sync-q, handler: "bench_latency_handler:record_sync", concurrency: 4}
"""

HANDLER = '''\
import os
import time

_out = open(os.environ["BENCH_LATENCY_FILE"], "a", buffering=1)
_sync = open(os.environ["BENCH_LATENCY_FILE"] + ".sync", "a", buffering=1)


async def record(msg):
    _out.write(f"{time.time() - msg.body['t']}\\n")


def record_sync(msg):
    _sync.write(f"{time.time() - msg.body['t']}\\n")
'''


class Daemon:
    """`runner run` in a tmp dir, with a keep-alive HTTP connection."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        (workdir / "topology.yaml").write_text(TOPOLOGY)
        (workdir / "bench_latency_handler.py").write_text(HANDLER)
        self.latency_file = workdir / "latency.txt"
        self.log = workdir / "daemon.log"
        env = dict(os.environ, BENCH_LATENCY_FILE=str(self.latency_file))
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [str(RUNNER), "run", "topology.yaml", "--data-dir", "data", "--fsync",
                 "interval", "--listen", "127.0.0.1:0"],
                cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            match = re.search(r"listening on http://[^:]+:(\d+)", self.log.read_text())
            if match:
                self.port = int(match.group(1))
                break
            if self.proc.poll() is not None:
                raise SystemExit(f"daemon exited:\n{self.log.read_text()}")
            time.sleep(0.05)
        else:
            raise SystemExit("daemon did not start")
        self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)

    def call(self, method: str, path: str, body: bytes | None = None) -> Any:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        self.conn.request(method, path, body=body, headers=headers)
        resp = self.conn.getresponse()
        data = resp.read()
        if resp.status >= 300:
            raise RuntimeError(f"{method} {path}: {resp.status} {data[:200]!r}")
        return orjson.loads(data) if data else None

    def stop(self) -> None:
        self.conn.close()
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=60)


def runner_round(d: Daemon, n: int) -> tuple[float, float]:
    batches = []
    for start in range(0, n, BATCH):
        msgs = [
            {"routing_key": "bench.item", "body": {"b": BODY}, "priority": i % 10}
            for i in range(start, min(n, start + BATCH))
        ]
        batches.append(orjson.dumps({"messages": msgs}))
    t0 = time.perf_counter()
    for body in batches:
        d.call("POST", "/v1/exchanges/bench-x/messages", body)
    publish = n / (time.perf_counter() - t0)
    got = 0
    pull = orjson.dumps({"max": BATCH, "lease": "60s"})
    t0 = time.perf_counter()
    while got < n:
        msgs = d.call("POST", "/v1/queues/bench-q/pull", pull)["messages"]
        if not msgs:
            raise RuntimeError(f"queue empty after {got} of {n}")
        ids = [m["delivery_id"] for m in msgs]
        d.call("POST", "/v1/queues/bench-q/ack", orjson.dumps({"delivery_ids": ids}))
        got += len(msgs)
    consume = n / (time.perf_counter() - t0)
    return publish, consume


# ------------------------------------------------------------------ RabbitMQ


def rabbit_round(n: int) -> tuple[float, float]:
    import pika

    params = pika.ConnectionParameters("127.0.0.1", 5672, credentials=pika.PlainCredentials(
        "guest", "guest"))
    # publish: SelectConnection so a whole batch is in flight before its confirms
    state: dict[str, Any] = {"confirmed": 0, "sent": 0, "error": None}

    def on_open(conn: Any) -> None:
        conn.channel(on_open_callback=on_channel)

    def on_channel(ch: Any) -> None:
        state["ch"] = ch
        ch.exchange_declare("bench-x", "topic", durable=True,
                            callback=lambda _f: ch.queue_delete(
                                "bench-q", callback=lambda _f: declare_queue(ch)))

    def declare_queue(ch: Any) -> None:
        ch.queue_declare("bench-q", durable=True, arguments={"x-max-priority": 10},
                         callback=lambda _f: ch.queue_bind(
                             "bench-q", "bench-x", "bench.#", callback=lambda _f: start(ch)))

    def start(ch: Any) -> None:
        ch.confirm_delivery(on_confirm, callback=lambda _f: None)
        state["t0"] = time.perf_counter()
        send_batch(ch)

    def send_batch(ch: Any) -> None:
        end = min(n, state["sent"] + BATCH)
        for i in range(state["sent"], end):
            ch.basic_publish("bench-x", "bench.item", PAYLOAD,
                             pika.BasicProperties(delivery_mode=2, priority=i % 10,
                                                  content_type="application/json"))
        state["sent"] = end

    def on_confirm(frame: Any) -> None:
        if "t1" in state:
            return
        method = frame.method
        tag = method.delivery_tag
        if method.NAME != "Basic.Ack":
            state["error"] = f"nack {tag}"
        state["confirmed"] = max(state["confirmed"], tag)
        if state["confirmed"] >= n:
            state["t1"] = time.perf_counter()
            conn.close()
        elif state["confirmed"] >= state["sent"]:
            send_batch(state["ch"])

    def on_failed(c: Any, exc: BaseException) -> None:
        state["error"] = state["error"] or f"connection failed: {exc}"
        c.ioloop.stop()

    conn = pika.SelectConnection(
        params, on_open_callback=on_open, on_open_error_callback=on_failed,
        on_close_callback=lambda c, _exc: c.ioloop.stop(),
    )
    conn.ioloop.start()
    if state["error"]:
        raise RuntimeError(state["error"])
    publish = n / (state["t1"] - state["t0"])

    blocking = pika.BlockingConnection(params)
    ch = blocking.channel()
    ch.basic_qos(prefetch_count=2 * BATCH)
    t0 = time.perf_counter()
    for got, (method, _props, _body) in enumerate(
        ch.consume("bench-q", inactivity_timeout=5), start=1
    ):
        if method is None:
            raise RuntimeError(f"RabbitMQ queue empty after {got - 1} of {n}")
        if got % BATCH == 0 or got == n:
            ch.basic_ack(method.delivery_tag, multiple=True)
        if got == n:
            break
    consume = n / (time.perf_counter() - t0)
    ch.cancel()
    ch.queue_delete("bench-q")
    blocking.close()
    return publish, consume


# ------------------------------------------------------------------ latency and reload


def latency(d: Daemon, rate: int, seconds: float) -> tuple[float, float, int]:
    """p50/p99 publish -> handler at `rate` msgs/s, in batches every 10 ms."""
    per_tick = max(1, rate // 100)
    ticks = int(seconds * 100)
    d.latency_file.write_text("")  # truncate: the handler holds it open in append mode
    start = time.perf_counter()
    for k in range(ticks):
        target = start + k / 100
        pause = target - time.perf_counter()
        if pause > 0:
            time.sleep(pause)
        now = time.time()
        body = orjson.dumps({"messages": [
            {"routing_key": "lat.x", "body": {"t": now}} for _ in range(per_tick)]})
        d.call("POST", "/v1/exchanges/lat-x/messages", body)
    total = per_tick * ticks
    deadline = time.monotonic() + 30
    values: list[float] = []
    while time.monotonic() < deadline:
        if d.latency_file.exists():
            values = [float(x) for x in d.latency_file.read_text().split()]
            if len(values) >= total:
                break
        time.sleep(0.1)
    values.sort()
    if not values:
        raise RuntimeError("the latency handler recorded nothing")
    p50 = values[len(values) // 2]
    p99 = values[min(len(values) - 1, int(len(values) * 0.99))]
    return p50, p99, len(values)


def sync_drain(d: Daemon, n: int) -> float:
    """msgs/s a sync handler (thread pool, concurrency 4) drains a backlog of `n` at."""
    sync_file = Path(str(d.latency_file) + ".sync")
    sync_file.write_text("")
    now = time.time()
    for _ in range(n // BATCH):
        d.call("POST", "/v1/exchanges/lat-x/messages", orjson.dumps({"messages": [
            {"routing_key": "sync.x", "body": {"t": now}} for _ in range(BATCH)]}))
    t0 = time.perf_counter()
    deadline = time.monotonic() + 60
    while len(sync_file.read_text().split()) < n:
        if time.monotonic() > deadline:
            raise RuntimeError("the sync handler did not drain its backlog in 60 s")
        time.sleep(0.02)
    return n / (time.perf_counter() - t0)


def reload_latency(d: Daemon, rounds: int) -> list[float]:
    topo = d.workdir / "topology.yaml"
    out = []
    for i in range(rounds):
        t0 = time.perf_counter()
        topo.write_text(TOPOLOGY.replace("queues:\n", f"queues:\n  reload-{i}: {{}}\n", 1))
        while True:
            names = {q["name"] for q in d.call("GET", "/v1/status")["queues"]}
            if f"reload-{i}" in names:
                break
            if time.perf_counter() - t0 > 10:
                raise RuntimeError("reload not applied within 10 s")
            time.sleep(0.005)
        out.append(time.perf_counter() - t0)
        time.sleep(0.2)
    return out


# ------------------------------------------------------------------ main


def rabbit_available() -> str | None:
    try:
        import pika
    except ModuleNotFoundError:
        return "pika is not installed: pip install -e '.[bench]' (make install does)"
    try:
        pika.BlockingConnection(pika.ConnectionParameters(
            "127.0.0.1", 5672, credentials=pika.PlainCredentials("guest", "guest"),
            connection_attempts=1, socket_timeout=3)).close()
    except Exception as exc:  # any connection failure means: no floor to compare with
        return f"{type(exc).__name__}: {exc}"
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (< 20 s)")
    args = parser.parse_args()
    n = 10_000 if args.quick else 100_000
    repeats = 3
    lat_seconds = 1.5 if args.quick else 10.0
    missing = rabbit_available()
    if missing:
        print(f"RabbitMQ at 127.0.0.1:5672 is not reachable ({missing}); start it to compare.")
        return 1
    workdir = Path(tempfile.mkdtemp(prefix="bench-http-"))
    d = Daemon(workdir)
    try:
        ours = [runner_round(d, n) for _ in range(repeats)]
        theirs = [rabbit_round(n) for _ in range(repeats)]
        pub = statistics.median(p for p, _ in ours)
        con = statistics.median(c for _, c in ours)
        rpub = statistics.median(p for p, _ in theirs)
        rcon = statistics.median(c for _, c in theirs)
        print(f"{n} x 200 B messages, batches of {BATCH}, topic exchange -> durable priority "
              f"queue; median of {repeats}")
        print(f"{'':24}{'runner HTTP':>14}{'RabbitMQ':>14}{'ratio':>8}")
        print(f"{'publish msgs/s':24}{pub:14,.0f}{rpub:14,.0f}{pub / rpub:7.1f}x")
        print(f"{'pull+ack msgs/s':24}{con:14,.0f}{rcon:14,.0f}{con / rcon:7.1f}x")
        p50, p99, count = latency(d, 5000, lat_seconds)
        print(f"publish->handler latency at 5k msgs/s, async handler ({count} msgs): "
              f"p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms")
        drained = sync_drain(d, 5000 if args.quick else 20_000)
        print(f"a sync handler (thread pool, concurrency 4) drains a backlog at "
              f"{drained:,.0f} msgs/s")
        reloads = reload_latency(d, 3 if args.quick else 10)
        print(f"reload latency (save -> applied, incl. 100 ms debounce): median "
              f"{statistics.median(reloads) * 1000:.0f} ms, max {max(reloads) * 1000:.0f} ms "
              f"(target < 300 ms)")
    finally:
        d.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
