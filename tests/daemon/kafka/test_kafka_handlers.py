"""Kafka clients and the topology's handlers on the same topics: a record a Kafka
producer writes reaches a handler, and what the handler appends reaches Kafka consumers."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from tests.daemon.kafka.conftest import KafkaDaemon

pytestmark = [pytest.mark.e2e]

TOPOLOGY = """\
version: 1
name: kafka-handlers
topics:
  raw:
    partitions: 2
  enriched:
    partitions: 2
consumer_groups:
  enricher:
    topics: [raw]
    handler: "enrich_k:enrich"
"""

HANDLER = '''\
def enrich(msg, ctx):
    ctx.append("enriched", msg.payload.upper(), key=msg.key,
               headers={"h": msg.headers.get("h"), "from": f"{msg.topic}/{msg.partition}"})
'''


def test_a_kafka_record_reaches_a_handler_whose_output_reaches_kafka_consumers(
        start_kafka_daemon: Callable[..., KafkaDaemon]) -> None:
    d = start_kafka_daemon(TOPOLOGY, modules={"enrich_k": HANDLER})
    p = KafkaProducer(bootstrap_servers=d.bootstrap, acks="all")
    sent = [p.send("raw", key=f"order-{i}".encode(), value=f"payload {i}".encode(),
                   headers=[("h", b"v")]).get(timeout=15) for i in range(10)]
    p.close()
    c = KafkaConsumer(bootstrap_servers=d.bootstrap, group_id=None)
    tps = [TopicPartition("enriched", q) for q in range(2)]
    c.assign(tps)
    c.seek_to_beginning()
    got = []
    deadline = time.monotonic() + 30
    while len(got) < 10 and time.monotonic() < deadline:
        for recs in c.poll(timeout_ms=500).values():
            got.extend(recs)
    c.close()
    by_key = {r.key: r for r in got}
    assert len(got) == 10
    for i, md in enumerate(sent):
        r = by_key[f"order-{i}".encode()]
        assert r.value == f"PAYLOAD {i}".encode()
        assert r.partition == md.partition  # same key, same partition count: same partition
        # string headers are stored raw: Kafka consumers see the text, no JSON quotes
        assert r.headers == [("h", b"v"), ("from", f"raw/{md.partition}".encode())]


def test_a_topic_added_by_a_reload_is_served_at_once(
        start_kafka_daemon: Callable[..., KafkaDaemon]) -> None:
    from tests.daemon.kafka.conftest import TOPOLOGY as BASE
    from tests.daemon.kafka.conftest import until

    d = start_kafka_daemon()
    c = KafkaConsumer(bootstrap_servers=d.bootstrap, group_id=None)
    assert "fresh" not in c.topics()
    d.topology.write_text(BASE.replace("topics:\n", "topics:\n  fresh:\n    partitions: 5\n", 1))
    until(lambda: "fresh" in c.topics(), 20)
    assert c.partitions_for_topic("fresh") == {0, 1, 2, 3, 4}
    c.close()
    p = KafkaProducer(bootstrap_servers=d.bootstrap, acks="all")
    md = p.send("fresh", key=b"k", value=b"new topic").get(timeout=15)
    p.close()
    assert 0 <= md.partition < 5
