"""Benchmark of runner.log's SegmentedLog against a bare framed-write floor.

Run: .venv/bin/python benchmarks/bench_log.py [--quick]

Cases with 200-byte records, each measured next to its floor in the same
run (median of >= 3 repeats), printed as records/s and as a ratio:

* fsync=never: batched append of N records, then read them all back.
  Floor: a bare loop packing framed records (length + CRC32) into batches and
  writing each batch to one file with one `write`.
* fsync=always: 16 threads appending batches concurrently (group commit), then
  reading back. Floor: one thread writing the same framed batches and calling
  fdatasync once per 16 batches (what a perfect group commit would do).
* the Store path the engine uses, fsync=never: `Store.append` of batches of 500
  AppendRecords (keyed over 4 partitions, keyless over 4, keyless to 1), then
  `Store.read_from` of every partition; ratio to the fsync=never floor.
"""

from __future__ import annotations

import argparse
import functools
import os
import shutil
import statistics
import struct
import sys
import tempfile
import threading
import time
import tracemalloc
import zlib
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from runner.clock import SystemClock  # noqa: E402
from runner.log.record import Fsync  # noqa: E402
from runner.log.segment import SegmentedLog  # noqa: E402
from runner.log.store import AppendRecord, Store  # noqa: E402
from runner.topology.model import Topic  # noqa: E402

VALUE = b"x" * 200
FRAME = struct.Struct("<iI")


def floor(path: Path, n: int, batch: int, sync_every: int) -> float:
    """records/s of a bare framed, CRC'd write loop with the given fsync pattern."""
    pack = FRAME.pack
    crc32 = zlib.crc32
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    t0 = time.perf_counter()
    for batches in range(1, n // batch + 1):
        parts = [pack(len(VALUE), crc32(VALUE)) + VALUE for _ in range(batch)]
        buf = b"".join(parts)
        os.write(fd, pack(len(buf), crc32(buf)) + buf)
        if sync_every and batches % sync_every == 0:
            os.fdatasync(fd)
    if sync_every:
        os.fdatasync(fd)
    dt = time.perf_counter() - t0
    os.close(fd)
    return n / dt


def read_all(log: SegmentedLog) -> int:
    offset, count = log.start_offset, 0
    while offset < log.end_offset:
        recs = log.read(offset, max_records=5000, max_bytes=4 * 1024 * 1024)
        count += len(recs)
        offset = recs[-1].offset + 1
    return count


def engine_never(directory: Path, n: int, batch: int) -> float:
    log = SegmentedLog(directory, fsync=Fsync.NEVER, clock=SystemClock())
    items = [(None, VALUE, (), 1_700_000_000_000)] * batch
    t0 = time.perf_counter()
    for _ in range(n // batch):
        log.append(items)
    got = read_all(log)
    dt = time.perf_counter() - t0
    log.close()
    assert got == n, (got, n)
    return n / dt


def engine_always(directory: Path, n: int, batch: int, threads: int) -> float:
    log = SegmentedLog(directory, fsync=Fsync.ALWAYS, clock=SystemClock())
    items = [(None, VALUE, (), 1_700_000_000_000)] * batch
    per_thread = n // batch // threads

    def work() -> None:
        for _ in range(per_thread):
            log.append(items)

    workers = [threading.Thread(target=work) for _ in range(threads)]
    t0 = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    got = read_all(log)
    dt = time.perf_counter() - t0
    log.close()
    total = per_thread * threads * batch
    assert got == total, (got, total)
    return total / dt


def store_never(directory: Path, n: int, batch: int, partitions: int, keyed: bool) -> float:
    """records/s of Store.append + Store.read_from (the engine's path), fsync=never."""
    store = Store(directory, fsync=Fsync.NEVER, clock=SystemClock(), background=False)
    store.apply({"t": Topic("t", partitions=partitions)})
    records = [AppendRecord(VALUE, key=b"key-%d" % (i % 1000) if keyed else None)
               for i in range(batch)]
    t0 = time.perf_counter()
    for _ in range(n // batch):
        store.append("t", records)
    got = 0
    for p in range(partitions):
        offset = 0
        while True:
            recs, offset = store.read_from("t", p, offset, max_records=5000,
                                           max_bytes=4 * 1024 * 1024)
            if not recs:
                break
            got += len(recs)
    dt = time.perf_counter() - t0
    store.close()
    total = n // batch * batch
    assert got == total, (got, total)
    return total / dt


def memory_of_reads(directory: Path, n: int, batch: int) -> tuple[int, int]:
    """Peak traced memory of appending and reading n records, and the cache size."""
    tracemalloc.start()
    log = SegmentedLog(directory, fsync=Fsync.NEVER, clock=SystemClock(),
                       cache_bytes=4 * 1024 * 1024)
    items = [(None, VALUE, (), 1)] * batch
    for _ in range(n // batch):
        log.append(items)
    offset = 0
    while offset < log.end_offset:
        recs = log.read(offset, max_records=1000)
        offset = recs[-1].offset + 1
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    cache = log.cache_size
    log.close()
    return peak, cache


def median_of(repeats: int, fn: Callable[[], float]) -> float:
    return statistics.median(fn() for _ in range(repeats))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (< 20 s)")
    args = parser.parse_args()
    n = 100_000 if args.quick else 400_000
    batch = 500
    threads = 16
    repeats = 3
    root = Path(tempfile.mkdtemp(prefix="bench-log-"))
    counter = iter(range(10**6))

    def fresh() -> Path:
        d = root / str(next(counter))
        d.mkdir()
        return d

    try:
        print(f"200-byte records, n={n}, batch={batch}, median of {repeats}")
        f_never = median_of(repeats, lambda: floor(fresh() / "f", n, batch, 0))
        e_never = median_of(repeats, lambda: engine_never(fresh(), n, batch))
        print(f"fsync=never : engine append+read {e_never:>10,.0f} rec/s   floor write "
              f"{f_never:>10,.0f} rec/s   ratio {e_never / f_never:.2f}   "
              f"(target >= 500,000: {'ok' if e_never >= 500_000 else 'MISSED'})")
        a_batch = 100
        f_always = median_of(repeats, lambda: floor(fresh() / "f", n, a_batch, threads))
        e_always = median_of(repeats, lambda: engine_always(fresh(), n, a_batch, threads))
        print(f"fsync=always: engine {threads} threads x batch {a_batch} append+read "
              f"{e_always:>10,.0f} rec/s   floor (fsync per {threads} batches) "
              f"{f_always:>10,.0f} rec/s   ratio {e_always / f_always:.2f}   "
              f"(target >= 200,000: {'ok' if e_always >= 200_000 else 'MISSED'})")
        for label, parts, keyed in (("keyed, 4 partitions", 4, True),
                                    ("keyless, 4 partitions", 4, False),
                                    ("keyless, 1 partition", 1, False)):
            e_store = median_of(repeats, functools.partial(
                lambda p, k: store_never(fresh(), n, batch, p, k), parts, keyed))
            print(f"Store.append+read_from, {label:<22}: {e_store:>10,.0f} rec/s   "
                  f"ratio to floor {e_store / f_never:.2f}   "
                  f"(target >= 500,000: {'ok' if e_store >= 500_000 else 'MISSED'})")
        peak, cache = memory_of_reads(fresh(), n // 2, batch)
        data_mb = n // 2 * 228 / 1e6
        print(f"memory: peak traced {peak / 1e6:.1f} MB while writing and reading "
              f"{data_mb:.0f} MB of records; read cache held {cache / 1e6:.1f} MB "
              f"(bound 4.2 MB)")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
