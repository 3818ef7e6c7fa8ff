"""Benchmark: exactly-once vs at-least-once consumer-group drain, in one run (issue 10 item 4).

Run: .venv/bin/python benchmarks/bench_group_steps.py [--quick] [--single]

A real daemon (`runner run --fsync always`) with a topic of 8 partitions and a
consumer group of 8 instances whose `async def` handler publishes each record
onward to a durable queue. A backlog of 200-byte records is appended over HTTP
(batches of 500), then the group drains it; msgs/s from the first append until
the onward queue holds them all. Printed: the exactly-once rate, the
at-least-once rate and their ratio (median of 3 each, same run).

`--single` adds the same two drains with one partition and one instance: a
member handling one partition's records one after another, where only the
steps of consecutive records can share a commit.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks.bench_engine import BODY, Daemon, call  # noqa: E402

PARTITIONS = 8

TOPOLOGY = """\
version: 1
name: bench-group-steps
topics:
  ev: {partitions: PARTITIONS}
exchanges:
  onward: {type: direct}
queues:
  out-q: {durable: true}
bindings:
  - {exchange: onward, queue: out-q, routing_key: out}
consumer_groups:
  g:
    topic: ev
    handler: "bench_engine_handler:forward"
    instances: PARTITIONS
    delivery: DELIVERY
"""


def drain(delivery: str, n: int, partitions: int = PARTITIONS) -> float:
    workdir = Path(tempfile.mkdtemp(prefix="bench-group-steps-"))
    d = Daemon(workdir, TOPOLOGY.replace("DELIVERY", delivery)
               .replace("PARTITIONS", str(partitions)))
    try:
        conn = d.connect()
        batches = [orjson.dumps({"records": [{"value": {"b": BODY, "i": i},
                                              "partition": i % partitions}
                                             for i in range(s, min(n, s + 500))]})
                   for s in range(0, n, 500)]
        t0 = time.perf_counter()
        for b in batches:
            call(conn, "POST", "/v1/topics/ev/records", b)
        deadline = time.monotonic() + 300
        while True:
            queues = {q["name"]: q for q in call(conn, "GET", "/v1/queues")["queues"]}
            if queues["out-q"]["ready"] >= n:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{delivery}: not drained in 300 s: {queues}")
            time.sleep(0.01)
        rate = n / (time.perf_counter() - t0)
        conn.close()
        return rate
    finally:
        d.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes")
    parser.add_argument("--single", action="store_true",
                        help="also drain 1 partition with 1 instance")
    args = parser.parse_args()
    repeats = 3
    n = 2000 if args.quick else 8000
    shapes = [PARTITIONS, 1] if args.single else [PARTITIONS]
    rates: dict[tuple[int, str], list[float]] = {}
    for _ in range(repeats):  # interleaved: the machine's load hits both alike
        for parts in shapes:
            for delivery in ("exactly-once", "at-least-once"):
                rates.setdefault((parts, delivery), []).append(drain(delivery, n, parts))
    print(f"median of {repeats}; --fsync always; {n} records of 200 bytes; "
          "as many instances as partitions")
    print(f"{'':52}{'msgs/s':>10}{'vs':>12}{'ratio':>8}")
    for parts in shapes:
        e = statistics.median(rates[(parts, "exactly-once")])
        a = statistics.median(rates[(parts, "at-least-once")])
        label = ("exactly-once group drain, async handler" if parts == PARTITIONS
                 else f"same, {parts} partition, {parts} instance")
        print(f"{label:52}{e:10,.0f}{a:12,.0f}{e / a:7.2f}x  (vs at-least-once)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
