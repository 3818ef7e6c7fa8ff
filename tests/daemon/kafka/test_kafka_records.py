"""Produce, Fetch, ListOffsets and Metadata through real Kafka clients against a real daemon."""

from __future__ import annotations

import base64
import time
import uuid

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer
from confluent_kafka import TopicPartition as CTopicPartition
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaTimeoutError

from tests.daemon.kafka.conftest import KafkaDaemon, now_ms

pytestmark = [pytest.mark.e2e]


def _drain_kafka_python(kd: KafkaDaemon, topic: str, partitions: int) -> list:
    """Every record of `topic` up to its current log end, read by kafka-python."""
    c = KafkaConsumer(bootstrap_servers=kd.bootstrap, group_id=None)
    tps = [TopicPartition(topic, p) for p in range(partitions)]
    c.assign(tps)
    c.seek_to_beginning()
    ends = c.end_offsets(tps)
    out: list = []
    deadline = time.monotonic() + 20
    while any(c.position(tp) < ends[tp] for tp in tps) and time.monotonic() < deadline:
        for recs in c.poll(timeout_ms=1000).values():
            out.extend(recs)
    c.close()
    return out


def test_kafka_python_round_trip_keeps_keys_values_headers_and_timestamps(
        kd: KafkaDaemon) -> None:
    topic = "orders"
    tag = uuid.uuid4().hex[:8]
    p = KafkaProducer(bootstrap_servers=kd.bootstrap, acks="all")
    ts = now_ms() - 60_000
    sent = {}
    for i in range(30):
        key = f"{tag}-{i}".encode()
        md = p.send(topic, key=key, value=f"value {i}".encode(), timestamp_ms=ts + i,
                    headers=[("trace", f"t{i}".encode()), ("trace", b"twice"),
                             ("bin", b"\x00\xff")]).get(timeout=15)
        sent[key] = md
    p.close()
    got = {m.key: m for m in _drain_kafka_python(kd, topic, 3)
           if m.key and m.key.startswith(tag.encode())}
    assert set(got) == set(sent)
    for key, md in sent.items():
        m = got[key]
        i = int(key.decode().rsplit("-", 1)[1])
        assert (m.partition, m.offset) == (md.partition, md.offset)
        assert m.value == f"value {i}".encode()
        assert m.timestamp == ts + i
        assert m.headers == [("trace", f"t{i}".encode()), ("trace", b"twice"),
                             ("bin", b"\x00\xff")]


def test_confluent_kafka_round_trip_with_acks_all(kd: KafkaDaemon) -> None:
    tag = uuid.uuid4().hex[:8]
    p = Producer({"bootstrap.servers": kd.bootstrap, "acks": "all",
                  "partitioner": "murmur2_random", "linger.ms": 5})
    delivered: list = []
    for i in range(200):
        p.produce("orders", key=f"{tag}-{i}".encode(), value=b"x" * 200,
                  headers=[("n", str(i).encode())],
                  on_delivery=lambda err, msg: delivered.append((err, msg)))
    assert p.flush(30) == 0
    p.close()
    assert [e for e, _ in delivered if e is not None] == []
    placed = {m.key(): (m.partition(), m.offset()) for _, m in delivered}
    c = Consumer({"bootstrap.servers": kd.bootstrap, "group.id": "billing",
                  "enable.auto.commit": False})
    c.assign([CTopicPartition("orders", p, OFFSET_BEGINNING) for p in range(3)])
    seen = {}
    deadline = time.monotonic() + 30
    while len(seen) < 200 and time.monotonic() < deadline:
        for m in c.consume(500, timeout=1):
            assert m.error() is None, m.error()
            if m.key().startswith(tag.encode()):
                seen[m.key()] = (m.partition(), m.offset(), m.headers(), m.value())
    c.close()
    assert {k: v[:2] for k, v in seen.items()} == placed
    assert all(v[3] == b"x" * 200 for v in seen.values())
    assert seen[f"{tag}-7".encode()][2] == [("n", b"7")]


def test_kafka_and_http_producers_agree_on_partitions_and_read_each_other(
        kd: KafkaDaemon) -> None:
    keys = [f"customer-{uuid.uuid4().hex[:6]}-{i}" for i in range(40)]
    body = {"records": [{"key": k, "value": {"k": k}, "headers": {"via": "http"}}
                        for k in keys]}
    answer = kd.ok("POST", "/v1/topics/orders/records", body, status=202)
    http_parts = [o["partition"] for o in answer["offsets"]]
    p = KafkaProducer(bootstrap_servers=kd.bootstrap, acks="all")
    kafka = [p.send("orders", key=k.encode(), value=b"{}", headers=[("via", b"kafka")])
             for k in keys]
    kafka_md = [f.get(timeout=15) for f in kafka]
    p.close()
    cp = Producer({"bootstrap.servers": kd.bootstrap, "partitioner": "murmur2_random"})
    conf: dict[str, int] = {}
    for k in keys:
        cp.produce("orders", key=k.encode(), value=b"{}",
                   on_delivery=lambda err, msg: conf.update({msg.key().decode(): msg.partition()}))
    assert cp.flush(30) == 0
    cp.close()
    assert [m.partition for m in kafka_md] == http_parts
    assert [conf[k] for k in keys] == http_parts
    # the Kafka record read over HTTP: value, key, header, timestamp as sent
    md = kafka_md[0]
    read = kd.ok("GET", f"/v1/topics/orders/partitions/{md.partition}/records"
                        f"?offset={md.offset}&limit=1")["records"][0]
    assert read["key"] == keys[0] and read["headers"]["via"] == "kafka"
    assert read["timestamp"] == md.timestamp
    # the HTTP record read by a Kafka consumer: same offset, key, timestamp
    first = answer["offsets"][0]
    c = KafkaConsumer(bootstrap_servers=kd.bootstrap, group_id=None)
    tp = TopicPartition("orders", first["partition"])
    c.assign([tp])
    c.seek(tp, first["offset"])
    batch = c.poll(timeout_ms=10_000, max_records=1)[tp]
    c.close()
    http_read = kd.ok("GET", f"/v1/topics/orders/partitions/{first['partition']}/records"
                             f"?offset={first['offset']}&limit=1")["records"][0]
    assert batch[0].key == keys[0].encode()
    assert batch[0].timestamp == http_read["timestamp"]
    # a string header is stored raw (docs/kafka.md): `http`, not `"http"`
    assert batch[0].headers == [("via", b"http")]


# what an HTTP producer sends -> the bytes a Kafka consumer sees
HTTP_HEADERS: dict = {
    "text": "abc", "digits": "123", "quoted": '"abc"', "json-text": '{"a": 1}', "empty": "",
    "int": 3, "float": 1.5, "true": True, "null": None, "obj": {"a": [1, "x"]},
    "bin": {"$b64": base64.b64encode(b"\x00\xff").decode()},
    "utf8-bytes": {"$b64": base64.b64encode(b"abc").decode()},
}
KAFKA_SEES = [
    ("text", b"abc"), ("digits", b"123"), ("quoted", b'"abc"'), ("json-text", b'{"a": 1}'),
    ("empty", b""), ("int", b"3"), ("float", b"1.5"), ("true", b"true"), ("null", None),
    ("obj", b'{"a":[1,"x"]}'), ("bin", b"\x00\xff"), ("utf8-bytes", b"abc"),
]


def _kafka_python_at(kd: KafkaDaemon, topic: str, partition: int, offset: int) -> list:
    c = KafkaConsumer(bootstrap_servers=kd.bootstrap, group_id=None)
    try:
        tp = TopicPartition(topic, partition)
        c.assign([tp])
        c.seek(tp, offset)
        return c.poll(timeout_ms=10_000, max_records=1)[tp][0].headers
    finally:
        c.close()


def _confluent_at(kd: KafkaDaemon, topic: str, partition: int, offset: int) -> list:
    c = Consumer({"bootstrap.servers": kd.bootstrap, "group.id": "billing",
                  "enable.auto.commit": False})
    try:
        c.assign([CTopicPartition(topic, partition, offset)])
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            for m in c.consume(1, timeout=1):
                assert m.error() is None, m.error()
                return m.headers() or []
        raise AssertionError("confluent-kafka read nothing")
    finally:
        c.close()


def test_http_header_values_reach_kafka_consumers_raw_and_read_back_over_http_as_sent(
        kd: KafkaDaemon) -> None:
    answer = kd.ok("POST", "/v1/topics/events/records",
                   {"value": "x", "headers": HTTP_HEADERS}, status=202)
    at = answer["offsets"][0]
    where = ("events", at["partition"], at["offset"])
    assert _kafka_python_at(kd, *where) == KAFKA_SEES
    assert _confluent_at(kd, *where) == KAFKA_SEES
    read = kd.ok("GET", f"/v1/topics/events/partitions/{at['partition']}/records"
                        f"?offset={at['offset']}&limit=1")["records"][0]
    assert read["headers"] == HTTP_HEADERS


def test_kafka_header_bytes_read_over_http_as_text_or_b64_and_go_back_unchanged(
        kd: KafkaDaemon) -> None:
    sent = [("text", b"abc"), ("digits", b"123"), ("quoted", b'"abc"'),
            ("json", b'{"a":1}'), ("bin", b"\x00\xff"), ("tag-like", b'{"$b64":"YWJj"}'),
            ("x-runner-header-types", b"jj")]  # a client's header of our name stays its own
    p = KafkaProducer(bootstrap_servers=kd.bootstrap, acks="all")
    try:
        md = p.send("events", value=b"v", headers=sent).get(timeout=15)
    finally:
        p.close()
    assert _kafka_python_at(kd, "events", md.partition, md.offset) == sent
    read = kd.ok("GET", f"/v1/topics/events/partitions/{md.partition}/records"
                        f"?offset={md.offset}&limit=1")["records"][0]
    assert read["headers"] == {
        "text": "abc", "digits": "123", "quoted": '"abc"', "json": '{"a":1}',
        "bin": {"$b64": "AP8="}, "tag-like": '{"$b64":"YWJj"}', "x-runner-header-types": "jj"}
    # what HTTP read, sent back over HTTP, reaches Kafka consumers as the same bytes
    again = kd.ok("POST", "/v1/topics/events/records",
                  {"value": "v", "headers": read["headers"]}, status=202)["offsets"][0]
    assert _kafka_python_at(kd, "events", again["partition"], again["offset"]) == sent
    assert _confluent_at(kd, "events", again["partition"], again["offset"]) == sent


def test_a_malformed_header_tag_over_http_is_a_400_naming_the_header(kd: KafkaDaemon) -> None:
    answer = kd.post("/v1/topics/events/records", {"value": "x", "headers": {"h": {"$tuple": 5}}})
    assert answer.status == 400
    assert answer.body["error"].startswith("header 'h': a malformed tag (")


def test_fetch_long_polls_and_wakes_on_an_http_append(kd: KafkaDaemon) -> None:
    c = KafkaConsumer(bootstrap_servers=kd.bootstrap, group_id=None, fetch_max_wait_ms=8000)
    tp = TopicPartition("events", 0)
    c.assign([tp])
    c.seek_to_end(tp)
    c.poll(timeout_ms=500)  # positions resolved, a long-polling fetch in flight
    value = uuid.uuid4().hex
    start = time.monotonic()
    kd.ok("POST", "/v1/topics/events/records",
          {"value_b64": base64.b64encode(value.encode()).decode()}, status=202)
    got = []
    while not got and time.monotonic() - start < 10:
        got = c.poll(timeout_ms=10_000).get(tp, [])
    elapsed = time.monotonic() - start
    c.close()
    assert [m.value for m in got] == [value.encode()]
    assert elapsed < 4.0, f"the fetch was not woken by the append ({elapsed:.1f}s)"


def test_list_offsets_earliest_latest_and_by_timestamp(kd: KafkaDaemon) -> None:
    p = KafkaProducer(bootstrap_servers=kd.bootstrap, acks=1)
    base = now_ms() + 10_000_000  # later than anything other tests wrote
    mds = [p.send("events", value=f"t{i}".encode(), timestamp_ms=base + 1000 * i)
           .get(timeout=15) for i in range(5)]
    p.close()
    c = KafkaConsumer(bootstrap_servers=kd.bootstrap, group_id=None)
    tp = TopicPartition("events", 0)
    assert c.beginning_offsets([tp])[tp] == 0
    assert c.end_offsets([tp])[tp] == mds[-1].offset + 1
    found = c.offsets_for_times({tp: base + 1500})[tp]
    assert (found.offset, found.timestamp) == (mds[2].offset, base + 2000)
    assert c.offsets_for_times({tp: base + 10_000})[tp] is None
    c.close()


def test_acks_zero_is_stored_without_an_answer(kd: KafkaDaemon) -> None:
    value = uuid.uuid4().hex.encode()
    p = KafkaProducer(bootstrap_servers=kd.bootstrap, acks=0)
    p.send("ledger", key=b"acct-1", value=value).get(timeout=15)
    p.flush()
    p.close()
    got = _drain_kafka_python(kd, "ledger", 2)
    assert value in [m.value for m in got]


def test_unknown_topic_is_not_created(kd: KafkaDaemon) -> None:
    p = KafkaProducer(bootstrap_servers=kd.bootstrap, max_block_ms=1500)
    with pytest.raises(KafkaTimeoutError):
        p.send("no-such-topic", value=b"x").get(timeout=5)
    p.close(timeout=5)
    c = KafkaConsumer(bootstrap_servers=kd.bootstrap, group_id=None)
    assert "no-such-topic" not in c.topics()
    assert {"orders", "events", "ledger"} <= c.topics()
    assert c.partitions_for_topic("orders") == {0, 1, 2}
    c.close()
    assert kd.get("/v1/topics/no-such-topic/partitions/0/records").status == 404


def test_keyless_record_on_a_compacted_topic_is_refused_with_a_reason(
        kd: KafkaDaemon) -> None:
    delivered: list = []
    p = Producer({"bootstrap.servers": kd.bootstrap, "message.send.max.retries": 0})
    p.produce("ledger", value=b"no key", partition=0,
              on_delivery=lambda err, msg: delivered.append(err))
    assert p.flush(15) == 0
    p.close()
    assert delivered[0] is not None
    assert delivered[0].name() == "INVALID_RECORD"
    assert "compacted" in kd.log() and "every record needs a key" in kd.log()


def test_aiokafka_idempotent_gzip_producer_and_consumer_round_trip(kd: KafkaDaemon) -> None:
    import asyncio

    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
    from aiokafka import TopicPartition as ATopicPartition

    async def run() -> tuple[list, list]:
        p = AIOKafkaProducer(bootstrap_servers=kd.bootstrap, acks="all",
                             enable_idempotence=True, compression_type="gzip")
        await p.start()
        try:
            mds = [await p.send_and_wait("orders", f"aio {i}".encode(),
                                         key=f"aio-{i}".encode(), headers=[("h", b"z")])
                   for i in range(5)]
        finally:
            await p.stop()
        c = AIOKafkaConsumer(bootstrap_servers=kd.bootstrap)
        await c.start()
        got = []
        try:
            for md in mds:
                tp = ATopicPartition("orders", md.partition)
                c.assign([tp])
                c.seek(tp, md.offset)
                m = await asyncio.wait_for(c.getone(), 15)
                got.append((m.key, m.value, list(m.headers), m.offset))
        finally:
            await c.stop()
        return mds, got

    mds, got = asyncio.run(run())
    assert got == [(f"aio-{i}".encode(), f"aio {i}".encode(), [("h", b"z")], md.offset)
                   for i, md in enumerate(mds)]


@pytest.mark.parametrize("codec", ["gzip", "snappy", "lz4", "zstd"])
def test_compressed_batches_from_both_clients_are_stored_and_read(kd: KafkaDaemon,
                                                                  codec: str) -> None:
    tag = f"{codec}-{uuid.uuid4().hex[:6]}"
    cp = Producer({"bootstrap.servers": kd.bootstrap, "compression.type": codec,
                   "linger.ms": 20, "acks": "all"})
    for i in range(50):
        cp.produce("orders", key=f"{tag}-c{i}".encode(), value=(f"{tag}-c{i}-" * 20).encode())
    assert cp.flush(30) == 0
    cp.close()
    kp = KafkaProducer(bootstrap_servers=kd.bootstrap, compression_type=codec, linger_ms=20)
    for i in range(50):
        kp.send("orders", key=f"{tag}-k{i}".encode(), value=(f"{tag}-k{i}-" * 20).encode())
    kp.flush()
    kp.close()
    got = {m.key: m.value for m in _drain_kafka_python(kd, "orders", 3)
           if m.key and m.key.startswith(tag.encode())}
    want = {f"{tag}-{w}{i}".encode(): (f"{tag}-{w}{i}-" * 20).encode()
            for w in "ck" for i in range(50)}
    assert got == want


def test_a_null_kafka_header_value_round_trips_as_null(kd: KafkaDaemon) -> None:
    """A Kafka client's null header value (length -1) stays null: for Kafka consumers,
    over HTTP (JSON null), in a handler's msg.headers (None), and sent back over HTTP."""
    sent = [("gone", None), ("kept", b"x"), ("empty", b""), ("gone", None)]
    delivered: list = []
    p = Producer({"bootstrap.servers": kd.bootstrap, "acks": "all"})
    p.produce("events", value=b"v", headers=sent, on_delivery=lambda e, m: delivered.append(
        (e, m.partition(), m.offset())))
    assert p.flush(15) == 0
    ((error, partition, offset),) = delivered  # kafka-python refuses to send a null value
    assert error is None
    assert _kafka_python_at(kd, "events", partition, offset) == sent
    assert _confluent_at(kd, "events", partition, offset) == sent
    read = kd.ok("GET", f"/v1/topics/events/partitions/{partition}/records"
                        f"?offset={offset}&limit=1")["records"][0]
    assert read["headers"] == {"gone": None, "kept": "x", "empty": ""}
    again = kd.ok("POST", "/v1/topics/events/records",
                  {"value": "v", "headers": read["headers"]}, status=202)["offsets"][0]
    assert _kafka_python_at(kd, "events", again["partition"], again["offset"]) == [
        ("gone", None), ("kept", b"x"), ("empty", b"")]
