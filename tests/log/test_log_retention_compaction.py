"""Retention by time and bytes, and compaction, driven by a manual clock."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from runner.clock import ManualClock, now_ms
from runner.log.compaction import Cleaner, compact
from runner.log.partition import Partition
from runner.log.record import Fsync, encode_batch
from runner.log.segment import SegmentedLog
from runner.topology.model import Retention, Topic

DAY_MS = 86_400_000


def make(tmp_path: Path, clock: ManualClock, **kw: object) -> Partition:
    topic = Topic(name="t", segment_bytes=2_000, **kw)  # type: ignore[arg-type]
    return Partition(tmp_path / "t-0", topic, 0, fsync=Fsync.NEVER, clock=clock)


def fill(p: Partition, clock: ManualClock, n: int, step_s: float = 60.0) -> None:
    for i in range(n):
        p.append([(b"k%d" % (i % 7), b"v" * 100, (), now_ms(clock))])
        clock.advance(step_s)


def test_retention_by_time_drops_old_segments_only(tmp_path: Path) -> None:
    clock = ManualClock()
    p = make(tmp_path, clock, retention=Retention(time_s=3600.0, bytes=None))
    fill(p, clock, 100)  # 100 minutes of records, ~15 per segment
    segments = p.log.segment_count
    assert p.enforce_retention(now_ms(clock)) > 0
    assert p.log.segment_count < segments
    first = p.read(p.log_start_offset, max_records=1)[0]
    # the oldest kept segment holds records within the hour
    assert p.log.closed_segments()[0].max_timestamp >= now_ms(clock) - 3600_000
    assert first.offset == p.log_start_offset > 0
    assert p.log_end_offset == 100
    clock.advance(10 * 3600)
    p.enforce_retention(now_ms(clock))
    assert p.log.segment_count == 1  # never the active segment
    assert p.log_end_offset == 100
    p.close()


def test_retention_by_bytes(tmp_path: Path) -> None:
    clock = ManualClock()
    p = make(tmp_path, clock, retention=Retention(time_s=None, bytes=5_000))
    fill(p, clock, 100)
    p.enforce_retention(now_ms(clock))
    assert 5_000 - 2_000 <= p.size_bytes < 5_000 + 2_000
    closed = p.log.closed_segments()
    assert p.size_bytes - closed[0].size < 5_000
    p.close()


def test_no_retention_on_a_compact_only_topic(tmp_path: Path) -> None:
    clock = ManualClock()
    p = make(tmp_path, clock, compact=True, delete=False,
             retention=Retention(time_s=1.0, bytes=None))
    fill(p, clock, 50)
    assert p.enforce_retention(now_ms(clock)) == 0
    p.close()


def latest_by_key(wal: SegmentedLog) -> dict[bytes | None, tuple[int, bytes | None]]:
    out = {}
    for r in wal.read(wal.start_offset, max_records=100_000):
        out[r.key] = (r.offset, r.value)
    return out


def test_compaction_keeps_the_latest_per_key_and_offsets(tmp_path: Path) -> None:
    clock = ManualClock()
    wal = SegmentedLog(tmp_path / "c", clock=clock, fsync=Fsync.NEVER, segment_bytes=2_000)
    for i in range(200):
        wal.append([(b"k%d" % (i % 10), b"%d" % i + b"." * 100, (), now_ms(clock))])
    expect = latest_by_key(wal)
    before = wal.size_bytes
    result = compact(wal, now_ms=now_ms(clock), delete_retention_ms=DAY_MS)
    assert result.records_removed > 150
    assert wal.size_bytes < before / 3
    got = wal.read(0, max_records=1000)
    assert latest_by_key(wal) == expect
    offsets = [r.offset for r in got]
    assert offsets == sorted(offsets) and offsets[-1] == 199
    assert wal.end_offset == 200 and wal.start_offset == 0
    wal.append([(b"new", b"x", (), 1)])
    assert wal.read(200)[0].offset == 200
    wal.close()
    again = SegmentedLog(tmp_path / "c", clock=clock, fsync=Fsync.NEVER, segment_bytes=2_000)
    assert latest_by_key(again) == {**expect, b"new": (200, b"x")}
    assert again.end_offset == 201
    again.close()


def test_tombstones_go_after_the_delete_retention(tmp_path: Path) -> None:
    clock = ManualClock()
    wal = SegmentedLog(tmp_path / "c", clock=clock, fsync=Fsync.NEVER, segment_bytes=1_000)
    wal.append([(b"gone", b"v" * 50, (), now_ms(clock))])
    wal.append([(b"gone", None, (), now_ms(clock))])
    for i in range(40):
        wal.append([(b"k%d" % i, b"v" * 50, (), now_ms(clock))])
    compact(wal, now_ms=now_ms(clock), delete_retention_ms=DAY_MS)
    recs = {r.key: r for r in wal.read(0, max_records=1000)}
    assert recs[b"gone"].value is None and recs[b"gone"].offset == 1
    clock.advance(86_401)
    compact(wal, now_ms=now_ms(clock), delete_retention_ms=DAY_MS)
    keys = [r.key for r in wal.read(0, max_records=1000)]
    assert b"gone" not in keys and len(keys) == 40
    wal.close()


def test_compaction_in_the_background_while_appending(tmp_path: Path) -> None:
    clock = ManualClock()
    wal = SegmentedLog(tmp_path / "c", clock=clock, fsync=Fsync.NEVER, segment_bytes=3_000)
    for i in range(300):
        wal.append([(b"k%d" % (i % 5), b"%d" % i, (), i)])
    cleaner = Cleaner()
    try:
        cleaner.submit(lambda: compact(wal, now_ms=10**12, delete_retention_ms=DAY_MS))
        for i in range(300, 600):
            wal.append([(b"k%d" % (i % 5), b"%d" % i, (), i)])
        assert cleaner.idle()
        assert cleaner.failures == 0 and cleaner.runs == 1
    finally:
        cleaner.close()
    got = wal.read(0, max_records=10_000)
    offsets = [r.offset for r in got]
    assert offsets == sorted(set(offsets)) and offsets[-5:] == list(range(595, 600))
    assert len(offsets) < 600 and wal.end_offset == 600
    assert {r.key: r.value for r in got} == {b"k%d" % k: b"%d" % (595 + k) for k in range(5)}
    wal.close()


def test_crash_after_the_swap_commit_is_completed_at_open(tmp_path: Path) -> None:
    clock = ManualClock()
    d = tmp_path / "c"
    wal = SegmentedLog(d, clock=clock, fsync=Fsync.NEVER, segment_bytes=1_000)
    for i in range(60):
        wal.append([(b"k%d" % (i % 3), b"v" * 40, (), i)])
    expect = latest_by_key(wal)
    wal.close()
    # simulate: the swap of the first three segments committed, old files still there;
    # what it kept all comes from the first segment (the next two lost every record)
    bases = sorted(int(p.stem) for p in d.glob("*.log"))
    reader = SegmentedLog(d, clock=clock, fsync=Fsync.NEVER)
    kept = [r for r in reader.read(0, max_records=10**4) if r.offset < bases[1]][-3:]
    reader.close()
    data, _ = encode_batch(kept[0].offset, [(r.key, r.value, r.headers, r.timestamp_ms)
                                            for r in kept],
                           offset_deltas=[r.offset - kept[0].offset for r in kept])
    (d / f"{bases[0]:020d}.{bases[3]:020d}.swap").write_bytes(data)
    (d / f"{bases[3]:020d}.log.cleaned").write_bytes(b"junk")
    again = SegmentedLog(d, clock=clock, fsync=Fsync.NEVER, segment_bytes=1_000)
    assert latest_by_key(again) == expect
    assert not list(d.glob("*.swap")) and not list(d.glob("*.cleaned"))
    assert not (d / f"{bases[1]:020d}.log").exists()
    assert not (d / f"{bases[2]:020d}.log").exists()
    assert [r.offset for r in again.read(0, max_records=3)] == [r.offset for r in kept]
    assert again.read(0, max_records=4)[3].offset == bases[3]
    again.close()


def test_an_idle_partition_ages_out_completely(tmp_path: Path) -> None:
    clock = ManualClock()
    p = make(tmp_path, clock, retention=Retention(time_s=3600.0, bytes=None))
    fill(p, clock, 5)  # five records, all in the active segment
    assert p.log.segment_count == 1
    assert p.enforce_retention(now_ms(clock)) == 0  # still within the hour
    assert p.log_start_offset == 0
    clock.advance(2 * 3600)  # no new records: the active segment alone holds old data
    assert p.enforce_retention(now_ms(clock)) == 1
    assert (p.log_start_offset, p.log_end_offset, p.size_bytes) == (5, 5, 0)
    assert p.read(5) == []
    p.append([(b"k", b"new", (), now_ms(clock))])
    assert [r.offset for r in p.read(5)] == [5]
    p.close()


def test_the_active_segment_rolls_when_its_first_record_is_older_than_seven_days(
        tmp_path: Path) -> None:
    clock = ManualClock()
    p = make(tmp_path, clock, retention=Retention(time_s=30 * 86_400.0, bytes=None))
    fill(p, clock, 3, step_s=4 * 86_400.0)  # days 0, 4, 8: first record is 12 days old
    assert p.enforce_retention(now_ms(clock)) == 0  # rolled, but within retention
    assert p.log.segment_count == 2 and p.log.closed_segments()[0].next_base == 3
    clock.advance(31 * 86_400.0)
    assert p.enforce_retention(now_ms(clock)) == 1
    assert p.log_start_offset == 3
    p.close()


def test_a_fully_compacted_tail_is_passed_over_by_read_from(tmp_path: Path) -> None:
    clock = ManualClock()
    wal = SegmentedLog(tmp_path / "c", clock=clock, fsync=Fsync.NEVER, segment_bytes=1_000)
    wal.append([(b"keep", b"v", (), now_ms(clock))])
    wal.append([(b"gone", b"v" * 50, (), now_ms(clock))])
    wal.append([(b"gone", None, (), now_ms(clock))])
    wal.roll()
    for _ in range(2):  # the tombstone goes a delete retention after its first cleaning
        compact(wal, now_ms=now_ms(clock), delete_retention_ms=DAY_MS)
        clock.advance(DAY_MS / 1000 + 1)
    assert [r.offset for r in wal.read(0)] == [0]
    assert (wal.start_offset, wal.end_offset) == (0, 3)
    assert wal.read(1) == []
    assert wal.read_from(0) == ([wal.read(0)[0]], 3)  # the scan reached the end: skip to it
    assert wal.read_from(1) == ([], 3)
    assert wal.read_from(3) == ([], 3)
    assert wal.read_from(0, max_records=1)[1] == 1  # stopped by the limit: after the record
    wal.append([(b"new", b"x", (), now_ms(clock))])
    assert [r.offset for r in wal.read_from(1)[0]] == [3]
    wal.close()


def test_a_tombstone_with_an_old_timestamp_stays_a_delete_retention_after_cleaning(
        tmp_path: Path) -> None:
    clock = ManualClock()
    clock.advance(10 * 86_400)
    old = now_ms(clock) - 5 * DAY_MS  # the producer's clock, five days behind
    wal = SegmentedLog(tmp_path / "c", clock=clock, fsync=Fsync.NEVER, segment_bytes=1_000)
    wal.append([(b"gone", b"v" * 50, (), old)])
    wal.append([(b"gone", None, (), old)])
    wal.append([(b"other", b"v", (), now_ms(clock))])
    wal.roll()
    compact(wal, now_ms=now_ms(clock), delete_retention_ms=DAY_MS)
    assert [(r.offset, r.value) for r in wal.read(0)] == [(1, None), (2, b"v")]
    wal.close()
    wal = SegmentedLog(tmp_path / "c", clock=clock, fsync=Fsync.NEVER, segment_bytes=1_000)
    clock.advance(DAY_MS / 1000 - 1)  # the horizon survives a restart
    compact(wal, now_ms=now_ms(clock), delete_retention_ms=DAY_MS)
    assert [r.offset for r in wal.read(0)] == [1, 2]
    clock.advance(1)
    compact(wal, now_ms=now_ms(clock), delete_retention_ms=DAY_MS)
    assert [r.offset for r in wal.read(0)] == [2]
    wal.close()


def test_compacted_segments_get_their_indexes_in_place_and_no_open_rebuilds_them(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Issue 9 item 5: the cleaned segment's `.index.cleaned` / `.timeindex.cleaned`
    are renamed into place as part of the swap; a reopen trusts them (no rebuild)."""
    clock = ManualClock()
    d = tmp_path / "c"
    wal = SegmentedLog(d, clock=clock, fsync=Fsync.NEVER, segment_bytes=2_000)
    for i in range(200):
        wal.append([(b"k%d" % (i % 10), b"%d" % i + b"." * 100, (), now_ms(clock))])
    expect = latest_by_key(wal)
    assert compact(wal, now_ms=now_ms(clock), delete_retention_ms=DAY_MS).records_removed > 150
    wal.close()
    assert sorted(p.name for p in d.glob("*.cleaned")) == []
    bases = sorted(p.stem for p in d.glob("*.log"))
    assert sorted(p.stem for p in d.glob("*.index")) == bases
    assert sorted(p.stem for p in d.glob("*.timeindex")) == bases
    with caplog.at_level(logging.INFO, logger="runner.log.segment"):
        again = SegmentedLog(d, clock=clock, fsync=Fsync.NEVER, segment_bytes=2_000)
    try:
        assert [r.getMessage() for r in caplog.records
                if r.getMessage().startswith("rebuilding indexes")] == []
        assert latest_by_key(again) == expect
    finally:
        again.close()
