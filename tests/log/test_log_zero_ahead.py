"""Zeros written ahead of the appends (`SegmentedLog.zero_ahead`, Fsync.ALWAYS): the
active segment's file stays longer than its batches, so a round's fdatasync has no
file length to commit; rolls and closes cut the zeros off, recovery takes zeros after
the last batch for unwritten space (no warning), and everything else it did stays.
Real files on disk, and the simulated disk for power cuts and a full disk."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from runner.clock import ManualClock
from runner.log.logsegment import segment_name
from runner.log.record import Fsync, encode_batch
from runner.log.segment import ZERO_AHEAD, SegmentedLog
from tests.faultfs import SimDisk

TORN = "truncating torn tail"
ZEROS = "zeros written ahead"


def _open(directory: Path, fsync: Fsync = Fsync.ALWAYS, **kw: object) -> SegmentedLog:
    return SegmentedLog(directory, fsync=fsync, clock=ManualClock(), **kw)  # type: ignore[arg-type]


def _rec(i: int) -> tuple[bytes, bytes, tuple[()], int]:
    return (f"k{i}".encode(), f"value-{i}".encode() * 5, (), 1000 + i)


def _file(directory: Path, base: int = 0) -> Path:
    return directory / f"{segment_name(base)}.log"


def _abandon(log: SegmentedLog) -> None:
    """A crash of the log's owner: its files are closed, nothing of `close` runs."""
    for seg in log._segments:  # noqa: SLF001
        seg.close()


def _crash_after(directory: Path, n: int) -> int:
    """n records appended, then the owner crashes; the log's size in bytes."""
    log = _open(directory)
    for i in range(n):
        log.append([_rec(i)])
    assert _file(directory).stat().st_size > log.size_bytes  # zeros ahead on disk
    end = log.size_bytes
    _abandon(log)
    return end


def _reopened(directory: Path, caplog: pytest.LogCaptureFixture) -> SegmentedLog:
    """The log recovered from `directory`, what recovery logged in `caplog`."""
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="runner.log.segment"):
        return _open(directory)


def _values(log: SegmentedLog) -> list[bytes]:
    out: list[bytes] = []
    off = log.start_offset
    while off < log.end_offset:
        recs, off = log.read_from(off, max_records=1000)
        out += [r.value for r in recs]
    return out


def test_appends_under_fsync_always_land_in_zeros_written_ahead(tmp_path: Path) -> None:
    log = _open(tmp_path)
    try:
        log.append([_rec(0)])
        path = _file(tmp_path)
        length = path.stat().st_size
        assert length == log.size_bytes + ZERO_AHEAD
        for i in range(1, 50):
            log.append([_rec(i)])
            # the file's length did not change: the fdatasync had no length to commit
            assert path.stat().st_size == length
        data = path.read_bytes()
        assert data[log.size_bytes:] == bytes(length - log.size_bytes)
        assert _values(log) == [_rec(i)[1] for i in range(50)]
    finally:
        log.close()


@pytest.mark.parametrize("fsync", [Fsync.INTERVAL, Fsync.NEVER])
def test_other_fsync_policies_write_no_zeros(tmp_path: Path, fsync: Fsync) -> None:
    log = _open(tmp_path, fsync)
    try:
        for i in range(20):
            log.append([_rec(i)])
        assert _file(tmp_path).stat().st_size == log.size_bytes
    finally:
        log.close()


def test_a_close_cuts_the_zeros_off(tmp_path: Path) -> None:
    log = _open(tmp_path)
    for i in range(10):
        log.append([_rec(i)])
    size = log.size_bytes
    log.close()
    assert _file(tmp_path).stat().st_size == size
    again = _open(tmp_path)
    try:
        assert _values(again) == [_rec(i)[1] for i in range(10)]
    finally:
        again.close()


def test_zeros_stop_at_the_segment_limit_and_a_roll_leaves_the_closed_segment_exact(
        tmp_path: Path) -> None:
    log = _open(tmp_path, segment_bytes=4096, index_interval_bytes=200)
    try:
        for i in range(120):
            log.append([_rec(i)])
            for seg in log.closed_segments():
                assert _file(tmp_path, seg.base).stat().st_size == seg.size
            assert _file(tmp_path, log.closed_segments()[-1].next_base
                         if log.closed_segments() else 0).stat().st_size <= 4096
        assert log.segment_count > 3
    finally:
        log.close()
    again = _open(tmp_path, segment_bytes=4096, index_interval_bytes=200)
    try:
        assert _values(again) == [_rec(i)[1] for i in range(120)]
    finally:
        again.close()


def test_recovery_after_a_crash_cuts_the_zeros_without_a_warning(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # a crash: the log is never closed (its zeros stay on disk, as after kill -9)
    _crash_after(tmp_path, 30)
    again = _reopened(tmp_path, caplog)
    try:
        messages = [r.getMessage() for r in caplog.records]
        assert any(ZEROS in m for m in messages), messages
        assert not any(r.levelno >= logging.WARNING for r in caplog.records), messages
        assert _values(again) == [_rec(i)[1] for i in range(30)]
        again.append([_rec(30)])  # and it writes zeros ahead again
        assert _file(tmp_path).stat().st_size == again.size_bytes + ZERO_AHEAD
    finally:
        again.close()


def test_bytes_written_over_the_zeros_after_the_last_fsync_are_a_torn_tail(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    end = _crash_after(tmp_path, 5)
    fd = os.open(_file(tmp_path), os.O_RDWR)
    try:  # half a batch that never got its fsync, in the zeros
        os.pwrite(fd, b"\x00\x00\x00\x00\x00\x00\x00\x05\x00\x00\x01\x00garbage", end)
    finally:
        os.close(fd)
    again = _reopened(tmp_path, caplog)
    try:
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert any(TORN in m and f"at byte {end}" in m for m in warnings), warnings
        assert _values(again) == [_rec(i)[1] for i in range(5)]
    finally:
        again.close()


def test_zeros_where_synced_batches_were_are_not_taken_for_zeros_written_ahead(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    log = _open(tmp_path)
    for i in range(5):
        log.append([_rec(i)])
    before_last = log.size_bytes
    log.append([_rec(5)])
    log.close()  # the checkpoint says every batch is synced
    path = _file(tmp_path)
    data = bytearray(path.read_bytes())
    data[before_last:] = bytes(len(data) - before_last)  # the last synced batch lost
    path.write_bytes(bytes(data))
    again = _reopened(tmp_path, caplog)
    try:
        messages = [r.getMessage() for r in caplog.records]
        assert any(TORN in m for m in messages), messages
        assert not any(ZEROS in m for m in messages), messages
        assert _values(again) == [_rec(i)[1] for i in range(5)]
    finally:
        again.close()


def test_a_power_cut_keeps_every_acknowledged_record_with_zeros_synced_ahead(
        caplog: pytest.LogCaptureFixture) -> None:
    d = Path("/data/log")
    disk = SimDisk()
    log = SegmentedLog(d, fsync=Fsync.ALWAYS, clock=ManualClock(), fs=disk)
    log.append([_rec(0)])
    name = f"/{segment_name(0)}.log"
    length = disk.tree(d)[name]
    assert length == log.size_bytes + ZERO_AHEAD
    for i in range(1, 41):
        log.append([_rec(i)])  # each acknowledged after its fdatasync
    assert disk.tree(d)[name] == length
    # an append whose fdatasync never came, written over the zeros
    fd = disk.open(d / name.lstrip("/"))
    data, _ = encode_batch(41, [_rec(41)])
    disk.pwrite(fd, data, log.size_bytes)
    acked = [_rec(i)[1] for i in range(41)]
    for torn, seed in ((False, 0), (True, 1), (True, 2), (True, 3), (True, 4)):
        caplog.clear()
        with caplog.at_level(logging.DEBUG, logger="runner.log.segment"):
            recovered = SegmentedLog(d, fsync=Fsync.ALWAYS, clock=ManualClock(),
                                     fs=disk.crash(torn=torn, seed=seed))
        try:
            got = _values(recovered)
            # the unsynced batch survived whole, or not at all (its page torn)
            assert got in (acked, [*acked, _rec(41)[1]]), (torn, seed)
            if not torn:
                assert got == acked
                assert any(ZEROS in r.getMessage() for r in caplog.records)
        finally:
            recovered.close()


def test_a_full_disk_stops_the_zeros_not_the_appends() -> None:
    d = Path("/data/log")
    disk = SimDisk(capacity=64 * 1024)  # room for the batches, not for 256 KiB of zeros
    log = SegmentedLog(d, fsync=Fsync.ALWAYS, clock=ManualClock(), fs=disk)
    cuts: list[int] = []
    truncate = disk.truncate

    def counted(fd: int, size: int) -> None:
        cuts.append(size)
        truncate(fd, size)

    disk.truncate = counted  # type: ignore[method-assign]
    try:
        for i in range(40):
            log.append([_rec(i)])
        assert disk.tree(d)[f"/{segment_name(0)}.log"] == log.size_bytes
        assert _values(log) == [_rec(i)[1] for i in range(40)]
        # tried once (the zeros filled the disk and were cut back), then not again:
        # each try would fill the disk for a moment
        assert len(cuts) == 1
    finally:
        log.close()


def test_the_cut_of_a_close_is_durable() -> None:
    d = Path("/data/log")
    disk = SimDisk()
    log = SegmentedLog(d, fsync=Fsync.ALWAYS, clock=ManualClock(), fs=disk)
    for i in range(5):
        log.append([_rec(i)])
    size = log.size_bytes
    log.close()
    # a power cut right after the stop: the file ends with its last batch
    assert disk.crash().tree(d)[f"/{segment_name(0)}.log"] == size
