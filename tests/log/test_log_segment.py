"""SegmentedLog: append, read, roll, recovery, indexes, group commit, idempotence."""

from __future__ import annotations

import dataclasses
import os
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runner.clock import ManualClock
from runner.errors import CorruptSegment, InvalidRequest, OffsetOutOfRange
from runner.log.record import BATCH, Fsync, LogRecord
from runner.log.segment import SegmentedLog

Opener = Callable[..., SegmentedLog]


def items(n: int, start: int = 0, size: int = 100, ts: int = 1_000) -> list[
        tuple[bytes | None, bytes | None, list[tuple[str, bytes]], int]]:
    return [(b"k%d" % i, bytes([i % 256]) * size, [], ts + i) for i in range(start, start + n)]


def test_append_returns_first_offset_and_reads_back(open_log: Opener) -> None:
    log = open_log()
    assert log.append(items(3)) == 0
    assert log.append([(None, None, [("h", b"\x00v"), ("é", b"")], 7)]) == 3
    got = log.read(0, max_records=10)
    assert [r.offset for r in got] == [0, 1, 2, 3]
    assert got[1] == LogRecord(1, 1001, b"k1", b"\x01" * 100, ())
    assert got[3] == LogRecord(3, 7, None, None, (("h", b"\x00v"), ("é", b"")))
    assert log.end_offset == 4 and log.start_offset == 0


def test_records_read_whole_batches_are_frozen_log_records(open_log: Opener) -> None:
    # the whole-batch read path builds records without the dataclass __init__
    log = open_log()
    log.append([(b"k", b"v", [], 5), (None, b"w", [("h", b"1")], 6), (b"t", None, [], 7),
                (None, None, [], 8)])
    got = log.read(0, max_records=10)
    assert got == [LogRecord(0, 5, b"k", b"v", ()), LogRecord(1, 6, None, b"w", (("h", b"1"),)),
                   LogRecord(2, 7, b"t", None, ()), LogRecord(3, 8, None, None, ())]
    assert all(type(r) is LogRecord for r in got)
    assert hash(got[0]) == hash(LogRecord(0, 5, b"k", b"v", ()))
    assert repr(got[2]) == "LogRecord(offset=2, timestamp_ms=7, key=b't', value=None, headers=())"
    assert dataclasses.replace(got[0], value=b"z") == LogRecord(0, 5, b"k", b"z", ())
    with pytest.raises(dataclasses.FrozenInstanceError, match="cannot assign to field 'value'"):
        got[0].value = b"z"  # type: ignore[misc]


def test_empty_key_and_value_differ_from_null(open_log: Opener) -> None:
    log = open_log()
    log.append([(b"", b"", [], 1), (None, b"", [], 2)])
    a, b = log.read(0)
    assert (a.key, a.value, b.key) == (b"", b"", None)


def test_read_from_the_middle_of_a_batch(open_log: Opener) -> None:
    log = open_log()
    log.append(items(10))
    assert [r.offset for r in log.read(7)] == [7, 8, 9]
    assert log.read(10) == []


def test_read_bounded_by_count_and_bytes(open_log: Opener) -> None:
    log = open_log()
    for i in range(5):
        log.append(items(10, start=i * 10))
    assert len(log.read(0, max_records=23)) == 23
    # each record: 28 bytes of header + 2-3 bytes key + 100 bytes value
    got = log.read(0, max_records=1000, max_bytes=1000)
    assert 6 <= len(got) <= 7 and [r.offset for r in got] == list(range(len(got)))
    assert len(log.read(0, max_bytes=1)) == 1  # always at least one record


def test_offset_out_of_range_says_where(open_log: Opener) -> None:
    log = open_log(segment_bytes=2000)
    for i in range(10):
        log.append(items(5, start=i * 5))
    log.delete_before(20)
    start = log.start_offset
    assert start > 0
    with pytest.raises(OffsetOutOfRange) as exc:
        log.read(start - 1)
    assert str(exc.value) == (
        f"offset {start - 1} is below the log start (log start {start}, log end 50)")
    assert (exc.value.log_start, exc.value.log_end) == (start, 50)
    with pytest.raises(OffsetOutOfRange, match="offset 51 is above the log end"):
        log.read(51)


def test_segments_roll_and_are_named_by_base_offset(open_log: Opener, tmp_path: Path) -> None:
    log = open_log(segment_bytes=1000)
    for i in range(20):
        log.append(items(2, start=i * 2))
    names = sorted(p.name for p in (tmp_path / "log").glob("*.log"))
    assert names[0] == "00000000000000000000.log"
    assert len(names) == log.segment_count > 3
    bases = [int(n.split(".")[0]) for n in names]
    assert bases == sorted(bases)
    for base in bases:
        assert (tmp_path / "log" / f"{base:020d}.index").exists()
        assert (tmp_path / "log" / f"{base:020d}.timeindex").exists()
    assert [r.offset for r in log.read(0, max_records=100)] == list(range(40))
    assert log.size_bytes == sum(p.stat().st_size for p in (tmp_path / "log").glob("*.log"))


def test_offsets_never_repeat_across_restarts_even_after_deleting(
        open_log: Opener, tmp_path: Path) -> None:
    log = open_log(segment_bytes=500)
    for i in range(10):
        log.append(items(2, start=i * 2))
    log.delete_before(10**9)
    end = log.end_offset
    log.close()
    again = open_log(segment_bytes=500)
    assert again.end_offset == end == 20
    assert again.append(items(1)) == 20


def test_offset_for_timestamp(open_log: Opener) -> None:
    log = open_log(segment_bytes=3000, index_interval_bytes=200)
    for i in range(30):
        log.append(items(5, start=i * 5, ts=10_000 + i * 100))
    # batch i has timestamps 10000+i*100+5i .. +4
    assert log.offset_for_timestamp(0) == 0
    assert log.offset_for_timestamp(10_000 + 7 * 100 + 35) == 35
    assert log.offset_for_timestamp(10_000 + 7 * 100 + 36) == 36
    assert log.offset_for_timestamp(10_000 + 7 * 100 + 40) == 40
    assert log.offset_for_timestamp(99_999_999) == 150


def test_delete_before_keeps_the_active_segment(open_log: Opener) -> None:
    log = open_log(segment_bytes=1000)
    for i in range(20):
        log.append(items(2, start=i * 2))
    log.delete_before(10**9)
    assert log.segment_count == 1
    assert log.start_offset <= 39
    assert [r.offset for r in log.read(log.start_offset)][-1] == 39


def _segment_files(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "log").glob("*.log"))


def test_torn_tail_is_truncated(open_log: Opener, tmp_path: Path) -> None:
    log = open_log()
    log.append(items(3))
    log.append(items(3, start=3))
    good = log.size_bytes
    log.close()
    with open(_segment_files(tmp_path)[-1], "ab") as f:
        f.write(b"\x05" * 40)  # a partial batch header
    again = open_log()
    assert again.end_offset == 6 and again.size_bytes == good
    assert again.append(items(1)) == 6
    assert [r.offset for r in again.read(0)] == list(range(7))


def test_half_written_last_batch_is_truncated(open_log: Opener, tmp_path: Path) -> None:
    log = open_log()
    log.append(items(3))
    first = log.size_bytes
    log.append(items(3, start=3))
    log.close()
    path = _segment_files(tmp_path)[-1]
    os.truncate(path, path.stat().st_size - 10)
    again = open_log()
    assert again.end_offset == 3 and again.size_bytes == first


def test_bit_flip_in_last_batch_is_truncated(open_log: Opener, tmp_path: Path) -> None:
    log = open_log()
    log.append(items(3))
    first = log.size_bytes
    log.append(items(3, start=3))
    log.close()
    path = _segment_files(tmp_path)[-1]
    data = bytearray(path.read_bytes())
    data[first + BATCH.size + 40] ^= 0x10
    path.write_bytes(bytes(data))
    again = open_log()
    assert again.end_offset == 3
    assert path.stat().st_size == first


def test_bit_flip_in_the_middle_raises_with_path_and_position(
        open_log: Opener, tmp_path: Path) -> None:
    log = open_log()
    log.append(items(3))
    first = log.size_bytes
    log.append(items(3, start=3))
    log.append(items(3, start=6))
    log.close()
    path = _segment_files(tmp_path)[-1]
    data = bytearray(path.read_bytes())
    data[first + BATCH.size + 40] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptSegment) as exc:
        open_log()
    assert exc.value.path == str(path) and exc.value.position == first
    assert str(exc.value) == f"corrupt batch in {path} at byte {first}"


def test_corrupt_length_in_the_middle_is_found_through_the_index(
        open_log: Opener, tmp_path: Path) -> None:
    log = open_log(index_interval_bytes=1)
    for i in range(4):
        log.append(items(3, start=i * 3))
    log.close()
    path = _segment_files(tmp_path)[-1]
    data = bytearray(path.read_bytes())
    data[9] ^= 0x7F  # the first batch's length field
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptSegment) as exc:
        open_log(index_interval_bytes=1)
    assert exc.value.position == 0


def test_bit_flip_in_a_closed_segment_is_reported_on_read(
        open_log: Opener, tmp_path: Path) -> None:
    log = open_log(segment_bytes=1000)
    for i in range(10):
        log.append(items(2, start=i * 2))
    log.close()
    path = _segment_files(tmp_path)[0]
    data = bytearray(path.read_bytes())
    data[BATCH.size + 50] ^= 0xFF
    path.write_bytes(bytes(data))
    again = open_log(segment_bytes=1000)
    with pytest.raises(CorruptSegment) as exc:
        again.read(0)
    assert (exc.value.path, exc.value.position) == (str(path), 0)


def test_missing_or_damaged_indexes_are_rebuilt(open_log: Opener, tmp_path: Path) -> None:
    log = open_log(segment_bytes=1500, index_interval_bytes=100)
    for i in range(30):
        log.append(items(2, start=i * 2, ts=5000 + i * 10))
    expect = log.read(0, max_records=100)
    ts_answer = log.offset_for_timestamp(5000 + 150)
    log.close()
    indexes = sorted((tmp_path / "log").glob("*.index"))
    indexes[0].unlink()
    indexes[1].write_bytes(b"\x01\x02\x03")
    sorted((tmp_path / "log").glob("*.timeindex"))[2].unlink()
    again = open_log(segment_bytes=1500, index_interval_bytes=100)
    assert again.read(0, max_records=100) == expect
    assert again.read(33, max_records=1)[0].offset == 33
    assert again.offset_for_timestamp(5000 + 150) == ts_answer
    assert indexes[0].exists() and indexes[1].stat().st_size % 8 == 0


def test_sixteen_threads_group_commit_contiguous_offsets(open_log: Opener) -> None:
    log = open_log(fsync=Fsync.ALWAYS, segment_bytes=200_000)
    firsts: list[int] = []
    lock = threading.Lock()

    def work(t: int) -> None:
        for j in range(20):
            off = log.append([(b"t%d" % t, b"%d" % j, [], j)] * 5)
            with lock:
                firsts.append(off)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(16)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert sorted(firsts) == list(range(0, 16 * 20 * 5, 5))
    assert log.unsynced_bytes == 0
    assert [r.offset for r in log.read(0, max_records=10_000)] == list(range(1600))


def test_interval_policy_syncs_when_the_interval_passed(
        open_log: Opener, clock: ManualClock) -> None:
    log = open_log(fsync=Fsync.INTERVAL, fsync_interval_ms=5)
    log.append(items(1))
    assert log.unsynced_bytes > 0
    clock.advance(0.001)
    assert log.maybe_sync() is False
    clock.advance(0.005)
    assert log.maybe_sync() is True and log.unsynced_bytes == 0
    assert log.maybe_sync() is False


def test_producer_retry_is_stored_once_and_survives_restart(open_log: Opener) -> None:
    log = open_log(segment_bytes=600)
    assert log.append(items(2), producer_id=7, sequence=0) == 0
    assert log.append(items(2, start=2), producer_id=7, sequence=2) == 2
    assert log.append(items(2), producer_id=7, sequence=0) == 0  # retry
    assert log.append(items(1), producer_id=8, sequence=0) == 4  # another producer
    for i in range(5):
        log.append(items(2, start=10 + i * 2))  # roll a few segments
    end = log.end_offset
    log.close()
    again = open_log(segment_bytes=600)
    assert again.append(items(2, start=2), producer_id=7, sequence=2) == 2
    assert again.end_offset == end
    assert again.append(items(1), producer_id=7, sequence=4) == end


def test_append_of_nothing_is_refused(open_log: Opener) -> None:
    with pytest.raises(ValueError, match="append needs at least one record"):
        open_log().append([])


record_st = st.tuples(
    st.none() | st.binary(max_size=50),
    st.none() | st.binary(max_size=300),
    st.lists(st.tuples(st.text(max_size=10), st.binary(max_size=20)), max_size=3),
    st.integers(min_value=0, max_value=2**62),
)


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batches=st.lists(st.lists(record_st, min_size=1, max_size=8), min_size=1, max_size=8))
def test_what_is_appended_reads_back_the_same(tmp_path: Path, batches: list[list[
        tuple[bytes | None, bytes | None, list[tuple[str, bytes]], int]]]) -> None:
    directory = tmp_path / f"h{len(list(tmp_path.iterdir()))}"
    log = SegmentedLog(directory, clock=ManualClock(), fsync=Fsync.NEVER, segment_bytes=700)
    try:
        flat = [r for b in batches for r in b]
        for b in batches:
            log.append(b)
        log.close()
        log = SegmentedLog(directory, clock=ManualClock(), fsync=Fsync.NEVER, segment_bytes=700)
        got = log.read(0, max_records=10_000, max_bytes=10**9)
        assert [(r.key, r.value, list(r.headers), r.timestamp_ms) for r in got] == flat
        assert [r.offset for r in got] == list(range(len(flat)))
    finally:
        log.close()


def test_a_retry_with_new_records_is_out_of_order(open_log: Opener) -> None:
    log = open_log()
    assert log.append(items(3), producer_id=1, sequence=0) == 0
    with pytest.raises(InvalidRequest) as exc:
        log.append(items(5), producer_id=1, sequence=0)
    assert str(exc.value) == ("out of order sequence 0: expected 3 "
                              "(a retry must resend the same batch)")
    assert log.end_offset == 3
    assert log.append(items(2, start=3), producer_id=1, sequence=3) == 3


def test_producer_sequence_reuse_gaps_and_old_retries_are_refused(open_log: Opener) -> None:
    log = open_log()
    for i in range(10):  # ten batches of two: only the last 8 are remembered
        assert log.append(items(2, start=2 * i), producer_id=5, sequence=2 * i) == 2 * i
    assert log.append(items(2, start=18), producer_id=5, sequence=18) == 18  # exact retry
    assert log.append(items(2, start=4), producer_id=5, sequence=4) == 4  # still remembered
    with pytest.raises(InvalidRequest, match=r"^out of order sequence 0: expected 20 "
                       r"\(a retry must resend the same batch\)$"):
        log.append(items(2), producer_id=5, sequence=0)  # too old to know: not -1
    with pytest.raises(InvalidRequest, match=r"^out of order sequence 0: expected 20 "):
        log.append(items(3), producer_id=5, sequence=0)  # a restarted producer
    with pytest.raises(InvalidRequest, match=r"^out of order sequence 22: expected 20 "
                       r"\(sequences must not skip\)$"):
        log.append(items(1), producer_id=5, sequence=22)
    assert log.end_offset == 20
    assert log.append(items(1), producer_id=5, sequence=22, allow_gap=True) == 20
    assert log.append(items(1), producer_id=5, sequence=23) == 21
    log.close()
    again = open_log()
    assert again.append(items(1), producer_id=5, sequence=23) == 21  # after a restart too
    with pytest.raises(InvalidRequest, match="expected 24"):
        again.append(items(1), producer_id=5, sequence=0)


def test_files_of_a_half_deleted_segment_are_cleaned_up(
        open_log: Opener, tmp_path: Path) -> None:
    log = open_log()
    log.append(items(2))
    log.close()
    for name in ("00000000000000000077.index", "00000000000000000077.timeindex",
                 "00000000000000000077.snapshot", "00000000000000000000.snapshot.tmp"):
        (tmp_path / "log" / name).write_bytes(b"x")
    again = open_log()
    assert again.end_offset == 2
    assert sorted(p.name for p in (tmp_path / "log").iterdir()) == [
        "00000000000000000000.index", "00000000000000000000.log",
        "00000000000000000000.timeindex", "synced.checkpoint"]


def test_readers_see_only_synced_records_under_fsync_always(
        open_log: Opener, monkeypatch: pytest.MonkeyPatch) -> None:
    log = open_log(fsync=Fsync.ALWAYS)
    log.append(items(2))
    assert log.high_watermark == log.end_offset == 2
    release = threading.Event()
    real = os.fdatasync

    def slow_sync(fd: int) -> None:
        release.wait(10)
        real(fd)

    monkeypatch.setattr(os, "fdatasync", slow_sync)
    writer = threading.Thread(target=log.append, args=(items(3, start=2),))
    writer.start()
    deadline = 0
    while log.end_offset != 5 and deadline < 1000:
        threading.Event().wait(0.005)
        deadline += 1
    assert log.end_offset == 5 and log.high_watermark == 2
    assert [r.offset for r in log.read(0)] == [0, 1]  # written, not yet durable
    release.set()
    writer.join()
    assert log.high_watermark == 5
    assert [r.offset for r in log.read(0)] == [0, 1, 2, 3, 4]


def test_group_commit_shares_fsyncs(open_log: Opener, monkeypatch: pytest.MonkeyPatch) -> None:
    log = open_log(fsync=Fsync.ALWAYS)
    calls = []
    real = os.fdatasync

    def slow_sync(fd: int) -> None:
        calls.append(fd)
        threading.Event().wait(0.002)  # a disk that takes 2 ms per flush
        real(fd)

    monkeypatch.setattr(os, "fdatasync", slow_sync)

    def work() -> None:
        for _ in range(10):
            log.append(items(2))

    threads = [threading.Thread(target=work) for _ in range(16)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert log.end_offset == 320 and log.unsynced_bytes == 0
    assert len(calls) <= 160 / 2  # many appends per fsync


# ---------------------------------------------------------------- torn tail vs bit flip
# The header fields of `BATCH` as (name, first byte, size); see runner/log/record.py.
HEADER_FIELDS = [("base_offset", 0, 8), ("batch_length", 8, 4), ("crc", 12, 4),
                 ("magic", 16, 1), ("attributes", 17, 1), ("last_offset_delta", 18, 4),
                 ("count", 22, 4), ("first_timestamp", 26, 8), ("max_timestamp", 34, 8),
                 ("producer_id", 42, 8), ("base_sequence", 50, 8)]


def _ten_single_batches(open_log: Opener, tmp_path: Path) -> tuple[Path, list[int]]:
    """Ten one-record batches with default settings (index interval 4096: one entry)."""
    log = open_log(fsync=Fsync.ALWAYS)
    positions = []
    for i in range(10):
        positions.append(log.size_bytes)
        log.append(items(1, start=i))
    log.close()
    return _segment_files(tmp_path)[-1], positions


def test_flipped_length_bit_with_default_settings_is_corruption_not_a_torn_tail(
        open_log: Opener, tmp_path: Path) -> None:
    path, _positions = _ten_single_batches(open_log, tmp_path)
    size = path.stat().st_size
    data = bytearray(path.read_bytes())
    data[9] ^= 1 << 6  # the reviewer's repro: bit 6 of the first batch's length
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptSegment) as exc:
        open_log(fsync=Fsync.ALWAYS)
    assert str(exc.value) == f"corrupt batch in {path} at byte 0"
    assert (exc.value.path, exc.value.position) == (str(path), 0)
    assert path.stat().st_size == size  # nothing truncated


@pytest.mark.parametrize("which", [0, 4])
@pytest.mark.parametrize(("field", "start", "width"), HEADER_FIELDS,
                         ids=[f[0] for f in HEADER_FIELDS])
def test_bit_flips_in_every_header_field_are_reported(
        open_log: Opener, tmp_path: Path, which: int, field: str, start: int,
        width: int) -> None:
    path, positions = _ten_single_batches(open_log, tmp_path)
    size = path.stat().st_size
    for bit in (0, 8 * width - 2):  # a low bit and a high one of the field
        data = bytearray(path.read_bytes())
        data[positions[which] + start + bit // 8] ^= 1 << (bit % 8)
        path.write_bytes(bytes(data))
        with pytest.raises(CorruptSegment) as exc:
            open_log(fsync=Fsync.ALWAYS)
        assert (exc.value.path, exc.value.position) == (str(path), positions[which]), field
        assert path.stat().st_size == size
        data[positions[which] + start + bit // 8] ^= 1 << (bit % 8)
        path.write_bytes(bytes(data))
    assert open_log(fsync=Fsync.ALWAYS).end_offset == 10


def test_zero_filled_tail_is_a_torn_tail(open_log: Opener, tmp_path: Path) -> None:
    path, _positions = _ten_single_batches(open_log, tmp_path)
    size = path.stat().st_size
    with open(path, "ab") as f:
        f.write(bytes(4096))  # the file grew but the data never reached the disk
    again = open_log(fsync=Fsync.ALWAYS)
    assert again.end_offset == 10 and path.stat().st_size == size


def test_last_batch_cut_short_with_default_settings_is_truncated(
        open_log: Opener, tmp_path: Path) -> None:
    path, positions = _ten_single_batches(open_log, tmp_path)
    os.truncate(path, positions[9] + 30)
    again = open_log(fsync=Fsync.ALWAYS)
    assert again.end_offset == 9 and path.stat().st_size == positions[9]
    assert [r.value for r in again.read(0, max_records=20)] == [
        bytes([i]) * 100 for i in range(9)]


def test_the_read_cache_stays_within_its_bound(open_log: Opener) -> None:
    log = open_log(segment_bytes=100_000, cache_bytes=128 * 1024)
    for i in range(100):
        log.append(items(20, start=i * 20, size=500))  # about 1 MB in 11 segments
    offset = 0
    while offset < log.end_offset:
        recs = log.read(offset, max_records=20)
        offset = recs[-1].offset + 1
        assert 0 < log.cache_size <= 128 * 1024
    assert offset == 2000
    log.delete_before(log.end_offset)
    assert log.cache_size == 0
