"""Build: defaults, units, merging of files, names, positions and the content hash."""

from __future__ import annotations

import dataclasses
import importlib
import json
import shutil
from pathlib import Path
from types import SimpleNamespace
from unittest.mock import Mock

import pytest

from runner.topology.load import LoadResult, load, load_text
from runner.topology.model import (
    Alert,
    Assignment,
    Binding,
    DeadLetter,
    Delivery,
    DlqPolicy,
    ExchangeType,
    ExponentialBackoff,
    HeadersMatch,
    OffsetReset,
    Overflow,
    Position,
    Retention,
    Topology,
)
from runner.topology.snapshot import from_document, to_document

ROOT = Path(__file__).resolve().parents[2]
MiB = 1024 * 1024


def _ok(text: str, filename: str = "t.yaml") -> Topology:
    result = load_text(text, filename=filename, env={})
    assert [p.message for p in result.problems] == []
    assert result.topology is not None
    return result.topology


def _write(folder: Path, files: dict[str, str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text)
    return folder


def test_topic_defaults() -> None:
    topic = _ok("version: 1\ntopics:\n  t: {}\n  u:\n").topic_map()
    for t in topic.values():
        assert t.partitions == 1
        assert t.key is None
        assert t.retention == Retention(time_s=7 * 86400.0, bytes=None)
        assert (t.compact, t.delete) == (False, True)
        assert t.cleanup_policy == ("delete",)
        assert t.segment_bytes == 64 * MiB
        assert t.max_message_bytes == 1 * MiB
        assert t.delete_retention_s == 86400.0


def test_topic_delete_retention_and_keep_nothing() -> None:
    topics = _ok("version: 1\ntopics:\n  u: {cleanup_policy: compact, delete_retention: 90m,"
                 " retention: {bytes: 0}}\n").topic_map()
    assert topics["u"].delete_retention_s == 5400.0
    assert topics["u"].retention.bytes == 0


def test_topic_units_and_cleanup_policies() -> None:
    text = (
        "version: 1\ntopics:\n"
        "  a: {retention: {time: forever, bytes: 1GiB}, cleanup_policy: compact,"
        " segment_bytes: 1MB, max_message_bytes: 4096}\n"
        "  b: {retention: {time: 36h, bytes: unlimited}, cleanup_policy: [compact, delete]}\n"
    )
    topics = _ok(text).topic_map()
    assert topics["a"].retention == Retention(time_s=None, bytes=1024**3)
    assert topics["a"].cleanup_policy == ("compact",)
    assert (topics["a"].segment_bytes, topics["a"].max_message_bytes) == (1_000_000, 4096)
    assert topics["b"].retention == Retention(time_s=36 * 3600.0, bytes=None)
    assert topics["b"].cleanup_policy == ("compact", "delete")


def test_exchange_and_queue_defaults() -> None:
    topo = _ok("version: 1\nexchanges:\n  x: {type: headers}\nqueues:\n  q:\n")
    x = topo.exchange_map()["x"]
    assert (x.type, x.durable, x.internal, x.alternate_exchange) == (
        ExchangeType.HEADERS,
        True,
        False,
        None,
    )
    q = topo.queue_map()["q"]
    assert q.durable is True
    assert q.max_priority is None and q.message_ttl_s is None
    assert q.max_length is None and q.max_length_bytes is None and q.delivery_limit is None
    assert q.overflow is Overflow.DROP_HEAD
    assert q.single_active_consumer is False
    assert q.dead_letter is None


def test_queue_values() -> None:
    text = (
        "version: 1\nexchanges: {dlx: {type: fanout}}\nqueues:\n  q:\n"
        "    max_priority: 10\n    message_ttl: 24h\n    max_length: 5\n"
        "    max_length_bytes: 2KiB\n    overflow: reject-publish-dlx\n    delivery_limit: 3\n"
        "    dead_letter: {exchange: dlx, routing_key: dead}\n"
        "  r: {dead_letter: {exchange: dlx}}\n"
    )
    queues = _ok(text).queue_map()
    q = queues["q"]
    assert (q.max_priority, q.message_ttl_s, q.max_length, q.max_length_bytes) == (
        10,
        86400.0,
        5,
        2048,
    )
    assert (q.overflow, q.delivery_limit) == (Overflow.REJECT_PUBLISH_DLX, 3)
    assert q.dead_letter == DeadLetter("dlx", "dead")
    assert queues["r"].dead_letter == DeadLetter("dlx", None)


def test_bindings_keep_order_and_stringify_sorted_headers() -> None:
    text = (
        "version: 1\n"
        "exchanges: {docs: {type: headers}, fan: {type: fanout}}\n"
        "queues: {a: {}, b: {}}\n"
        "topics: {t: {}}\n"
        "bindings:\n"
        "  - {exchange: docs, queue: a, match: any, headers: {z: 1, b: true, a: pdf, f: 1.5}}\n"
        "  - {exchange: fan, topic: t}\n"
        "  - {exchange: fan, to_exchange: docs}\n"
    )
    bindings = _ok(text).bindings
    assert bindings[0] == Binding(
        exchange="docs",
        queue="a",
        match=HeadersMatch.ANY,
        headers=(("a", "pdf"), ("b", "true"), ("f", "1.5"), ("z", "1")),
    )
    assert (bindings[1].destination_kind, bindings[1].destination, bindings[1].routing_key) == (
        "topic",
        "t",
        "",
    )
    assert (bindings[2].destination_kind, bindings[2].match) == ("exchange", HeadersMatch.ALL)
    assert bindings[0].pos == Position("t.yaml", 6, 5)


def test_policy_defaults_and_backoff_forms() -> None:
    text = (
        "version: 1\nqueues: {dlq: {}}\ndlq_policies:\n"
        "  plain:\n"
        "  listed: {max_retries: 4, backoff: [0s, 250ms, 1m], dead_letter_queue: dlq,"
        " no_retry_on: [ValueError], alert: {max_depth: 5, max_age: 1h}}\n"
        "  expo: {backoff: {multiplier: 3}}\n"
    )
    policies = _ok(text).policy_map()
    assert policies["plain"] == DlqPolicy(name="plain")
    assert policies["plain"].max_retries == 3
    assert policies["plain"].backoff == (1.0, 5.0, 30.0)
    listed = policies["listed"]
    assert listed.backoff == (0.0, 0.25, 60.0)
    assert (listed.max_retries, listed.dead_letter_queue, listed.no_retry_on) == (
        4,
        "dlq",
        ("ValueError",),
    )
    assert listed.alert == Alert(max_depth=5, max_age_s=3600.0)
    assert policies["expo"].backoff == ExponentialBackoff(1.0, 3.0, 30.0, 0.0)


def test_group_and_consumer_defaults() -> None:
    text = (
        "version: 1\ntopics: {t: {}, u: {}}\nqueues: {q: {}}\n"
        "dlq_policies: {p: {}}\n"
        "consumer_groups:\n  g: {topic: t}\n"
        "  h: {topics: [t, u], handler: a.b:c, timeout: 10s, dlq_policy: p}\n"
        "consumers:\n  c: {queue: q, handler: a.b:c, concurrency: 4, dlq_policy: p}\n"
        "  d: {queue: q, handler: a.b:d, prefetch: 7, idempotency: {}, dlq_policy: p}\n"
    )
    topo = _ok(text)
    g = topo.group_map()["g"]
    assert g.topics == ("t",)
    assert (g.handler, g.instances, g.assignment, g.offset_reset, g.delivery) == (
        None,
        1,
        Assignment.RANGE,
        OffsetReset.EARLIEST,
        Delivery.AT_LEAST_ONCE,
    )
    assert (g.dlq_policy, g.timeout_s) == (None, 300.0)
    assert topo.group_map()["h"].topics == ("t", "u")
    assert topo.group_map()["h"].timeout_s == 10.0
    c = topo.consumer_map()["c"]
    assert (c.concurrency, c.prefetch, c.timeout_s, c.delivery, c.idempotency) == (
        4,
        40,
        300.0,
        Delivery.AT_LEAST_ONCE,
        None,
    )
    d = topo.consumer_map()["d"]
    assert d.prefetch == 7
    assert d.idempotency is not None
    assert (d.idempotency.key, d.idempotency.window_s) == ("message_id", 86400.0)


def test_entities_are_sorted_by_name_and_carry_positions() -> None:
    topo = _ok("version: 1\nqueues:\n  zeta: {}\n  alpha: {}\n")
    assert [name for name, _ in topo.queues] == ["alpha", "zeta"]
    assert topo.queue_map()["zeta"].pos == Position("t.yaml", 3, 3)
    assert topo.position("queues.zeta") == Position("t.yaml", 3, 3)
    assert topo.position("queues.zeta.max_length") == Position("t.yaml", 3, 3)  # nearest ancestor


def test_moving_lines_does_not_change_the_topology_value() -> None:
    a = _ok("version: 1\nqueues: {a: {}, b: {max_length: 3}}\n")
    b = _ok("version: 1\n\n# moved\nqueues:\n  b:\n    max_length: 3\n  a: {}\n")
    assert a == b and hash(a) == hash(b)
    assert a.positions != b.positions


def test_reserved_and_duplicate_names() -> None:
    text = "version: 1\ntopics:\n  jobs: {}\n  __x: {}\nqueues:\n  jobs: {}\n  amq.q: {}\n"
    result = load_text(text, filename="t.yaml", env={})
    assert result.topology is None
    assert [(p.line, p.column, p.rule, p.message) for p in result.problems] == [
        (
            4,
            3,
            "reserved-name",
            'topic name "__x" is reserved: names starting with "__" belong to the engine',
        ),
        (
            6,
            3,
            "duplicate-name",
            'name "jobs" is used twice: by the topic at t.yaml:3:3 and by the queue at t.yaml:6:3 '
            "(queues and topics share one namespace)",
        ),
        (
            7,
            3,
            "reserved-name",
            'queue name "amq.q" is reserved: names starting with "amq." are reserved '
            "as in RabbitMQ",
        ),
    ]


def test_reply_address_names_are_reserved() -> None:
    text = ("version: 1\nqueues:\n  runner.reply-to.x: {}\n"
            "exchanges:\n  runner.reply-to.y: {type: direct}\n")
    result = load_text(text, filename="t.yaml", env={})
    assert result.topology is None
    assert [(p.line, p.column, p.rule, p.message) for p in result.problems] == [
        (3, 3, "reserved-name",
         'queue name "runner.reply-to.x" is reserved: names starting with "runner.reply-to." '
         "are the private reply addresses of request-reply"),
        (5, 3, "reserved-name",
         'exchange name "runner.reply-to.y" is reserved: names starting with "runner.reply-to." '
         "are the private reply addresses of request-reply"),
    ]


def test_names_in_different_namespaces_may_repeat() -> None:
    topo = _ok(
        "version: 1\nexchanges: {orders: {type: topic}}\nqueues: {orders: {}, dead: {}}\n"
        "dlq_policies: {orders: {dead_letter_queue: dead}}\n"
        "consumers: {orders: {queue: orders, handler: a.b:c, dlq_policy: orders}}\n"
    )
    assert topo.exchange_map()["orders"].name == topo.queue_map()["orders"].name


# ---------------------------------------------------------------- directories


def test_a_directory_merges_its_files_in_name_order(tmp_path: Path) -> None:
    folder = _write(
        tmp_path / "topo",
        {
            "b.yaml": "version: 1\nqueues: {q2: {}}\nbindings:\n  - {exchange: x, queue: q2}\n",
            "a.yaml": (
                "version: 1\nname: shop\nexchanges: {x: {type: direct}}\nqueues: {q1: {}}\n"
                "bindings:\n  - {exchange: x, queue: q1}\n"
            ),
        },
    )
    result = load(str(folder))
    assert result.problems == ()
    topo = result.topology
    assert topo is not None
    assert topo.name == "shop"
    assert topo.files == (str(folder / "a.yaml"), str(folder / "b.yaml"))
    assert [b.queue for b in topo.bindings] == ["q1", "q2"]
    # the second file's bindings[0] is bindings[1] of the merged topology
    assert topo.positions["bindings[1].queue"] == Position(str(folder / "b.yaml"), 4, 26)
    assert topo.positions["bindings[0].queue"] == Position(str(folder / "a.yaml"), 6, 26)
    assert topo.bindings[1].pos == Position(str(folder / "b.yaml"), 4, 5)
    assert topo.queue_map()["q2"].pos.file == str(folder / "b.yaml")


def test_duplicate_names_across_files_name_both_places(tmp_path: Path) -> None:
    folder = _write(
        tmp_path / "d",
        {
            "a.yaml": "version: 1\nqueues:\n  jobs: {}\n",
            "b.yaml": "version: 1\nqueues:\n  jobs: {}\n",
        },
    )
    result = load(str(folder))
    a, b = folder / "a.yaml", folder / "b.yaml"
    assert [(p.file, p.line, p.column, p.message) for p in result.problems] == [
        (str(b), 3, 3, f'queue "jobs" is defined twice: at {a}:3:3 and at {b}:3:3')
    ]


def test_every_file_needs_its_own_version(tmp_path: Path) -> None:
    folder = _write(tmp_path / "d", {"a.yaml": "version: 1\n", "b.yaml": "queues: {q: {}}\n"})
    result = load(str(folder))
    assert [(p.file, p.message) for p in result.problems] == [
        (str(folder / "b.yaml"), 'missing required key "version" in the top level')
    ]


# ---------------------------------------------------------------- content hash


def test_content_hash_follows_content_not_location(tmp_path: Path) -> None:
    first = _write(tmp_path / "one", {"a.yaml": "version: 1\nqueues: {q: {}}\n"})
    second = tmp_path / "two"
    shutil.copytree(first, second)
    h1 = load(str(first)).content_hash
    assert load(str(first)).content_hash == h1
    assert load(str(second)).content_hash == h1
    (second / "a.yaml").write_text("version: 1\nqueues: {q: {}}\n\n")
    assert load(str(second)).content_hash != h1
    (second / "a.yaml").rename(second / "b.yaml")
    (second / "b.yaml").write_text("version: 1\nqueues: {q: {}}\n")
    assert load(str(second)).content_hash != h1  # a renamed file is a change


def test_content_hash_is_given_for_invalid_files_too(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("version: [\n")
    bad = load(str(path))
    assert bad.topology is None and len(bad.content_hash) == 64
    path.write_text("version: 1\n")
    assert load(str(path)).content_hash != bad.content_hash


# ---------------------------------------------------------------- the example topologies


def _example(name: str) -> LoadResult:
    return load(str(ROOT / "topologies" / name), env={})


def test_order_events_example() -> None:
    result = _example("order-events.yaml")
    assert result.problems == ()
    topo = result.topology
    assert topo is not None
    topic = topo.topic_map()["order-events"]
    assert (topic.partitions, topic.key, topic.retention.time_s) == (10, "order_id", 604800.0)
    groups = topo.group_map()
    assert sorted(groups) == ["analytics-pipeline", "fraud-detection", "order-processing"]
    assert groups["order-processing"].handler == "examples.shop.orders:process"
    assert topo.exchange_map()["orders"].type is ExchangeType.TOPIC
    assert [(b.exchange, b.destination) for b in topo.bindings] == [
        ("orders", "order-events"), ("payments", "payments.requested")]
    policy = topo.policy_map()["orders-standard"]
    assert policy.dead_letter_queue in topo.queue_map()


def test_newsletter_example() -> None:
    result = _example("newsletter.yaml")
    assert result.problems == ()
    topo = result.topology
    assert topo is not None
    queue = topo.queue_map()["email_queue"]
    assert (queue.max_priority, queue.message_ttl_s) == (10, 86400.0)
    assert queue.dead_letter == DeadLetter("email_dlx", None)
    assert "email_dlx" in topo.exchange_map()
    consumer = topo.consumer_map()["email-senders"]
    assert consumer.handler == "examples.newsletter.email:send"
    policy = topo.policy_map()[consumer.dlq_policy or ""]
    assert policy.backoff == (1.0, 5.0, 30.0)
    assert policy.dead_letter_queue in topo.queue_map()


def test_the_topologies_directory_loads_as_one_topology() -> None:
    result = load(str(ROOT / "topologies"), env={})
    assert result.problems == ()
    assert result.topology is not None
    assert result.topology.name == "shop"


def _handler(ref: str) -> object:
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)


def test_example_handlers_import_and_behave() -> None:
    topo = load(str(ROOT / "topologies"), env={}).topology
    assert topo is not None
    refs = [g.handler for _, g in topo.consumer_groups] + [c.handler for _, c in topo.consumers]
    handlers = {ref: _handler(ref) for ref in refs if ref}
    assert all(callable(h) for h in handlers.values())
    order = {
        "order_id": "ORD-1042",
        "country": "DE",
        "items": [{"sku": "B-1", "qty": 2, "price": 12.5}, {"sku": "C-2", "qty": 1, "price": 5}],
    }
    msg = SimpleNamespace(body=order)
    process = _handler("examples.shop.orders:process")
    ctx = Mock()
    assert process(msg, ctx) is None  # type: ignore[operator]
    ctx.publish.assert_called_once_with(
        "payments", "payment.requested", {"order_id": "ORD-1042", "amount": 30.0})
    ctx.append.assert_called_once_with("audit-log", {"order_id": "ORD-1042", "total": 30.0})
    fraud = _handler("examples.shop.orders:fraud")
    assert fraud(msg) is False  # type: ignore[operator]
    big = SimpleNamespace(body={**order, "items": [{"qty": 1, "price": 9000}]})
    assert fraud(big) is True  # type: ignore[operator]
    with pytest.raises(ValueError, match="Invalid order_id format: 'order-7'"):
        process(SimpleNamespace(body={**order, "order_id": "order-7"}), ctx)  # type: ignore[operator]
    send = _handler("examples.newsletter.email:send")
    assert send(SimpleNamespace(body={"to": "ann@example.com"}, priority=1)) == "ann@example.com"  # type: ignore[operator]
    with pytest.raises(ValueError, match="invalid email address: 'not-an-address'"):
        send(SimpleNamespace(body={"to": "not-an-address"}))  # type: ignore[operator]


def test_the_entity_maps_are_built_once_read_only_and_not_shared_by_a_replaced_copy() -> None:
    """A request's path asks for `queue_map()` and friends: built once per topology (not
    O(entities) per call), read-only, and a `dataclasses.replace` copy (the RabbitMQ
    backend's plan makes one) has its own."""
    topology = _ok("version: 1\nqueues:\n  a: {}\ntopics:\n  t: {}\n")
    assert topology.queue_map() is topology.queue_map()
    assert list(topology.queue_map()) == ["a"] and list(topology.topic_map()) == ["t"]
    with pytest.raises(TypeError):
        topology.queue_map()["b"] = topology.queue_map()["a"]  # type: ignore[index]
    other = dataclasses.replace(topology, queues=())
    assert dict(other.queue_map()) == {} and list(topology.queue_map()) == ["a"]
    assert other == dataclasses.replace(topology, queues=()) and hash(other) == hash(
        dataclasses.replace(topology, queues=()))


def test_a_topology_whose_maps_were_used_is_recorded_as_declared() -> None:
    """The data dir's record of the applied topology (JSON) holds what was declared,
    not the maps built on use, and reads back equal."""
    topology = _ok("version: 1\nqueues:\n  a: {}\ntopics:\n  t: {partitions: 2}\n")
    assert "a" in topology.queue_map() and "t" in topology.topic_map()
    document = json.loads(json.dumps(to_document(topology)))
    assert "_maps" not in document
    assert from_document(document) == topology
    assert from_document({**document, "_maps": {}}) == topology  # f39b83d's record


def test_each_entity_map_holds_its_own_kind() -> None:
    topology = _ok("""\
version: 1
topics: {t: {}}
exchanges: {x: {type: fanout}}
queues: {q: {}}
dlq_policies: {p: {max_retries: 1}}
consumer_groups: {g: {topic: t}}
consumers: {c: {queue: q, handler: "h:f", dlq_policy: p}}
""")
    maps = [topology.topic_map(), topology.exchange_map(), topology.queue_map(),
            topology.policy_map(), topology.group_map(), topology.consumer_map()]
    assert [dict(m) for m in maps] == [
        dict(topology.topics), dict(topology.exchanges), dict(topology.queues),
        dict(topology.dlq_policies), dict(topology.consumer_groups),
        dict(topology.consumers)]
    assert [list(m) for m in maps] == [["t"], ["x"], ["q"], ["p"], ["g"], ["c"]]
