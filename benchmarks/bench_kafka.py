"""Benchmark of the Kafka listener against the engine in-process, side by side.

Run: .venv/bin/python benchmarks/bench_kafka.py [--quick]

Workload (both sides in one run, median of 3 repeats): 200-byte values keyed
over 1,000 keys into a 4-partition topic, then every record read back.

* Kafka: the real daemon (`runner run --kafka-listen 127.0.0.1:0`), a
  confluent-kafka (librdkafka) producer with acks=all and librdkafka's default
  batching (`partitioner=murmur2_random`), all delivery reports awaited; then a
  confluent-kafka consumer assigned to every partition from offset 0, until
  it has every record (the clock includes its connection and metadata).
* in-process: `Engine.append` of the same keyed records in batches of 500,
  then `Engine.read` of every partition (no network, no protocol).

Both sides run under the same `--fsync` policy (`interval` by default; the
acks=all answer comes once the append returned, as that policy promises).
The ratio is Kafka append+read rate / in-process append+read rate (target >= 0.3).
"""

from __future__ import annotations

import argparse
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from runner.engine import Engine, FsyncPolicy, OutRecord  # noqa: E402
from runner.topology.load import load  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RUNNER = ROOT / ".venv" / "bin" / "runner"
VALUE = b"x" * 200
PARTITIONS = 4
REPEATS = 3
TOPOLOGY = "version: 1\nname: bench-kafka\ntopics:\n" + "".join(
    f"  bench-{r}:\n    partitions: {PARTITIONS}\n" for r in range(REPEATS))


def in_process(workdir: Path, n: int, fsync: str) -> float:
    (workdir / "topology.yaml").write_text(TOPOLOGY)
    topology = load(str(workdir / "topology.yaml")).topology
    assert topology is not None
    engine = Engine.open(topology, workdir / "data", fsync=FsyncPolicy(fsync))
    batch = [OutRecord(VALUE, key=b"key-%d" % (i % 1000)) for i in range(500)]
    t0 = time.perf_counter()
    for _ in range(n // 500):
        engine.append("bench-0", batch)
    got = 0
    for p in range(PARTITIONS):
        offset = 0
        while True:
            recs, nxt = engine.read("bench-0", p, offset, max_records=5000,
                                    max_bytes=4 * 1024 * 1024)
            if not recs:
                break
            got += len(recs)
            offset = nxt
    dt = time.perf_counter() - t0
    engine.close()
    assert got == n // 500 * 500, got
    return got / dt


class Daemon:
    def __init__(self, workdir: Path, fsync: str) -> None:
        (workdir / "topology.yaml").write_text(TOPOLOGY)
        self.log = workdir / "daemon.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [str(RUNNER), "run", "topology.yaml", "--data-dir", "data", "--fsync", fsync,
                 "--listen", "127.0.0.1:0", "--kafka-listen", "127.0.0.1:0", "--no-watch"],
                cwd=workdir, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            text = self.log.read_text()
            match = re.search(r"listening on kafka://[^:]+:(\d+)", text)
            if match and "listening on http" in text:
                self.bootstrap = f"127.0.0.1:{match.group(1)}"
                return
            if self.proc.poll() is not None:
                raise SystemExit(f"daemon exited:\n{text}")
            time.sleep(0.05)
        raise SystemExit("daemon did not start")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=60)


def through_kafka(d: Daemon, n: int, topic: str) -> tuple[float, float, float]:
    """(produce rec/s, consume rec/s, append+read rec/s) through the listener."""
    from confluent_kafka import Consumer, Producer, TopicPartition

    p = Producer({"bootstrap.servers": d.bootstrap, "acks": "all",
                  "partitioner": "murmur2_random"})
    failed = []

    def report(err: object, _msg: object) -> None:
        if err is not None:
            failed.append(err)

    t0 = time.perf_counter()
    for i in range(n):
        while True:
            try:
                p.produce(topic, VALUE, key=b"key-%d" % (i % 1000), on_delivery=report)
                break
            except BufferError:
                p.poll(0.01)
        if i % 1000 == 0:
            p.poll(0)
    left = p.flush(120)
    t_produce = time.perf_counter() - t0
    p.close()
    if left or failed:
        raise SystemExit(f"produce failed: {left} undelivered, errors {failed[:3]}")
    t1 = time.perf_counter()
    c = Consumer({"bootstrap.servers": d.bootstrap, "group.id": "bench",
                  "enable.auto.commit": False})
    c.assign([TopicPartition(topic, part, 0) for part in range(PARTITIONS)])
    got = 0
    deadline = t1 + 120
    while got < n and time.perf_counter() < deadline:
        # consume() waits its whole timeout unless the batch fills: keep the wait short,
        # as a consumer handling what has arrived would
        for m in c.consume(min(10_000, n - got), timeout=0.01):
            if m.error() is None:
                got += 1
    t_consume = time.perf_counter() - t1
    c.close()
    if got < n:
        raise SystemExit(f"consumed {got} of {n}")
    return n / t_produce, n / t_consume, n / (t_produce + t_consume)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (< 30 s)")
    parser.add_argument("--fsync", choices=("always", "interval", "never"), default="interval")
    args = parser.parse_args()
    n = 50_000 if args.quick else 300_000
    repeats = REPEATS
    root = Path(tempfile.mkdtemp(prefix="bench-kafka-"))
    try:
        ours = []
        base = []
        (root / "daemon").mkdir()
        d = Daemon(root / "daemon", args.fsync)
        try:
            for r in range(repeats):  # interleaved: both sides see the same machine load
                (root / f"e{r}").mkdir()
                base.append(in_process(root / f"e{r}", n, args.fsync))
                ours.append(through_kafka(d, n, f"bench-{r}"))
        finally:
            d.stop()
        produce = statistics.median(o[0] for o in ours)
        consume = statistics.median(o[1] for o in ours)
        both = statistics.median(o[2] for o in ours)
        inproc = statistics.median(base)
        print(f"{n} x 200 B keyed records, {PARTITIONS} partitions, --fsync {args.fsync}; "
              f"median of {repeats}")
        print(f"{'':34}{'rec/s':>12}")
        print(f"{'Kafka produce (acks=all)':34}{produce:12,.0f}")
        print(f"{'Kafka consume':34}{consume:12,.0f}")
        print(f"{'Kafka append+read':34}{both:12,.0f}")
        print(f"{'in-process Engine append+read':34}{inproc:12,.0f}")
        print(f"ratio Kafka / in-process: {both / inproc:.2f}x "
              f"(target >= 0.3: {'ok' if both / inproc >= 0.3 else 'MISSED'})")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
