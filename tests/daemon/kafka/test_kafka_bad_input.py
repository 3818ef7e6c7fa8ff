"""Bad input on the Kafka listener: an error response or a closed connection with a
log line, and the daemon keeps serving everyone else."""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kio.schema.api_versions.v3.request import ApiVersionsRequest
from kio.schema.api_versions.v3.response import ApiVersionsResponse
from kio.schema.errors import ErrorCode
from kio.schema.produce.v8.request import PartitionProduceData, ProduceRequest, TopicProduceData
from kio.schema.produce.v8.response import ProduceResponse
from kio.static.primitive import i16, i32, i32Timedelta

from runner.daemon.kafka.batches import encode_batch
from tests.daemon.kafka.conftest import (
    KafkaDaemon,
    RawClient,
    make_kafka_daemon,
    request,
    response,
    until,
)

pytestmark = [pytest.mark.e2e]


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaDaemon]:
    """A daemon with a 64 KiB --max-request-bytes."""
    d = make_kafka_daemon(Path(tmp_path_factory.mktemp("kafka-bad")),
                          args=["--max-request-bytes", "65536"])
    d.start()
    yield d
    d.stop()
    assert "Traceback" not in d.log()


def _still_serving(d: KafkaDaemon) -> None:
    p = KafkaProducer(bootstrap_servers=d.bootstrap, acks="all")
    md = p.send("events", value=b"still here").get(timeout=15)
    p.close()
    c = KafkaConsumer(bootstrap_servers=d.bootstrap, group_id=None)
    tp = TopicPartition("events", 0)
    c.assign([tp])
    c.seek(tp, md.offset)
    assert c.poll(timeout_ms=10_000)[tp][0].value == b"still here"
    c.close()


def _produce(topic: str, partition: int, records: bytes, acks: int = -1) -> ProduceRequest:
    return ProduceRequest(
        transactional_id=None, acks=i16(acks), timeout=i32Timedelta.parse(
            __import__("datetime").timedelta(seconds=5)),
        topic_data=(TopicProduceData(name=topic, partition_data=(
            PartitionProduceData(index=i32(partition), records=records),)),))


def _batch(value: bytes) -> bytearray:
    return bytearray(encode_batch([(0, 1_700_000_000_000, b"k", value, [("h", b"v")])]))


def test_a_frame_over_max_request_bytes_closes_with_a_log_line(small: KafkaDaemon) -> None:
    raw = RawClient(small.kafka_port)
    raw.sock.sendall(struct.pack(">i", 10_000_000) + b"\0" * 100)
    assert raw.receive() is None
    raw.close()
    until(lambda: "a request of 10000000 bytes is over --max-request-bytes (65536)"
          in small.log())
    _still_serving(small)


def test_malformed_request_body_closes_with_a_log_line(small: KafkaDaemon) -> None:
    raw = RawClient(small.kafka_port)
    # a Metadata v9 header then a topic array claiming 1000 entries of nothing
    raw.send(struct.pack(">hhih", 3, 9, 5, 3) + b"raw" + b"\0" + b"\xe9\x07")
    assert raw.receive() is None
    raw.close()
    until(lambda: "malformed Metadata v9 request" in small.log())
    _still_serving(small)


def test_a_request_shorter_than_its_header_closes_with_a_log_line(small: KafkaDaemon) -> None:
    raw = RawClient(small.kafka_port)
    raw.send(b"\0\3")
    assert raw.receive() is None
    raw.close()
    until(lambda: "a request of 2 bytes is shorter than its header" in small.log())


def test_an_api_key_the_protocol_does_not_define_closes_with_a_log_line(
        small: KafkaDaemon) -> None:
    raw = RawClient(small.kafka_port)
    raw.send(struct.pack(">hhih", 999, 0, 5, 0))
    assert raw.receive() is None
    raw.close()
    until(lambda: "api key 999 v0 is not part of the Kafka protocol" in small.log())
    _still_serving(small)


def test_an_api_not_served_answers_unsupported_version(small: KafkaDaemon) -> None:
    from kio.schema.create_topics.v4.request import CreatableTopic, CreateTopicsRequest
    from kio.schema.create_topics.v4.response import CreateTopicsResponse

    body = CreateTopicsRequest(
        topics=(CreatableTopic(name="new", num_partitions=i32(1), replication_factor=i16(1),
                               assignments=(), configs=()),),
        timeout=i32Timedelta.parse(__import__("datetime").timedelta(seconds=1)),
        validate_only=False)
    raw = RawClient(small.kafka_port)
    raw.send(request(19, 4, body, correlation=42))
    payload = raw.receive()
    assert payload is not None
    assert struct.unpack_from(">i", payload)[0] == 42
    answer = response(payload, CreateTopicsResponse, flexible_header=False)
    assert answer.topics == ()
    raw.close()
    until(lambda: "CreateTopics" not in small.log() and "api key 19 v4" in small.log())


def test_api_versions_of_an_unknown_version_answers_v0_with_unsupported_version(
        small: KafkaDaemon) -> None:
    from kio.schema.api_versions.v0.response import ApiVersionsResponse as V0

    raw = RawClient(small.kafka_port)
    raw.send(struct.pack(">hhih", 18, 99, 11, 3) + b"raw" + b"\0\3x\0\0")
    payload = raw.receive()
    assert payload is not None
    answer = response(payload, V0, flexible_header=False)
    assert answer.error_code == ErrorCode.unsupported_version
    assert {k.api_key for k in answer.api_keys} >= {0, 1, 2, 3, 18}
    # the same connection goes on: ApiVersions v3 now
    raw.send(request(18, 3, ApiVersionsRequest(client_software_name="raw",
                                               client_software_version="1")))
    ok = response(raw.receive() or b"", ApiVersionsResponse, flexible_header=False)
    assert ok.error_code == ErrorCode.none
    raw.close()


def test_a_wrong_crc_is_corrupt_message_and_nothing_is_stored(small: KafkaDaemon) -> None:
    before = small.ok("GET", "/v1/status")
    batch = _batch(b"bad crc")
    batch[-1] ^= 0xFF  # flip the last value byte: the CRC no longer matches
    raw = RawClient(small.kafka_port)
    raw.send(request(0, 8, _produce("events", 0, bytes(batch))))
    answer = response(raw.receive() or b"", ProduceResponse, flexible_header=False)
    part = answer.responses[0].partition_responses[0]
    assert part.error_code == ErrorCode.corrupt_message
    assert "CRC-32C mismatch" in (part.error_message or "")
    # a good batch on the same connection is taken
    raw.send(request(0, 8, _produce("events", 0, bytes(_batch(b"good")))))
    good = response(raw.receive() or b"", ProduceResponse, flexible_header=False)
    assert good.responses[0].partition_responses[0].error_code == ErrorCode.none
    raw.close()
    after = small.ok("GET", "/v1/status")
    assert _end(after, "events") == _end(before, "events") + 1
    assert "CORRUPT_MESSAGE" in small.log() or "corrupt_message" in small.log()


def test_a_truncated_batch_and_an_unknown_codec_are_refused(small: KafkaDaemon) -> None:
    raw = RawClient(small.kafka_port)
    raw.send(request(0, 8, _produce("events", 0, bytes(_batch(b"x"))[:-3])))
    answer = response(raw.receive() or b"", ProduceResponse, flexible_header=False)
    assert answer.responses[0].partition_responses[0].error_code == ErrorCode.corrupt_message
    bad = _batch(b"codec 7")
    bad[22] |= 0x07  # attributes low byte: codec 7
    import crc32c

    struct.pack_into(">I", bad, 17, crc32c.crc32c(bytes(bad[21:])))
    raw.send(request(0, 8, _produce("events", 0, bytes(bad))))
    answer = response(raw.receive() or b"", ProduceResponse, flexible_header=False)
    part = answer.responses[0].partition_responses[0]
    assert part.error_code == ErrorCode.unsupported_compression_type
    assert "codec 7" in (part.error_message or "")
    raw.close()


def test_produce_to_an_unknown_partition_is_unknown_topic_or_partition(
        small: KafkaDaemon) -> None:
    raw = RawClient(small.kafka_port)
    raw.send(request(0, 8, _produce("events", 5, bytes(_batch(b"x")))))
    answer = response(raw.receive() or b"", ProduceResponse, flexible_header=False)
    part = answer.responses[0].partition_responses[0]
    assert part.error_code == ErrorCode.unknown_topic_or_partition
    assert "has no partition 5" in (part.error_message or "")
    raw.close()


def _end(status: dict, topic: str) -> int:
    for t in status["topics"]:
        if t["name"] == topic:
            return sum(p["log_end_offset"] for p in t["partitions"])
    raise AssertionError(f"no topic {topic} in {status}")


def test_a_client_that_leaves_before_its_answer_leaves_no_traceback(
        small: KafkaDaemon) -> None:
    """A Fetch waits (max_wait) for records; its client resets the connection
    meanwhile: the answer finds the transport closed (uvloop's transports raise on a
    write after close): nothing written, no error logged, the daemon serves on."""
    import datetime

    from kio.schema.fetch.v4.request import FetchPartition, FetchRequest, FetchTopic
    from kio.schema.types import BrokerId, TopicName
    from kio.static.primitive import i8, i64

    producer = KafkaProducer(bootstrap_servers=small.bootstrap, acks="all")
    end = producer.send("events", value=b"the end").get(timeout=15).offset + 1
    producer.close()
    body = FetchRequest(
        replica_id=BrokerId(-1), max_wait=i32Timedelta.parse(datetime.timedelta(seconds=1)),
        min_bytes=i32(1), max_bytes=i32(1 << 20), isolation_level=i8(0),
        topics=(FetchTopic(topic=TopicName("events"), partitions=(FetchPartition(
            partition=i32(0), fetch_offset=i64(end), partition_max_bytes=i32(1 << 20)),
        )),))
    for i in range(3):
        raw = RawClient(small.kafka_port)
        raw.send(request(1, 4, body, correlation=i))
        time.sleep(0.3)  # the daemon waits for records that never come
        # a reset, not a FIN: the daemon's transport closes before the answer is ready
        raw.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        raw.close()
    time.sleep(1.2)  # each Fetch's wait ends: its answer finds no connection
    _still_serving(small)
    assert "Traceback" not in small.log() and "failed" not in small.log()
