"""A simulated disk behind `runner.fs.FileSystem`, in the spirit of SQLite's test VFS.

`SimDisk` keeps two states of every file and directory: what reads see (the
page cache) and what would survive a power cut (what `sync` / `sync_dir` made
durable). A test runs real engine code on it, then:

* `cut_at=N`: the Nth changing call (write, truncate, sync, create, rename,
  unlink, mkdir, rmdir, dir sync) loses power instead of running, and every call
  after it fails with `PowerCut` (an OSError: the engine handles it as it
  would an I/O error, and nothing it does afterwards reaches the disk);
* `crash(...)` returns a new disk holding what survived: only synced bytes and
  synced directory entries (`torn=False`), or a torn version (`torn=True`): for
  each file, any subset of its unsynced 4 KiB pages reached the disk and its
  size is either the synced or the written one (unwritten pages read as
  zeros, like ext4 after a crash); for each directory, an ordered prefix of its
  unsynced changes reached the disk (a metadata journal);
* `fail_sync_at=N`: the Nth file `sync` fails with EIO and, as Linux does,
  marks the dirty pages clean without writing them: they stay lost even after
  a later successful sync (PostgreSQL's "fsyncgate");
* the event loop's asynchronous fdatasyncs (`async_syncer`) run on a later turn
  of the loop than the one that started them, as the kernel's end after it, so
  cut points fall between a start and its end too;
* `capacity`: bytes of file data the disk holds; a write past it writes what
  fits (whole pages) and then fails with ENOSPC. `capacity` may change at any
  time (free space).

Files are kept in memory; fds are small ints of our own. Thread-safe (one lock).
"""

from __future__ import annotations

import asyncio
import errno
import os
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

PAGE = 4096


class PowerCut(OSError):
    """The simulated disk lost power: nothing after this reaches it."""

    def __init__(self) -> None:
        super().__init__(errno.EIO, "power cut (simulated)")


@dataclass
class _File:
    data: bytearray = field(default_factory=bytearray)
    durable: bytes = b""
    lost: set[int] = field(default_factory=set)  # pages a failed sync dropped


@dataclass
class _Dir:
    entries: dict[str, _File | _Dir] = field(default_factory=dict)
    durable: dict[str, _File | _Dir] = field(default_factory=dict)
    # unsynced changes, each a group of entry changes that reach the disk together
    log: list[tuple[tuple[str, _File | _Dir | None], ...]] = field(default_factory=list)

    def put(self, name: str, node: _File | _Dir | None, *more: tuple[str, _File | _Dir | None]
            ) -> None:
        """Change entries; `more` changes go with the first as one (a rename in one
        directory is atomic, as POSIX promises: never both names gone)."""
        for n, v in ((name, node), *more):
            if v is None:
                self.entries.pop(n, None)
            else:
                self.entries[n] = v
        self.log.append(((name, node), *more))


class SimDisk:
    """An in-memory disk that can lose power, tear writes, fail fsync and fill up."""

    def __init__(self, *, cut_at: int | None = None, fail_sync_at: int | None = None,
                 capacity: int | None = None) -> None:
        self.root = _Dir()
        self.cut_at = cut_at
        self.fail_sync_at = fail_sync_at
        self.capacity = capacity
        self.changes = 0  # changing calls so far (the cut-point clock)
        self.syncs = 0  # file syncs so far
        self.sync_failures = 0
        self.dead = False
        self._fds: dict[int, _File] = {}
        self._next_fd = 3
        self._locked: set[int] = set()
        self._lock = threading.RLock()
        self.syncers: list[SimSyncer] = []  # the event loops' (async_syncer)

    # ------------------------------------------------------------ internals
    def _alive(self) -> None:
        if self.dead:
            raise PowerCut()

    def _change(self) -> None:
        self._alive()
        self.changes += 1
        if self.cut_at is not None and self.changes >= self.cut_at:
            self.dead = True
            raise PowerCut()

    @staticmethod
    def _parts(path: Path | str) -> tuple[str, ...]:
        p = PurePosixPath(os.path.normpath(str(path)))
        return tuple(x for x in p.parts if x != "/")

    def _dir(self, parts: tuple[str, ...], path: object) -> _Dir:
        node: _File | _Dir = self.root
        for name in parts:
            if not isinstance(node, _Dir):
                raise NotADirectoryError(errno.ENOTDIR, "not a directory", str(path))
            nxt = node.entries.get(name)
            if nxt is None:
                raise FileNotFoundError(errno.ENOENT, "no such file or directory", str(path))
            node = nxt
        if not isinstance(node, _Dir):
            raise NotADirectoryError(errno.ENOTDIR, "not a directory", str(path))
        return node

    def _parent(self, path: Path) -> tuple[_Dir, str]:
        parts = self._parts(path)
        return self._dir(parts[:-1], path), parts[-1]

    def _node(self, path: Path) -> _File | _Dir | None:
        if not self._parts(path):
            return self.root
        try:
            d, name = self._parent(path)
        except (FileNotFoundError, NotADirectoryError):
            return None
        return d.entries.get(name)

    def _used(self) -> int:
        total = 0
        seen: set[int] = set()
        stack: list[_Dir] = [self.root]
        while stack:
            d = stack.pop()
            for node in d.entries.values():
                if isinstance(node, _Dir):
                    stack.append(node)
                elif id(node) not in seen:
                    seen.add(id(node))
                    total += -(-len(node.data) // PAGE) * PAGE
        for f in self._fds.values():  # open but unlinked files hold space too
            if id(f) not in seen:
                seen.add(id(f))
                total += -(-len(f.data) // PAGE) * PAGE
        return total

    # ------------------------------------------------------------ FileSystem
    def open(self, path: Path, *, create: bool = False, truncate: bool = False) -> int:
        with self._lock:
            self._alive()
            d, name = self._parent(path)
            node = d.entries.get(name)
            if isinstance(node, _Dir):
                raise IsADirectoryError(errno.EISDIR, "is a directory", str(path))
            if node is None:
                if not create:
                    raise FileNotFoundError(errno.ENOENT, "no such file", str(path))
                self._change()
                node = _File()
                d.put(name, node)
            elif truncate and node.data:
                self._change()
                del node.data[:]
            fd = self._next_fd
            self._next_fd += 1
            self._fds[fd] = node
            return fd

    def _file(self, fd: int) -> _File:
        f = self._fds.get(fd)
        if f is None:
            raise OSError(errno.EBADF, "bad file descriptor")
        return f

    def close(self, fd: int) -> None:
        with self._lock:
            self._fds.pop(fd, None)
            self._locked.discard(fd)

    def size(self, fd: int) -> int:
        with self._lock:
            self._alive()
            return len(self._file(fd).data)

    def pread(self, fd: int, length: int, pos: int) -> bytes:
        with self._lock:
            self._alive()
            return bytes(self._file(fd).data[pos:pos + length])

    def pwrite(self, fd: int, data: bytes | memoryview, pos: int) -> int:
        with self._lock:
            f = self._file(fd)
            self._change()
            n = len(data)
            if self.capacity is not None:
                grow = -(-max(len(f.data), pos + n) // PAGE) * PAGE \
                    - -(-len(f.data) // PAGE) * PAGE
                room = self.capacity - self._used()
                if grow > room:
                    # what fits in the file's last page and the free pages
                    fits = -(-len(f.data) // PAGE) * PAGE + max(0, room // PAGE) * PAGE - pos
                    if fits <= 0:
                        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                    n = min(n, fits)
            if pos > len(f.data):
                f.data.extend(bytes(pos - len(f.data)))
            f.data[pos:pos + n] = bytes(data[:n])
            for page in range(pos // PAGE, (pos + n - 1) // PAGE + 1):
                f.lost.discard(page)
            return n

    def truncate(self, fd: int, size: int) -> None:
        with self._lock:
            f = self._file(fd)
            self._change()
            if size < len(f.data):
                del f.data[size:]
            else:
                f.data.extend(bytes(size - len(f.data)))

    def sync(self, fd: int) -> None:
        with self._lock:
            self._sync_file(self._file(fd))

    def async_syncer(self, loop: asyncio.AbstractEventLoop) -> SimSyncer:
        """The event loop's fdatasyncs (`runner.fs.async_syncer`): each runs on a later
        turn of the loop, through `sync` (`SimSyncer`)."""
        syncer = SimSyncer(self, loop)
        self.syncers.append(syncer)
        return syncer

    def _sync_file(self, f: _File) -> None:
        with self._lock:
            self._change()
            self.syncs += 1
            if self.fail_sync_at is not None and self.syncs == self.fail_sync_at:
                self.sync_failures += 1
                # Linux: the dirty pages are marked clean without reaching the disk
                for page in range(-(-max(len(f.data), len(f.durable)) // PAGE)):
                    if f.data[page * PAGE:(page + 1) * PAGE] != \
                            f.durable[page * PAGE:(page + 1) * PAGE]:
                        f.lost.add(page)
                raise OSError(errno.EIO, "Input/output error (simulated fsync failure)")
            new = bytearray(f.data)
            for page in f.lost:  # a later sync does not write what the kernel dropped
                old = f.durable[page * PAGE:(page + 1) * PAGE]
                chunk = new[page * PAGE:(page + 1) * PAGE]
                new[page * PAGE:page * PAGE + len(chunk)] = (old + bytes(PAGE))[:len(chunk)]
            f.durable = bytes(new)

    def sync_dir(self, path: Path) -> None:
        with self._lock:
            d = self._dir(self._parts(path), path)
            self._change()
            d.durable = dict(d.entries)
            d.log.clear()

    def lock(self, fd: int) -> None:
        with self._lock:
            self._alive()
            f = self._file(fd)
            if any(self._fds.get(other) is f for other in self._locked):
                raise BlockingIOError(errno.EWOULDBLOCK, "locked")
            self._locked.add(fd)

    def exists(self, path: Path) -> bool:
        with self._lock:
            self._alive()
            return self._node(path) is not None

    def is_dir(self, path: Path) -> bool:
        with self._lock:
            self._alive()
            return isinstance(self._node(path), _Dir)

    def listdir(self, path: Path) -> list[str]:
        with self._lock:
            self._alive()
            return list(self._dir(self._parts(path), path).entries)

    def mkdir(self, path: Path) -> None:
        with self._lock:
            d, name = self._parent(path)
            if name in d.entries:
                raise FileExistsError(errno.EEXIST, "exists", str(path))
            self._change()
            d.put(name, _Dir())

    def rename(self, src: Path, dst: Path) -> None:
        with self._lock:
            sd, sname = self._parent(src)
            dd, dname = self._parent(dst)
            node = sd.entries.get(sname)
            if node is None:
                raise FileNotFoundError(errno.ENOENT, "no such file", str(src))
            self._change()
            if sd is dd:
                sd.put(sname, None, (dname, node))
            else:
                sd.put(sname, None)
                dd.put(dname, node)

    def unlink(self, path: Path) -> None:
        with self._lock:
            d, name = self._parent(path)
            node = d.entries.get(name)
            if node is None:
                raise FileNotFoundError(errno.ENOENT, "no such file", str(path))
            if isinstance(node, _Dir):
                raise IsADirectoryError(errno.EISDIR, "is a directory", str(path))
            self._change()
            d.put(name, None)

    def rmdir(self, path: Path) -> None:
        with self._lock:
            d, name = self._parent(path)
            node = d.entries.get(name)
            if not isinstance(node, _Dir):
                raise NotADirectoryError(errno.ENOTDIR, "not a directory", str(path))
            if node.entries:
                raise OSError(errno.ENOTEMPTY, "directory not empty", str(path))
            self._change()
            d.put(name, None)

    # ------------------------------------------------------------ power cut
    def crash(self, *, torn: bool = False, seed: int = 0) -> SimDisk:
        """A fresh disk holding what survived a power cut now (see module docstring)."""
        rng = random.Random(seed)
        with self._lock:
            out = SimDisk()
            files: dict[int, _File] = {}

            def survive_file(f: _File) -> _File:
                got = files.get(id(f))
                if got is not None:
                    return got
                data = bytearray(f.durable)
                if torn and bytes(f.data) != f.durable:
                    size = rng.choice((len(f.durable), len(f.data)))
                    data = bytearray(f.durable[:size]) + bytearray(
                        max(0, size - len(f.durable)))
                    for page in range(-(-size // PAGE)):
                        if page in f.lost:
                            continue
                        if rng.random() < 0.5:
                            lo, hi = page * PAGE, min(size, (page + 1) * PAGE)
                            chunk = bytes(f.data[lo:hi])
                            data[lo:lo + len(chunk)] = chunk
                new = _File(data=data, durable=bytes(data))
                files[id(f)] = new
                return new

            def survive_dir(d: _Dir) -> _Dir:
                entries = dict(d.durable)
                if torn and d.log:
                    for group in d.log[:rng.randrange(len(d.log) + 1)]:
                        for name, node in group:
                            if node is None:
                                entries.pop(name, None)
                            else:
                                entries[name] = node
                new = _Dir()
                for name, node in entries.items():
                    new.entries[name] = (survive_dir(node) if isinstance(node, _Dir)
                                         else survive_file(node))
                new.durable = dict(new.entries)
                return new

            out.root = survive_dir(self.root)
            return out

    def unsynced(self) -> list[str]:
        """Files with bytes and directories with entries a power cut would lose now."""
        out: list[str] = []

        def walk(d: _Dir, prefix: str) -> None:
            if d.log:
                out.append(prefix or "/")
            for name, node in sorted(d.entries.items()):
                if isinstance(node, _Dir):
                    walk(node, f"{prefix}/{name}")
                elif bytes(node.data) != node.durable:
                    out.append(f"{prefix}/{name}")

        with self._lock:
            walk(self.root, "")
        return out

    def tree(self, path: Path | str = "/") -> dict[str, int]:
        """Every file under `path` with its size (for test messages)."""
        out: dict[str, int] = {}

        def walk(d: _Dir, prefix: str) -> None:
            for name, node in sorted(d.entries.items()):
                if isinstance(node, _Dir):
                    walk(node, f"{prefix}/{name}")
                else:
                    out[f"{prefix}/{name}"] = len(node.data)

        with self._lock:
            walk(self._dir(self._parts(path), path), "")
        return out


class SimSyncer:
    """`runner.fs.Syncer` of a `SimDisk`: `submit` takes the file and syncs it on a
    later turn of the loop (through the disk's `sync`, or, when the fd was closed
    meanwhile, the file the kernel still held), then reports the end; a sync whose disk lost power
    (or that fails) reports its OSError. `syncs` counts them, `paused` holds them
    (in order) until `resume`; `fail_next` fails the next one, `refuse_next`
    refuses to start it."""

    def __init__(self, disk: SimDisk, loop: asyncio.AbstractEventLoop) -> None:
        self.disk = disk
        self.loop = loop
        self.syncs = 0
        self.paused = False
        self._held: list[tuple[int, _File, Callable[[BaseException | None], None]]] = []
        self.closed = False
        self.fail_next = False  # the next sync ends with EIO and syncs nothing
        self.refuse_next = False  # the next submit cannot start (EAGAIN)

    def submit(self, fd: int, done: Callable[[BaseException | None], None]) -> None:
        if self.refuse_next:
            self.refuse_next = False
            raise OSError(errno.EAGAIN, "Resource temporarily unavailable (simulated)")
        with self.disk._lock:
            self.disk._alive()
            f = self.disk._file(fd)
        if self.paused:
            self._held.append((fd, f, done))
        else:
            self.loop.call_soon(self._run, fd, f, done)

    def resume(self) -> None:
        self.paused = False
        held, self._held = self._held, []
        for fd, f, done in held:
            self.loop.call_soon(self._run, fd, f, done)

    def _run(self, fd: int, f: _File, done: Callable[[BaseException | None], None]) -> None:
        if self.fail_next:
            self.fail_next = False
            done(OSError(errno.EIO, "Input/output error (simulated fsync failure)"))
            return
        try:
            if self.disk._fds.get(fd) is f:
                self.disk.sync(fd)  # through a subclass's sync (held, failing ...)
            else:
                self.disk._sync_file(f)  # closed since: the kernel still held the file
        except OSError as exc:
            done(exc)
            return
        self.syncs += 1
        done(None)

    def close(self) -> None:
        self.closed = True
