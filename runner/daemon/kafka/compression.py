"""Record batch compression: the codecs Kafka producers use, from their PyPI libraries.

Attribute bits 0-2 of a record batch name the codec: 0 none, 1 gzip (stdlib
zlib), 2 snappy, 3 lz4 (the LZ4 frame format), 4 zstd (snappy, lz4 and zstd
through `cramjam`). Snappy comes two ways: the Java client writes the xerial
framing (`\\x82SNAPPY\\x00`, two int32 versions, then int32-length blocks of
raw snappy); librdkafka and others write one raw snappy block. Both are read.

Every decompression is capped at `limit` bytes of output, so a small request
cannot expand into unbounded memory (a "zip bomb"); past it `Corrupt` says so.
"""

from __future__ import annotations

import struct
import zlib

import cramjam

NONE, GZIP, SNAPPY, LZ4, ZSTD = 0, 1, 2, 3, 4
NAMES = {NONE: "none", GZIP: "gzip", SNAPPY: "snappy", LZ4: "lz4", ZSTD: "zstd"}
_XERIAL = b"\x82SNAPPY\x00"
_INT = struct.Struct(">i")


class Corrupt(ValueError):
    """Compressed records that cannot be read back."""


class UnknownCodec(ValueError):
    """A codec number Kafka does not define."""


def decompress(codec: int, data: bytes, *, limit: int) -> bytes:
    if codec == NONE:
        return data
    try:
        if codec == GZIP:
            return _gunzip(data, limit)
        if codec == SNAPPY:
            return _unsnappy(data, limit)
        if codec == LZ4:
            return _capped(bytes(cramjam.lz4.decompress(data)), limit)
        if codec == ZSTD:
            return _capped(bytes(cramjam.zstd.decompress(data)), limit)
    except (cramjam.DecompressionError, zlib.error, struct.error) as exc:
        raise Corrupt(f"{NAMES[codec]} data cannot be decompressed: {exc}") from None
    raise UnknownCodec(f"compression codec {codec} is not one of Kafka's (0-4)")


def _capped(data: bytes, limit: int) -> bytes:
    if len(data) > limit:
        raise Corrupt(f"records decompress to more than {limit} bytes")
    return data


def _gunzip(data: bytes, limit: int) -> bytes:
    d = zlib.decompressobj(wbits=47)  # gzip or zlib header, detected
    out = d.decompress(data, limit + 1)
    if len(out) > limit:
        raise Corrupt(f"records decompress to more than {limit} bytes")
    if not d.eof:
        raise Corrupt("gzip data is truncated")
    return out


def _unsnappy(data: bytes, limit: int) -> bytes:
    if not data.startswith(_XERIAL):
        return _raw_snappy(data, limit)
    pos = 16  # magic (8) + version (4) + compatible version (4)
    parts: list[bytes] = []
    total = 0
    while pos < len(data):
        (size,) = _INT.unpack_from(data, pos)
        pos += 4
        if size < 0 or pos + size > len(data):
            raise Corrupt("snappy (xerial) block runs past the end of the data")
        part = _raw_snappy(data[pos:pos + size], limit - total)
        total += len(part)
        parts.append(part)
        pos += size
    return b"".join(parts)


def _raw_snappy(data: bytes, limit: int) -> bytes:
    if cramjam.snappy.decompress_raw_len(data) > limit:
        raise Corrupt(f"records decompress to more than {limit} bytes")
    return bytes(cramjam.snappy.decompress_raw(data))


def compress(codec: int, data: bytes) -> bytes:
    """Compress (used by tests that build batches by hand)."""
    if codec == NONE:
        return data
    if codec == GZIP:
        c = zlib.compressobj(wbits=31)
        return c.compress(data) + c.flush()
    if codec == SNAPPY:
        return bytes(cramjam.snappy.compress_raw(data))
    if codec == LZ4:
        return bytes(cramjam.lz4.compress(data))
    if codec == ZSTD:
        return bytes(cramjam.zstd.compress(data))
    raise UnknownCodec(f"compression codec {codec} is not one of Kafka's (0-4)")
