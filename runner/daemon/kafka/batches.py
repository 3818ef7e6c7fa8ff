"""Kafka's record batch (magic 2): what Produce carries in and Fetch carries out.

All integers big-endian. Batch header (61 bytes)::

    offset  size  field
    0       8     base_offset            int64
    8       4     batch_length           int32   bytes after this field
    12      4     partition_leader_epoch int32
    16      1     magic                  int8    2
    17      4     crc                    uint32  CRC-32C of bytes [21, end)
    21      2     attributes             int16   bits 0-2 codec, 3 log-append time,
                                                 4 transactional, 5 control batch
    23      4     last_offset_delta      int32
    27      8     base_timestamp         int64   ms
    35      8     max_timestamp          int64
    43      8     producer_id            int64   -1: none
    51      2     producer_epoch         int16
    53      2+2   base_sequence          int32   -1: none
    57      4     record_count           int32
    61            records (compressed as a whole when the codec is not 0)

Record: `varint length, int8 attributes, varlong timestamp_delta, varint
offset_delta, varint key_length (-1 null), key, varint value_length, value,
varint header_count, headers (varint name length, name, varint value length,
value)`; varints are zig-zag encoded.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import crc32c

from runner.daemon.kafka.compression import Corrupt, UnknownCodec, decompress

HEADER = struct.Struct(">qiibIhiqqqhii")
HEADER_SIZE = HEADER.size  # 61
_CRC_START = 21
_TAIL = struct.Struct(">hiqqqhii")  # attributes .. record_count
_LEN_MAGIC = struct.Struct(">qiib")
_CRC = struct.Struct(">I")
TRANSACTIONAL = 0x10
CONTROL = 0x20


class InvalidBatch(ValueError):
    """Bytes that are not a valid record batch (Kafka: CORRUPT_MESSAGE)."""


class UnsupportedBatch(ValueError):
    """A valid batch of a kind this listener does not take (old magic,
    transactional or control batches)."""


class KafkaRecord(NamedTuple):
    offset_delta: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes | None], ...]  # a value None: a null header value


@dataclass(frozen=True, slots=True)
class Batch:
    attributes: int
    base_timestamp: int
    producer_id: int
    producer_epoch: int
    base_sequence: int
    records: list[KafkaRecord]

    @property
    def codec(self) -> int:
        return self.attributes & 0x07


def decode_batches(data: bytes, *, limit: int) -> list[Batch]:
    """Every batch in a Produce partition's `records`, CRC-32C checked; `limit`
    caps the bytes one batch may decompress to."""
    out: list[Batch] = []
    pos = 0
    end = len(data)
    while pos < end:
        if end - pos < 17:
            raise InvalidBatch(f"{end - pos} bytes left are too few for a record batch")
        _, length, _, magic = _LEN_MAGIC.unpack_from(data, pos)
        if magic != 2:
            raise UnsupportedBatch(f"record batch magic {magic}: only magic 2 (Kafka 0.11+) "
                                   f"is supported")
        stop = pos + 12 + length
        if length < HEADER_SIZE - 12 or stop > end:
            raise InvalidBatch(f"record batch length {length} does not fit the "
                               f"{end - pos} bytes sent")
        out.append(_decode(data, pos, stop, limit))
        pos = stop
    return out


def _decode(data: bytes, pos: int, stop: int, limit: int) -> Batch:
    (crc,) = _CRC.unpack_from(data, pos + 17)
    view = memoryview(data)[pos + _CRC_START:stop]
    actual = crc32c.crc32c(view)
    if actual != crc:
        raise InvalidBatch(f"record batch CRC-32C mismatch: sent {crc:#010x}, "
                           f"computed {actual:#010x}")
    (attributes, last_delta, base_ts, _max_ts, pid, epoch, base_seq,
     count) = _TAIL.unpack_from(data, pos + _CRC_START)
    if attributes & (TRANSACTIONAL | CONTROL):
        raise UnsupportedBatch("transactional and control batches are not supported "
                               "(this listener has no transactions)")
    if count < 0 or count > last_delta + 1 or (count and last_delta >= count + 1_000_000):
        raise InvalidBatch(f"record count {count} does not match last offset delta "
                           f"{last_delta}")
    body_start = pos + HEADER_SIZE
    try:
        body = decompress(attributes & 0x07, bytes(data[body_start:stop]), limit=limit)
    except UnknownCodec as exc:
        raise UnsupportedBatch(str(exc)) from None
    except Corrupt as exc:
        raise InvalidBatch(str(exc)) from None
    try:
        records = _records(body, count, base_ts)
    except (IndexError, UnicodeDecodeError) as exc:
        raise InvalidBatch(f"records run past the end of their batch ({exc})") from None
    return Batch(attributes, base_ts, pid, epoch, base_seq, records)


def _records(buf: bytes, count: int, base_ts: int) -> list[KafkaRecord]:
    """The records of a batch body. Varints of one byte (most lengths and deltas)
    are read inline; longer ones through `_varint`."""
    out: list[KafkaRecord] = []
    add = out.append
    new = KafkaRecord
    pos = 0
    n = len(buf)
    for _ in range(count):
        b = buf[pos]
        if b < 0x80:
            length, pos = (b >> 1) ^ -(b & 1), pos + 1
        else:
            length, pos = _varint(buf, pos)
        start = pos
        if length < 6 or start + length > n:
            raise InvalidBatch(f"record length {length} does not fit its batch")
        pos += 1  # record attributes: unused
        b = buf[pos]
        if b < 0x80:
            ts_delta, pos = (b >> 1) ^ -(b & 1), pos + 1
        else:
            ts_delta, pos = _varint(buf, pos)
        b = buf[pos]
        if b < 0x80:
            offset_delta, pos = (b >> 1) ^ -(b & 1), pos + 1
        else:
            offset_delta, pos = _varint(buf, pos)
        b = buf[pos]
        if b < 0x80:
            klen, pos = (b >> 1) ^ -(b & 1), pos + 1
        else:
            klen, pos = _varint(buf, pos)
        if klen < 0:
            key = None
        else:
            key = buf[pos:pos + klen]
            pos += klen
        vlen, pos = _varint(buf, pos)
        if vlen < 0:
            value = None
        else:
            value = buf[pos:pos + vlen]
            pos += vlen
        b = buf[pos]
        if b == 0:
            pos += 1
            headers: tuple[tuple[str, bytes | None], ...] = ()
        else:
            nh, pos = _varint(buf, pos)
            headers, pos = _headers(buf, pos, nh)
        if pos != start + length:
            raise InvalidBatch(f"record length {length} does not match its fields "
                               f"({pos - start} bytes)")
        add(new(offset_delta, base_ts + ts_delta, key, value, headers))
    if pos != n:
        raise InvalidBatch(f"{n - pos} bytes follow the last of {count} records")
    return out


def _headers(buf: bytes, pos: int,
             count: int) -> tuple[tuple[tuple[str, bytes | None], ...], int]:
    hs: list[tuple[str, bytes | None]] = []
    for _ in range(count):
        hlen, pos = _varint(buf, pos)
        if hlen < 0:
            raise InvalidBatch("a record header has a null name")
        name = buf[pos:pos + hlen].decode()
        pos += hlen
        hvlen, pos = _varint(buf, pos)
        hv = None if hvlen < 0 else buf[pos:pos + hvlen]
        pos += max(hvlen, 0)
        hs.append((name, hv))
    return tuple(hs), pos


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    b = buf[pos]
    if b < 0x80:
        return (b >> 1) ^ -(b & 1), pos + 1
    result = b & 0x7F
    shift = 7
    while True:
        pos += 1
        b = buf[pos]
        result |= (b & 0x7F) << shift
        if b < 0x80:
            break
        shift += 7
        if shift > 63:
            raise InvalidBatch("a varint is longer than 10 bytes")
    return (result >> 1) ^ -(result & 1), pos + 1


def _varint_bytes(value: int) -> bytes:
    z = (value << 1) ^ (value >> 63)
    out = bytearray()
    while z >= 0x80:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z)
    return bytes(out)


_SMALL = 1 << 13  # varints of -8192..8191 come from a table
_VARINTS = tuple(_varint_bytes(v) for v in range(-_SMALL, _SMALL))


def encode_batch(
    records: Sequence[tuple[int, int, bytes | None, bytes | None,
                            Sequence[tuple[str, bytes | None]]]],
) -> bytes:
    """One uncompressed batch of (offset, timestamp_ms, key, value, headers) in
    offset order (gaps allowed: compaction removes records, not offsets). The
    body is a list of pieces joined once: each value is copied a single time."""
    base = records[0][0]
    base_ts = records[0][1]
    max_ts = base_ts
    table = _VARINTS
    small = _SMALL
    slow = _varint_bytes
    parts: list[bytes] = []
    add = parts.append
    for offset, ts, key, value, headers in records:
        d = ts - base_ts
        tsb = table[d + small] if -small <= d < small else slow(d)
        o = offset - base
        ob = table[o + small] if o < small else slow(o)
        if key is None:
            kb, key = b"\x01", b""
        else:
            k = len(key)
            kb = table[k + small] if k < small else slow(k)
        if value is None:
            vb, value = b"\x01", b""
        else:
            v = len(value)
            vb = table[v + small] if v < small else slow(v)
        hb = _encode_headers(headers) if headers else b"\0"
        size = 1 + len(tsb) + len(ob) + len(kb) + len(key) + len(vb) + len(value) + len(hb)
        add(table[size + small] if size < small else slow(size))
        add(b"\0" + tsb + ob + kb)
        add(key)
        add(vb)
        add(value)
        add(hb)
        if ts > max_ts:
            max_ts = ts
    body = b"".join(parts)
    tail = _TAIL.pack(0, records[-1][0] - base, base_ts, max_ts, -1, -1, -1, len(records))
    crc = crc32c.crc32c(tail + body)
    head = _LEN_MAGIC.pack(base, HEADER_SIZE - 12 + len(body), -1, 2) + _CRC.pack(crc)
    return head + tail + body


def _encode_headers(headers: Sequence[tuple[str, bytes | None]]) -> bytes:
    out = [_varint_bytes(len(headers))]
    for name, hv in headers:
        raw = name.encode()
        if hv is None:  # a null value: length -1
            out += (_varint_bytes(len(raw)), raw, b"\x01")
        else:
            out += (_varint_bytes(len(raw)), raw, _varint_bytes(len(hv)), hv)
    return b"".join(out)
