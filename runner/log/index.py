"""Sparse indexes of a segment: offset -> file position, and timestamp -> offset.

Both are append-only files next to the segment, mirrored in memory as
`array('q')` columns and searched with `bisect` (O(log n)).

`.index` entry (8 bytes, `OFFSET_ENTRY`): relative offset int32, file position uint32.
    One entry per `index_interval_bytes` of batches; the entry names a batch start.
`.timeindex` entry (12 bytes, `TIME_ENTRY`): max timestamp so far int64, relative
    offset int32 (the base offset of the batch that reached it). Timestamps
    never decrease; a closing entry is written when the segment rolls.

The files are a cache: they are never fsynced with the data and are rebuilt
from the segment when missing, short, or inconsistent.
"""

from __future__ import annotations

import os
import struct
from array import array
from bisect import bisect_right
from pathlib import Path
from typing import BinaryIO

OFFSET_ENTRY = struct.Struct("<iI")
TIME_ENTRY = struct.Struct("<qi")


class OffsetIndex:
    """Offset -> position of the batch at or before it."""

    __slots__ = ("base", "offsets", "positions", "_file", "path")

    def __init__(self, path: Path, base: int) -> None:
        self.path = path
        self.base = base
        self.offsets = array("i")  # relative to base: 8 bytes of memory per entry
        self.positions = array("I")
        self._file: BinaryIO | None = None

    def load(self, segment_size: int) -> bool:
        """Read the file; False (and empty) when missing or inconsistent."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return False
        if len(raw) % OFFSET_ENTRY.size:
            return False
        last_off, last_pos = -1, -1
        for rel, pos in OFFSET_ENTRY.iter_unpack(raw):
            if rel <= last_off or pos <= last_pos or pos >= segment_size:
                self.offsets = array("i")
                self.positions = array("I")
                return False
            self.offsets.append(rel)
            self.positions.append(pos)
            last_off, last_pos = rel, pos
        return True

    def open_for_append(self, *, truncate: bool) -> None:
        self._file = open(self.path, "wb" if truncate else "ab")  # noqa: SIM115
        if truncate:
            buf = b"".join(OFFSET_ENTRY.pack(o, p)
                           for o, p in zip(self.offsets, self.positions, strict=True))
            self._file.write(buf)

    def add(self, offset: int, position: int) -> None:
        self.offsets.append(offset - self.base)
        self.positions.append(position)
        if self._file is not None:
            self._file.write(OFFSET_ENTRY.pack(offset - self.base, position))

    def lookup(self, offset: int) -> int:
        """File position to start scanning for `offset` (0 before the first entry)."""
        i = bisect_right(self.offsets, offset - self.base)
        return self.positions[i - 1] if i else 0

    def truncate_after(self, size: int) -> None:
        while self.positions and self.positions[-1] >= size:
            self.positions.pop()
            self.offsets.pop()

    def flush(self, *, fsync: bool = False) -> None:
        if self._file is not None:
            self._file.flush()
            if fsync:
                os.fsync(self._file.fileno())

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class TimeIndex:
    """Timestamp -> offset from which to scan."""

    __slots__ = ("base", "timestamps", "offsets", "_file", "path")

    def __init__(self, path: Path, base: int) -> None:
        self.path = path
        self.base = base
        self.timestamps = array("q")
        self.offsets = array("i")  # relative to base
        self._file: BinaryIO | None = None

    def load(self) -> bool:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return False
        if len(raw) % TIME_ENTRY.size or not raw:
            return False
        last_ts, last_off = -(2**63), -1
        for ts, rel in TIME_ENTRY.iter_unpack(raw):
            if ts < last_ts or rel < last_off:
                self.timestamps = array("q")
                self.offsets = array("i")
                return False
            self.timestamps.append(ts)
            self.offsets.append(rel)
            last_ts, last_off = ts, rel
        return True

    def open_for_append(self, *, truncate: bool) -> None:
        self._file = open(self.path, "wb" if truncate else "ab")  # noqa: SIM115
        if truncate:
            buf = b"".join(TIME_ENTRY.pack(t, o)
                           for t, o in zip(self.timestamps, self.offsets, strict=True))
            self._file.write(buf)

    @property
    def max_timestamp(self) -> int:
        return self.timestamps[-1] if self.timestamps else -1

    def add(self, timestamp: int, offset: int) -> None:
        if self.timestamps and timestamp <= self.timestamps[-1]:
            return
        self.timestamps.append(timestamp)
        self.offsets.append(offset - self.base)
        if self._file is not None:
            self._file.write(TIME_ENTRY.pack(timestamp, offset - self.base))

    def close_entry(self, timestamp: int, offset: int) -> None:
        """The closing entry at roll: always written so `load` sees the final max."""
        if self.timestamps and timestamp < self.timestamps[-1]:
            timestamp = self.timestamps[-1]
        self.timestamps.append(timestamp)
        self.offsets.append(offset - self.base)
        if self._file is not None:
            self._file.write(TIME_ENTRY.pack(timestamp, offset - self.base))

    def lookup(self, timestamp: int) -> int:
        """An offset at or before the first record with ts >= timestamp (base if unknown)."""
        i = bisect_right(self.timestamps, timestamp - 1)
        return self.base + self.offsets[i - 1] if i else self.base

    @property
    def last_offset(self) -> int:
        """The offset of the last entry (base - 1 when empty)."""
        return self.base + self.offsets[-1] if self.offsets else self.base - 1

    def flush(self, *, fsync: bool = False) -> None:
        if self._file is not None:
            self._file.flush()
            if fsync:
                os.fsync(self._file.fileno())

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
