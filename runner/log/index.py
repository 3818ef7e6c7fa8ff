"""Sparse indexes of a segment: offset -> file position, and timestamp -> offset.

Both are append-only files next to the segment, mirrored in memory as
`array('q')` columns and searched with `bisect` (O(log n)).

`.index` entry (8 bytes, `OFFSET_ENTRY`): relative offset int32, file position uint32.
    One entry per `index_interval_bytes` of batches; the entry names a batch start.
`.timeindex` entry (12 bytes, `TIME_ENTRY`): max timestamp so far int64, relative
    offset int32 (the base offset of the batch that reached it). Timestamps
    never decrease; a closing entry is written when the segment rolls.

The files are a cache: they are never fsynced with the data and are rebuilt
from the segment when missing, short, or inconsistent. A closed segment's
indexes are synced when it closes (and compaction's before its swap), because
recovery trusts them then. File calls go through `runner.fs`.
"""

from __future__ import annotations

import contextlib
import struct
from array import array
from bisect import bisect_right
from collections.abc import Callable
from pathlib import Path

from runner.fs import LOCAL, FileSystem, create, read_bytes, write_all

OFFSET_ENTRY = struct.Struct("<iI")
TIME_ENTRY = struct.Struct("<qi")


class _IndexFile:
    """What both indexes share: an append-only file of fixed-size entries, mirrored
    in memory as two `array` columns (`_columns`)."""

    __slots__ = ("base", "_fd", "path", "fs", "_pending", "_end")

    ENTRY: struct.Struct

    def __init__(self, path: Path, base: int, fs: FileSystem = LOCAL) -> None:
        self.path = path
        self.base = base
        self.fs = fs
        self._fd: int | None = None
        self._pending: list[bytes] = []  # entries not yet written to the file
        self._end = 0  # file size

    def _columns(self) -> tuple[array[int], array[int]]:
        raise NotImplementedError

    def _load(self, consistent: Callable[[int, int, int, int], bool], *, start: tuple[int, int],
              allow_empty: bool) -> bool:
        """Read the file; False (and empty) when missing or when an entry does not
        follow its predecessor (`consistent(last_a, last_b, a, b)`)."""
        try:
            raw = read_bytes(self.fs, self.path)
        except FileNotFoundError:
            return False
        if len(raw) % self.ENTRY.size or not (raw or allow_empty):
            return False
        first, second = self._columns()
        last_a, last_b = start
        for a, b in self.ENTRY.iter_unpack(raw):
            if not consistent(last_a, last_b, a, b):
                del first[:]
                del second[:]
                return False
            first.append(a)
            second.append(b)
            last_a, last_b = a, b
        return True

    def open_for_append(self, *, truncate: bool) -> None:
        """Open the file for `flush`; with `truncate` it is rewritten from memory."""
        self._fd = create(self.fs, self.path, truncate=truncate)
        if truncate:
            self._end = 0
            pack = self.ENTRY.pack
            self._pending = [pack(a, b) for a, b in zip(*self._columns(), strict=True)]
        else:
            self._end = self.fs.size(self._fd)

    def _append(self, a: int, b: int) -> None:
        first, second = self._columns()
        first.append(a)
        second.append(b)
        if self._fd is not None:
            self._pending.append(self.ENTRY.pack(a, b))

    def flush(self, *, fsync: bool = False) -> None:
        """Write the entries added since the last flush (and sync them)."""
        if self._fd is None:
            return
        if self._pending:
            data = b"".join(self._pending)
            try:
                write_all(self.fs, self._fd, data, self._end)
            except OSError:
                with contextlib.suppress(OSError):  # no part-written entry stays
                    self.fs.truncate(self._fd, self._end)
                raise
            self._pending = []
            self._end += len(data)
        if fsync:
            self.fs.sync(self._fd)

    @property
    def fd(self) -> int | None:
        """The open descriptor (None unless opened for append)."""
        return self._fd

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            self._pending = []
            self.fs.close(fd)


class OffsetIndex(_IndexFile):
    """Offset -> position of the batch at or before it."""

    __slots__ = ("offsets", "positions")

    ENTRY = OFFSET_ENTRY

    def __init__(self, path: Path, base: int, fs: FileSystem = LOCAL) -> None:
        super().__init__(path, base, fs)
        self.offsets = array("i")  # relative to base: 8 bytes of memory per entry
        self.positions = array("I")

    def _columns(self) -> tuple[array[int], array[int]]:
        return self.offsets, self.positions

    def load(self, segment_size: int) -> bool:
        """Read the file; False (and empty) when missing or inconsistent."""
        return self._load(
            lambda last_off, last_pos, rel, pos: (
                rel > last_off and pos > last_pos and pos < segment_size),
            start=(-1, -1), allow_empty=True)

    def add(self, offset: int, position: int) -> None:
        self._append(offset - self.base, position)

    def lookup(self, offset: int) -> int:
        """File position to start scanning for `offset` (0 before the first entry)."""
        i = bisect_right(self.offsets, offset - self.base)
        return self.positions[i - 1] if i else 0

    def truncate_after(self, size: int) -> None:
        while self.positions and self.positions[-1] >= size:
            self.positions.pop()
            self.offsets.pop()


class TimeIndex(_IndexFile):
    """Timestamp -> offset from which to scan."""

    __slots__ = ("timestamps", "offsets")

    ENTRY = TIME_ENTRY

    def __init__(self, path: Path, base: int, fs: FileSystem = LOCAL) -> None:
        super().__init__(path, base, fs)
        self.timestamps = array("q")
        self.offsets = array("i")  # relative to base

    def _columns(self) -> tuple[array[int], array[int]]:
        return self.timestamps, self.offsets

    def load(self) -> bool:
        return self._load(
            lambda last_ts, last_off, ts, rel: ts >= last_ts and rel >= last_off,
            start=(-(2**63), -1), allow_empty=False)

    @property
    def max_timestamp(self) -> int:
        return self.timestamps[-1] if self.timestamps else -1

    def add(self, timestamp: int, offset: int) -> None:
        if self.timestamps and timestamp <= self.timestamps[-1]:
            return
        self._append(timestamp, offset - self.base)

    def close_entry(self, timestamp: int, offset: int) -> None:
        """The closing entry at roll: always written so `load` sees the final max."""
        if self.timestamps and timestamp < self.timestamps[-1]:
            timestamp = self.timestamps[-1]
        self._append(timestamp, offset - self.base)

    def lookup(self, timestamp: int) -> int:
        """An offset at or before the first record with ts >= timestamp (base if unknown)."""
        i = bisect_right(self.timestamps, timestamp - 1)
        return self.base + self.offsets[i - 1] if i else self.base

    @property
    def last_offset(self) -> int:
        """The offset of the last entry (base - 1 when empty)."""
        return self.base + self.offsets[-1] if self.offsets else self.base - 1
