"""The segmented log: one directory of CRC'd batch files = one append-only log.

Files, named by the base offset of their first record (as in Kafka)::

    00000000000000000000.log        batches (see `runner.log.record`)
    00000000000000000000.index      sparse offset index   (see `runner.log.index`)
    00000000000000000000.timeindex  sparse time index
    00000000000000000000.snapshot   producer state when the segment was created (JSON)

Durability (`Fsync`):

* ALWAYS: `append` returns after an fdatasync that covers its bytes. Appenders
  write under a lock, then wait for one fsync: the first waiter becomes the
  leader, syncs everything written so far, and wakes every follower whose bytes
  it covered (group commit). Inside `group.deferred()` (`runner.log.commits`)
  `append` returns once written and the block's end syncs each log once;
  inside `group.ticketed()` a later round (on the event loop that opened the
  block while fsyncs are quick, else on the data dir's flusher thread) syncs
  it and resolves the block's ticket. Outside both, what the flusher has pending is
  synced first (durability in write order). The active segment's file is kept
  `zero_ahead` bytes (ZERO_AHEAD, 256 KiB, not past the segment limit) longer
  than its batches in written zeros: an append writes into them, so its
  fdatasync finds the file's length unchanged and has no metadata to commit
  (ext4: no journal commit). A roll cuts them off the closing segment before
  its last fsync (a closed segment ends with its last batch), `close` cuts them
  too, and recovery cuts zeros found after the last batch (below).
* INTERVAL: nothing is synced by `append`; the owner calls `maybe_sync()` (or
  runs a `runner.log.flusher.Flusher` thread, as `Store` does), which syncs when
  `fsync_interval_ms` has passed since the last sync. Except inside
  `group.deferred()` (an exactly-once step): the block's end syncs each log
  written, as under ALWAYS.
* NEVER: left to the OS; `sync()` and `close()` still sync.

Torn tails: the kernel writes dirty pages back in any order, so after a power
cut the bytes written after the last fsync may survive in any mix (a lost page
before one that reached the disk). Bytes that an fsync covered survive whole.
To tell the two apart, the log records how far its active segment is synced
(`synced.checkpoint`: segment base, synced length, CRC): rewritten in place
after every fsync without an fsync of its own (the kernel writes it back within
seconds; a stale value only understates), and synced at `close`.

Recovery at open: closed segments trust their index files (rebuilt by a strict
scan when missing or inconsistent; any bad batch in a closed segment, which
was synced when it closed, is corruption); the last segment is scanned batch
by batch, its CRCs checked. At the first bad batch (CRC mismatch, implausible
header or length):

* at or past the checkpoint's synced length: a torn tail of writes after the
  last fsync, truncated there (as Kafka truncates after its recovery point);
  intact batches after it go too: none was acknowledged under `Fsync.ALWAYS`
  (the fsync acknowledging one would have covered the bad one);
* before it, with an intact batch (magic byte, plausible header, matching
  CRC; a byte-wise Kafka-style resync) somewhere after: corruption inside
  synced data. `CorruptSegment` names the file and byte position and nothing
  is truncated. With nothing intact after it, it is still taken as a torn
  tail (a file cut short).

Zeros from the first bad batch to the file's end, at or past the checkpoint's
synced length, are the zeros written ahead (nothing was written there): cut
off like a torn tail, logged at debug level instead of a warning.

Reads check CRCs too.

Memory: per segment the sparse indexes (about 16 bytes per `index_interval_bytes`
of data) plus a bounded LRU of raw read chunks (`cache_bytes`, or a
`ReadCache` shared with other logs and bounded as a whole); record bodies are
never held beyond that.

Thread safety: `append` may be called from many threads. Other methods assume
one owner, except that a compaction thread may call `replace_segments`.

Files: every call goes through `runner.fs` (a `FileSystem`, the real one by
default). A created, renamed or deleted file is durable in its directory
before the call that made it returns (`runner.fs.create`, `rename`, `remove`).

A failed fsync is fatal for the log (PostgreSQL's "fsyncgate": the kernel may
have dropped the unsynced pages, so a later successful fsync proves nothing):
from then on every append, sync and read raises `StorageError` until the log
is closed and opened again, which recovers from what is on disk.

Parts, as Kafka splits its log layer: `runner.log.logsegment` (one segment's
files and the batch walk), `runner.log.producers` (idempotent producers' state
and its snapshots), `runner.log.recovery` (the LogLoader: opening a directory,
the rules above, and the synced-length checkpoint's format), and this module
(the log: appends, syncs, reads, retention and the cleaner's segment swap).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from bisect import bisect_right
from collections.abc import Iterator, Sequence
from pathlib import Path

from runner.clock import Clock
from runner.errors import (
    CorruptSegment,
    InvalidRequest,
    LogFailed,
    OffsetOutOfRange,
    StorageError,
)
from runner.fs import (
    LOCAL,
    FileSystem,
    SyncEnded,
    Syncer,
    create,
    make_dirs,
    remove,
    rename,
    write_all,
)
from runner.log.cache import ReadCache
from runner.log.commits import GroupCommit
from runner.log.index import OffsetIndex, TimeIndex
from runner.log.logsegment import (
    CHUNK,
    Segment,
    SegmentInfo,
    head_timestamp,
    segment_name,
    walk_batches,
)
from runner.log.producers import ProducerState, write_producers
from runner.log.record import (
    BatchHeader,
    Fsync,
    Item,
    LogRecord,
    batch_crc_ok,
    decode_records,
    encode_batch,
)
from runner.log.recovery import CHECKPOINT, LogLoader, encode_checkpoint

log = logging.getLogger(__name__)

MiB = 1024 * 1024
# under Fsync.ALWAYS the active segment's file is kept this far ahead of its appends
# in written zeros: an fdatasync of an append that does not grow the file has no
# metadata to commit (ext4: no journal commit, ~90 us instead of ~140 here)
ZERO_AHEAD = 256 * 1024
_ZEROS = memoryview(bytes(ZERO_AHEAD))
MAX_SEGMENT_BYTES = 2**31  # index positions are uint32; Kafka caps segments at 2 GiB too


CleanedBatch = tuple[list[LogRecord], int, int] | tuple[list[LogRecord], int, int, int]
"""A batch for `replace_segments`: (records, producer id, base sequence[, delete horizon])."""


class SegmentedLog:
    """An append-only log of records in one directory."""

    def __init__(
        self,
        directory: Path,
        *,
        segment_bytes: int = 64 * MiB,
        fsync: Fsync = Fsync.ALWAYS,
        clock: Clock,
        index_interval_bytes: int = 4096,
        cache_bytes: int = 4 * MiB,
        fsync_interval_ms: float = 5.0,
        cache: ReadCache | None = None,
        fs: FileSystem = LOCAL,
        group: GroupCommit | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.fs = fs
        self.group = group  # ALWAYS: inside `group.deferred()` appends do not wait
        # bytes of zeros written ahead of the appends (0: none; see ZERO_AHEAD)
        self.zero_ahead = ZERO_AHEAD if Fsync(fsync) is Fsync.ALWAYS else 0
        self._failed: LogFailed | None = None
        self.segment_bytes = segment_bytes
        self.fsync = Fsync(fsync)
        self.clock = clock
        self.index_interval_bytes = index_interval_bytes
        self.fsync_interval_ms = fsync_interval_ms
        self._cache = ReadCache(cache_bytes) if cache is None else cache
        self._cache_owner = self._cache.owner()
        self._lock = threading.Lock()
        self._sync_lock = threading.Lock()
        self._cond = threading.Condition(threading.Lock())
        self._syncing = False
        self._written = 0
        self._synced = 0
        self._last_sync = clock.monotonic()
        self._segments: list[Segment] = []
        self._bases: list[int] = []
        self._producers: dict[int, ProducerState] = {}
        self._end = 0
        self._size = 0
        self._closed = False
        self._ckpt_fd: int | None = None
        self._ckpt_lock = threading.Lock()
        make_dirs(fs, self.directory)
        try:
            self._recover()
        except BaseException:
            for seg in self._segments:
                seg.close()
            if self._ckpt_fd is not None:
                fs.close(self._ckpt_fd)
            raise

    # ------------------------------------------------------------ properties
    @property
    def start_offset(self) -> int:
        return self._segments[0].base

    @property
    def end_offset(self) -> int:
        return self._end

    @property
    def size_bytes(self) -> int:
        return self._size

    @property
    def durable_end(self) -> int:
        """End of the records a power cut would keep (synced), whatever the policy."""
        return self._durable_end

    @property
    def high_watermark(self) -> int:
        """End of what readers see: with `Fsync.ALWAYS` only synced records (as
        Kafka's high watermark), so nothing read can vanish in a power cut."""
        return self._durable_end if self.fsync is Fsync.ALWAYS else self._end

    @property
    def segment_count(self) -> int:
        return len(self._segments)

    # ------------------------------------------------------------ recovery
    def _recover(self) -> None:
        loaded = LogLoader(self.directory, self.fs, self.index_interval_bytes).load()
        self._segments, self._bases = loaded.segments, loaded.bases
        self._producers, self._end, self._size = loaded.producers, loaded.end, loaded.size
        last = self._segments[-1]
        self._written = self._synced = 0
        self._durable_end = self._end
        try:
            self._ckpt_fd = create(self.fs, self.directory / CHECKPOINT)
        except OSError as exc:  # a full disk: recovery only knows less next time
            log.warning("cannot create %s: %s", self.directory / CHECKPOINT,
                        exc.strerror or exc)
        self._checkpoint(last.base, last.size)

    def _checkpoint(self, base: int, length: int) -> None:
        """Record that segment `base` is synced up to `length` (no fsync: see
        "Torn tails" in the module docstring)."""
        if self._ckpt_fd is None:
            return
        data = encode_checkpoint(base, length)
        with self._ckpt_lock, contextlib.suppress(OSError):
            self.fs.pwrite(self._ckpt_fd, data, 0)

    # ------------------------------------------------------------ appending
    def append(
        self, items: Sequence[Item], *, producer_id: int = -1, sequence: int = -1,
        allow_gap: bool = False, restart: bool = False,
    ) -> int:
        """Append one batch; returns the offset of its first record.

        With `producer_id >= 0` and `sequence >= 0` (sequence of the first item,
        one per item after it) the batch is checked as Kafka's idempotent producer
        does (see `check_sequence`): an exact retry of a remembered batch is not
        stored again and gets its original first offset.
        """
        if not items:
            raise ValueError("append needs at least one record")
        with self._lock:
            if self._closed:
                raise StorageError(f"log {self.directory} is closed")
            if self._failed is not None:
                raise self._failed
            base = -1
            if producer_id >= 0 and sequence >= 0:
                base = self._check_sequence(producer_id, sequence, len(items), allow_gap,
                                            restart)
            if base < 0:
                base = self._append_locked(items, producer_id, sequence)
            target = self._written
        group = self.group
        if self.fsync is Fsync.ALWAYS:
            if group is None:
                self._wait_synced(target)
            elif group.deferring():
                group.add(self, target)  # synced once at the end of the block
            else:
                group.flush_pending()  # what was written before first (write order)
                self._wait_synced(target)
        elif self.fsync is Fsync.INTERVAL and group is not None and group.in_deferred():
            group.add(self, target)  # an exactly-once step: synced at the block's end
        return base

    def check_sequence(self, producer_id: int, sequence: int, count: int, *,
                       allow_gap: bool = False, restart: bool = False) -> int:
        """What `append` would do with a producer's batch of `count` records
        starting at `sequence`: the original first offset of an exact retry (same
        first sequence and count as one of the producer's last 8 batches), -1 to
        append it (an unknown producer, or `sequence` = last + 1; with `allow_gap`
        any higher sequence), else InvalidRequest: "out of order sequence S:
        expected N (...)" (a lower sequence that is no exact retry of a remembered
        batch, or a gap). With `restart` (the caller checked that the producer's
        sequence wrapped around) any sequence that is no retry is appended."""
        with self._lock:
            return self._check_sequence(producer_id, sequence, count, allow_gap, restart)

    def last_sequence(self, producer_id: int) -> int:
        """The last sequence `producer_id` appended here, -1 for an unknown producer."""
        with self._lock:
            prod = self._producers.get(producer_id)
            return -1 if prod is None else prod.last_seq

    def _check_sequence(self, producer_id: int, sequence: int, count: int,
                        allow_gap: bool, restart: bool = False) -> int:
        prod = self._producers.get(producer_id)
        if prod is None:
            return -1
        base = prod.retry_of(sequence, count)
        if base >= 0:
            return base
        expected = prod.last_seq + 1
        if sequence == expected or (allow_gap and sequence > expected) or restart:
            return -1
        why = ("a retry must resend the same batch" if sequence < expected
               else "sequences must not skip")
        raise InvalidRequest(f"out of order sequence {sequence}: expected {expected} ({why})")

    def _append_locked(self, items: Sequence[Item], producer_id: int, sequence: int) -> int:
        """Write one batch; the caller holds `_lock`."""
        base = self._end
        data, max_ts = encode_batch(base, items, producer_id=producer_id,
                                    base_sequence=sequence)
        seg = self._segments[-1]
        if seg.size and seg.size + len(data) > min(self.segment_bytes, MAX_SEGMENT_BYTES):
            seg = self._roll()
        self._write(seg, data)
        if not seg.size:
            seg.first_ts = items[0][3]
        if max_ts > seg.max_ts:
            seg.max_ts = max_ts
        if seg.since_index >= self.index_interval_bytes or not seg.index.offsets:
            seg.index.add(base, seg.size)
            seg.tindex.add(seg.max_ts, base)
            seg.since_index = 0
        seg.since_index += len(data)
        seg.size += len(data)
        self._size += len(data)
        self._written += len(data)
        self._end = base + len(items)
        seg.last_offset = self._end - 1
        if producer_id >= 0 and sequence >= 0:
            self._producers.setdefault(producer_id, ProducerState()).record(
                sequence, len(items), base)
        return base

    def _write(self, seg: Segment, data: bytes) -> None:
        pwrite = self.fs.pwrite
        if seg.size + len(data) > seg.zeroed and self.zero_ahead and not seg.zeros_refused:
            self._zero_ahead(seg, seg.size + len(data))
        try:
            view = memoryview(data)
            while view:
                n = pwrite(seg.fd, view, seg.size + len(data) - len(view))
                if n <= 0:
                    raise OSError(28, "No space left on device")
                view = view[n:]
        except OSError as exc:
            with contextlib.suppress(OSError):
                self.fs.truncate(seg.fd, seg.size)
                seg.zeroed = seg.size
            err = StorageError(f"cannot write to {seg.path}: {exc.strerror}")
            err.retriable = True
            raise err from exc

    def _zero_ahead(self, seg: Segment, end: int) -> None:
        """Write zeros from the file's end or `end`, the end of the append about to
        be written, whichever is further, to `zero_ahead` bytes past `end` (not past
        the segment's size limit), unsynced: the next fdatasync takes them, and the
        ones after it find the file's length unchanged. Recovery takes zeros after
        the last batch for unwritten space (`runner.log.recovery`); a roll and a
        close cut the file to its batches. Not written (a full disk): the appends
        grow the file as they would without, and this segment writes no more zeros
        (each try would fill the disk for a moment: other writers' ENOSPC)."""
        limit = max(min(self.segment_bytes, MAX_SEGMENT_BYTES), end)
        upto = min(end + self.zero_ahead, limit)
        at = max(seg.zeroed, end)  # (up to `end` the append itself writes)
        if upto <= at:
            return
        try:
            while at < upto:
                n = self.fs.pwrite(seg.fd, _ZEROS[:min(upto - at, ZERO_AHEAD)], at)
                if n <= 0:
                    raise OSError(28, "No space left on device")
                at += n
        except OSError as exc:
            log.debug("cannot write zeros ahead in %s: %s", seg.path, exc)
            seg.zeros_refused = True
            with contextlib.suppress(OSError):
                self.fs.truncate(seg.fd, seg.size)
                at = seg.size
        seg.zeroed = at

    def _cut_zeros(self, seg: Segment) -> bool:
        """Cut the zeros written ahead off `seg`'s file (synced by the caller);
        whether there were any."""
        if seg.zeroed <= seg.size:
            return False
        self.fs.truncate(seg.fd, seg.size)
        seg.zeroed = seg.size
        return True

    def _roll(self) -> Segment:
        """Close the active segment (synced, with final index entries) and start a new
        one. On failure (e.g. a full disk) the active segment stays active, a
        half-made new one is closed and removed, and StorageError (retriable)
        names the file that could not be written."""
        old = self._segments[-1]
        try:  # a closed segment ends with its last batch (synced below, before the
            # next segment's file exists)
            self._cut_zeros(old)
        except OSError as exc:
            err = StorageError(f"cannot start a new segment: cannot truncate {old.path}: "
                               f"{exc.strerror or exc}")
            err.retriable = True
            raise err from exc
        with self._sync_lock:
            self._fsync(old.fd, old.path)
        with self._cond:
            self._synced = self._written
            self._durable_end = self._end
        old.tindex.close_entry(max(old.max_ts, 0), max(old.last_offset, old.base))
        path = old.index.path
        seg: Segment | None = None
        try:
            for ix in (old.index, old.tindex):  # trusted at open once closed: synced
                path = ix.path
                ix.flush()
                if ix.fd is not None:
                    self._fsync(ix.fd, ix.path)  # a failure fails the log
            # the snapshot first: a segment file never exists without its snapshot
            path = self.directory / f"{segment_name(self._end)}.snapshot"
            write_producers(self.fs, path, self._producers)
            path = path.with_suffix(".log")
            seg = Segment(self.directory, self._end, self.fs)
            path = seg.index.path
            seg.index.open_for_append(truncate=True)
            path = seg.tindex.path
            seg.tindex.open_for_append(truncate=True)
        except OSError as exc:
            with contextlib.suppress(OSError):
                if seg is not None:
                    seg.close()
                remove(self.fs, [self.directory / f"{segment_name(self._end)}{suffix}"
                                 for suffix in (".log", ".index", ".timeindex", ".snapshot",
                                                ".snapshot.tmp")])
            err = StorageError(f"cannot start a new segment: cannot write {path}: "
                               f"{exc.strerror or exc}")
            err.retriable = True
            raise err from exc
        old.index.close()
        old.tindex.close()
        with contextlib.suppress(OSError):
            old.close_sync_fd()  # synced above: no asynchronous fsync needs it again
        self._segments.append(seg)
        self._bases.append(seg.base)
        return seg

    def active_timestamps(self) -> tuple[int, int] | None:
        """(first timestamp, newest timestamp) of the active segment's records;
        None when it is empty (for time-based rolling, Kafka's `segment.ms`)."""
        with self._lock:
            seg = self._segments[-1]
            return (seg.first_ts, seg.max_ts) if seg.size else None

    def first_timestamp(self) -> int | None:
        """The timestamp (ms) of the first record at the log start; None when the log
        holds no record. Costs one small read of a segment's first batch header and
        first record header (no record bodies), once per segment: the value is kept
        until retention or compaction replaces that segment."""
        with self._lock:
            for seg in self._segments:
                if not seg.size:
                    continue  # the empty active segment, or a segment compaction emptied
                if seg.head_ts is None:
                    seg.head_ts = head_timestamp(seg)
                return seg.head_ts
            return None

    def roll(self) -> None:
        """Start a new segment now (the current one becomes closed, e.g. for compaction)."""
        with self._lock:
            if self._segments[-1].size:
                self._roll()

    # ------------------------------------------------------------ durability
    def _wait_synced(self, target: int) -> None:
        with self._cond:
            while self._synced < target:
                if self._failed is not None:
                    raise self._failed
                if not self._syncing:
                    self._syncing = True
                    break
                self._cond.wait()
            else:
                return
        try:
            self._sync_now()
        finally:
            with self._cond:
                self._syncing = False
                self._cond.notify_all()

    def _sync_now(self) -> None:
        self._lock.acquire()
        try:
            point = self._sync_point()
            self._sync_lock.acquire()
        finally:
            self._lock.release()
        seg = point[2]
        try:
            self._fsync(seg.fd, seg.path)
        finally:
            self._sync_lock.release()
        self._synced_to(*point)

    def _sync_point(self) -> tuple[int, int, Segment, int]:
        """(Under `_lock`.) What an fsync starting now covers: the bytes written, the
        log end, the active segment and its size (its index caches written out)."""
        seg = self._segments[-1]
        with contextlib.suppress(OSError):  # a cache: rebuilt at recovery when short
            seg.index.flush()
            seg.tindex.flush()
        return self._written, self._end, seg, seg.size

    def _synced_to(self, written: int, end: int, seg: Segment, size: int) -> None:
        """An fsync that started at `_sync_point` ended well."""
        with self._cond:
            self._synced = max(self._synced, written)
            self._durable_end = max(self._durable_end, end)
        self._checkpoint(seg.base, size)
        self._last_sync = self.clock.monotonic()

    def start_sync(self, target: int, syncer: Syncer, done: SyncEnded) -> bool:
        """Start an fdatasync of at least the first `target` bytes written through
        `syncer` (an event loop's: `runner.log.commits`) and return; `done(None)`
        once they are synced, `done(LogFailed)` when the fsync failed (the log
        fails as on a failed `sync`). False, and no `done`, when they are synced
        already; LogFailed when the log failed before."""
        with self._cond:
            if self._failed is not None:
                raise self._failed
            if self._synced >= target:
                return False
        with self._lock:
            point = self._sync_point()
            seg = point[2]

            def ended(error: BaseException | None) -> None:
                if error is not None:
                    done(self._fail(seg.path, error))
                    return
                if self._failed is not None:  # another sync of it failed meanwhile
                    done(self._failed)
                    return
                self._synced_to(*point)
                done(None)

            # on the segment's own descriptor for it (see `Segment.async_fd`),
            # submitted while it cannot be closed (the kernel holds the file from
            # here on)
            with self._sync_lock:
                syncer.submit(seg.async_fd(), ended)
        return True

    def _fsync(self, fd: int, path: Path) -> None:
        """fdatasync `fd`; on failure the log fails for good (see the module docstring)."""
        if self._failed is not None:
            raise self._failed
        try:
            self.fs.sync(fd)
        except OSError as exc:
            raise self._fail(path, exc) from exc

    def _fail(self, path: Path, exc: BaseException) -> LogFailed:
        """The log fails for good after a failed fsync of `path`: the error to raise."""
        if self._failed is None:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            self._failed = LogFailed(
                f"fsync of {path} failed ({reason}): the log refuses writes "
                f"and reads until the runner is restarted and recovers it from disk",
                path=str(path))
            log.error("%s", self._failed)
        with self._cond:
            self._cond.notify_all()
        return self._failed

    @property
    def failed(self) -> LogFailed | None:
        """Why the log refuses everything (a failed fsync), or None."""
        return self._failed

    def sync(self) -> None:
        """fsync everything written so far."""
        with self._cond:
            if self._failed is not None:
                raise self._failed
            if self._synced >= self._written:
                return
        self._wait_synced(self._written)

    def sync_to(self, target: int) -> None:
        """fsync at least the first `target` bytes written (see `runner.log.commits`)."""
        with self._cond:
            if self._failed is not None:
                raise self._failed
            if self._synced >= target:
                return
        self._wait_synced(target)

    def maybe_sync(self) -> bool:
        """INTERVAL policy: sync when `fsync_interval_ms` has passed; True if it synced."""
        if self._synced >= self._written:
            return False
        if (self.clock.monotonic() - self._last_sync) * 1000.0 < self.fsync_interval_ms:
            return False
        self.sync()
        return True

    @property
    def unsynced_bytes(self) -> int:
        return self._written - self._synced

    # ------------------------------------------------------------ reading
    def _check_range(self, offset: int) -> None:
        if self._failed is not None:
            raise self._failed
        if offset < self.start_offset or offset > self._end:
            where = "below the log start" if offset < self.start_offset else "above the log end"
            raise OffsetOutOfRange(
                f"offset {offset} is {where} (log start {self.start_offset}, "
                f"log end {self._end})",
                log_start=self.start_offset, log_end=self._end)

    def read(
        self, offset: int, *, max_records: int = 100, max_bytes: int = MiB,
    ) -> list[LogRecord]:
        """Records with offset >= `offset`, at most `max_records` and about `max_bytes`
        of record data (always at least one record when any exists)."""
        return self.read_from(offset, max_records=max_records, max_bytes=max_bytes)[0]

    def read_from(
        self, offset: int, *, max_records: int = 100, max_bytes: int = MiB,
    ) -> tuple[list[LogRecord], int]:
        """`read`, plus the offset to read next: after the last record returned, or,
        when the read reached the end of the log, the end of what readers see
        (`high_watermark`), so offsets that compaction removed (even at the very
        end) are passed over instead of being asked for again and again."""
        with self._lock:
            self._check_range(offset)
            out, complete = self._read_locked(offset, max_records, max_bytes)
            visible = self.high_watermark
            if out and out[-1].offset >= visible:
                out = [r for r in out if r.offset < visible]
                complete = True
            if complete:
                return out, max(offset, visible)
            return out, out[-1].offset + 1 if out else offset

    def _read_locked(self, offset: int, max_records: int, max_bytes: int,
                     ) -> tuple[list[LogRecord], bool]:
        """(records, whether the scan reached the end of the log)."""
        out: list[LogRecord] = []
        taken = 0
        i = bisect_right(self._bases, offset) - 1
        while i < len(self._segments):
            if len(out) >= max_records or taken >= max_bytes:
                return out, False
            seg = self._segments[i]
            pos = seg.index.lookup(offset)
            for buf, bpos, header, fpos in self._cached_batches(seg, pos, max_bytes,
                                                                 max_records):
                if header.last_offset < offset:
                    continue
                if not batch_crc_ok(buf, bpos, header):
                    raise CorruptSegment(f"corrupt batch in {seg.path} at byte {fpos}",
                                         path=str(seg.path), position=fpos)
                got, stopped = decode_records(buf, bpos, header, out, offset,
                                              max_records, max_bytes - taken)
                taken += got
                if stopped or len(out) >= max_records or taken >= max_bytes:
                    return out, False
            i += 1
        return out, True

    def _cached_batches(self, seg: Segment, pos: int, max_bytes: int, max_records: int
                        ) -> Iterator[tuple[bytes, int, BatchHeader, int]]:
        # read about what the caller may take: small reads stay small
        chunk = min(CHUNK, max(16 * 1024, min(max_bytes, max_records * 1024)))
        base = seg.base

        def read(fd: int, length: int, at: int) -> bytes:
            return self._cache_get(base, fd, length, at)

        return walk_batches(seg.fd, pos, seg.size, seg.path, read, chunk=chunk)

    def _cache_get(self, base: int, fd: int, length: int, pos: int) -> bytes:
        """Bytes at `pos` of segment `base`, at least `length` of them when the file
        has them. Segments only grow (or are replaced or deleted, which drops this
        log's entries), so a longer cached read at the same position is still right."""
        hit = self._cache.get(self._cache_owner, base, pos)
        if hit is not None and len(hit) >= length:
            return hit
        data = self.fs.pread(fd, length, pos)
        self._cache.put(self._cache_owner, base, pos, data)
        return data

    def _drop_cache(self) -> None:
        self._cache.drop(self._cache_owner)

    @property
    def cache_size(self) -> int:
        """Bytes this log holds in the read cache (the cache's capacity bounds
        them, shared with other logs when the cache is shared)."""
        return self._cache.held(self._cache_owner)

    def offset_for_timestamp(self, ts_ms: int) -> int:
        """The first offset whose record timestamp is >= ts_ms (end_offset if none)."""
        with self._lock:
            for seg in self._segments:
                if seg.max_ts < ts_ms:
                    continue
                pos = seg.index.lookup(seg.tindex.lookup(ts_ms))
                for buf, bpos, header, _fpos in walk_batches(seg.fd, pos, seg.size, seg.path,
                                                         self.fs.pread):
                    if header.max_timestamp < ts_ms:
                        continue
                    recs: list[LogRecord] = []
                    decode_records(buf, bpos, header, recs, 0, header.count)
                    for rec in recs:
                        if rec.timestamp_ms >= ts_ms:
                            return rec.offset
            return self._end

    # ------------------------------------------------------------ maintenance
    def delete_before(self, offset: int) -> int:
        """Drop whole segments whose records are all below `offset` (never the
        active one); returns the number of segments deleted."""
        with self._lock:
            dropped = 0
            while len(self._segments) > 1 and self._segments[1].base <= offset:
                self._delete_segment(self._segments.pop(0))
                self._bases.pop(0)
                dropped += 1
            if dropped:
                self._drop_cache()
            return dropped

    def _delete_segment(self, seg: Segment) -> None:
        with self._sync_lock:
            seg.close()
        self._size -= seg.size
        remove(self.fs, seg.files())

    def closed_segments(self) -> list[SegmentInfo]:
        with self._lock:
            return [SegmentInfo(s.base, self._bases[i + 1], s.size, s.max_ts, s.path)
                    for i, s in enumerate(self._segments[:-1])]

    def scan_segment(self, base: int) -> Iterator[tuple[BatchHeader, list[LogRecord]]]:
        """Every batch of closed segment `base` with its records (for the cleaner)."""
        with self._lock:
            seg = self._segments[self._bases.index(base)]
            fd = self.fs.open(seg.path)  # its own descriptor: the owner may close seg's
            size = seg.size
        try:
            for buf, bpos, header, fpos in walk_batches(fd, 0, size, seg.path, self.fs.pread):
                if not batch_crc_ok(buf, bpos, header):
                    raise CorruptSegment(f"corrupt batch in {seg.path} at byte {fpos}",
                                         path=str(seg.path), position=fpos)
                recs: list[LogRecord] = []
                decode_records(buf, bpos, header, recs, 0, header.count)
                yield header, recs
        finally:
            self.fs.close(fd)

    def replace_segments(
        self, bases: Sequence[int], batches: Iterator[CleanedBatch],
    ) -> None:
        """Replace consecutive closed segments `bases` by one segment holding `batches`
        ((records, producer_id, base_sequence) or (records, producer_id,
        base_sequence, delete_horizon ms or -1), offsets kept), atomically via rename.

        Crash safety: the new file is written and synced as `<base>.log.cleaned`,
        renamed to `<base>.<next base>.swap` (the commit point: the name says which
        segments it replaces), then the old files go and the swap becomes
        `<base>.log`; recovery deletes `.cleaned` files and completes a `.swap`.
        """
        first = bases[0]
        name = segment_name(first)
        with self._lock:
            # a segment emptied by cleaning keeps the age of what it replaced (Kafka:
            # the cleaned segment keeps the last one's modification time), so time
            # retention, not compaction, decides when it goes
            old_ts = max((s.max_ts for s in self._segments if s.base in bases), default=-1)
        cleaned = self.directory / f"{name}.log.cleaned"
        fd = create(self.fs, cleaned, truncate=True)
        index = OffsetIndex(self.directory / f"{name}.index.cleaned", first, self.fs)
        tindex = TimeIndex(self.directory / f"{name}.timeindex.cleaned", first, self.fs)
        size, since, max_ts, last = 0, self.index_interval_bytes, -1, first - 1
        try:
            for batch in batches:
                recs, pid, seq = batch[0], batch[1], batch[2]
                horizon = batch[3] if len(batch) > 3 else -1
                if not recs:
                    continue
                b0 = recs[0].offset
                items = [(r.key, r.value, r.headers, r.timestamp_ms) for r in recs]
                data, bmax = encode_batch(b0, items, offset_deltas=[r.offset - b0 for r in recs],
                                          producer_id=pid, base_sequence=seq,
                                          delete_horizon=horizon if horizon >= 0 else None)
                write_all(self.fs, fd, data, size)
                max_ts = max(max_ts, bmax)
                if since >= self.index_interval_bytes:
                    index.add(b0, size)
                    tindex.add(max_ts, b0)
                    since = 0
                since += len(data)
                size += len(data)
                last = recs[-1].offset
            if max_ts < 0:
                max_ts = old_ts
            tindex.close_entry(max(max_ts, 0), max(last, first))
            self.fs.sync(fd)
            for ix in (index, tindex):  # synced before the commit: recovery trusts them
                ix.open_for_append(truncate=True)
                ix.flush(fsync=True)
                ix.close()
        except BaseException:
            with contextlib.suppress(OSError):
                remove(self.fs, [cleaned, index.path, tindex.path])
            raise
        finally:
            self.fs.close(fd)
        with self._lock:
            idx = self._bases.index(first)
            old = self._segments[idx:idx + len(bases)]
            if [s.base for s in old] != list(bases) or idx + len(bases) >= len(self._segments):
                remove(self.fs, [cleaned, index.path, tindex.path])
                raise StorageError(f"segments {list(bases)} changed during compaction")
            upto = self._bases[idx + len(bases)]
            swap = self.directory / f"{name}.{segment_name(upto)}.swap"
            rename(self.fs, cleaned, swap)  # the commit point
            gone = []
            for seg in old:
                with self._sync_lock:
                    seg.close()
                self._size -= seg.size
                gone += [p for p in seg.files() if p.suffix != ".snapshot" or seg.base != first]
            for p in gone:
                with contextlib.suppress(FileNotFoundError):
                    self.fs.unlink(p)
            final = [self.directory / f"{name}{suffix}" for suffix in (".index", ".timeindex")]
            self.fs.rename(index.path, final[0])
            self.fs.rename(tindex.path, final[1])
            self.fs.rename(swap, self.directory / f"{name}.log")
            self.fs.sync_dir(self.directory)
            seg = Segment(self.directory, first, self.fs)
            index.path, tindex.path = final
            seg.index, seg.tindex = index, tindex
            seg.max_ts, seg.last_offset = max_ts, upto - 1
            self._segments[idx:idx + len(bases)] = [seg]
            self._bases[idx:idx + len(bases)] = [first]
            self._size += seg.size
            self._drop_cache()

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        try:
            if self._failed is None:
                last = self._segments[-1]
                with contextlib.suppress(OSError):  # else recovery takes them for unwritten
                    if self._cut_zeros(last) and self._written == self._synced:
                        self.fs.sync(last.fd)  # (else `sync` below syncs the cut)
            if self._failed is None and (
                    self.fsync is not Fsync.NEVER or self._written != self._synced):
                self.sync()
            if self._failed is None and self._ckpt_fd is not None:
                last = self._segments[-1]
                self._checkpoint(last.base, last.size)
                with contextlib.suppress(OSError):
                    self.fs.sync(self._ckpt_fd)
        finally:
            with self._lock, self._sync_lock:
                for seg in self._segments:
                    seg.close()
                if self._ckpt_fd is not None:
                    self.fs.close(self._ckpt_fd)
                    self._ckpt_fd = None
            self._drop_cache()


