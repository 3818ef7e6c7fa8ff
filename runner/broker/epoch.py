"""The epoch file: a counter bumped at each open of a data directory.

Non-durable queues number their messages from `epoch << 36`, so uids (and
delivery tags) never repeat across restarts.

Format: two 16-byte slots, each `<QI` (epoch, CRC-32 of those 8 bytes) and 4
bytes of padding; epoch N is written to slot N % 2, in place, then synced. The
current epoch is the highest valid slot. Writing in place needs no new disk
block, so a restart on a full disk still bumps the epoch, and a write torn by a
power cut spoils one slot, never the other (the epoch it held was not used:
the open that wrote it had not returned). A file from older versions holds the
number as text; it is read and rewritten as slots.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

from runner.errors import StorageError
from runner.fs import FileSystem, create, read_bytes, write_all

SLOT = struct.Struct("<QI4x")


def _slot(epoch: int) -> bytes:
    head = struct.pack("<Q", epoch)
    return SLOT.pack(epoch, zlib.crc32(head))


def read_epoch(raw: bytes) -> int:
    """The epoch in a file's bytes (0 when none is valid)."""
    if len(raw) == 2 * SLOT.size:
        best = 0
        for i in range(2):
            epoch, crc = SLOT.unpack_from(raw, i * SLOT.size)
            if crc == zlib.crc32(struct.pack("<Q", epoch)):
                best = max(best, epoch)
        return best
    text = raw.decode("ascii", errors="replace").strip()
    return int(text) if text.isdigit() else 0


def next_epoch(fs: FileSystem, path: Path) -> int:
    """Bump the epoch in `path` durably and return it; StorageError naming the file."""
    try:
        try:
            raw = read_bytes(fs, path)
        except FileNotFoundError:
            raw = None
        epoch = (read_epoch(raw) if raw is not None else 0) + 1
        fd = create(fs, path)
        try:
            if raw is not None and len(raw) == 2 * SLOT.size:
                write_all(fs, fd, _slot(epoch), (epoch % 2) * SLOT.size)
            else:  # a new or old-format file: both slots
                write_all(fs, fd, _slot(epoch) * 2, 0)
            fs.sync(fd)
        finally:
            fs.close(fd)
    except OSError as exc:
        raise StorageError(f"cannot bump the epoch in {path}: {exc.strerror or exc}") from exc
    return epoch
