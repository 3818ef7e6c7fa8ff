"""Opening a `SegmentedLog` from its directory (Kafka's LogLoader): finish a
crashed compaction's swap, remove strays, trust or rebuild the closed segments'
indexes, scan the active segment and truncate its torn tail (or refuse
corruption inside synced data), and rebuild the idempotent producers' state.

The rules (when a bad batch is a torn tail and when it is corruption) are in
`runner.log.segment`'s docstring; the synced-length checkpoint the loader reads
is written by the log after each fsync (`encode_checkpoint`).
"""

from __future__ import annotations

import logging
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

from runner.errors import CorruptSegment, StorageError
from runner.fs import FileSystem, read_bytes, remove
from runner.log.index import OffsetIndex, TimeIndex
from runner.log.logsegment import CHUNK, Segment, find_batch, segment_name, walk_batches
from runner.log.producers import ProducerState, load_producers
from runner.log.record import batch_crc_ok

log = logging.getLogger("runner.log.segment")  # recovery's warnings keep their logger name

CHECKPOINT = "synced.checkpoint"
_CKPT = struct.Struct("<qqI4x")  # active segment base, synced length, crc32 of the 16 bytes


def encode_checkpoint(base: int, length: int) -> bytes:
    """The checkpoint's bytes: segment `base` is synced up to `length`."""
    return _CKPT.pack(base, length, zlib.crc32(struct.pack("<qq", base, length)))


def read_checkpoint(fs: FileSystem, directory: Path, last_base: int) -> int:
    """The synced length of segment `last_base` per the checkpoint; 0 when the
    checkpoint is missing, damaged or about another segment (recovery then
    knows less: only understates)."""
    try:
        raw = read_bytes(fs, directory / CHECKPOINT)
    except FileNotFoundError:
        return 0
    if len(raw) >= _CKPT.size:
        base, length, crc = _CKPT.unpack_from(raw)
        if crc == zlib.crc32(raw[:16]) and base == last_base:
            return int(length)
    return 0


@dataclass(slots=True)
class LoadedLog:
    """What the loader recovered: the open segments (the last one active), their
    base offsets, the producers' state, the log end and its size in bytes."""

    segments: list[Segment]
    bases: list[int]
    producers: dict[int, ProducerState]
    end: int
    size: int


class LogLoader:
    """Loads one log directory; `load()` once."""

    def __init__(self, directory: Path, fs: FileSystem, index_interval_bytes: int) -> None:
        self.directory = directory
        self.fs = fs
        self.index_interval_bytes = index_interval_bytes
        self._recovery_point = 0  # synced length of the last segment per the checkpoint
        self._segments: list[Segment] = []
        self._producers: dict[int, ProducerState] = {}

    def load(self) -> LoadedLog:
        """Recover the directory; on any error the segments opened so far are closed."""
        try:
            return self._load()
        except BaseException:
            for seg in self._segments:
                seg.close()
            raise

    def _load(self) -> LoadedLog:
        fs, directory = self.fs, self.directory
        names = fs.listdir(directory)
        bases = sorted(int(n[:-4]) for n in names if n.endswith(".log") and n[:-4].isdigit())
        for swap in sorted(n for n in names if n.endswith(".swap")):
            bases = self._finish_swap(directory / swap, bases)
        names = fs.listdir(directory)
        strays = []
        for name in names:  # left by a crash while compacting or deleting a segment
            stem = name.split(".")[0]
            if name.endswith((".tmp", ".cleaned", ".deleted")) or (
                    name.endswith((".index", ".timeindex", ".snapshot")) and stem.isdigit()
                    and int(stem) not in bases):
                strays.append(directory / name)
        remove(fs, strays)
        if not bases:
            bases = [0]
        self._recovery_point = read_checkpoint(fs, directory, bases[-1])
        size = 0
        for i, base in enumerate(bases):
            seg = Segment(directory, base, fs)
            self._segments.append(seg)
            if i < len(bases) - 1:
                self._open_closed(seg, bases[i + 1])
            else:
                load_producers(fs, seg.path.with_suffix(".snapshot"), self._producers)
                self._recover_tail(seg)
            size += seg.size
        last = self._segments[-1]
        return LoadedLog(self._segments, list(bases), self._producers,
                         max(last.last_offset + 1, last.base), size)

    def _finish_swap(self, swap: Path, bases: list[int]) -> list[int]:
        """A compaction crashed after committing its swap file
        `<base>.<next_base>.swap`: it replaces every segment in [base, next_base).
        Its indexes, synced before the swap was committed, are `.index.cleaned`
        and `.timeindex.cleaned` until renamed into place (else rebuilt)."""
        base_text, upto_text = swap.name.split(".")[:2]
        base, upto = int(base_text), int(upto_text)
        gone = []
        for old in [b for b in bases if base < b < upto]:
            gone += [self.directory / f"{segment_name(old)}{suffix}"
                     for suffix in (".log", ".index", ".timeindex", ".snapshot")]
            bases.remove(old)
        name = segment_name(base)
        for suffix in (".index", ".timeindex"):
            cleaned = self.directory / f"{name}{suffix}.cleaned"
            if self.fs.exists(cleaned):
                self.fs.rename(cleaned, self.directory / f"{name}{suffix}")
            else:
                gone.append(self.directory / f"{name}{suffix}")
        remove(self.fs, gone)
        self.fs.rename(swap, self.directory / f"{name}.log")
        self.fs.sync_dir(self.directory)
        return sorted(set(bases) | {base})

    def _open_closed(self, seg: Segment, next_base: int) -> None:
        ok = seg.index.load(seg.size) and seg.tindex.load()
        if ok and seg.tindex.last_offset >= next_base:
            ok = False
        if not ok:
            log.info("rebuilding indexes of %s", seg.path)
            seg.index = OffsetIndex(seg.index.path, seg.base, self.fs)
            seg.tindex = TimeIndex(seg.tindex.path, seg.base, self.fs)
            self._scan(seg, strict=True)
            seg.tindex.close_entry(max(seg.max_ts, 0), max(seg.last_offset, seg.base))
            for ix in (seg.index, seg.tindex):
                ix.open_for_append(truncate=True)
                ix.flush(fsync=True)  # a closed segment's indexes are trusted at open
                ix.close()
        else:
            seg.max_ts = seg.tindex.max_timestamp
            seg.last_offset = next_base - 1

    def _recover_tail(self, seg: Segment) -> None:
        self._scan(seg, strict=False)
        try:  # what recovery accepted is durable before anyone reads it (a kill -9
            self.fs.sync(seg.fd)  # leaves unsynced bytes in the page cache)
        except OSError as exc:
            raise StorageError(f"cannot fsync {seg.path}: {exc.strerror or exc}") from exc
        seg.index.open_for_append(truncate=True)
        seg.tindex.open_for_append(truncate=True)

    def _scan(self, seg: Segment, *, strict: bool) -> None:
        """Rebuild `seg`'s indexes and producer state; truncate (tail) or raise (strict)."""
        pos = 0
        expect = seg.base
        since = self.index_interval_bytes
        for buf, bpos, header, fpos in walk_batches(seg.fd, 0, seg.size, seg.path,
                                                    self.fs.pread, tolerant=True):
            bad = (header is None or header.base_offset < expect or header.count < 1
                   or header.last_offset_delta < header.count - 1
                   or not batch_crc_ok(buf, bpos, header))
            if bad:
                if strict or (fpos < self._recovery_point
                              and self._valid_after(seg, fpos, expect)):
                    raise CorruptSegment(
                        f"corrupt batch in {seg.path} at byte {fpos}",
                        path=str(seg.path), position=fpos)
                if fpos >= self._recovery_point and self._zeros_to_end(seg, fpos):
                    # the zeros the log writes ahead of its appends (`zero_ahead`):
                    # nothing was written there
                    log.debug("cutting %d bytes of zeros written ahead off %s",
                              seg.size - fpos, seg.path)
                else:
                    log.warning("truncating torn tail of %s at byte %d (was %d bytes): "
                                "written after the last fsync", seg.path, fpos, seg.size)
                self.fs.truncate(seg.fd, fpos)
                self.fs.sync(seg.fd)
                seg.size = seg.zeroed = fpos
                break
            assert header is not None
            if fpos == 0:
                seg.first_ts = header.first_timestamp
            seg.max_ts = max(seg.max_ts, header.max_timestamp)
            if since >= self.index_interval_bytes:
                seg.index.add(header.base_offset, fpos)
                seg.tindex.add(seg.max_ts, header.base_offset)
                since = 0
            since += header.size
            seg.last_offset = header.last_offset
            expect = header.last_offset + 1
            if header.producer_id >= 0 and not strict:
                prod = self._producers.setdefault(header.producer_id, ProducerState())
                prod.record(header.base_sequence, header.last_offset_delta + 1,
                            header.base_offset)
            pos = fpos + header.size
        seg.since_index = since
        if strict and pos != seg.size:
            raise CorruptSegment(f"corrupt batch in {seg.path} at byte {pos}",
                                 path=str(seg.path), position=pos)

    def _zeros_to_end(self, seg: Segment, fpos: int) -> bool:
        """Whether the file holds nothing but zero bytes from `fpos` to its end."""
        while fpos < seg.size:
            data = self.fs.pread(seg.fd, min(CHUNK, seg.size - fpos), fpos)
            if not data or data.count(0) != len(data):
                return False
            fpos += len(data)
        return True

    def _valid_after(self, seg: Segment, fpos: int, min_offset: int) -> bool:
        """Is there an intact batch anywhere after the bad one at `fpos` (so the bad
        one is corruption in the middle, not a torn tail)? A byte-wise resync, as
        Kafka's: every position holding the magic and attribute bytes where a
        plausible header sits is checked, the CRC deciding."""
        return find_batch(self.fs.pread, seg.fd, fpos + 1, seg.size, min_offset) is not None
