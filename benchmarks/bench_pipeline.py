"""Benchmark: the engine's exactly-once step and the pipeline's handler loop.

Each figure is the median of several runs, printed next to its floor measured
in the same run:

* `commit_step` (ack one queue message + publish one output to a queue +
  append one record, as one journaled step)   vs  the same three operations
  done separately (at-least-once), and vs a bare StepJournal write.
* a queues-only step (ack + one output into a queue: the broker's own step)
  vs  publish + ack.
* the Pipeline running a no-op async handler over N queued messages
  (at-least-once, concurrency 1, prefetch 100)  vs  a bare engine loop that
  pulls 100 and acks them (no handler, no asyncio).
* the Pipeline running a no-op sync handler (thread pool of 4, concurrency 4,
  prefetch 40) over N queued messages  vs  the async handler, and vs the bare
  pull+ack loop.

Both with fsync=never (CPU cost) and the step also with fsync=always.

    .venv/bin/python benchmarks/bench_pipeline.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from runner.clock import SystemClock  # noqa: E402
from runner.engine import Engine, FsyncPolicy, OutMessage, OutRecord, Step  # noqa: E402
from runner.log.journal import StepJournal  # noqa: E402
from runner.log.record import Fsync  # noqa: E402
from runner.pipeline import Pipeline  # noqa: E402
from runner.topology.model import Consumer, Queue, Topic, Topology  # noqa: E402

BODY = b"x" * 200
HANDLER = "benchmarks.bench_pipeline:noop"
SYNC_HANDLER = "benchmarks.bench_pipeline:noop_sync"


async def noop(msg: object) -> None:
    """The benchmarked handler: does nothing."""


def noop_sync(msg: object) -> None:
    """The benchmarked sync handler (runs in the thread pool): does nothing."""


def topology(with_consumer: bool, *, sync: bool = False) -> Topology:
    consumer = (Consumer("c", "in", SYNC_HANDLER, concurrency=4, prefetch=40) if sync
                else Consumer("c", "in", HANDLER, prefetch=100))
    consumers = (("c", consumer),) if with_consumer else ()
    return Topology(topics=(("audit", Topic("audit")),),
                    queues=(("in", Queue("in")), ("out", Queue("out"))), consumers=consumers)


def fresh() -> Path:
    return Path(tempfile.mkdtemp(prefix="bench-pipeline-"))


def seeded(
    data: Path, n: int, fsync: FsyncPolicy, consumer: bool = False, sync: bool = False,
) -> Engine:
    e = Engine.open(topology(consumer, sync=sync), data, fsync=fsync)
    for i in range(0, n, 1000):
        e.publish_to_queue("in", [OutMessage(BODY) for _ in range(min(1000, n - i))])
    return e


def steps(n: int, fsync: FsyncPolicy) -> Callable[[Path], None]:
    def run(data: Path) -> None:
        e = seeded(data, n, fsync)
        t0 = time.perf_counter()
        for d in e.pull("in", n, lease_s=600, consumer_id="b"):
            e.commit_step(Step(acks=[("in", d.delivery_id)],
                               queue_puts=[("out", [OutMessage(d.body)])],
                               appends=[("audit", [OutRecord(d.body)])]))
        run.elapsed = time.perf_counter() - t0  # type: ignore[attr-defined]
        e.close()
    return run


def queue_steps(n: int, fsync: FsyncPolicy, *, step: bool) -> Callable[[Path], None]:
    """Ack one message + put one copy into another queue: as a step, or as two ops."""
    def run(data: Path) -> None:
        e = seeded(data, n, fsync)
        t0 = time.perf_counter()
        for d in e.pull("in", n, lease_s=600, consumer_id="b"):
            if step:
                e.commit_step(Step(acks=[("in", d.delivery_id)],
                                   queue_puts=[("out", [OutMessage(d.body)])]))
            else:
                e.publish_to_queue("out", [OutMessage(d.body)])
                e.ack("in", [d.delivery_id])
        run.elapsed = time.perf_counter() - t0  # type: ignore[attr-defined]
        e.close()
    return run


def separate(n: int, fsync: FsyncPolicy) -> Callable[[Path], None]:
    def run(data: Path) -> None:
        e = seeded(data, n, fsync)
        t0 = time.perf_counter()
        for d in e.pull("in", n, lease_s=600, consumer_id="b"):
            e.publish_to_queue("out", [OutMessage(d.body)])
            e.append("audit", [OutRecord(d.body)])
            e.ack("in", [d.delivery_id])
        run.elapsed = time.perf_counter() - t0  # type: ignore[attr-defined]
        e.close()
    return run


def journal_only(n: int, fsync: FsyncPolicy) -> Callable[[Path], None]:
    def run(data: Path) -> None:
        j = StepJournal(data / "j", fsync=Fsync(fsync.value))
        payload = b"{" + BODY * 2 + b"}"
        t0 = time.perf_counter()
        for _ in range(n):
            j.mark_done(j.write(payload))
        run.elapsed = time.perf_counter() - t0  # type: ignore[attr-defined]
        j.close()
    return run


def pipeline_loop(n: int, *, sync: bool = False) -> Callable[[Path], None]:
    """The Pipeline draining `n` queued messages: the no-op async handler
    (concurrency 1, prefetch 100) or the no-op sync one (concurrency 4,
    prefetch 40, in a pool of 4 threads)."""
    def run(data: Path) -> None:
        e = seeded(data, n, FsyncPolicy.NEVER, consumer=True, sync=sync)

        async def go() -> float:
            with concurrent.futures.ThreadPoolExecutor(4 if sync else 2) as pool:
                p = Pipeline(e, e.topology, data_dir=data, clock=SystemClock(), executor=pool,
                             instance_id="bench")
                t0 = time.perf_counter()
                await p.start()
                while p.stats().consumers["c"].succeeded < n:
                    await asyncio.sleep(0.005)
                elapsed = time.perf_counter() - t0
                await p.drain(1.0)
                return elapsed

        run.elapsed = asyncio.run(go())  # type: ignore[attr-defined]
        e.close()
    return run


def bare_loop(n: int) -> Callable[[Path], None]:
    def run(data: Path) -> None:
        e = seeded(data, n, FsyncPolicy.NEVER)
        t0 = time.perf_counter()
        done = 0
        while done < n:
            got = e.pull("in", 100, lease_s=600, consumer_id="b")
            e.ack("in", [d.delivery_id for d in got])
            done += len(got)
        run.elapsed = time.perf_counter() - t0  # type: ignore[attr-defined]
        e.close()
    return run


def rate(n: int, make: Callable[[], Callable[[Path], None]], repeats: int) -> float:
    """Median ops/s over `repeats` runs, timing only the measured section."""
    rates = []
    for _ in range(repeats):
        fn = make()
        data = fresh()
        try:
            fn(data)
        finally:
            shutil.rmtree(data, ignore_errors=True)
        rates.append(n / fn.elapsed)  # type: ignore[attr-defined]
    return float(statistics.median(rates))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (< 20 s)")
    args = ap.parse_args(argv)
    repeats = 3
    n = 2000 if args.quick else 10_000
    n_sync = 200 if args.quick else 1000
    n_loop = 5000 if args.quick else 50_000
    rows = [
        ("exactly-once step, fsync=never", n,
         lambda: steps(n, FsyncPolicy.NEVER), lambda: separate(n, FsyncPolicy.NEVER),
         "3 separate ops"),
        ("exactly-once step, fsync=never", n,
         lambda: steps(n, FsyncPolicy.NEVER), lambda: journal_only(n, FsyncPolicy.NEVER),
         "bare journal write"),
        ("exactly-once step, fsync=always", n_sync,
         lambda: steps(n_sync, FsyncPolicy.ALWAYS), lambda: separate(n_sync, FsyncPolicy.ALWAYS),
         "3 separate ops"),
        ("queues-only step, fsync=always", n_sync,
         lambda: queue_steps(n_sync, FsyncPolicy.ALWAYS, step=True),
         lambda: queue_steps(n_sync, FsyncPolicy.ALWAYS, step=False), "publish + ack"),
        ("pipeline no-op async handler", n_loop,
         lambda: pipeline_loop(n_loop), lambda: bare_loop(n_loop), "bare pull+ack loop"),
        ("pipeline no-op sync handler (c=4)", n_loop,
         lambda: pipeline_loop(n_loop, sync=True), lambda: pipeline_loop(n_loop),
         "no-op async handler"),
        ("pipeline no-op sync handler (c=4)", n_loop,
         lambda: pipeline_loop(n_loop, sync=True), lambda: bare_loop(n_loop),
         "bare pull+ack loop"),
    ]
    print(f"{'measured':36} {'ops/s':>10}   {'floor':22} {'ops/s':>10}  ratio")
    for label, count, make, make_floor, floor_label in rows:
        got = rate(count, make, repeats)
        floor = rate(count, make_floor, repeats)
        print(f"{label:36} {got:10.0f}   {floor_label:22} {floor:10.0f}  {floor / got:5.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
