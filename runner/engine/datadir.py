"""The data directory's lock: one engine per data directory at a time."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from runner.errors import StorageError
from runner.fs import FileSystem, create, write_all

LOCK_FILE = ".lock"
PID_WIDTH = 32  # the pid is written padded in place: no new block (a full disk)

log = logging.getLogger(__name__)


def lock_data_dir(data_dir: Path, fs: FileSystem) -> int:
    """Take the exclusive lock of `data_dir` (`<data_dir>/.lock`, holding our pid)
    for the engine's life; StorageError naming the holder's pid when taken.
    The OS drops the lock when the process dies, even by SIGKILL."""
    path = data_dir / LOCK_FILE
    try:
        fd = create(fs, path)
    except OSError as exc:
        raise StorageError(f"cannot open the lock file {path}: {exc.strerror}") from exc
    try:
        fs.lock(fd)
    except OSError:
        try:
            holder = fs.pread(fd, PID_WIDTH, 0).decode(errors="replace").strip() or "unknown"
        finally:
            fs.close(fd)
        raise StorageError(f"data directory {data_dir} is in use by another runner "
                           f"(pid {holder})") from None
    try:
        write_all(fs, fd, f"{os.getpid()}\n".ljust(PID_WIDTH).encode(), 0)
    except OSError as exc:  # informative only: a full disk must not stop a start
        log.warning("cannot write the pid into %s: %s", path, exc.strerror or exc)
    return fd
