"""Partitioner: Kafka's murmur2 golden vectors, keyless spreading, JSON keys."""

from __future__ import annotations

from collections import Counter

import pytest

from runner.log.partitioner import Partitioner, key_from_json, murmur2, partition_for_key

# From Apache Kafka, clients/src/test/java/org/apache/kafka/common/utils/UtilsTest.java
KAFKA_VECTORS = {
    b"21": -973932308,
    b"foobar": -790332482,
    b"a-little-bit-long-string": -985981536,
    b"a-little-bit-longer-string": -1486304829,
    b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    b"abc": 479470107,
}


@pytest.mark.parametrize(("key", "expected"), KAFKA_VECTORS.items())
def test_murmur2_matches_kafka_utils_test(key: bytes, expected: int) -> None:
    assert murmur2(key) == expected


@pytest.mark.parametrize(("key", "expected"), KAFKA_VECTORS.items())
def test_partition_is_to_positive_modulo(key: bytes, expected: int) -> None:
    for n in (1, 3, 10, 128):
        assert partition_for_key(key, n) == (expected & 0x7FFFFFFF) % n


def test_every_tail_length_is_covered() -> None:
    # lengths 0..3 mod 4 exercise each branch of the tail switch
    hashes = {murmur2(b"x" * n) for n in range(9)}
    assert len(hashes) == 9
    assert all(-(2**31) <= h < 2**31 for h in hashes)


def test_keyless_records_spread_evenly() -> None:
    p = Partitioner()
    counts = Counter(p.for_batch([None] * 7, 4) + p.for_batch([None] * 5, 4))
    assert sorted(counts.values()) == [3, 3, 3, 3]


def test_keyed_records_ignore_the_round_robin() -> None:
    p = Partitioner()
    assert p.for_batch([b"foobar", None, b"foobar", None], 10) == [
        partition_for_key(b"foobar", 10), 0, partition_for_key(b"foobar", 10), 1]


@pytest.mark.parametrize(("payload", "path", "key"), [
    (b'{"order_id": "A-1"}', "order_id", b"A-1"),
    (b'{"order": {"id": 42}}', "order.id", b"42"),
    (b'{"k": {"b": [1, 2], "a": "\xc3\xa9"}}', "k", '{"b":[1,2],"a":"é"}'.encode()),
    (b'{"k": true}', "k", b"true"),
    (b'{"k": null}', "k", None),
    (b'{"other": 1}', "k", None),
    (b'{"k": 1}', "k.deeper", None),
    (b"not json", "k", None),
    (b"[1, 2]", "k", None),
    (None, "k", None),
])
def test_key_from_json(payload: bytes | None, path: str, key: bytes | None) -> None:
    assert key_from_json(payload, path) == key
