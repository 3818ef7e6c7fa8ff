"""The TopicReader part of the contract (read, partitions, offset_for_time) on every
backend that appends to topics -- RabbitMQ too, before it has consumer groups (and so
Capability.TOPICS): its own fixture, a topology of one topic, each RabbitMQ run in a
vhost of its own (`rmqstreams-...`)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from runner.backends.rabbitmq import runtime
from runner.clock import ManualClock
from runner.engine.contract import Backend, OutRecord
from runner.engine.embedded import open_embedded
from runner.engine.values import FsyncPolicy
from runner.errors import NotFound, OffsetOutOfRange
from runner.topology.model import Topic, Topology
from tests.rmq import fresh_vhost

TOPOLOGY = Topology(topics=(("ev", Topic("ev", partitions=2)),))


@pytest.fixture(params=["embedded", "rabbitmq"])
def reader(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    with ExitStack() as stack:
        if request.param == "embedded":
            b: Backend = open_embedded(TOPOLOGY, tmp_path / "data", fsync=FsyncPolicy.ALWAYS,
                                       clock=ManualClock())
        else:
            target = stack.enter_context(fresh_vhost("rmqstreams-"))
            b = runtime.open_rabbitmq(TOPOLOGY, target)
        try:
            yield b
        finally:
            b.close()


def append(backend: Backend, records: list[OutRecord]) -> None:
    asyncio.run(backend.durable(backend.append("ev", records).ticket))


def test_read_returns_records_at_their_offsets(reader: Backend) -> None:
    base = int(time.time() * 1000)
    headers = {"h": 1, "f": 0.5, "m": {"a": [1, "x"]}}
    append(reader, [OutRecord(b"v0", key=b"k0", headers=headers, partition=0,
                              timestamp_ms=base),
                    OutRecord(None, key=b"k1", partition=0, timestamp_ms=base + 10),
                    OutRecord(b"v2", partition=0, timestamp_ms=base + 20)])
    append(reader, [OutRecord(b"v3", partition=0, timestamp_ms=base + 30)])
    got = reader.read("ev", 0, 0)
    assert [(r.topic, r.partition, r.offset, r.timestamp_ms, r.key, r.value, dict(r.headers))
            for r in got.records] == [
        ("ev", 0, 0, base, b"k0", b"v0", headers),
        ("ev", 0, 1, base + 10, b"k1", None, {}),
        ("ev", 0, 2, base + 20, None, b"v2", {}),
        ("ev", 0, 3, base + 30, None, b"v3", {}),
    ]
    assert got.next_offset == 4
    # from the middle of what the broker stores as one chunk, and a page of two
    middle = reader.read("ev", 0, 1, max_records=2)
    assert [(r.offset, r.value) for r in middle.records] == [(1, None), (2, b"v2")]
    assert middle.next_offset == 3
    assert [r.offset for r in reader.read("ev", 0, 3).records] == [3]
    at_end = reader.read("ev", 0, 4)
    assert (at_end.records, at_end.next_offset) == ((), 4)
    empty = reader.read("ev", 1, 0)
    assert (empty.records, empty.next_offset) == ((), 0)


def test_max_bytes_returns_at_least_one_record(reader: Backend) -> None:
    append(reader, [OutRecord(b"x" * 100, partition=1) for _ in range(5)])
    assert [r.offset for r in reader.read("ev", 1, 0, max_bytes=1).records] == [0]
    some = reader.read("ev", 1, 0, max_bytes=250)  # a record's size is the backend's own
    assert 1 <= len(some.records) < 5 and some.next_offset == len(some.records)
    assert [r.offset for r in reader.read("ev", 1, 0, max_bytes=10_000).records] == [
        0, 1, 2, 3, 4]


def test_reads_outside_the_log_and_unknown_names_are_errors(reader: Backend) -> None:
    append(reader, [OutRecord(b"a", partition=0), OutRecord(b"b", partition=0)])
    with pytest.raises(OffsetOutOfRange,
                       match=r"^ev/0: offset 3 is above the log end \(log start 0, log end 2\)$"
                       ) as above:
        reader.read("ev", 0, 3)
    assert (above.value.log_start, above.value.log_end) == (0, 2)
    with pytest.raises(OffsetOutOfRange,
                       match=r"^ev/0: offset -1 is below the log start \(log start 0, "
                             r"log end 2\)$"):
        reader.read("ev", 0, -1)
    with pytest.raises(OffsetOutOfRange, match=r"^ev/1: offset 1 is above the log end"):
        reader.read("ev", 1, 1)
    with pytest.raises(NotFound, match="^unknown topic 'nope'$"):
        reader.read("nope", 0, 0)
    with pytest.raises(NotFound, match="^topic 'ev' has no partition 2$"):
        reader.read("ev", 2, 0)
    with pytest.raises(NotFound, match="^unknown topic 'nope'$"):
        reader.partitions("nope")
    with pytest.raises(NotFound, match="^topic 'ev' has no partition 5$"):
        reader.offset_for_time("ev", 5, 0)


def test_partitions_report_the_log_bounds(reader: Backend) -> None:
    base = int(time.time() * 1000)
    append(reader, [OutRecord(b"a", partition=1, timestamp_ms=base),
                    OutRecord(b"b", partition=1, timestamp_ms=base + 5),
                    OutRecord(b"c", partition=1, timestamp_ms=base + 9)])
    p0, p1 = reader.partitions("ev")
    assert (p0.partition, p0.log_start_offset, p0.log_end_offset, p0.oldest_timestamp_ms) == (
        0, 0, 0, None)
    assert (p1.partition, p1.log_start_offset, p1.log_end_offset, p1.oldest_timestamp_ms) == (
        1, 0, 3, base)


def test_offset_for_time_is_the_first_record_at_or_after(reader: Backend) -> None:
    base = int(time.time() * 1000)
    append(reader, [OutRecord(str(i).encode(), partition=0, timestamp_ms=base + 10 * i)
                    for i in range(4)])
    assert reader.offset_for_time("ev", 0, base - 60_000) == 0
    assert reader.offset_for_time("ev", 0, base) == 0
    assert reader.offset_for_time("ev", 0, base + 5) == 1
    assert reader.offset_for_time("ev", 0, base + 30) == 3
    assert reader.offset_for_time("ev", 0, base + 31) == 4  # none: the log end
    assert reader.offset_for_time("ev", 1, base) == 0  # empty
