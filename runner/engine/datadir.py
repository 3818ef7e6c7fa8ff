"""The data directory's lock: one engine per data directory at a time."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from runner.errors import StorageError

LOCK_FILE = ".lock"


def lock_data_dir(data_dir: Path) -> int:
    """Take the exclusive lock of `data_dir` (`<data_dir>/.lock`, holding our pid)
    for the engine's life; StorageError naming the holder's pid when taken.
    The OS drops the lock when the process dies, even by SIGKILL."""
    path = data_dir / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise StorageError(f"cannot open the lock file {path}: {exc.strerror}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        try:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        finally:
            os.close(fd)
        raise StorageError(f"data directory {data_dir} is in use by another runner "
                           f"(pid {holder})") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd
