"""The first record's timestamp at the log start: cheap, and moved by retention and compaction."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from runner.clock import ManualClock, now_ms
from runner.log.compaction import compact
from runner.log.partition import Partition
from runner.log.record import Fsync
from runner.log.segment import SegmentedLog
from runner.topology.model import Retention, Topic

DAY_MS = 86_400_000


def test_it_is_the_first_records_own_timestamp_not_the_smallest(
    open_log: Callable[..., SegmentedLog], tmp_path: Path,
) -> None:
    log = open_log(segment_bytes=2_000)
    assert log.first_timestamp() is None  # empty: nothing to date
    log.append([(b"a", b"1", (), 5_000), (b"b", b"2", (), 1_000)])  # out of order on purpose
    assert log.first_timestamp() == 5_000
    for i in range(40):  # several segments
        log.append([(b"k", b"v" * 100, (), 9_000 + i)])
    assert log.segment_count > 2
    assert log.first_timestamp() == 5_000
    log.close()
    again = open_log(segment_bytes=2_000)  # closed segments open from their indexes
    assert again.first_timestamp() == 5_000


def test_retention_moves_it_to_the_first_record_of_the_new_log_start(tmp_path: Path) -> None:
    clock = ManualClock()
    topic = Topic(name="t", segment_bytes=2_000, retention=Retention(time_s=3600.0, bytes=None))
    p = Partition(tmp_path / "t-0", topic, 0, fsync=Fsync.NEVER, clock=clock)
    try:
        first_ms = now_ms(clock)
        for i in range(100):  # a record a minute, ~15 per segment
            p.append([(b"k%d" % i, b"v" * 100, (), now_ms(clock))])
            clock.advance(60.0)
        assert p.oldest_timestamp_ms == first_ms
        assert p.enforce_retention(now_ms(clock)) > 0
        head = p.read(p.log_start_offset, max_records=1)[0]
        assert head.offset == p.log_start_offset > 0
        assert p.oldest_timestamp_ms == head.timestamp_ms == first_ms + head.offset * 60_000
        clock.advance(10 * 3600)
        p.enforce_retention(now_ms(clock))  # everything expired: start reaches the end
        assert p.log_start_offset == p.log_end_offset == 100
        assert p.oldest_timestamp_ms is None
    finally:
        p.close()


def test_compaction_keeps_the_record_timestamp_not_the_delete_horizon(
    open_log: Callable[..., SegmentedLog], clock: ManualClock,
) -> None:
    log = open_log(segment_bytes=2_000)
    start = now_ms(clock)
    log.append([(b"gone", None, (), start)])  # a tombstone first: its batch gets a horizon
    for i in range(60):
        log.append([(b"k%d" % (i % 5), b"v" * 100, (), start + 1_000 * (i + 1))])
    clock.advance(60.0)
    compact(log, now_ms=now_ms(clock), delete_retention_ms=DAY_MS)
    head = log.read(log.start_offset, max_records=1)[0]
    assert head.key == b"gone"  # kept within the delete retention, with a horizon now
    assert log.first_timestamp() == head.timestamp_ms == start
