"""A segmented log under power cuts: at every cut point of a real workload (first
start, appends with group commit, segment rolls, retention deletes, compaction
swaps, restart), recovery starts and finds every acknowledged record.

The workload runs on `tests.faultfs.SimDisk`; a cut point is the Nth changing
file call. After the cut the disk keeps only what was synced (and, in the torn
variant, any subset of the unsynced pages and an ordered prefix of the
unsynced directory changes)."""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from runner.clock import ManualClock
from runner.errors import CorruptSegment, StorageError
from runner.log.compaction import compact
from runner.log.journal import StepJournal
from runner.log.record import Fsync
from runner.log.segment import SegmentedLog
from tests.faultfs import PowerCut, SimDisk

D = Path("/data/log")
MAKE_TEST_CUTS = 150  # evenly spread over the workload's changing calls; `torture`: all


@dataclass
class Acked:
    """What the workload saw acknowledged: offset -> (key, value)."""

    records: dict[int, tuple[bytes, bytes]] = field(default_factory=dict)
    start: int = 0  # retention dropped everything below (when acknowledged)
    compacted_upto: int = 0  # compaction may drop superseded keys below this


def _open(disk: SimDisk) -> SegmentedLog:
    return SegmentedLog(D, fsync=Fsync.ALWAYS, clock=ManualClock(), fs=disk,
                        segment_bytes=1500, index_interval_bytes=200)


def _workload(disk: SimDisk, acked: Acked) -> None:
    rng = random.Random(7)
    log = _open(disk)
    n = 0
    try:
        for phase in range(2):
            for i in range(40):
                batch = [(f"k{rng.randrange(6)}".encode(),
                          f"v{n + j}".encode() * rng.randrange(1, 30), (), 1000 + n)
                         for j in range(rng.randrange(1, 4))]
                n += len(batch)
                if i % 7 == 3:  # concurrent appenders: one fsync serves them (group commit)
                    threads = [threading.Thread(target=_append_into, args=(log, [b], acked))
                               for b in batch]
                    for t in threads:
                        t.start()
                    for t in threads:
                        t.join()
                else:
                    _append_into(log, batch, acked)
                if i % 13 == 12:
                    acked.compacted_upto = log.end_offset  # superseded keys below may go
                    compact(log, now_ms=5000, delete_retention_ms=0)
                if i % 17 == 16 and log.segment_count > 2:
                    acked.start = log.closed_segments()[0].next_base
                    log.delete_before(acked.start)
            if phase == 0:  # restart
                log.close()
                log = _open(disk)
    finally:
        if not disk.dead:
            log.close()


def _append_into(log: SegmentedLog, batch: list[tuple[bytes, bytes, tuple[()], int]],
                 acked: Acked) -> None:
    try:
        first = log.append(batch)
    except (PowerCut, StorageError):
        return  # not acknowledged
    for j, (k, v, _h, _ts) in enumerate(batch):
        acked.records[first + j] = (k, v)


def _verify(disk: SimDisk, acked: Acked, why: str) -> None:
    log = _open(disk)
    try:
        got = {}
        off = log.start_offset
        while off < log.end_offset:
            recs, off = log.read_from(off, max_records=1000)
            for r in recs:
                got[r.offset] = (r.key, r.value)
        latest: dict[bytes, int] = {}
        for off, (k, _v) in sorted(acked.records.items()):
            latest[k] = off
        assert log.start_offset <= max(acked.start, 0) or not acked.records, why
        for off, kv in acked.records.items():
            if off < log.start_offset:
                assert off < acked.start or off < acked.compacted_upto, (why, off)
                continue
            if off < acked.compacted_upto and latest[kv[0]] != off:
                continue  # superseded: compaction may have removed it
            assert got.get(off) == kv, (why, off, kv, got.get(off))
        # the recovered log takes appends and reopens
        log.append([(b"k", b"after", (), 1)])
    finally:
        log.close()
    _open(disk).close()


def _run(cut: int) -> int:
    disk = SimDisk(cut_at=cut)
    acked = Acked()
    try:
        _workload(disk, acked)
    except Exception:
        if not disk.dead:
            raise
    for torn in (False, True):
        for seed in range(2 if torn else 1):
            _verify(disk.crash(torn=torn, seed=seed), acked, f"cut {cut} torn={torn} seed={seed}")
    return disk.changes


def _total() -> int:
    disk = SimDisk()
    _workload(disk, Acked())
    return disk.changes


def _cuts(count: int | None) -> list[int]:
    total = _total()
    assert total > 300  # the workload reaches rolls, compaction and deletes
    if count is None:
        return list(range(1, total + 1))
    return sorted({1 + (total - 1) * i // (count - 1) for i in range(count)})


def test_every_acknowledged_record_survives_a_power_cut_at_sampled_cut_points() -> None:
    for cut in _cuts(MAKE_TEST_CUTS):
        _run(cut)


@pytest.mark.torture
@pytest.mark.timeout(3600)
def test_every_acknowledged_record_survives_a_power_cut_at_every_cut_point() -> None:
    for cut in _cuts(None):
        _run(cut)


# ---------------------------------------------------------------- the step journal
J = Path("/data/engine_steps")


def _journal_workload(disk: SimDisk, acked: dict[int, bytes], done: set[int]) -> None:
    """Steps are synced; their done marks are not (a lost mark replays a step). The
    marks span pages, so a torn tail can lose one page and keep the next."""
    journal = StepJournal(J, fsync=Fsync.ALWAYS, clock=ManualClock(), fs=disk,
                          segment_bytes=64 * 1024)
    try:
        for i in range(24):
            payload = f"step-{i}-".encode() * 200
            sid = journal.write(payload)
            acked[sid] = payload
            if i % 3 == 2:
                continue  # left pending: must be replayed after any cut
            done.add(sid)  # from its first mark on, it may be done
            for _ in range(50):  # unsynced marks, each its own batch, over pages
                journal.mark_done(sid)
    finally:
        if not disk.dead:
            journal.close()


def _journal_run(cut: int | None) -> SimDisk:
    disk = SimDisk(cut_at=cut)
    acked: dict[int, bytes] = {}
    done: set[int] = set()
    try:
        _journal_workload(disk, acked, done)
    except Exception:
        if not disk.dead:
            raise
    for torn in (False, True):
        for seed in range(4 if torn else 1):
            after = disk.crash(torn=torn, seed=seed)
            journal = StepJournal(J, fsync=Fsync.ALWAYS, clock=ManualClock(), fs=after)
            try:
                pending = dict(journal.pending())
                for sid, payload in acked.items():  # not done: replayed, with its payload
                    if sid not in done:
                        assert pending.get(sid) == payload, (cut, torn, seed, sid)
                for sid, payload in pending.items():  # never a step that was not written
                    assert acked.get(sid, payload) == payload, (cut, torn, seed, sid)
            finally:
                journal.close()
    return disk


def test_a_torn_tail_of_unsynced_done_marks_does_not_stop_recovery() -> None:
    total = _journal_run(None).changes
    for cut in sorted({1 + (total - 1) * i // 39 for i in range(40)}):
        _journal_run(cut)


def test_corruption_inside_synced_data_still_refuses_to_start() -> None:
    disk = SimDisk()
    journal = StepJournal(J, fsync=Fsync.ALWAYS, clock=ManualClock(), fs=disk)
    for i in range(5):
        journal.write(f"step-{i}".encode() * 100)
    journal.close()
    path = J / "00000000000000000000.log"
    fd = disk.open(path)
    disk.pwrite(fd, b"\xff", 700)  # a flipped byte in the second (synced) step
    disk.sync(fd)
    with pytest.raises(CorruptSegment) as info:
        StepJournal(J, fsync=Fsync.ALWAYS, clock=ManualClock(), fs=disk)
    assert str(info.value).startswith(f"corrupt batch in {path} at byte ")


# ---------------------------------------------------------------- a failed fsync
def _fsync_failure_run(fail_at: int) -> tuple[int, bool]:
    """Appends (rolls included) with the `fail_at`th fsync failing; the appender keeps
    trying, as a client retrying its 503s would. Returns (syncs done, whether the
    failure happened)."""
    disk = SimDisk()
    acked = Acked()
    log = _open(disk)
    disk.fail_sync_at = disk.syncs + fail_at  # the fsyncs of appends and rolls
    failed_at = None
    for i in range(60):
        batch = [(b"k", f"v{i}-".encode() * 40, (), i)]
        before = len(acked.records)
        _append_into(log, batch, acked)
        if log.failed is not None:
            failed_at = i if failed_at is None else failed_at
            assert len(acked.records) == before  # refused from the failure on
            with pytest.raises(StorageError):  # and read-your-write too
                log.read(log.start_offset)
    log.close()
    _verify(disk.crash(), acked, f"fsync failure at {fail_at}")
    return disk.syncs - (disk.fail_sync_at - fail_at), failed_at is not None


def test_nothing_is_acknowledged_after_a_failed_fsync_that_recovery_does_not_find() -> None:
    total, _ = _fsync_failure_run(10**9)
    runs = range(1, total + 1, max(1, total // 40))
    failed = sum(_fsync_failure_run(fail_at)[1] for fail_at in runs)
    # a data or index fsync fails the log; a failed snapshot fsync only refuses its roll
    assert failed >= 0.7 * len(runs)
