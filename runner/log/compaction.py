"""Log compaction: keep at least the latest record per key in closed segments.

`compact(log, now_ms=..., delete_retention_ms=...)`:

1. Map every key to its latest offset, reading closed segments and the active
   one (so a key rewritten in the active segment is dropped from closed ones),
   up to the log's durable end only: a record is never dropped for a newer one
   that a power cut could still take (with `--fsync interval|never` the active
   segment's tail is not synced yet), or the key would be lost with both.
2. Rewrite closed segments, grouped so a group's input fits `segment_bytes`,
   keeping a record when it is the latest for its key. A tombstone (null
   value) stays for `delete_retention_ms` after the cleaning that first kept
   it, whatever its own timestamp (Kafka's delete horizon): that cleaning
   writes now + delete retention into the batch header (`DELETE_HORIZON`), a
   later cleaning at or after that time removes it.
   Keyless records (possible only if the topic became compacted later) are
   removed, as Kafka's cleaner does.
   Offsets are kept (batches carry offset deltas); the active segment is never
   touched, so appends go on during compaction.
3. Each group is swapped in atomically (`SegmentedLog.replace_segments`).

The key map holds one int per distinct key: memory grows with the number of
keys, not with record sizes.

`Cleaner` runs `compact` for registered partitions in one background thread.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from runner.log.logsegment import SegmentInfo
from runner.log.record import LogRecord
from runner.log.segment import CleanedBatch, SegmentedLog

log = logging.getLogger(__name__)

BATCH_RECORDS = 500


@dataclass(frozen=True, slots=True)
class CompactionResult:
    segments_before: int
    segments_after: int
    records_removed: int
    bytes_before: int
    bytes_after: int


def _latest_offsets(wal: SegmentedLog, closed: list[SegmentInfo]) -> dict[bytes, int]:
    latest: dict[bytes, int] = {}
    for seg in closed:
        for _header, recs in wal.scan_segment(seg.base):
            for rec in recs:
                if rec.key is not None:
                    latest[rec.key] = rec.offset
    offset = closed[-1].next_base if closed else wal.start_offset
    durable = wal.durable_end
    while offset < durable:
        recs = wal.read(offset, max_records=5000, max_bytes=8 * 1024 * 1024)
        if not recs:
            break
        for rec in recs:
            if rec.key is not None and rec.offset < durable:
                latest[rec.key] = rec.offset
        offset = recs[-1].offset + 1
    return latest


def _groups(closed: list[SegmentInfo], limit: int) -> list[list[SegmentInfo]]:
    groups: list[list[SegmentInfo]] = []
    size = 0
    for seg in closed:
        # offsets inside a segment are int32 deltas from its base (as in Kafka)
        if groups and size + seg.size <= limit and seg.next_base - groups[-1][0].base < 2**31:
            groups[-1].append(seg)
            size += seg.size
        else:
            groups.append([seg])
            size = seg.size
    return groups


def compact(wal: SegmentedLog, *, now_ms: int, delete_retention_ms: int) -> CompactionResult:
    """Compact the closed segments of `wal` (see the module docstring)."""
    closed = wal.closed_segments()
    before = wal.size_bytes
    if not closed:
        return CompactionResult(1, 1, 0, before, before)
    latest = _latest_offsets(wal, closed)
    new_horizon = now_ms + delete_retention_ms  # for tombstones cleaned for the first time

    def keep(rec: LogRecord, horizon: int | None) -> bool:
        if rec.key is None:
            return False  # left from before the topic became compacted (as Kafka's cleaner)
        if latest.get(rec.key) != rec.offset:
            return False
        return rec.value is not None or horizon is None or now_ms < horizon

    removed = 0
    for group in _groups(closed, wal.segment_bytes):
        total = kept = 0
        first_cleaning = False
        for seg in group:
            for header, recs in wal.scan_segment(seg.base):
                total += len(recs)
                horizon = header.delete_horizon
                kept += sum(1 for r in recs if keep(r, horizon))
                first_cleaning = first_cleaning or (horizon is None and any(
                    r.value is None and keep(r, None) for r in recs))
        if kept == total and len(group) == 1 and not first_cleaning:
            continue
        removed += total - kept

        def batches(group: list[SegmentInfo] = group) -> Iterator[CleanedBatch]:
            # a batch's tombstones share one delete horizon: a batch ends where it changes
            out: list[LogRecord] = []
            out_horizon = -1
            for seg in group:
                for header, recs in wal.scan_segment(seg.base):
                    horizon = header.delete_horizon
                    for r in recs:
                        if not keep(r, horizon):
                            continue
                        if r.value is None and r.key is not None:
                            h = new_horizon if horizon is None else horizon
                            if out_horizon >= 0 and h != out_horizon and out:
                                yield out, -1, -1, out_horizon
                                out = []
                            out_horizon = h
                        out.append(r)
                        if len(out) >= BATCH_RECORDS:
                            yield out, -1, -1, out_horizon
                            out, out_horizon = [], -1
            if out:
                yield out, -1, -1, out_horizon

        wal.replace_segments([s.base for s in group], batches())
    after = wal.size_bytes
    log.debug("compacted %s: %d records removed, %d -> %d bytes", wal.directory, removed,
              before, after)
    return CompactionResult(len(closed) + 1, wal.segment_count, removed, before, after)


class Cleaner:
    """One background thread running queued compaction jobs, one at a time."""

    def __init__(self) -> None:
        self._jobs: list[Callable[[], object]] = []
        self._cond = threading.Condition()
        self._stop = False
        self._busy = False
        self.runs = 0
        self.failures = 0
        self._thread = threading.Thread(target=self._run, name="log-cleaner", daemon=True)
        self._thread.start()

    def submit(self, job: Callable[[], object]) -> None:
        with self._cond:
            self._jobs.append(job)
            self._cond.notify()

    def idle(self, timeout: float = 30.0) -> bool:
        """Wait until every submitted job has run (for tests and shutdown)."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._jobs and not self._busy, timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._jobs or self._stop)
                if self._stop:
                    return
                job = self._jobs.pop(0)
                self._busy = True
            try:
                job()
                self.runs += 1
            except Exception:
                self.failures += 1
                log.exception("compaction failed")
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._stop = True
            self._jobs.clear()
            self._cond.notify_all()
        self._thread.join()
