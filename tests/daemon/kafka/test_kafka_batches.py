"""The record batch codec and its compression, checked against kafka-python's own
batch builder (an independent implementation of Kafka's format)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kafka.record.default_records import DefaultRecordBatch, DefaultRecordBatchBuilder

from runner.daemon.kafka import compression
from runner.daemon.kafka.batches import InvalidBatch, UnsupportedBatch, decode_batches, encode_batch

CODECS = {"none": 0, "gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}


def _kafka_python_batch(codec: int, records: list[tuple[int, bytes | None, bytes | None,
                                                         list[tuple[str, bytes]]]],
                        *, producer_id: int = -1, sequence: int = -1) -> bytes:
    b = DefaultRecordBatchBuilder(magic=2, compression_type=codec, is_transactional=False,
                                  producer_id=producer_id, producer_epoch=0 if producer_id >= 0
                                  else -1, base_sequence=sequence, batch_size=1 << 20)
    for i, (ts, key, value, headers) in enumerate(records):
        b.append(i, timestamp=ts, key=key, value=value, headers=headers)
    return bytes(b.build())


@pytest.mark.parametrize("name", list(CODECS))
def test_batches_from_kafka_python_decode_for_every_codec(name: str) -> None:
    recs = [(1_700_000_000_000 + i, f"k{i}".encode() if i % 3 else None,
             None if i == 5 else (b"v" * 300 + bytes([i])), [("h", bytes([i]))] * (i % 2))
            for i in range(20)]
    data = _kafka_python_batch(CODECS[name], recs, producer_id=77, sequence=9)
    (batch,) = decode_batches(data, limit=1 << 20)
    assert batch.codec == CODECS[name]
    assert (batch.producer_id, batch.base_sequence) == (77, 9)
    assert [(r.timestamp_ms, r.key, r.value, list(r.headers)) for r in batch.records] == recs
    assert [r.offset_delta for r in batch.records] == list(range(20))


def test_encoded_batches_read_back_in_kafka_python() -> None:
    rows = [(10, 1_700_000_000_000, b"a", b"1", [("x", b"y")]),
            (12, 1_699_999_999_000, None, None, []),  # a gap (compaction) and an older time
            (13, 1_700_000_000_500, b"c", b"\x00" * 1000, [("n", b""), ("n", b"2")])]
    data = encode_batch(rows)
    batch = DefaultRecordBatch(data)
    assert batch.validate_crc()
    got = [(r.offset, r.timestamp, r.key, r.value, list(r.headers)) for r in batch]
    assert got == [tuple(r) for r in rows]
    assert batch.base_offset == 10


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2**40), st.none() | st.binary(max_size=40),
                          st.none() | st.binary(max_size=300),
                          st.lists(st.tuples(st.text(max_size=8), st.binary(max_size=8)),
                                   max_size=3)),
                min_size=1, max_size=30))
def test_what_is_encoded_decodes_the_same(rows: list) -> None:
    full = [(i, ts, k, v, h) for i, (ts, k, v, h) in enumerate(rows)]
    (batch,) = decode_batches(encode_batch(full), limit=1 << 20)
    assert [(r.offset_delta, r.timestamp_ms, r.key, r.value, list(r.headers))
            for r in batch.records] == full


def test_two_batches_in_one_produce_partition() -> None:
    a = _kafka_python_batch(0, [(1, b"a", b"1", [])])
    b = _kafka_python_batch(1, [(2, b"b", b"2", [])])
    assert [bt.records[0].key for bt in decode_batches(a + b, limit=1 << 20)] == [b"a", b"b"]


def test_a_flipped_bit_fails_the_crc() -> None:
    data = bytearray(_kafka_python_batch(0, [(1, b"a", b"hello", [])]))
    data[-2] ^= 0x01
    with pytest.raises(InvalidBatch, match="CRC-32C mismatch"):
        decode_batches(bytes(data), limit=1 << 20)


def test_old_magic_and_transactional_batches_are_unsupported() -> None:
    data = bytearray(_kafka_python_batch(0, [(1, b"a", b"x", [])]))
    data[16] = 1
    with pytest.raises(UnsupportedBatch, match="magic 1"):
        decode_batches(bytes(data), limit=1 << 20)
    b = DefaultRecordBatchBuilder(magic=2, compression_type=0, is_transactional=True,
                                  producer_id=5, producer_epoch=0, base_sequence=0,
                                  batch_size=1 << 20)
    b.append(0, timestamp=1, key=b"k", value=b"v", headers=[])
    with pytest.raises(UnsupportedBatch, match="transactional"):
        decode_batches(bytes(b.build()), limit=1 << 20)


def test_a_length_past_the_data_is_invalid() -> None:
    data = bytearray(_kafka_python_batch(0, [(1, b"a", b"x", [])]))
    struct.pack_into(">i", data, 8, 10_000)
    with pytest.raises(InvalidBatch, match="does not fit"):
        decode_batches(bytes(data), limit=1 << 20)


@pytest.mark.parametrize("name", ["gzip", "snappy", "lz4", "zstd"])
def test_decompression_is_capped(name: str) -> None:
    packed = compression.compress(CODECS[name], b"\0" * 1_000_000)
    assert len(packed) < 100_000
    with pytest.raises(compression.Corrupt, match="more than 65536 bytes"):
        compression.decompress(CODECS[name], packed, limit=65536)


def test_snappy_in_xerial_framing_as_the_java_client_writes_it() -> None:
    import cramjam

    blocks = [b"first block " * 10, b"second " * 20]
    framed = b"\x82SNAPPY\x00" + struct.pack(">ii", 1, 1)
    for block in blocks:
        raw = bytes(cramjam.snappy.compress_raw(block))
        framed += struct.pack(">i", len(raw)) + raw
    assert compression.decompress(2, framed, limit=1 << 20) == b"".join(blocks)


def test_garbage_compressed_data_is_corrupt() -> None:
    for codec in (1, 2, 3, 4):
        with pytest.raises(compression.Corrupt):
            compression.decompress(codec, b"not compressed at all", limit=1 << 20)
