"""The file-system seam: every file call of the engine goes through one `FileSystem`.

`FileSystem` is the raw interface (file descriptors, as `os` has them). What it
promises about power loss is what POSIX promises, and no more:

* `pwrite`/`truncate` change what later reads see; they survive a power cut
  only once `sync(fd)` (fdatasync) returned for that file;
* creating, renaming or deleting a name (`open(create=True)`, `rename`,
  `unlink`, `mkdir`, `rmdir`) survives a power cut only once `sync_dir` of the
  directory holding the name returned.

The functions below own the second rule: each returns only after its change is
durable in its directory (`make_dirs`, `create`, `rename`, `remove`,
`remove_tree`, `write_atomic`). Engine code calls them instead of the raw
calls, so no created, renamed or deleted file is left to chance.

`LOCAL` is the real file system. Tests swap in a simulated disk (see
`tests/faultfs.py`) that keeps, at a chosen "power cut", only what was synced,
or a torn version of the rest, and that can fail `sync` or run out of space on
the Nth call.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import os
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger(__name__)

__all__ = ["FileSystem", "LOCAL", "LinuxAioSyncer", "LocalFileSystem", "Syncer",
           "async_syncer", "create", "make_dirs", "read_bytes", "remove", "remove_tree",
           "rename", "write_all", "write_atomic"]


class FileSystem(Protocol):
    """Raw file calls. Nothing here makes a directory entry durable: see `sync_dir`."""

    def open(self, path: Path, *, create: bool = False, truncate: bool = False) -> int:
        """A read-write descriptor; FileNotFoundError unless `create`."""
        ...

    def close(self, fd: int) -> None: ...

    def size(self, fd: int) -> int: ...

    def pread(self, fd: int, length: int, pos: int) -> bytes: ...

    def pwrite(self, fd: int, data: bytes | memoryview, pos: int) -> int:
        """Bytes written (may be fewer than asked, e.g. on a nearly full disk)."""
        ...

    def truncate(self, fd: int, size: int) -> None: ...

    def sync(self, fd: int) -> None:
        """fdatasync: the file's bytes and size are durable on return. OSError when
        the device failed; the unsynced bytes may then be lost for good."""
        ...

    def sync_dir(self, path: Path) -> None:
        """The entries of directory `path` (creates, renames, deletes) are durable."""
        ...

    def lock(self, fd: int) -> None:
        """Take an exclusive lock for the process's life; BlockingIOError when held."""
        ...

    def exists(self, path: Path) -> bool: ...

    def is_dir(self, path: Path) -> bool: ...

    def listdir(self, path: Path) -> list[str]: ...

    def mkdir(self, path: Path) -> None:
        """One directory; FileExistsError when the name is taken."""
        ...

    def rename(self, src: Path, dst: Path) -> None:
        """Atomically replace `dst` by `src`."""
        ...

    def unlink(self, path: Path) -> None: ...

    def rmdir(self, path: Path) -> None: ...


class LocalFileSystem:
    """The real file system (`os`)."""

    __slots__ = ()

    def open(self, path: Path, *, create: bool = False, truncate: bool = False) -> int:
        flags = os.O_RDWR | (os.O_CREAT if create else 0) | (os.O_TRUNC if truncate else 0)
        return os.open(path, flags, 0o644)

    def close(self, fd: int) -> None:
        os.close(fd)

    def size(self, fd: int) -> int:
        return os.fstat(fd).st_size

    def pread(self, fd: int, length: int, pos: int) -> bytes:
        return os.pread(fd, length, pos)

    def pwrite(self, fd: int, data: bytes | memoryview, pos: int) -> int:
        return os.pwrite(fd, data, pos)

    def truncate(self, fd: int, size: int) -> None:
        os.ftruncate(fd, size)

    def sync(self, fd: int) -> None:
        os.fdatasync(fd)

    def sync_dir(self, path: Path) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def lock(self, fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)

    def exists(self, path: Path) -> bool:
        return os.path.exists(path)

    def is_dir(self, path: Path) -> bool:
        return os.path.isdir(path) and not os.path.islink(path)

    def listdir(self, path: Path) -> list[str]:
        return os.listdir(path)

    def mkdir(self, path: Path) -> None:
        os.mkdir(path)

    def rename(self, src: Path, dst: Path) -> None:
        os.replace(src, dst)

    def unlink(self, path: Path) -> None:
        os.unlink(path)

    def rmdir(self, path: Path) -> None:
        os.rmdir(path)


LOCAL: FileSystem = LocalFileSystem()


# ---------------------------------------------------------------- asynchronous fsyncs
SyncEnded = Callable[[BaseException | None], None]


class Syncer(Protocol):
    """fdatasyncs an event loop starts and is told the end of, without a thread of
    its own waiting for them (`runner.log.commits`, "Rounds on the event loop")."""

    def submit(self, fd: int, done: SyncEnded) -> None:
        """Start an fdatasync of `fd` (what was written to it before this call);
        `done(None)`, or `done(OSError)` when the device failed, is called on the
        loop when it ended, never from within `submit`. OSError when it could not
        be started (then `done` is never called)."""
        ...

    def close(self) -> None:
        """Stop listening for ends (fdatasyncs still in flight end unreported)."""
        ...


class LinuxAioSyncer:
    """`Syncer` through Linux's native AIO (`io_submit` of IOCB_CMD_FDSYNC, through
    the `caio` library): the kernel runs the fdatasync on its own worker and
    signals its end on an eventfd the event loop watches, so no Python thread
    waits for the disk (nor for the GIL after it)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, *, max_requests: int = 512) -> None:
        from caio.linux_aio import Context  # a C extension: imported only when used

        self._loop = loop
        self._context = Context(max_requests)
        self._inflight: dict[int, Any] = {}  # id(op) -> op: alive until it ended
        self._closed = False
        loop.add_reader(self._context.fileno, self._on_ready)

    def submit(self, fd: int, done: SyncEnded) -> None:
        from caio.linux_aio import Operation

        if self._closed:
            raise OSError(errno.EBADF, "the asynchronous fdatasyncs are closed")
        op = Operation.fdsync(fd)
        key = id(op)

        def ended(result: int) -> None:
            self._inflight.pop(key, None)
            # the kernel's res is a negative errno on failure, seen unsigned here
            code = (1 << 64) - result if result >= 1 << 63 else 0
            try:
                done(OSError(code, os.strerror(code)) if code else None)
            except Exception:  # never into caio: the other ends must still be taken
                log.exception("an fdatasync's end could not be handled")

        op.set_callback(ended)
        self._inflight[key] = op
        try:
            submitted = self._context.submit(op)
        except Exception as exc:  # caio says EBADF, EINVAL... with a ValueError
            self._inflight.pop(key, None)
            raise OSError(f"cannot start an fdatasync: {exc}") from exc
        if submitted != 1:
            self._inflight.pop(key, None)
            raise OSError(errno.EAGAIN, "the fdatasync was not submitted")

    def _on_ready(self) -> None:
        with contextlib.suppress(BlockingIOError):  # ends already taken
            self._context.poll()
        while self._context.process_events():
            pass

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(Exception):  # the loop may be closed already
            self._loop.remove_reader(self._context.fileno)
        # the context (its eventfd and AIO slots) goes with the last reference: ours
        # and the operations' still in flight, whose ends nobody takes any more
        self._inflight.clear()
        del self._context


def async_syncer(fs: FileSystem, loop: asyncio.AbstractEventLoop) -> Syncer | None:
    """The `Syncer` for `fs` on `loop`, or None (then a thread syncs): Linux AIO for
    the real file system where the kernel and the `caio` library offer it; a file
    system of the tests' offers its own (`async_syncer(loop)`, one that goes
    through its `sync`), others none."""
    own = getattr(type(fs), "async_syncer", None)
    if own is not None:
        made: Syncer | None = own(fs, loop)
        return made
    if not isinstance(fs, LocalFileSystem) or not sys.platform.startswith("linux"):
        return None
    try:
        return LinuxAioSyncer(loop)
    except Exception as exc:  # no caio; io_setup or eventfd refused (caio: SystemError)
        log.info("no asynchronous fdatasync (%s): a thread runs the fsync rounds", exc)
        return None


# ---------------------------------------------------------------- durable changes
def make_dirs(fs: FileSystem, path: Path) -> None:
    """`mkdir -p`, each directory it creates durable in its parent on return."""
    missing: list[Path] = []
    p = Path(path)
    while not fs.is_dir(p):
        if fs.exists(p):
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(path))
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    for d in reversed(missing):
        try:
            fs.mkdir(d)
        except FileExistsError:
            if not fs.is_dir(d):
                raise
        fs.sync_dir(d.parent)


def create(fs: FileSystem, path: Path, *, truncate: bool = False) -> int:
    """Open `path` read-write, creating it; a new name is durable on return."""
    if fs.exists(path):
        return fs.open(path, create=True, truncate=truncate)
    fd = fs.open(path, create=True, truncate=truncate)
    try:
        fs.sync_dir(path.parent)
    except BaseException:
        fs.close(fd)
        raise
    return fd


def rename(fs: FileSystem, src: Path, dst: Path) -> None:
    """Replace `dst` by `src`, durable on return (both directories synced)."""
    fs.rename(src, dst)
    fs.sync_dir(dst.parent)
    if src.parent != dst.parent:
        fs.sync_dir(src.parent)


def remove(fs: FileSystem, paths: Iterable[Path]) -> int:
    """Delete files (missing ones are skipped), durable on return: each directory
    that lost a name is synced once. Returns how many were deleted."""
    dirs: dict[Path, None] = {}
    n = 0
    for path in paths:
        try:
            fs.unlink(path)
        except FileNotFoundError:
            continue
        dirs[path.parent] = None
        n += 1
    for d in dirs:
        fs.sync_dir(d)
    return n


def _unlink_tree(fs: FileSystem, path: Path) -> None:
    for name in fs.listdir(path):
        child = path / name
        if fs.is_dir(child):
            _unlink_tree(fs, child)
        else:
            with contextlib.suppress(FileNotFoundError):
                fs.unlink(child)
    fs.rmdir(path)


def remove_tree(fs: FileSystem, path: Path) -> bool:
    """Delete a directory and everything in it, durable on return (its parent is
    synced). False when it did not exist. A crash part-way leaves a directory
    with some files gone, never a half-deleted file."""
    if not fs.is_dir(path):
        if fs.exists(path):
            raise NotADirectoryError(errno.ENOTDIR, "not a directory", str(path))
        return False
    _unlink_tree(fs, path)
    fs.sync_dir(path.parent)
    return True


def read_bytes(fs: FileSystem, path: Path) -> bytes:
    """A whole (small) file; FileNotFoundError when missing."""
    fd = fs.open(path)
    try:
        size = fs.size(fd)
        out = bytearray()
        while len(out) < size:
            chunk = fs.pread(fd, size - len(out), len(out))
            if not chunk:
                break
            out += chunk
        return bytes(out)
    finally:
        fs.close(fd)


def write_all(fs: FileSystem, fd: int, data: bytes, pos: int) -> None:
    """pwrite until all of `data` is written (OSError, e.g. ENOSPC, when it cannot)."""
    view = memoryview(data)
    while view:
        n = fs.pwrite(fd, view, pos)
        if n <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        view = view[n:]
        pos += n


def write_atomic(fs: FileSystem, path: Path, data: bytes) -> None:
    """Replace `path` by a file holding `data`, durable on return: written to
    `<path>.tmp`, synced, renamed over `path`, the directory synced. A crash
    leaves the old file or the new one, never a mix (and maybe a stray `.tmp`).
    On failure (e.g. a full disk) the old file is untouched and the `.tmp` gone."""
    tmp = path.with_name(path.name + ".tmp")
    fd = fs.open(tmp, create=True, truncate=True)
    try:
        write_all(fs, fd, data, 0)
        fs.sync(fd)
    except BaseException:
        fs.close(fd)
        with contextlib.suppress(OSError):
            fs.unlink(tmp)
        raise
    fs.close(fd)
    rename(fs, tmp, path)
