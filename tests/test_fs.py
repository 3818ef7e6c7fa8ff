"""The file-system seam: its durable helpers survive a power cut; the simulated disk
behaves as the seam's contract says (what is synced survives, nothing else)."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from runner import fs
from tests.faultfs import PAGE, PowerCut, SimDisk

D = Path("/data")


def test_a_created_file_without_a_dir_sync_is_lost_on_power_cut() -> None:
    disk = SimDisk()
    fs.make_dirs(disk, D)
    fd = disk.open(D / "raw", create=True)
    disk.pwrite(fd, b"x", 0)
    disk.sync(fd)  # the bytes, not the name
    assert not disk.crash().exists(D / "raw")


def test_the_durable_helpers_survive_a_power_cut() -> None:
    disk = SimDisk()
    fs.make_dirs(disk, D / "a" / "b")
    fd = fs.create(disk, D / "a" / "b" / "f")
    fs.write_all(disk, fd, b"hello", 0)
    disk.sync(fd)
    fs.write_atomic(disk, D / "snap", b"v1")
    fs.write_atomic(disk, D / "snap", b"v2")
    fs.write_atomic(disk, D / "gone", b"x")
    assert fs.remove(disk, [D / "gone", D / "never"]) == 1
    fs.make_dirs(disk, D / "tree" / "sub")
    fs.write_atomic(disk, D / "tree" / "sub" / "f", b"x")
    assert fs.remove_tree(disk, D / "tree")
    assert not fs.remove_tree(disk, D / "tree")
    fs.write_atomic(disk, D / "r1", b"moved")
    fs.rename(disk, D / "r1", D / "a" / "r2")
    after = disk.crash()
    assert fs.read_bytes(after, D / "a" / "b" / "f") == b"hello"
    assert fs.read_bytes(after, D / "snap") == b"v2"
    assert not after.exists(D / "gone")
    assert not after.exists(D / "tree")
    assert not after.exists(D / "r1")
    assert fs.read_bytes(after, D / "a" / "r2") == b"moved"
    assert sorted(after.listdir(D)) == ["a", "snap"]


def test_write_atomic_at_every_cut_point_leaves_the_old_or_the_new_file() -> None:
    full = SimDisk()
    fs.make_dirs(full, D)
    fs.write_atomic(full, D / "f", b"old")
    start = full.changes
    fs.write_atomic(full, D / "f", b"new")
    cuts = range(start + 1, full.changes + 1)
    assert len(cuts) >= 5
    for cut in cuts:
        disk = SimDisk(cut_at=cut)
        fs.make_dirs(disk, D)
        fs.write_atomic(disk, D / "f", b"old")
        with pytest.raises(PowerCut):
            fs.write_atomic(disk, D / "f", b"new")
        for torn in (False, True):
            for seed in range(4):
                got = fs.read_bytes(disk.crash(torn=torn, seed=seed), D / "f")
                assert got in (b"old", b"new"), (cut, torn, seed)


def test_write_atomic_on_a_full_disk_keeps_the_old_file() -> None:
    disk = SimDisk(capacity=2 * PAGE)
    fs.make_dirs(disk, D)
    fs.write_atomic(disk, D / "f", b"old")
    with pytest.raises(OSError) as info:
        fs.write_atomic(disk, D / "f", b"n" * (3 * PAGE))
    assert info.value.errno == errno.ENOSPC
    assert fs.read_bytes(disk, D / "f") == b"old"
    assert disk.listdir(D) == ["f"]


def test_a_failed_sync_loses_the_dirty_pages_even_after_a_later_good_sync() -> None:
    disk = SimDisk(fail_sync_at=2)
    fs.make_dirs(disk, D)
    fd = fs.create(disk, D / "f")
    fs.write_all(disk, fd, b"a" * PAGE, 0)
    disk.sync(fd)
    fs.write_all(disk, fd, b"b" * PAGE, PAGE)
    with pytest.raises(OSError):
        disk.sync(fd)
    disk.sync(fd)  # "succeeds", but the kernel dropped page 1
    assert disk.pread(fd, 2 * PAGE, 0) == b"a" * PAGE + b"b" * PAGE  # the cache still has it
    assert fs.read_bytes(disk.crash(), D / "f")[PAGE:] != b"b" * PAGE


def test_a_short_write_near_a_full_disk_then_enospc() -> None:
    disk = SimDisk(capacity=2 * PAGE)
    fs.make_dirs(disk, D)
    fd = fs.create(disk, D / "f")
    assert disk.pwrite(fd, b"x" * (3 * PAGE), 0) == 2 * PAGE
    with pytest.raises(OSError) as info:
        disk.pwrite(fd, b"x", 2 * PAGE)
    assert info.value.errno == errno.ENOSPC
    disk.capacity = None  # space freed
    assert disk.pwrite(fd, b"x", 2 * PAGE) == 1


def test_the_local_file_system_does_the_same(tmp_path: Path) -> None:
    fs.make_dirs(fs.LOCAL, tmp_path / "a" / "b")
    fs.write_atomic(fs.LOCAL, tmp_path / "a" / "f", b"data")
    assert fs.read_bytes(fs.LOCAL, tmp_path / "a" / "f") == b"data"
    fd = fs.create(fs.LOCAL, tmp_path / "a" / "b" / "g")
    fs.write_all(fs.LOCAL, fd, b"12345", 0)
    fs.LOCAL.sync(fd)
    fs.LOCAL.close(fd)
    assert (tmp_path / "a" / "b" / "g").read_bytes() == b"12345"
    assert fs.remove(fs.LOCAL, [tmp_path / "a" / "f"]) == 1
    assert fs.remove_tree(fs.LOCAL, tmp_path / "a")
    assert not (tmp_path / "a").exists()
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(NotADirectoryError):
        fs.remove_tree(fs.LOCAL, tmp_path / "file")


# ------------------------------------------------------------ asynchronous fsyncs
def test_the_event_loops_syncer_is_linux_aio_on_the_real_disk_and_a_disks_own_elsewhere(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    import asyncio
    import logging
    import os
    import sys
    from typing import Any

    class Wrapper:  # a test file system that forwards to the real one
        def __getattr__(self, name: str) -> Any:
            return getattr(fs.LOCAL, name)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        real = fs.async_syncer(fs.LOCAL, loop)
        assert isinstance(real, fs.LinuxAioSyncer)
        # an fdatasync through it ends on the loop, with None
        fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT, 0o644)
        os.pwrite(fd, b"x" * 100, 0)
        ended: asyncio.Future[BaseException | None] = loop.create_future()
        real.submit(fd, ended.set_result)
        assert not ended.done()  # never from within submit
        assert await asyncio.wait_for(ended, 10) is None
        # one on a descriptor that is not open: refused at once (EBADF), no end
        os.close(fd)
        with pytest.raises(OSError):
            real.submit(fd, ended.set_result)
        real.close()
        # a wrapper does not borrow the real disk's: its own `sync` would be bypassed
        assert fs.async_syncer(Wrapper(), loop) is None  # type: ignore[arg-type]
        disk = SimDisk()
        assert fs.async_syncer(disk, loop) is disk.syncers[-1]
        # a kernel (or sandbox) refusing io_setup: caio raises SystemError; none
        import caio.linux_aio

        def refused(max_requests: int) -> None:
            raise SystemError("Function not implemented")

        with monkeypatch.context() as patch:
            patch.setattr(caio.linux_aio, "Context", refused)
            with caplog.at_level(logging.INFO, logger="runner.fs"):
                assert fs.async_syncer(fs.LOCAL, loop) is None
        assert "no asynchronous fdatasync (Function not implemented)" in caplog.text
        # without the caio library: none (a thread syncs), and the log says why
        monkeypatch.setitem(sys.modules, "caio.linux_aio", None)
        with caplog.at_level(logging.INFO, logger="runner.fs"):
            assert fs.async_syncer(fs.LOCAL, loop) is None
        assert caplog.text.count("no asynchronous fdatasync") == 2

    asyncio.run(main())
