"""Idempotent producers: a retried batch is stored once, sequences are checked."""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Callable

import pytest
from confluent_kafka import Producer
from kafka import KafkaConsumer, TopicPartition
from kafka.record.default_records import DefaultRecordBatchBuilder
from kio.schema.errors import ErrorCode
from kio.schema.produce.v8.request import PartitionProduceData, ProduceRequest, TopicProduceData
from kio.schema.produce.v8.response import ProduceResponse
from kio.static.primitive import i16, i32, i32Timedelta

from tests.daemon.kafka.conftest import (
    DroppingProxy,
    KafkaDaemon,
    RawClient,
    make_kafka_daemon,
    now_ms,
    request,
    response,
)

pytestmark = [pytest.mark.e2e]


def _values(d: KafkaDaemon, topic: str, partitions: int) -> list[bytes]:
    c = KafkaConsumer(bootstrap_servers=d.bootstrap, group_id=None)
    tps = [TopicPartition(topic, p) for p in range(partitions)]
    c.assign(tps)
    c.seek_to_beginning()
    ends = c.end_offsets(tps)
    out: list[bytes] = []
    while any(c.position(tp) < ends[tp] for tp in tps):
        for recs in c.poll(timeout_ms=1000).values():
            out.extend(r.value for r in recs)
    c.close()
    return out


def test_lost_answers_make_librdkafka_retry_and_nothing_is_stored_twice(
        tmp_path: object) -> None:
    from pathlib import Path

    proxy = DroppingProxy(drops=3)
    d = make_kafka_daemon(Path(str(tmp_path)),
                          args=["--kafka-advertise", f"127.0.0.1:{proxy.port}"])
    try:
        d.start()
        proxy.upstream = d.kafka_port
        tag = uuid.uuid4().hex[:6]
        p = Producer({"bootstrap.servers": f"127.0.0.1:{proxy.port}",
                      "enable.idempotence": True, "linger.ms": 20,
                      "partitioner": "murmur2_random", "message.timeout.ms": 60_000})
        errors: list = []
        for i in range(300):
            p.produce("orders", key=f"{tag}-{i % 7}".encode(), value=f"{tag}-{i}".encode(),
                      on_delivery=lambda err, msg: errors.append(err) if err else None)
            if i % 50 == 49:
                p.poll(0.05)
        assert p.flush(60) == 0
        p.close()
        assert errors == []
        assert proxy.dropped == 3
        values = _values(d, "orders", 3)
        assert sorted(values) == sorted(f"{tag}-{i}".encode() for i in range(300))
        d.stop()
    finally:
        proxy.close()
        if d.running:
            d.stop()


def _idempotent_batch(pid: int, seq: int, values: list[bytes]) -> bytes:
    b = DefaultRecordBatchBuilder(magic=2, compression_type=0, is_transactional=False,
                                  producer_id=pid, producer_epoch=0, base_sequence=seq,
                                  batch_size=1 << 20)
    for i, v in enumerate(values):
        b.append(i, timestamp=now_ms(), key=None, value=v, headers=[])
    return bytes(b.build())


def _send(raw: RawClient, batch: bytes) -> tuple[int, int, str | None]:
    body = ProduceRequest(
        transactional_id=None, acks=i16(-1),
        timeout=i32Timedelta.parse(datetime.timedelta(seconds=5)),
        topic_data=(TopicProduceData(name="events", partition_data=(
            PartitionProduceData(index=i32(0), records=batch),)),))
    raw.send(request(0, 8, body))
    part = response(raw.receive() or b"", ProduceResponse,
                    flexible_header=False).responses[0].partition_responses[0]
    return int(part.error_code), int(part.base_offset), part.error_message


def test_sequences_are_checked_per_producer(
        start_kafka_daemon: Callable[..., KafkaDaemon]) -> None:
    d = start_kafka_daemon()
    raw = RawClient(d.kafka_port)
    pid = 4242
    first = _send(raw, _idempotent_batch(pid, 0, [b"a", b"b"]))
    assert first[0] == 0
    again = _send(raw, _idempotent_batch(pid, 0, [b"a", b"b"]))  # the same batch, retried
    assert again[:2] == (0, first[1])
    nxt = _send(raw, _idempotent_batch(pid, 2, [b"c"]))
    assert nxt[:2] == (0, first[1] + 2)
    gap = _send(raw, _idempotent_batch(pid, 9, [b"z"]))
    assert gap[0] == ErrorCode.out_of_order_sequence_number
    assert "out of order sequence 9: expected 3" in (gap[2] or "")
    other = _send(raw, _idempotent_batch(pid + 1, 0, [b"d"]))  # another producer
    assert other[0] == 0
    raw.close()
    assert _values(d, "events", 1) == [b"a", b"b", b"c", b"d"]
