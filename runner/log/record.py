"""The on-disk record batch: what a log stores, and its exact byte layout.

A segment file is a sequence of batches. All integers are little-endian.

Batch header (`BATCH`, 58 bytes)::

    offset  size  field
    0       8     base_offset        int64   offset of the first record of the batch
    8       4     batch_length       int32   bytes after this field (header rest + records)
    12      4     crc                uint32  zlib.crc32 over bytes [0, 12) then [16, end)
    16      1     magic              uint8   format version, always 1
    17      1     attributes         uint8   bit 0 (`DELETE_HORIZON`): first_timestamp holds the
                                             delete horizon (set by compaction), else 0
    18      4     last_offset_delta  int32   offset of the last record - base_offset
    22      4     count              int32   number of records in the batch (>= 1)
    26      8     first_timestamp    int64   timestamp (ms) of the first record; with the
                                             DELETE_HORIZON bit: the time (ms) from which
                                             compaction may drop the batch's tombstones
    34      8     max_timestamp      int64   largest record timestamp (ms) in the batch
    42      8     producer_id        int64   idempotent producer id, -1 for none
    50      8     base_sequence      int64   sequence of the first record, -1 for none

As in Kafka, the delete horizon is written when a cleaning first keeps a
tombstone (cleaning time + delete retention), so a tombstone stays for the
delete retention after it was first cleaned, whatever its own timestamp.

The CRC covers base offset and length too, so a flipped bit anywhere in a
batch is caught. `count` and `last_offset_delta` differ only after
compaction, which removes records but keeps their offsets.

Record (`RECORD`, 28 bytes, then variable parts)::

    0       4     length             int32   bytes after this field
    4       4     offset_delta       int32   offset - base_offset
    8       8     timestamp          int64   ms since the Unix epoch
    16      4     key_length         int32   -1 for a null key
    20      4     value_length       int32   -1 for a null value (a tombstone)
    24      4     header_count       int32
    28      key_length bytes of key, value_length bytes of value, then per header:
            `HEADER` (name_length int32, value_length int32), name (UTF-8), value

Encoding builds one `bytes` per batch with one precompiled `Struct.pack` per
record; decoding walks it with `Struct.unpack_from` and slices.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from operator import itemgetter

MAGIC = 1
DELETE_HORIZON = 0x01  # attributes bit: first_timestamp is the tombstones' delete horizon
BATCH = struct.Struct("<qiIBBiiqqqq")
RECORD = struct.Struct("<iiqiii")
HEADER = struct.Struct("<ii")
BATCH_OVERHEAD = BATCH.size
LENGTH_PREFIX = 12  # base_offset + batch_length: the part before the length's reach

Item = tuple[bytes | None, bytes | None, Sequence[tuple[str, bytes]], int]
"""What an appender gives: (key, value, headers, timestamp_ms)."""

_TIMESTAMP = itemgetter(3)

class Fsync(str, Enum):  # noqa: UP042 - same shape as engine.FsyncPolicy
    """When appended bytes reach the disk (the engine maps its FsyncPolicy onto it by value)."""

    ALWAYS = "always"
    INTERVAL = "interval"
    NEVER = "never"


@dataclass(frozen=True, slots=True)
class LogRecord:
    """One stored record, as read back."""

    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]


class _RecordShell:
    """LogRecord's slot layout without the frozen `__setattr__`: the read hot path
    fills one with plain attribute stores, then turns it into a LogRecord by
    assigning `__class__` (allowed: same slots, same base). About 25% cheaper per
    record than calling each slot descriptor's `__set__`, and twice as cheap as the
    frozen dataclass `__init__` (object.__setattr__ per field)."""

    __slots__ = ("offset", "timestamp_ms", "key", "value", "headers")

    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]


class BatchHeader:
    """The decoded fixed part of a batch (a plain class: it lives on the scan path)."""

    __slots__ = (
        "base_offset", "length", "crc", "attributes", "last_offset_delta", "count",
        "first_timestamp", "max_timestamp", "producer_id", "base_sequence",
    )

    def __init__(self, buf: bytes, pos: int) -> None:
        self.base_offset: int
        self.length: int
        self.crc: int
        self.attributes: int
        self.last_offset_delta: int
        self.count: int
        self.first_timestamp: int
        self.max_timestamp: int
        self.producer_id: int
        self.base_sequence: int
        (
            self.base_offset, self.length, self.crc, _magic, self.attributes,
            self.last_offset_delta,
            self.count, self.first_timestamp, self.max_timestamp, self.producer_id,
            self.base_sequence,
        ) = BATCH.unpack_from(buf, pos)

    @property
    def size(self) -> int:
        """Bytes of the whole batch on disk."""
        return LENGTH_PREFIX + self.length

    @property
    def last_offset(self) -> int:
        return self.base_offset + self.last_offset_delta

    @property
    def delete_horizon(self) -> int | None:
        """When compaction may drop this batch's tombstones (None: never cleaned)."""
        return self.first_timestamp if self.attributes & DELETE_HORIZON else None


def encode_headers(headers: Sequence[tuple[str, bytes]]) -> bytes:
    parts: list[bytes] = []
    for name, value in headers:
        raw = name.encode()
        parts.append(HEADER.pack(len(raw), len(value)))
        parts.append(raw)
        parts.append(value)
    return b"".join(parts)


def encode_batch(
    base_offset: int,
    items: Sequence[Item],
    *,
    offset_deltas: Sequence[int] | None = None,
    producer_id: int = -1,
    base_sequence: int = -1,
    delete_horizon: int | None = None,
) -> tuple[bytes, int]:
    """One CRC'd batch for `items`; returns (bytes, max_timestamp).

    `offset_deltas` keeps original offsets (compaction); default 0..n-1.
    `delete_horizon` (compaction) goes to first_timestamp with the DELETE_HORIZON bit.
    """
    pack = RECORD.pack
    parts: list[bytes] = []
    append = parts.append
    deltas = range(len(items)) if offset_deltas is None else offset_deltas
    for delta, (key, value, headers, ts) in zip(deltas, items, strict=True):
        # the common shapes first: one test picks the branch, no header bytes to add
        if headers:
            hb = encode_headers(headers)
            kl = -1 if key is None else len(key)
            vl = -1 if value is None else len(value)
            append(pack(24 + max(kl, 0) + max(vl, 0) + len(hb), delta, ts, kl, vl,
                        len(headers)))
            if key is not None:
                append(key)
            if value is not None:
                append(value)
            append(hb)
        elif key is not None and value is not None:
            kl = len(key)
            vl = len(value)
            append(pack(24 + kl + vl, delta, ts, kl, vl, 0))
            append(key)
            append(value)
        elif value is not None:  # keyless
            vl = len(value)
            append(pack(24 + vl, delta, ts, -1, vl, 0))
            append(value)
        elif key is not None:  # tombstone
            kl = len(key)
            append(pack(24 + kl, delta, ts, kl, -1, 0))
            append(key)
        else:
            append(pack(24, delta, ts, -1, -1, 0))
    max_ts: int = max(map(_TIMESTAMP, items))
    count = len(items)
    last_delta = count - 1 if offset_deltas is None else offset_deltas[-1]
    first_ts = items[0][3] if delete_horizon is None else delete_horizon
    attributes = 0 if delete_horizon is None else DELETE_HORIZON
    body = b"".join(parts)
    fields = (base_offset, BATCH.size - LENGTH_PREFIX + len(body))
    rest = (MAGIC, attributes, last_delta, count, first_ts, max_ts, producer_id,
            base_sequence)
    head = BATCH.pack(*fields, 0, *rest)
    crc = zlib.crc32(body, zlib.crc32(head[16:], zlib.crc32(head[:12])))
    return BATCH.pack(*fields, crc, *rest) + body, max_ts


def batch_crc_ok(buf: bytes, pos: int, header: BatchHeader) -> bool:
    mv = memoryview(buf)
    end = pos + header.size
    crc: int = zlib.crc32(mv[pos + 16:end], zlib.crc32(mv[pos:pos + 12]))
    return crc == header.crc


def decode_records(
    buf: bytes, pos: int, header: BatchHeader, out: list[LogRecord], min_offset: int,
    max_records: int, max_bytes: int = 1 << 62,
) -> tuple[int, bool]:
    """Append the batch's records with offset >= min_offset to `out`, stopping at
    `max_records` in `out` or before a record that would pass `max_bytes` taken
    (never before the first record of `out`). Returns (bytes taken, stopped early)."""
    base = header.base_offset
    room = max_records - len(out)
    if (base >= min_offset and header.count <= room
            and header.length + LENGTH_PREFIX - BATCH.size <= max_bytes):
        return _decode_all(buf, pos, header, out), False
    unpack = RECORD.unpack_from
    p = pos + BATCH.size
    taken = 0
    for _ in range(header.count):
        length, delta, ts, kl, vl, nh = unpack(buf, p)
        nxt = p + 4 + length
        if base + delta < min_offset:
            p = nxt
            continue
        if len(out) >= max_records or (out and taken + 4 + length > max_bytes):
            return taken, True
        q = p + 28
        key = buf[q:q + kl] if kl >= 0 else None
        q += kl if kl > 0 else 0
        value = buf[q:q + vl] if vl >= 0 else None
        q += vl if vl > 0 else 0
        out.append(LogRecord(base + delta, ts, key, value,
                             _decode_headers(buf, q, nh) if nh else ()))
        taken += 4 + length
        p = nxt
    return taken, False


def _decode_headers(buf: bytes, q: int, count: int) -> tuple[tuple[str, bytes], ...]:
    hs: list[tuple[str, bytes]] = []
    for _h in range(count):
        nl, hl = HEADER.unpack_from(buf, q)
        q += 8
        name = buf[q:q + nl].decode()
        q += nl
        hs.append((name, buf[q:q + hl]))
        q += hl
    return tuple(hs)


def _decode_all(buf: bytes, pos: int, header: BatchHeader, out: list[LogRecord]) -> int:
    """The hot path: every record of the batch, no bounds to check."""
    unpack = RECORD.unpack_from
    shell = _RecordShell
    record = LogRecord
    append = out.append
    base = header.base_offset
    p = start = pos + BATCH.size
    for _ in range(header.count):
        length, delta, ts, kl, vl, nh = unpack(buf, p)
        q = p + 28
        rec = shell()
        rec.offset = base + delta
        rec.timestamp_ms = ts
        if kl >= 0:
            rec.key = buf[q:q + kl]
            q += kl
        else:
            rec.key = None
        if vl >= 0:
            rec.value = buf[q:q + vl]
            q += vl
        else:
            rec.value = None
        rec.headers = _decode_headers(buf, q, nh) if nh else ()
        rec.__class__ = record  # type: ignore[assignment]
        append(rec)  # type: ignore[arg-type]
        p += 4 + length
    return p - start
