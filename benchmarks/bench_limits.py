"""Benchmark: what rate limits cost when they do not limit, off vs on in one run.

Run: .venv/bin/python benchmarks/bench_limits.py [--quick]

Two real daemons (`runner run --fsync interval`), alive side by side for the
whole run: `off` has no limits, `on` sets every limit to 1000000/s, far above
what is reached, so nothing is ever refused or held back and what is left is
the limiter's own cost on its admitting path. They get the same workload in
turns, round after round, the order swapped every round (off on, on off, ...)
so that drift in the machine's load hits both alike:

* HTTP publishes: CLIENTS threads (keep-alive, each with its own bearer token,
  so each is a producer with its own bucket) POST to the durable queue `in-q`
  for SLICE seconds, one 200-byte message a request, then as long with
  batches of BATCH; msgs/s acknowledged. `on`: `publish_rate` on `in-q` (the
  HTTP path takes from a token bucket per request: producer digest, clock,
  bucket).
* draining a backlog: a new durable queue and a new 4-partition topic get N
  messages and N records, then a reload (`POST /v1/admin/reload`) adds a
  consumer of the queue, and when it is done a consumer group on the topic,
  each an `async def` no-op handler (it counts, and notes the time of its
  first and last call). msgs/s = (N - 1) / (last call - first call), measured
  inside the daemon, so the reload is left out. `on`: `rate_limit` on the
  consumer and the group (the pipeline's pacer takes a token before every
  call).

Printed: the median of each mode over the rounds and the median of the
rounds' on/off ratios (each round's two runs are minutes apart at most, so the
pair shares the machine's load), with the cost in %. On a busy shared machine
those swing by several % either way, so the limiter's own time is also
measured in this process (best of 5 timeit runs, the real code on the real
clock): microseconds per admitted publish request (producer digest of a bearer
token, bucket lookup, take) and per paced handler call, and what share of a
message's time that is at the `off` rate just measured (the daemon's loop runs
both on one thread).
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
import timeit
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from runner.clock import SystemClock
from runner.daemon.ratelimit import PublishLimiter, producer_of
from runner.pipeline.pacing import Pacer
from runner.topology.load import load_text

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
"""

HANDLER = '''\
import os
import time

_N = int(os.environ["BENCH_LIMITS_N"])
_OUT = os.environ["BENCH_LIMITS_OUT"]
_seen = {}


def _count(kind):
    # every drain is exactly N new messages: the count wraps at N
    n, first = _seen.get(kind, (0, 0.0))
    now = time.perf_counter()
    n += 1
    if n == 1:
        first = now
    if n == _N:
        with open(_OUT, "a") as out:
            out.write(f"{kind} {(_N - 1) / (now - first)}\\n")
        n = 0
    _seen[kind] = (n, first)


async def queue(msg):
    _count("queue")


async def group(msg):
    _count("group")
'''


def topology(mode: str, drains: int, *, handlers: tuple[bool, bool]) -> str:
    """The topology of a daemon in `mode` with `drains` backlogs (queue `drain-<i>`,
    topic `events-<i>`); the last one's consumer and group as `handlers` say."""
    on = mode == "on"
    limit = f", rate_limit: {FAR}" if on else ""
    text = BASE.format(publish_rate=f", publish_rate: {FAR}" if on else "")
    text += "".join(f"  drain-{i}: {{durable: true}}\n" for i in range(drains))
    if drains:
        text += "topics:\n" + "".join(
            f"  events-{i}: {{partitions: 4}}\n" for i in range(drains))
    consumers = [i for i in range(drains) if i < drains - 1 or handlers[0]]
    groups = [i for i in range(drains) if i < drains - 1 or handlers[1]]
    if consumers:
        text += "consumers:\n" + "".join(
            f'  drain-{i}: {{queue: drain-{i}, handler: "bench_limits_handler:queue"'
            f"{limit}}}\n" for i in consumers)
    if groups:
        text += "consumer_groups:\n" + "".join(
            f'  drain-g-{i}: {{topic: events-{i}, handler: "bench_limits_handler:group"'
            f"{limit}}}\n" for i in groups)
    return text


class Daemon:
    """`runner run --fsync interval` in its own tmp dir, limits `mode` ("off" or "on")."""

    def __init__(self, mode: str, n: int) -> None:
        self.mode = mode
        self.drains = 0
        self.workdir = Path(tempfile.mkdtemp(prefix=f"bench-limits-{mode}-"))
        (self.workdir / "topology.yaml").write_text(topology(mode, 0, handlers=(False, False)))
        (self.workdir / "bench_limits_handler.py").write_text(HANDLER)
        self.out = self.workdir / "drained.txt"
        self.log = self.workdir / "daemon.log"
        env = dict(os.environ, BENCH_LIMITS_N=str(n), BENCH_LIMITS_OUT=str(self.out))
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [str(RUNNER), "run", "topology.yaml", "--data-dir", "data", "--fsync",
                 "interval", "--listen", "127.0.0.1:0", "--no-watch"],
                cwd=self.workdir, stdout=out, stderr=subprocess.STDOUT, env=env,
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            match = re.search(r"listening on http://[^:]+:(\d+)", self.log.read_text())
            if match:
                self.port = int(match.group(1))
                self.conn = self.connect()
                return
            if self.proc.poll() is not None:
                raise SystemExit(f"daemon exited:\n{self.log.read_text()}")
            time.sleep(0.05)
        raise SystemExit("daemon did not start")

    def connect(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)

    def reload(self, *, handlers: tuple[bool, bool]) -> None:
        text = topology(self.mode, self.drains, handlers=handlers)
        (self.workdir / "topology.yaml").write_text(text)
        call(self.conn, "/v1/admin/reload", b"{}")

    def drained(self, kind: str, count: int) -> float:
        """msgs/s of the `count`-th drain by the handler of `kind` (waits for it)."""
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if self.out.exists():
                rates = [float(line.split()[1]) for line in self.out.read_text().splitlines()
                         if line.startswith(f"{kind} ")]
                if len(rates) >= count:
                    return rates[count - 1]
            if self.proc.poll() is not None:
                raise SystemExit(f"daemon exited:\n{self.log.read_text()}")
            time.sleep(0.01)
        raise RuntimeError(f"the {kind} handler did not drain its backlog in 300 s")

    def drain(self, n: int) -> tuple[float, float]:
        """A new backlog of `n` messages and `n` records, then its consumer, then its
        group: (consumer msgs/s, group msgs/s)."""
        i = self.drains
        self.drains += 1
        self.reload(handlers=(False, False))
        for start in range(0, n, 500):
            size = min(500, n - start)
            call(self.conn, f"/v1/queues/drain-{i}/messages",
                 orjson.dumps({"messages": [{"body": {"b": BODY}}] * size}))
            call(self.conn, f"/v1/topics/events-{i}/records", orjson.dumps(
                {"records": [{"key": f"k{start + j}", "value": {"b": BODY}}
                             for j in range(size)]}))
        self.reload(handlers=(True, False))
        queue = self.drained("queue", i + 1)
        self.reload(handlers=(True, True))
        return queue, self.drained("group", i + 1)

    def stop(self) -> None:
        self.conn.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=60)
        shutil.rmtree(self.workdir, ignore_errors=True)


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
    rate = sum(counts) / (time.perf_counter() - t0)
    if errors:
        raise RuntimeError(f"a client failed: {errors[0]!r}")
    d.conn.request("DELETE", "/v1/queues/in-q/messages")  # purged: memory stays flat
    if (resp := d.conn.getresponse()).status != 200:
        raise RuntimeError(f"purge in-q: {resp.status} {resp.read()[:200]!r}")
    resp.read()
    return rate


def limiter_us() -> tuple[float, float]:
    """Microseconds (best of 5) the daemon's limiting code takes per admitted publish
    request (bearer token, 16 producers) and per paced handler call."""
    loaded = load_text(BASE.format(publish_rate=f", publish_rate: {FAR}"),
                       filename="bench.yaml", env={})
    if loaded.topology is None:
        raise RuntimeError(f"bench topology: {loaded.problems}")
    topo = loaded.topology
    clock = SystemClock()
    limiter = PublishLimiter(clock)
    auths = [f"Bearer bench-producer-{i}" for i in range(CLIENTS)]
    count = 100_000

    def publishes() -> None:  # what runner.daemon.http._limit does per request
        for i in range(count):
            rate = limiter.rate_of(topo, "queue", "in-q")
            if rate is not None:
                limiter.admit("queue", "in-q", rate, producer_of(auths[i & 15], None), 1)

    async def no_sleep(seconds: float) -> bool:
        raise RuntimeError("the pacer waited")

    pacer = Pacer(1_000_000.0, now=clock.monotonic, sleep=no_sleep)

    def paced() -> None:  # what runner.pipeline.worker.Worker.run_handler does per call
        for _ in range(count):
            if not pacer.take():
                raise RuntimeError("the pacer would have waited")

    def best_us(f: Callable[[], None]) -> float:
        return min(timeit.repeat(f, number=1, repeat=5)) / count * 1e6

    return best_us(publishes), best_us(paced)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (< 60 s)")
    args = parser.parse_args()
    seconds, rounds, n = (0.7, 7, 6_000) if args.quick else (2.0, 15, 30_000)
    got: dict[str, list[tuple[float, ...]]] = {"off": [], "on": []}
    daemons = {mode: Daemon(mode, n) for mode in got}
    try:
        for r in range(rounds):  # in turns, the order swapped: drift hits both alike
            for mode in ("off", "on") if r % 2 == 0 else ("on", "off"):
                d = daemons[mode]
                got[mode].append((publish_for(d, seconds, 1), publish_for(d, seconds, BATCH)))
            for mode in ("off", "on") if r % 2 == 1 else ("on", "off"):
                got[mode][-1] += daemons[mode].drain(n)
    finally:
        for d in daemons.values():
            d.stop()
    publish_us, pace_us = limiter_us()
    load = os.getloadavg()[0]
    print(f"median of {rounds} rounds each, off and on in turns; --fsync interval; "
          f"load average {load:.1f} on {os.cpu_count()} cores")
    print(f"on = publish_rate and rate_limit of {FAR} (never reached: nothing refused or "
          "held back)")
    print(f"{'':54}{'off':>10}{'on':>10}{'on/off':>8}{'cost':>8}{'limiter':>9}")
    labels = (f"HTTP publish, 1 a request, {CLIENTS} clients",
              f"HTTP publish, {BATCH} a request, {CLIENTS} clients",
              f"consumer drains {n} (async no-op)",
              f"group drains {n} (async no-op, 4 partitions)")
    per_msg = (publish_us, publish_us / BATCH, pace_us, pace_us)
    for i, label in enumerate(labels):
        off = statistics.median(r[i] for r in got["off"])
        on = statistics.median(r[i] for r in got["on"])
        ratio = statistics.median(b[i] / a[i] for a, b in zip(got["off"], got["on"], strict=True))
        share = per_msg[i] * off / 1e6  # the limiter's seconds per second of messages
        print(f"{label + ', msgs/s':54}{off:>10.0f}{on:>10.0f}{ratio:>8.3f}"
              f"{(1 - ratio) * 100:>7.1f}%{share * 100:>8.2f}%")
    print(f"limiter = its own time in this process: {publish_us:.2f} us a publish request, "
          f"{pace_us:.2f} us a paced call, as a share of a message's time at the off rate")
    return 0


if __name__ == "__main__":
    sys.exit(main())
