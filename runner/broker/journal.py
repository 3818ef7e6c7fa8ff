"""The queue journal: a durable queue as one SegmentedLog of publishes and settlements.

One log per durable queue (`<data>/queues/<name>/`), three record kinds, told
apart by the first byte of the key::

    P  publish     key = b"P" + META + 4 strings + headers (tagged JSON of
                   `runner.broker.headers`, a dead letter's cycle watch as its
                   extra), value = body,
                   timestamp = the message's; its offset is the message's uid
    S  settled     value = int64 uids (acked, dead-lettered, dropped, expired)
    D  delivered   value = int64 pairs (uid, delivery count so far)

META (`<HIdd`): priority, delivery count at publish, expires_at (wall
seconds, NaN: none), not_before (wall seconds of a pending retry, 0: none).
Strings (routing key, exchange, message id, content type) are a uint16
length then UTF-8; 0xFFFF is None.

Everything a queue operation writes goes out in ONE append at `flush` (group
commit: a batch publish of N messages is one append and, with
`fsync=always`, one fsync). Delivery marks are the exception: a pull writes
nothing by itself; its D record rides on the queue's next append (a publish
or a settlement, e.g. the ack of that pull), or `Broker.tick` writes it after
`MARKS_DELAY_S` (at once when fsync is not `always`), or `close`/`sync` do.
A crash before that loses only the `redelivered` hint (and delivery count) of
those deliveries, never a message, as RabbitMQ allows. Recovery replays the
log: P adds, S removes, D sets the delivery count; what remains is the queue, in uid order, the
delivered ones redelivered. Compaction keeps offsets (uids) stable: whole
segments below the oldest live message are deleted, and closed segments that
are mostly settled are rewritten with only their live publishes
(`SegmentedLog.replace_segments`).
"""

from __future__ import annotations

import math
import struct
from array import array
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from runner.broker.headers import decode_headers, encode_headers
from runner.broker.message import (
    EMPTY_HEADERS,
    MESSAGE_OVERHEAD,
    QueuedMessage,
    headers_memory,
)
from runner.clock import Clock, now_ms
from runner.datapath import remove_tree
from runner.fs import LOCAL, FileSystem
from runner.log.commits import GroupCommit
from runner.log.record import Fsync, Item, LogRecord
from runner.log.segment import SegmentedLog

META = struct.Struct("<HIdd")
LEN = struct.Struct("<H")
NONE_LEN = 0xFFFF
NO_HEADERS: tuple[tuple[str, bytes], ...] = ()
_READ_BATCH = 2000
_MARKS_MAX = 1 << 17  # int64s of delivery marks held back at most (64k pairs, 1 MiB)
_NO_ID = LEN.pack(NONE_LEN)


def _put_str(parts: list[bytes], s: str | None) -> None:
    if s is None:
        parts.append(LEN.pack(NONE_LEN))
    else:
        b = s.encode()
        parts.append(LEN.pack(len(b)))
        parts.append(b)


def _get_str(buf: bytes, pos: int) -> tuple[str | None, int]:
    (n,) = LEN.unpack_from(buf, pos)
    pos += 2
    if n == NONE_LEN:
        return None, pos
    return buf[pos:pos + n].decode(), pos + n


def encode_strings(msg: QueuedMessage) -> bytes:
    parts: list[bytes] = []
    _put_str(parts, msg.routing_key)
    _put_str(parts, msg.exchange)
    props = msg.props
    _put_str(parts, props[0] if props else None)
    _put_str(parts, props[1] if props else None)
    return b"".join(parts)


def encode_meta(
    msg: QueuedMessage, not_before: float = 0.0, strings: bytes | None = None,
) -> bytes:
    head = b"P" + META.pack(
        msg.priority & 0xFFFF, msg.delivery_count,
        math.nan if msg.expires_at is None else msg.expires_at, not_before,
    )
    tail = strings if strings is not None else encode_strings(msg)
    headers = msg.headers
    props = msg.props
    path = list(props[2]) if props is not None and len(props) == 3 else None
    if headers or path:
        return head + tail + encode_headers(headers, path)
    return head + tail


def _key_parts(msg: QueuedMessage) -> tuple[bytes, bytes, bytes]:
    """A header-less P key without a message id, and its parts before and after the id."""
    head = b"P" + META.pack(msg.priority & 0xFFFF, 0, math.nan, 0.0)
    parts: list[bytes] = []
    _put_str(parts, msg.routing_key)
    _put_str(parts, msg.exchange)
    before = head + b"".join(parts)
    parts = []
    _put_str(parts, msg.content_type)
    after = b"".join(parts)
    return before + _NO_ID + after, before, after


def decode_publish(rec: LogRecord, *, keep_body: bool) -> tuple[QueuedMessage, float]:
    """A P record as a ready message, and its retry due time (0: none)."""
    key = rec.key or b"P"
    prio, count, expires, not_before = META.unpack_from(key, 1)
    pos = 1 + META.size
    rk, pos = _get_str(key, pos)
    ex, pos = _get_str(key, pos)
    mid, pos = _get_str(key, pos)
    ctype, pos = _get_str(key, pos)
    headers: Mapping[str, Any] = EMPTY_HEADERS
    path: tuple[str, ...] = ()
    if pos < len(key):
        headers, extra = decode_headers(key[pos:])
        if extra:
            path = tuple(extra)
    body = rec.value or b""
    msg = QueuedMessage(
        rec.offset, body if keep_body else rec.offset, len(body), prio, rk or "", ex or "",
        headers, (mid, ctype) if mid is not None or ctype is not None else None,
        rec.timestamp_ms, None if math.isnan(expires) else expires, count,
    )
    if path:
        msg.props = (mid, ctype, path)
    return msg, not_before


class QueueLog:
    """The journal of one durable queue (implements queue.Journal and queue.Spill)."""

    def __init__(
        self, directory: Path, *, fsync: Fsync, clock: Clock, segment_bytes: int,
        fs: FileSystem = LOCAL, group: GroupCommit | None = None,
    ) -> None:
        self.clock = clock
        self.log = SegmentedLog(directory, segment_bytes=segment_bytes, fsync=fsync,
                                clock=clock, fs=fs, group=group)
        self._pending: list[Item] = []
        self._settled: array[int] = array("q")
        self._delivered: array[int] = array("q")
        self._keys: dict[tuple[int, str, str, str | None], tuple[bytes, bytes, bytes]] = {}
        self._marks_since = 0.0
        self.compacted_size = 0

    # ------------------------------------------------------------ writing
    def reserve(
        self, msg: QueuedMessage, not_before: float = 0.0, body: bytes | None = None,
    ) -> int:
        """Queue a P record for `msg`; returns its offset (the message's uid)."""
        if body is None:
            body = msg.body if isinstance(msg.body, bytes) else self.read_body(msg.body)
        pending = self._pending
        uid = self.log.end_offset + len(pending)
        if (not msg.headers and msg.expires_at is None and not msg.delivery_count
                and not not_before):
            # the common message: its key but the message id repeats; cache the rest
            props = msg.props
            ck = (msg.priority, msg.routing_key, msg.exchange,
                  props[1] if props is not None else None)
            keys = self._keys
            parts = keys.get(ck)
            if parts is None:
                if len(keys) > 4096:
                    keys.clear()
                parts = keys[ck] = _key_parts(msg)
            mid = props[0] if props is not None else None
            if mid is None:
                key = parts[0]
            else:
                b = mid.encode()
                key = b"".join((parts[1], LEN.pack(len(b)), b, parts[2]))
        else:
            key = encode_meta(msg, not_before)
        pending.append((key, body, NO_HEADERS, msg.timestamp_ms))
        return uid

    def reserve_run(self, msgs: list[QueuedMessage]) -> None:
        """`reserve` for messages without headers, message id or delivery count whose
        bodies are bytes (`MessageQueue.admit_many`); sets each message's uid."""
        pending = self._pending
        put = pending.append
        uid = self.log.end_offset + len(pending)
        keys = self._keys
        for msg in msgs:
            msg.uid = uid
            uid += 1
            props = msg.props
            if msg.expires_at is not None:
                key = encode_meta(msg)
            else:
                ck = (msg.priority, msg.routing_key, msg.exchange,
                      props[1] if props is not None else None)
                parts = keys.get(ck)
                if parts is None:
                    if len(keys) > 4096:
                        keys.clear()
                    parts = keys[ck] = _key_parts(msg)
                key = parts[0]
            put((key, msg.body, NO_HEADERS, msg.timestamp_ms))  # type: ignore[arg-type]

    def settle(self, uid: int) -> None:
        self._settled.append(uid)

    def settle_many(self, uids: list[int]) -> None:
        self._settled.extend(uids)

    def delivered(self, msg: QueuedMessage) -> None:
        self.delivered_many([msg.uid, msg.delivery_count])

    def delivered_many(self, pairs: list[int]) -> None:
        """(uid, delivery count) pairs, flattened. They are not written on their own:
        they ride on the next append (a publish or a settlement), or go at `tick`."""
        if not self._delivered:
            self._marks_since = self.clock.monotonic()
        self._delivered.extend(pairs)

    @property
    def marks_pending(self) -> int:
        """Delivery marks (pairs) waiting for the next append."""
        return len(self._delivered) // 2

    def flush(self, *, marks: bool = False) -> None:
        """Write everything queued since the last flush as one append.

        Delivery marks alone are kept back (a lost mark only loses the
        `redelivered` hint, never a message) unless `marks` is true or many
        are waiting."""
        items = self._pending
        marks_only = not items and not self._settled
        if marks_only and (
                not self._delivered or (not marks and len(self._delivered) < _MARKS_MAX)):
            return
        ts = now_ms(self.clock)
        if self._settled:
            items.append((b"S", self._settled.tobytes(), NO_HEADERS, ts))
            self._settled = array("q")
        if self._delivered:
            items.append((b"D", self._delivered.tobytes(), NO_HEADERS, ts))
            self._delivered = array("q")
        self._pending = []
        self.log.append(items)

    def discard(self) -> None:
        """Forget everything queued since the last flush (a refused write: the queue
        is reloaded from the log)."""
        self._pending = []
        self._settled = array("q")
        self._delivered = array("q")

    def flush_marks(self, *, older_than_s: float) -> None:
        """Write delivery marks waiting longer than `older_than_s` (0: any)."""
        if self._delivered and (
                self.clock.monotonic() - self._marks_since >= older_than_s):
            self.flush(marks=True)

    # ------------------------------------------------------------ bodies
    def spill(self, msg: QueuedMessage, body: bytes) -> int:
        return msg.uid  # the P record holds the body already

    def read_body(self, loc: int) -> bytes:
        if loc >= self.log.end_offset:
            self.flush()
        recs = self.log.read(loc, max_records=1)
        if not recs or recs[0].offset != loc:
            raise LookupError(f"queue log {self.log.directory}: no record at offset {loc}")
        return recs[0].value or b""

    # ------------------------------------------------------------ recovery
    def records(self) -> Iterator[LogRecord]:
        off = self.log.start_offset
        end = self.log.end_offset
        while off < end:
            recs = self.log.read(off, max_records=_READ_BATCH, max_bytes=8 << 20)
            if not recs:
                break
            yield from recs
            off = recs[-1].offset + 1

    def recover(
        self, *, memory_left: int,
    ) -> tuple[list[QueuedMessage], list[tuple[float, QueuedMessage]]]:
        """The live messages (ready, in uid order) and the pending retries (due, msg)."""
        live: dict[int, tuple[QueuedMessage, float]] = {}
        used = 0  # bodies kept in memory while replaying, never past `memory_left`
        for rec in self.records():
            kind = rec.key[:1] if rec.key else b""
            if kind == b"P":
                size = len(rec.value or b"")
                keep = used + MESSAGE_OVERHEAD + size <= memory_left
                entry = live[rec.offset] = decode_publish(rec, keep_body=keep)
                used += MESSAGE_OVERHEAD + (size if keep else 0) + headers_memory(
                    entry[0].headers)
            elif kind == b"S":
                uids = array("q")
                uids.frombytes(rec.value or b"")
                for uid in uids:
                    gone = live.pop(uid, None)
                    if gone is not None:
                        used -= MESSAGE_OVERHEAD + headers_memory(gone[0].headers) + (
                            gone[0].size if isinstance(gone[0].body, bytes) else 0)
            elif kind == b"D":
                pairs = array("q")
                pairs.frombytes(rec.value or b"")
                for i in range(0, len(pairs) - 1, 2):
                    found = live.get(pairs[i])
                    if found is not None:
                        found[0].delivery_count = pairs[i + 1]
        ready: list[QueuedMessage] = []
        delayed: list[tuple[float, QueuedMessage]] = []
        for uid in sorted(live):
            msg, not_before = live[uid]
            if not_before:
                delayed.append((not_before, msg))
            else:
                ready.append(msg)
        self.compacted_size = self.log.size_bytes
        return ready, delayed

    # ------------------------------------------------------------ compaction
    def compact(
        self, live: Callable[[], Mapping[int, QueuedMessage]], *, force: bool = False,
    ) -> bool:
        """Drop or rewrite closed segments that hold mostly settled records.

        `live()` maps uid -> message for every message the queue still owns; it
        is called only when the log grew by a segment since the last attempt
        (it walks every message). Returns True when something was removed.
        """
        log = self.log
        self.flush(marks=True)
        if log.segment_count < 2:
            return False
        if not force and log.size_bytes < self.compacted_size + log.segment_bytes:
            return False
        owned = live()
        first_live = min(owned) if owned else log.end_offset
        changed = log.delete_before(first_live) > 0
        closed = log.closed_segments()
        if closed and (force or sum(s.size for s in closed) > log.segment_bytes):
            bases = [s.base for s in closed]
            log.replace_segments(bases, self._kept(bases, owned))
            changed = True
        self.compacted_size = log.size_bytes
        return changed

    def _kept(
        self, bases: list[int], live: Mapping[int, QueuedMessage],
    ) -> Iterator[tuple[list[LogRecord], int, int]]:
        for base in bases:
            for _header, recs in self.log.scan_segment(base):
                keep = []
                for r in recs:
                    if r.key and r.key[:1] == b"P":
                        msg = live.get(r.offset)
                        if msg is not None:
                            # fold D records into the publish: the count survives them
                            key = r.key[:1] + META.pack(
                                *META.unpack_from(r.key, 1)[:1], msg.delivery_count,
                                *META.unpack_from(r.key, 1)[2:]) + r.key[1 + META.size:]
                            keep.append(LogRecord(r.offset, r.timestamp_ms, key, r.value,
                                                  r.headers))
                if keep:
                    yield keep, -1, -1

    def sync(self) -> None:
        self.flush(marks=True)
        self.log.sync()

    def close(self) -> None:
        try:
            if self.log.failed is None:
                self.flush(marks=True)
        finally:
            self.log.close()


class SpillLog:
    """Bodies of non-durable messages past the memory budget (no journal, no fsync)."""

    def __init__(self, directory: Path, *, clock: Clock, segment_bytes: int,
                 fs: FileSystem = LOCAL) -> None:
        self.log = SegmentedLog(directory, segment_bytes=segment_bytes, fsync=Fsync.NEVER,
                                clock=clock, fs=fs)

    def spill(self, msg: QueuedMessage, body: bytes) -> int:
        return self.log.append([(None, body, NO_HEADERS, msg.timestamp_ms)])

    def read_body(self, loc: int) -> bytes:
        recs = self.log.read(loc, max_records=1)
        if not recs or recs[0].offset != loc:
            raise LookupError(f"spill log {self.log.directory}: no record at offset {loc}")
        return recs[0].value or b""

    def trim(self, first_live: int | None) -> None:
        self.log.delete_before(self.log.end_offset if first_live is None else first_live)

    def close(self) -> None:
        self.log.close()


class LazySpill:
    """A non-durable queue's spill log, created on first use."""

    def __init__(self, directory: Path, clock: Clock, segment_bytes: int, *, root: Path,
                 fs: FileSystem = LOCAL) -> None:
        self.directory = directory
        self.root = root  # the data directory: deletes stay inside it
        self.fs = fs
        self.clock = clock
        self.segment_bytes = segment_bytes
        self.log: SpillLog | None = None

    def spill(self, msg: QueuedMessage, body: bytes) -> int:
        if self.log is None:
            remove_tree(self.directory, root=self.root, fs=self.fs)
            self.log = SpillLog(self.directory, clock=self.clock, segment_bytes=self.segment_bytes,
                                fs=self.fs)
        return self.log.spill(msg, body)

    def read_body(self, loc: int) -> bytes:
        assert self.log is not None
        return self.log.read_body(loc)

    def size(self) -> int:
        return self.log.log.size_bytes if self.log is not None else 0

    def close(self, *, remove: bool = False) -> None:
        if self.log is not None:
            self.log.close()
            self.log = None
        if remove:
            remove_tree(self.directory, root=self.root, fs=self.fs)
