"""The topology -> RabbitMQ mapping (pure: no broker) and what cannot map."""

from __future__ import annotations

import pytest

from runner.backends.rabbitmq import url
from runner.backends.rabbitmq.mapping import (
    CAPABILITIES,
    BindingDef,
    ExchangeDef,
    QueueDef,
    definitions,
    problems,
    retry_delays,
    unsupported,
)
from runner.engine.contract import Capability
from runner.topology.load import load_text
from runner.topology.model import Topology


def topo(text: str) -> Topology:
    result = load_text(text, filename="t.yaml")
    assert result.topology is not None, result.problems
    return result.topology


FULL = """\
version: 1
topics:
  events:
    partitions: 3
    retention: {time: 2d, bytes: 1GiB}
    segment_bytes: 8MiB
  forever:
    retention: {time: forever}
exchanges:
  ex.direct: {type: direct}
  ex.fanout: {type: fanout, durable: false}
  ex.topic: {type: topic, alternate_exchange: unrouted}
  ex.headers: {type: headers, internal: true}
  unrouted: {type: fanout}
  dlx: {type: direct}
queues:
  plain: {}
  everything:
    max_priority: 9
    message_ttl: 1500ms
    max_length: 100
    max_length_bytes: 1MiB
    overflow: reject-publish-dlx
    single_active_consumer: true
    dead_letter: {exchange: dlx, routing_key: dead}
  limited: {delivery_limit: 5, overflow: reject-publish}
  transient: {durable: false}
  dead: {}
bindings:
  - {exchange: ex.direct, queue: plain, routing_key: k}
  - {exchange: ex.topic, to_exchange: ex.fanout, routing_key: "a.#"}
  - {exchange: ex.headers, queue: plain, match: any, headers: {format: pdf, n: 1}}
  - {exchange: ex.direct, topic: forever, routing_key: f}
  - {exchange: dlx, queue: dead, routing_key: dead}
dlq_policies:
  std: {max_retries: 4, backoff: [0s, 1s, 5s]}
  expo: {max_retries: 3, backoff: {initial: 1s, multiplier: 2, max: 30s}}
consumers:
  c: {queue: plain, handler: "m:f", dlq_policy: std}
  d: {queue: everything, handler: "m:f", dlq_policy: expo}
"""


def test_queues_carry_every_argument_as_rabbitmq_names_it() -> None:
    queues = definitions(topo(FULL)).queue_map()
    assert queues["everything"] == QueueDef("everything", True, (
        ("x-dead-letter-exchange", "dlx"),
        ("x-dead-letter-routing-key", "dead"),
        ("x-max-length", 100),
        ("x-max-length-bytes", 1024 * 1024),
        ("x-max-priority", 9),
        ("x-message-ttl", 1500),
        ("x-overflow", "reject-publish-dlx"),
        ("x-queue-type", "classic"),
        ("x-single-active-consumer", True),
    ))
    assert queues["plain"] == QueueDef("plain", True, (("x-queue-type", "classic"),))
    assert queues["transient"].durable is False


def test_delivery_limit_is_a_quorum_queue_with_one_less_redelivery() -> None:
    limited = definitions(topo(FULL)).queue_map()["limited"]
    assert limited.type == "quorum"
    assert dict(limited.arguments) == {
        "x-queue-type": "quorum", "x-delivery-limit": 4, "x-overflow": "reject-publish",
    }


def test_exchanges_keep_type_durability_internal_and_alternate() -> None:
    exchanges = definitions(topo(FULL)).exchange_map()
    assert exchanges["ex.topic"] == ExchangeDef(
        "ex.topic", "topic", True, False, (("alternate-exchange", "unrouted"),)
    )
    assert exchanges["ex.fanout"] == ExchangeDef("ex.fanout", "fanout", False, False, ())
    assert exchanges["ex.headers"].internal is True
    assert {e.type for e in exchanges.values()} == {"direct", "fanout", "topic", "headers"}


def test_bindings_queue_exchange_headers_and_a_one_partition_topic() -> None:
    bindings = set(definitions(topo(FULL)).bindings)
    assert BindingDef("ex.direct", "plain", "queue", "k") in bindings
    assert BindingDef("ex.topic", "ex.fanout", "exchange", "a.#") in bindings
    assert BindingDef("ex.headers", "plain", "queue", "", (
        ("format", "pdf"), ("n", "1"), ("x-match", "any"),
    )) in bindings
    assert BindingDef("ex.direct", "forever.0", "queue", "f") in bindings


def test_a_topic_is_one_stream_per_partition() -> None:
    queues = definitions(topo(FULL)).queue_map()
    for p in range(3):
        assert dict(queues[f"events.{p}"].arguments) == {
            "x-queue-type": "stream",
            "x-max-age": "172800s",
            "x-max-length-bytes": 1024**3,
            "x-stream-max-segment-size-bytes": 8 * 1024**2,
        }
    assert "events.3" not in queues
    assert dict(queues["forever.0"].arguments) == {
        "x-queue-type": "stream", "x-stream-max-segment-size-bytes": 64 * 1024**2,
    }


def test_one_delay_queue_per_distinct_delay_dead_lettering_back() -> None:
    t = topo(FULL)
    # std: 0s (no queue), 1s, 5s, 5s; expo: 1s, 2s, 4s
    assert retry_delays(t) == [1.0, 2.0, 4.0, 5.0]
    d = definitions(t)
    queues, exchanges = d.queue_map(), d.exchange_map()
    for ms in (1000, 2000, 4000, 5000):
        name = f"__runner.delay.{ms}ms"
        assert dict(queues[name].arguments) == {
            "x-queue-type": "classic", "x-message-ttl": ms, "x-dead-letter-exchange": "",
        }
        assert exchanges[name].type == "fanout"
        assert BindingDef(name, name, "queue") in d.bindings


def test_the_default_policy_counts_when_a_handler_has_none() -> None:
    t = topo("version: 1\nqueues: {q: {}}\nconsumers: {c: {queue: q, handler: 'm:f'}}\n")
    assert retry_delays(t) == [1.0, 5.0, 30.0]


def test_a_mappable_topology_has_nothing_unsupported() -> None:
    assert unsupported(topo(FULL)) == []
    assert Capability.EXACTLY_ONCE not in CAPABILITIES
    assert Capability.COMPACTION not in CAPABILITIES
    assert {Capability.PRIORITIES, Capability.DELAYED_RETRY, Capability.DELIVERY_LIMIT,
            Capability.HEADERS_EXCHANGE, Capability.MESSAGE_TTL} <= CAPABILITIES


UNMAPPABLE = """\
version: 1
topics:
  events: {partitions: 3, key: id, cleanup_policy: compact}
exchanges:
  ex: {type: topic}
queues:
  q: {delivery_limit: 3, max_priority: 5, durable: false}
  r: {delivery_limit: 2, overflow: reject-publish-dlx, dead_letter: {exchange: ex}}
  events.1: {}
bindings:
  - {exchange: ex, topic: events, routing_key: "a.#"}
dlq_policies:
  p: {backoff: {initial: 1s, jitter: 0.1}, dead_letter_queue: q}
consumers:
  c: {queue: q, handler: "m:f", delivery: exactly-once, dlq_policy: p}
consumer_groups:
  g: {topic: events, handler: "m:f", delivery: exactly-once, dlq_policy: p}
"""


def test_what_cannot_map_is_listed_with_its_reason_and_position() -> None:
    t = topo(UNMAPPABLE)
    found = [(u.entity, u.name, u.field) for u in unsupported(t)]
    assert found == [
        ("topic", "events", "partitions"),
        ("topic", "events", "cleanup_policy"),
        ("queue", "q", "max_priority"),
        ("queue", "q", "durable"),
        ("queue", "r", "overflow"),
        ("binding", 'ex -> topic events key "a.#"', "topic"),
        ("dlq_policy", "p", "backoff.jitter"),
        ("consumer", "c", "delivery"),
        ("consumer_group", "g", "delivery"),
    ]
    lines = [f"{p.file}:{p.line}:{p.column} {p.rule} {p.message}" for p in problems(t)]
    assert lines[1] == (
        "t.yaml:3:52 backend the RabbitMQ backend cannot express topic 'events' cleanup_policy: "
        "RabbitMQ streams have no compaction (a stream only drops whole segments by age or size)"
    )
    assert lines[0].endswith(
        "topic 'events' partitions: partition 1 is the stream 'events.1', "
        "which is also the name of a queue"
    )
    assert "quorum queues have no priorities in RabbitMQ 3.10" in lines[2]
    assert "quorum queues are always durable" in lines[3]
    assert "quorum queues do not support reject-publish-dlx" in lines[4]
    assert "cannot pick a partition by the key's murmur2 hash" in lines[5]
    assert "one fixed x-message-ttl each" in lines[6]
    assert lines[7].startswith("t.yaml:15:43 ")
    assert "RabbitMQ has no transaction across queues and streams" in lines[8]


@pytest.mark.parametrize(("text", "expected"), [
    ("amqp://localhost", url.Target("localhost")),
    ("amqp://u:p%40ss@h:5673/shop", url.Target("h", 5673, "shop", "u", "p@ss")),
    ("amqp://h/%2f", url.Target("h")),
    ("amqp://h/a%2fb?management_port=15673", url.Target("h", vhost="a/b", management_port=15673)),
])
def test_backend_urls(text: str, expected: url.Target) -> None:
    assert url.parse(text) == expected


@pytest.mark.parametrize(("text", "message"), [
    ("http://h/", "'http://h/': the backend must be an amqp:// URL "
                  "(amqp://user:pass@host[:port]/vhost)"),
    ("amqp:///x", "'amqp:///x': no host (amqp://user:pass@host[:port]/vhost)"),
    ("amqp://h:99999/", "'amqp://h:99999/': the port is not a number from 1 to 65535"),
    ("amqp://h/a/b", "'amqp://h/a/b': a vhost containing '/' is written %2f"),
    ("amqp://h/?x=1", "'amqp://h/?x=1': unknown option 'x' (known: management_port)"),
    ("amqp://h/?management_port=x", "'amqp://h/?management_port=x': "
                                    "management_port must be a port number"),
])
def test_bad_backend_urls_say_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(url.BadURL) as err:
        url.parse(text)
    assert str(err.value) == message
