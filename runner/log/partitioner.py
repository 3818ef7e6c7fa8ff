"""The partitioner: which partition a record goes to (Kafka's default, bit-exact).

Keyed records go to `(murmur2(key) & 0x7fffffff) % partitions`, the Java
client's `Utils.toPositive(Utils.murmur2(key)) % numPartitions`, so a key
lands on the same partition index as on a Kafka cluster. Keyless records are
spread round robin (each call to `for_batch` starts where the last one ended;
`Store.append(sticky=True)` puts a call's keyless records on one partition, the
next of a round robin of its own);
one `Partitioner` per topic (the `Store` keeps one each), so appends to other
topics in between do not skew a topic's spreading.

`key_from_json` (in `runner.jsontext`, shared with the HTTP codec) takes the
topic's `key` field (a dotted path) from a JSON payload: a string is its UTF-8
bytes, anything else its compact JSON text.
"""

from __future__ import annotations

from collections.abc import Sequence
from struct import unpack_from

from runner.jsontext import key_from_json

__all__ = ["Partitioner", "key_from_json", "murmur2", "partition_for_key"]

_M = 0x5BD1E995
_MASK = 0xFFFFFFFF
_SEED = 0x9747B28C


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 (`org.apache.kafka.common.utils.Utils.murmur2`) as a signed int32.

    The 4-byte words come from one `struct.unpack_from`; per word, masks are left
    out where only the low 32 bits of the result count (XOR and the next multiply
    keep the low bits of their inputs' low bits)."""
    length = len(data)
    h = (_SEED ^ length) & _MASK
    n4 = length >> 2
    if n4:
        m = _M
        mask = _MASK
        for k in unpack_from(f"<{n4}I", data):
            k = (k * m) & mask
            h = ((h * m) ^ (k ^ (k >> 24)) * m) & mask
    rest = length & 3
    if rest:
        tail = n4 << 2
        if rest == 3:
            h ^= data[tail + 2] << 16
        if rest >= 2:
            h ^= data[tail + 1] << 8
        h = ((h ^ data[tail]) * _M) & _MASK
    h = ((h ^ (h >> 13)) * _M) & _MASK
    h ^= h >> 15
    return h - (1 << 32) if h & 0x80000000 else h


def partition_for_key(key: bytes, partitions: int) -> int:
    """Kafka's default partition of a keyed record."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


class Partitioner:
    """Chooses partitions of one topic: murmur2 for keys, round robin for keyless
    records. Keeps the positive murmur2 of recent keys (up to `HASH_CACHE`, then
    starts over) so repeated keys are hashed once."""

    __slots__ = ("next", "sticky", "hashes")
    HASH_CACHE = 1 << 16

    def __init__(self) -> None:
        self.next = 0  # the round robin's next partition (modulo the count)
        # the next partition of a sticky call's keyless records: a round robin of its
        # own, so sticky calls and record-by-record ones each spread evenly however
        # they alternate (one shared counter would pile them onto some partitions)
        self.sticky = 0
        self.hashes: dict[bytes, int] = {}

    def hash(self, key: bytes) -> int:
        """`murmur2(key) & 0x7fffffff`, remembered."""
        h = self.hashes.get(key)
        if h is None:
            if len(self.hashes) >= self.HASH_CACHE:
                self.hashes.clear()
            h = self.hashes[key] = murmur2(key) & 0x7FFFFFFF
        return h

    def partition(self, key: bytes | None, partitions: int) -> int:
        if key is not None:
            return self.hash(key) % partitions
        p = self.next % partitions
        self.next = p + 1
        return p

    def for_batch(self, keys: Sequence[bytes | None], partitions: int) -> list[int]:
        return [self.partition(k, partitions) for k in keys]
