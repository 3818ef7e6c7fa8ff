"""One segment of a `SegmentedLog` (Kafka's LogSegment): its batch file and sparse
indexes, and the batch walking that reads and recovery share."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from runner.errors import CorruptSegment
from runner.fs import FileSystem, create
from runner.log.index import OffsetIndex, TimeIndex
from runner.log.record import BATCH, LENGTH_PREFIX, MAGIC, RECORD, BatchHeader, batch_crc_ok

CHUNK = 256 * 1024
MAGIC_AT = 16  # header position of the magic byte (then attributes, always 0)
MAGIC_MARK = bytes((MAGIC, 0))


Read = Callable[[int, int, int], bytes]  # (fd, length, position) -> bytes, as os.pread


def segment_name(base: int) -> str:
    return f"{base:020d}"


@dataclass(frozen=True, slots=True)
class SegmentInfo:
    """A closed segment as the cleaner sees it."""

    base: int
    next_base: int
    size: int
    max_timestamp: int
    path: Path


class Segment:
    """One segment's open files: the batch file, its two sparse indexes."""

    __slots__ = ("base", "path", "fd", "sync_fd", "size", "zeroed", "zeros_refused",
                 "index", "tindex", "last_offset", "max_ts", "first_ts", "since_index",
                 "head_ts", "fs")

    def __init__(self, directory: Path, base: int, fs: FileSystem) -> None:
        name = segment_name(base)
        self.base = base
        self.fs = fs
        self.path = directory / f"{name}.log"
        self.fd = create(fs, self.path)
        # the asynchronous fdatasyncs' own open file (`async_fd`): the kernel reports
        # a write-back error once per open file, so a sync on `fd` running at the
        # same time cannot take the error that one should fail with
        self.sync_fd: int | None = None
        self.size = fs.size(self.fd)
        # the file's length: past `size` it holds zeros written ahead of the appends
        # (`SegmentedLog.zero_ahead`), or nothing
        self.zeroed = self.size
        self.zeros_refused = False  # writing them failed (a full disk): no more here
        self.index = OffsetIndex(directory / f"{name}.index", base, fs)
        self.tindex = TimeIndex(directory / f"{name}.timeindex", base, fs)
        self.last_offset = base - 1
        self.max_ts = -1
        self.first_ts = -1  # first batch's first timestamp (known for the active segment)
        self.since_index = 0
        self.head_ts: int | None = None  # first record's timestamp, read once on demand

    def files(self) -> list[Path]:
        stem = self.path.with_suffix("")
        return [self.path, self.index.path, self.tindex.path, stem.with_suffix(".snapshot")]

    def async_fd(self) -> int:
        """The descriptor the event loop's asynchronous fdatasyncs use (opened once)."""
        if self.sync_fd is None:
            self.sync_fd = self.fs.open(self.path)
        return self.sync_fd

    def close_sync_fd(self) -> None:
        """Close `async_fd` (an fdatasync in flight keeps its file: the kernel holds it)."""
        if self.sync_fd is not None:
            fd, self.sync_fd = self.sync_fd, None
            self.fs.close(fd)

    def close(self) -> None:
        self.index.close()
        self.tindex.close()
        self.close_sync_fd()
        self.fs.close(self.fd)


def head_timestamp(seg: Segment) -> int:
    """The first record's own timestamp in `seg` (not the batch's first_timestamp,
    which holds the delete horizon in a batch compaction rewrote)."""
    need = BATCH.size + RECORD.size
    buf = seg.fs.pread(seg.fd, need, 0)
    if len(buf) < need:
        raise CorruptSegment(f"truncated batch in {seg.path} at byte 0",
                             path=str(seg.path), position=0)
    ts: int = RECORD.unpack_from(buf, BATCH.size)[2]
    return ts


def find_batch(read: Read, fd: int, start: int, end: int, min_offset: int) -> int | None:
    """File position of the first intact batch (plausible header, magic, CRC) at
    or after `start`, scanning byte by byte in chunks; None when there is none."""
    step = 1 << 20
    pos = start
    while pos + BATCH.size <= end:
        buf = read(fd, min(step + BATCH.size, end - pos), pos)
        i = buf.find(MAGIC_MARK, MAGIC_AT)
        while i >= 0:
            q = i - MAGIC_AT
            if q >= step or q + BATCH.size > len(buf):
                break
            h = BatchHeader(buf, q)
            fq = pos + q
            if (h.count >= 1 and h.last_offset_delta >= h.count - 1
                    and h.base_offset >= min_offset and h.length >= BATCH.size - LENGTH_PREFIX
                    and fq + h.size <= end):
                if q + h.size <= len(buf):
                    ok = batch_crc_ok(buf, q, h)
                else:
                    ok = batch_crc_ok(read(fd, h.size, fq), 0, h)
                if ok:
                    return fq
            i = buf.find(MAGIC_MARK, i + 1)
        pos += step
    return None


def walk_batches(
    fd: int, pos: int, end: int, path: Path, read: Read, *, chunk: int = CHUNK,
    tolerant: bool = False,
) -> Iterator[tuple[bytes, int, BatchHeader, int]]:
    """Walk batches from file position `pos` to `end`: (buffer, position in buffer,
    header, file position). Reads in chunks; a batch is never split across buffers.
    `tolerant`: yield a None header (typed loosely) for a short or insane header
    instead of raising, so recovery can decide between truncating and raising."""
    buf = b""
    bstart = pos  # file position of buf[0]
    while pos < end:
        bpos = pos - bstart
        if bpos + BATCH.size > len(buf):
            if pos + BATCH.size > end:
                if tolerant:
                    yield buf, 0, None, pos  # type: ignore[misc]
                    return
                raise CorruptSegment(f"truncated batch in {path} at byte {pos}",
                                     path=str(path), position=pos)
            buf = read(fd, min(chunk, end - pos), pos)
            bstart, bpos = pos, 0
        header = BatchHeader(buf, bpos)
        size = header.size
        if header.length < BATCH.size - 12 or pos + size > end:
            if tolerant:
                yield buf, bpos, None, pos  # type: ignore[misc]
                return
            raise CorruptSegment(f"corrupt batch in {path} at byte {pos}",
                                 path=str(path), position=pos)
        if bpos + size > len(buf):
            buf = read(fd, max(size, min(chunk, end - pos)), pos)
            bstart, bpos = pos, 0
        yield buf, bpos, header, pos
        pos += size
