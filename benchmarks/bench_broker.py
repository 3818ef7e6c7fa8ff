"""Benchmark: the broker's publish -> route -> priority queue -> pull -> ack path.

200-byte messages through a topic exchange into a priority queue, consumed and
acked in batches, in-process. Each figure is the median of several runs and is
printed next to its floor measured in the same run:

* durability off (non-durable queue)       vs  bare deque append + popleft of the same tuples
* durable queue, fsync=always group commit vs  the same bytes appended to a SegmentedLog
                                               (fsync=always, one append per batch)

then, for a durable queue with fsync=always and interval, publishing alone and
pulling (with a lease, as the HTTP API does) + acking alone.

Then the memory a queued message costs beyond its body (tracemalloc).

    .venv/bin/python benchmarks/bench_broker.py [--quick]
"""

from __future__ import annotations

import argparse
import gc
import shutil
import statistics
import sys
import tempfile
import time
import tracemalloc
from collections import deque
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from runner.broker.broker import Broker  # noqa: E402
from runner.broker.message import DELAYED, READY, Message  # noqa: E402
from runner.clock import SystemClock  # noqa: E402
from runner.log.record import Fsync  # noqa: E402
from runner.log.segment import SegmentedLog  # noqa: E402
from runner.topology.model import Binding, Exchange, ExchangeType, Queue  # noqa: E402

BODY = 200
KEY = "orders.eu.created"
FLOOR_OFF = 300_000
FLOOR_ALWAYS = 100_000


def messages(batch: int) -> list[Message]:
    return [Message(bytes([i % 251]) * BODY, KEY, priority=i % 10) for i in range(batch)]


def open_broker(data: Path, fsync: str, durable: bool) -> Broker:
    b = Broker(data, fsync=fsync, clock=SystemClock(), segment_bytes=64 << 20)
    b.declare([Exchange("events", ExchangeType.TOPIC)],
              [Queue("work", max_priority=10, durable=durable)],
              [Binding("events", queue="work", routing_key="orders.*.created"),
               Binding("events", queue="other", routing_key="billing.#")])
    return b


def run_broker(total: int, batch: int, fsync: str, durable: bool) -> float:
    data = Path(tempfile.mkdtemp(prefix="bench-broker-"))
    try:
        b = open_broker(data, fsync, durable)
        msgs = messages(batch)
        rounds = total // batch
        t0 = time.perf_counter()
        for _ in range(rounds):
            b.publish("events", msgs)
            got = b.pull("work", batch, consumer_id="bench")
            b.ack("work", [d.delivery_id for d in got])
        elapsed = time.perf_counter() - t0
        assert b.queue_info("work").ready == 0
        b.close()
        return rounds * batch / elapsed
    finally:
        shutil.rmtree(data, ignore_errors=True)


def run_consume(total: int, batch: int, fsync: str) -> tuple[float, float]:
    """Durable queue, the HTTP API's calls: publish everything, then pull (with a lease)
    and ack batch by batch. Returns (publish rate, pull+ack rate)."""
    data = Path(tempfile.mkdtemp(prefix="bench-consume-"))
    try:
        b = open_broker(data, fsync, durable=True)
        msgs = messages(batch)
        rounds = total // batch
        t0 = time.perf_counter()
        for _ in range(rounds):
            b.publish("events", msgs)
        t1 = time.perf_counter()
        for _ in range(rounds):
            got = b.pull("work", batch, consumer_id="bench", lease_s=60.0)
            b.ack("work", [d.delivery_id for d in got])
        t2 = time.perf_counter()
        assert b.queue_info("work").ready == 0
        b.close()
        return rounds * batch / (t1 - t0), rounds * batch / (t2 - t1)
    finally:
        shutil.rmtree(data, ignore_errors=True)


def run_deque(total: int, batch: int) -> float:
    items = [(m.body, m.routing_key, m.priority) for m in messages(batch)]
    dq: deque[tuple[bytes, str, int | None]] = deque()
    rounds = total // batch
    t0 = time.perf_counter()
    for _ in range(rounds):
        for it in items:
            dq.append(it)
        for _ in range(batch):
            dq.popleft()
    return rounds * batch / (time.perf_counter() - t0)


def run_log(total: int, batch: int) -> float:
    data = Path(tempfile.mkdtemp(prefix="bench-log-"))
    try:
        log = SegmentedLog(data, segment_bytes=64 << 20, fsync=Fsync.ALWAYS,
                           clock=SystemClock())
        ts = int(time.time() * 1000)
        items = [(None, m.body, (), ts) for m in messages(batch)]
        rounds = total // batch
        t0 = time.perf_counter()
        for _ in range(rounds):
            log.append(items)
        elapsed = time.perf_counter() - t0
        log.close()
        return rounds * batch / elapsed
    finally:
        shutil.rmtree(data, ignore_errors=True)


def next_timer_costs(waiting: int) -> tuple[float, float]:
    """Microseconds per `Broker.next_due()` (what the daemon asks after every tick)
    with `waiting` ready messages with a TTL, as many delayed retries and as many
    delivered ones (stale heap entries), against the full scan of every heap entry
    that answered it before (issue 10 "timer_due is coarse")."""
    with tempfile.TemporaryDirectory() as tmp:
        b = Broker(Path(tmp), fsync="never", clock=SystemClock())
        b.declare([], [Queue("ttl", durable=False)], [])
        b.publish_to_queue("ttl", [Message(b"x", "ttl", ttl_s=60.0 + i % 97)
                                   for i in range(3 * waiting)])
        got = b.pull("ttl", 2 * waiting, lease_s=600.0, consumer_id="bench")
        for d in got[:waiting]:
            b.retry_later("ttl", d.delivery_id, 30.0)  # delayed; the rest stay delivered
        mq = b.queues["ttl"]

        def scan() -> float | None:  # the old answer: every entry, every call
            due = [t for t, _, m in mq.expiries if m.state == READY]
            due += [t for t, _, m in mq.delayed if m.state == DELAYED]
            return min(due) if due else None

        assert b.next_due() == scan()
        calls = 200
        t0 = time.perf_counter()
        for _ in range(calls):
            b.next_due()
        fast = (time.perf_counter() - t0) / calls * 1e6
        t0 = time.perf_counter()
        for _ in range(calls // 20):
            scan()
        slow = (time.perf_counter() - t0) / (calls // 20) * 1e6
        b.close()
    return fast, slow


def median_of(runs: int, fn: Callable[[], float]) -> float:
    return statistics.median(fn() for _ in range(runs))


def memory_per_message(count: int, durable: bool) -> float:
    """Bytes a queued message costs beyond its body (bodies allocated before measuring)."""
    data = Path(tempfile.mkdtemp(prefix="bench-mem-"))
    try:
        b = open_broker(data, "never", durable)
        msgs = [Message(i.to_bytes(4, "little") * (BODY // 4), KEY, priority=i % 10)
                for i in range(count)]
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        for i in range(0, count, 1000):
            b.publish("events", msgs[i:i + 1000])
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        assert b.queue_info("work").ready == count
        b.close()
        return (after - before) / count
    finally:
        shutil.rmtree(data, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small run (< 20 s)")
    args = ap.parse_args(argv)
    total, batch, runs, mem_n = (
        (60_000, 1000, 3, 20_000) if args.quick else (300_000, 2000, 5, 100_000))

    off = median_of(runs, lambda: run_broker(total, batch, "never", durable=False))
    dq = median_of(runs, lambda: run_deque(total, batch))
    always = median_of(runs, lambda: run_broker(total // 2, batch, "always", durable=True))
    flog = median_of(runs, lambda: run_log(total // 2, batch))
    never = median_of(runs, lambda: run_broker(total // 2, batch, "never", durable=True))
    split = {f: [run_consume(total // 2, batch, f) for _ in range(runs)]
             for f in ("always", "interval")}
    timers = [next_timer_costs(mem_n // 2) for _ in range(runs)]
    mem = memory_per_message(mem_n, durable=False)
    mem_d = memory_per_message(mem_n, durable=True)

    print(f"broker bench: {BODY}-byte messages, topic exchange -> priority queue -> pull -> ack, "
          f"batches of {batch}, median of {runs}")
    print(f"  durability off : {off:>11,.0f} msg/s   floor deque append+popleft {dq:>11,.0f}/s"
          f"   ratio {off / dq:.3f}   target >= {FLOOR_OFF:,} "
          f"{'ok' if off >= FLOOR_OFF else 'BELOW'}")
    print(f"  fsync=always   : {always:>11,.0f} msg/s   "
          f"floor SegmentedLog append   {flog:>11,.0f}/s"
          f"   ratio {always / flog:.3f}   target >= {FLOOR_ALWAYS:,} "
          f"{'ok' if always >= FLOOR_ALWAYS else 'BELOW'}")
    print(f"  durable, fsync=never (for reference): {never:,.0f} msg/s")
    for f, got in split.items():
        print(f"  durable, fsync={f:<8}: publish {statistics.median(p for p, _ in got):>11,.0f}"
              f" msg/s, then pull (with a lease) + ack "
              f"{statistics.median(c for _, c in got):>11,.0f} msg/s")
    fast = statistics.median(f for f, _ in timers)
    slow = statistics.median(s for _, s in timers)
    print(f"  next timer (Broker.next_due) with {mem_n // 2:,} ready TTL messages, as many "
          f"delayed and delivered: {fast:,.1f} us a call vs {slow:,.0f} us scanning every "
          f"entry ({slow / fast:,.0f}x)")
    print(f"  memory per queued message beyond its body: {mem:.0f} B in memory queue, "
          f"{mem_d:.0f} B durable queue (target < 200 B)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
