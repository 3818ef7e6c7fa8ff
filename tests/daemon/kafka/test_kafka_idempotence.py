"""Idempotent producers: a retried batch is stored once, sequences are checked."""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Callable

import pytest
from confluent_kafka import Producer
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError
from kafka.record.default_records import DefaultRecordBatchBuilder
from kio.schema.errors import ErrorCode
from kio.schema.init_producer_id.v4.request import InitProducerIdRequest
from kio.schema.init_producer_id.v4.response import InitProducerIdResponse
from kio.schema.produce.v8.request import PartitionProduceData, ProduceRequest, TopicProduceData
from kio.schema.produce.v8.response import ProduceResponse
from kio.static.primitive import i16, i32, i32Timedelta, i64

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


def _idempotent_batch(pid: int, seq: int, values: list[bytes], epoch: int = 0) -> bytes:
    b = DefaultRecordBatchBuilder(magic=2, compression_type=0, is_transactional=False,
                                  producer_id=pid, producer_epoch=epoch, base_sequence=seq,
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


def test_an_older_producer_epoch_is_fenced_even_after_a_restart(
        start_kafka_daemon: Callable[..., KafkaDaemon]) -> None:
    d = start_kafka_daemon()
    raw = RawClient(d.kafka_port)
    try:
        pid = 7070
        first = _send(raw, _idempotent_batch(pid, 0, [b"a", b"b"]))
        assert first[0] == 0
        # a new epoch starts its sequences afresh, at 0
        skip = _send(raw, _idempotent_batch(pid, 5, [b"z"], epoch=1))
        assert skip[0] == ErrorCode.out_of_order_sequence_number
        assert skip[2] == (f"producer {pid} on events/0: out of order sequence 5: a new "
                           "epoch (1, after 0) starts at sequence 0")
        assert _send(raw, _idempotent_batch(pid, 0, [b"c"], epoch=1))[:2] == (0, first[1] + 2)
        # the old epoch is fenced: a new batch and an exact retry alike
        old = _send(raw, _idempotent_batch(pid, 2, [b"x"], epoch=0))
        assert old[0] == ErrorCode.invalid_producer_epoch
        assert old[2] == (f"producer {pid} on events/0: epoch 0 is older than the producer's "
                          "epoch 1 (fenced: a newer instance of this producer has written)")
        retry = _send(raw, _idempotent_batch(pid, 0, [b"a", b"b"], epoch=0))
        assert retry[0] == ErrorCode.invalid_producer_epoch
        # within the new epoch: sequences and exact retries as before
        assert _send(raw, _idempotent_batch(pid, 1, [b"d"], epoch=1))[:2] == (0, first[1] + 3)
        assert _send(raw, _idempotent_batch(pid, 0, [b"c"], epoch=1))[:2] == (0, first[1] + 2)
        assert _send(raw, _idempotent_batch(pid, 0, [b"n"], epoch=-1))[0] == \
            ErrorCode.invalid_producer_epoch
        raw.close()
        d.stop()
        d.start()  # the newest epoch is known again from the log
        raw = RawClient(d.kafka_port)
        assert _send(raw, _idempotent_batch(pid, 2, [b"x"], epoch=0))[0] == \
            ErrorCode.invalid_producer_epoch
        assert _send(raw, _idempotent_batch(pid, 2, [b"e"], epoch=1))[:2] == (0, first[1] + 4)
    finally:
        raw.close()
    assert "refused (invalid_producer_epoch): producer 7070 on events/0: epoch 0" in d.log()
    assert _values(d, "events", 1) == [b"a", b"b", b"c", b"d", b"e"]


def _init_producer_id(raw: RawClient, pid: int = -1, epoch: int = -1) -> tuple[int, int, int]:
    body = InitProducerIdRequest(
        transactional_id=None, transaction_timeout=i32Timedelta.parse(
            datetime.timedelta(seconds=60)), producer_id=i64(pid), producer_epoch=i16(epoch))
    raw.send(request(22, 4, body))
    got = response(raw.receive() or b"", InitProducerIdResponse, flexible_header=True)
    return int(got.error_code), int(got.producer_id), int(got.producer_epoch)


def test_init_producer_id_bumps_the_newest_epoch_and_gives_a_stale_one_a_new_id(
        kd: KafkaDaemon) -> None:
    raw = RawClient(kd.kafka_port)
    try:
        code, pid, epoch = _init_producer_id(raw)
        assert (code, epoch) == (0, 0) and pid > 0
        assert _init_producer_id(raw, pid, 0) == (0, pid, 1)  # KIP-360 bump
        code, other, epoch = _init_producer_id(raw, pid, 0)  # a stale epoch: a new id
        assert (code, epoch) == (0, 0) and other not in (pid, -1)
        code, third, epoch = _init_producer_id(raw, 12345, 3)  # an id never given out
        assert (code, epoch) == (0, 0) and third not in (pid, other, 12345)
    finally:
        raw.close()


def test_a_kafka_python_producer_fenced_by_a_newer_epoch_fails_that_send_and_recovers(
        kd: KafkaDaemon) -> None:
    d = kd
    p = KafkaProducer(bootstrap_servers=d.bootstrap, enable_idempotence=True, acks="all",
                      linger_ms=0)
    raw = RawClient(d.kafka_port)
    try:
        for v in (b"a1", b"a2", b"a3"):
            p.send("events", value=v, partition=0).get(timeout=15)
        pid = p._transaction_manager.producer_id_and_epoch.producer_id
        assert p._transaction_manager.producer_id_and_epoch.epoch == 0
        # a newer instance of the same producer: epoch 1 (bumped), sequence 0
        assert _init_producer_id(raw, pid, 0) == (0, pid, 1)
        assert _send(raw, _idempotent_batch(pid, 0, [b"new"], epoch=1))[0] == 0
        with pytest.raises(KafkaError):
            p.send("events", value=b"fenced", partition=0).get(timeout=15)
        # the client recovers (KIP-360): its stale bump gets a new id; sends go on
        p.send("events", value=b"after", partition=0).get(timeout=30)
        assert p._transaction_manager.producer_id_and_epoch.producer_id != pid
    finally:
        raw.close()
        p.close()
    assert f"refused (invalid_producer_epoch): producer {pid} on events/0" in d.log()
    values = _values(d, "events", 1)
    assert values[:4] == [b"a1", b"a2", b"a3", b"new"]
    assert b"fenced" not in values and b"after" in values


def test_a_producer_sequence_wraps_from_int32_max_to_0_as_in_kafka(
        start_kafka_daemon: Callable[..., KafkaDaemon]) -> None:
    """Kafka's sequences wrap at 2^31 - 1 to 0 (within a batch, or between batches):
    the batch after the wrap continues the sequence, retries on both sides of the
    wrap are not stored twice, a gap after the wrap is refused, and the wrapped
    state survives a restart."""
    top = 2**31 - 1
    d = start_kafka_daemon()
    raw = RawClient(d.kafka_port)
    try:
        pid = 5151
        first = _send(raw, _idempotent_batch(pid, top - 1, [b"a", b"b", b"c"]))  # top-1, top, 0
        assert first[0] == 0
        nxt = _send(raw, _idempotent_batch(pid, 1, [b"d"]))  # continues after the wrap
        assert nxt[:2] == (0, first[1] + 3)
        assert _send(raw, _idempotent_batch(pid, top - 1, [b"a", b"b", b"c"]))[:2] == \
            (0, first[1])  # a retry of the batch across the wrap
        assert _send(raw, _idempotent_batch(pid, 1, [b"d"]))[:2] == (0, first[1] + 3)
        gap = _send(raw, _idempotent_batch(pid, 5, [b"z"]))
        assert gap[0] == ErrorCode.out_of_order_sequence_number
        assert "out of order sequence 5: expected 2" in (gap[2] or "")
        # a batch ending exactly at 2^31 - 1, then 0
        other = pid + 1
        assert _send(raw, _idempotent_batch(other, top - 1, [b"e", b"f"]))[0] == 0
        assert _send(raw, _idempotent_batch(other, 0, [b"g"]))[0] == 0
        stale = _send(raw, _idempotent_batch(other, top, [b"h"]))  # no wrap back
        assert stale[0] == ErrorCode.out_of_order_sequence_number
        raw.close()
        d.stop()
        d.start()  # the wrapped sequences are known again from the log
        raw = RawClient(d.kafka_port)
        assert _send(raw, _idempotent_batch(pid, 2, [b"i"]))[:2] == (0, first[1] + 7)
        assert _send(raw, _idempotent_batch(other, 1, [b"j"]))[0] == 0
    finally:
        raw.close()
    assert _values(d, "events", 1) == [b"a", b"b", b"c", b"d", b"e", b"f", b"g", b"i", b"j"]
