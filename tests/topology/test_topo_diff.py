"""The plan: every safe / unsafe classification of TOPOLOGY.md "Changes"."""

from __future__ import annotations

import dataclasses
import json

import pytest

from runner.topology.diff import GROWN_PARTITIONS, Change, diff, to_json
from runner.topology.model import (
    Binding,
    Consumer,
    ConsumerGroup,
    DeadLetter,
    DlqPolicy,
    Exchange,
    ExchangeType,
    ExponentialBackoff,
    Position,
    Queue,
    Retention,
    Topic,
    Topology,
)


def topo(**entities: object) -> Topology:
    """A topology from entity lists (named ones become sorted (name, entity) pairs)."""
    kwargs: dict[str, object] = {}
    for key, values in entities.items():
        if key in ("bindings", "name"):
            kwargs[key] = tuple(values) if key == "bindings" else values  # type: ignore[arg-type]
        else:
            kwargs[key] = tuple(sorted((e.name, e) for e in values))  # type: ignore[attr-defined]
    return Topology(**kwargs)  # type: ignore[arg-type]


BASE = topo(
    topics=[Topic("events", partitions=4)],
    exchanges=[Exchange("orders", ExchangeType.TOPIC)],
    queues=[Queue("email", message_ttl_s=86400.0)],
    bindings=[Binding("orders", queue="email", routing_key="orders.#")],
    dlq_policies=[DlqPolicy("standard", dead_letter_queue="email")],
    consumer_groups=[ConsumerGroup("g", topics=("events",), handler="m:f")],
    consumers=[Consumer("c", queue="email", handler="m:g")],
)


def replace(t: Topology, attr: str, name: str, **changes: object) -> Topology:
    entities = dict(getattr(t, attr))
    entities[name] = dataclasses.replace(entities[name], **changes)
    return dataclasses.replace(t, **{attr: tuple(sorted(entities.items()))})


def without(t: Topology, attr: str, name: str) -> Topology:
    return dataclasses.replace(t, **{attr: tuple((n, e) for n, e in getattr(t, attr) if n != name)})


def only(t_old: Topology, t_new: Topology, **kw: object) -> Change:
    plan = diff(t_old, t_new, **kw)  # type: ignore[arg-type]
    assert len(plan.changes) == 1, plan.changes
    return plan.changes[0]


def test_identical_topologies_have_an_empty_plan() -> None:
    plan = diff(BASE, BASE)
    assert plan.changes == () and plan.empty and not plan.unsafe


def test_positions_are_not_changes() -> None:
    moved = replace(BASE, "queues", "email", pos=Position("x.yaml", 40, 3))
    assert diff(BASE, moved).empty


@pytest.mark.parametrize(
    ("attr", "entity", "value"),
    [
        ("topics", "topic", Topic("audit")),
        ("exchanges", "exchange", Exchange("dlx", ExchangeType.FANOUT)),
        ("queues", "queue", Queue("pdf")),
        ("dlq_policies", "dlq_policy", DlqPolicy("fast")),
        ("consumer_groups", "consumer_group", ConsumerGroup("h", topics=("events",))),
        ("consumers", "consumer", Consumer("d", queue="email", handler="m:h")),
    ],
)
def test_adding_anything_is_safe(attr: str, entity: str, value: object) -> None:
    grown = dataclasses.replace(
        BASE,
        **{attr: tuple(sorted([*getattr(BASE, attr), (value.name, value)]))},  # type: ignore[attr-defined]
    )
    change = only(BASE, grown)
    assert (change.kind, change.entity, change.name) == ("added", entity, value.name)  # type: ignore[attr-defined]
    assert change.safe and change.new == value and change.old is None


@pytest.mark.parametrize(
    ("attr", "entity", "name"),
    [
        ("exchanges", "exchange", "orders"),
        ("dlq_policies", "dlq_policy", "standard"),
        ("consumer_groups", "consumer_group", "g"),
        ("consumers", "consumer", "c"),
    ],
)
def test_removing_routers_consumers_and_policies_is_safe(attr: str, entity: str, name: str) -> None:
    change = only(BASE, without(BASE, attr, name))
    assert (change.kind, change.entity, change.name, change.safe) == ("removed", entity, name, True)


@pytest.mark.parametrize(
    ("attr", "entity", "holds"), [("queues", "queue", "messages"), ("topics", "topic", "records")]
)
def test_removing_a_queue_or_topic_is_unsafe_without_knowing_it_is_empty(
    attr: str, entity: str, holds: str
) -> None:
    name = "email" if entity == "queue" else "events"
    change = only(BASE, without(BASE, attr, name))
    assert change.kind == "removed" and not change.safe
    assert change.reason == f"removing a {entity} loses the {holds} it may hold"


def test_removing_an_empty_queue_is_safe_when_the_engine_says_so() -> None:
    asked: list[tuple[str, str]] = []

    def is_empty(entity: str, name: str) -> bool:
        asked.append((entity, name))
        return True

    change = only(BASE, without(BASE, "queues", "email"), is_empty=is_empty)
    assert change.safe and change.reason == "the queue is empty"
    assert asked == [("queue", "email")]


def test_removing_a_topic_that_holds_records_is_unsafe() -> None:
    change = only(BASE, without(BASE, "topics", "events"), is_empty=lambda e, n: False)
    assert not change.safe and change.reason == "the topic holds records"


def test_fewer_partitions_is_unsafe() -> None:
    change = only(BASE, replace(BASE, "topics", "events", partitions=2))
    assert (change.kind, change.field, change.old, change.new) == ("changed", "partitions", 4, 2)
    assert not change.safe
    assert change.reason == "fewer partitions (4 -> 2): a topic can only grow"


def test_more_partitions_is_safe_with_a_note() -> None:
    change = only(BASE, replace(BASE, "topics", "events", partitions=8))
    assert change.safe and change.reason == GROWN_PARTITIONS == "keys may move to another partition"


def test_cleanup_policy_from_compact_to_delete_is_unsafe() -> None:
    compacted = replace(BASE, "topics", "events", compact=True, delete=False)
    change = only(compacted, BASE)
    assert (change.field, change.old, change.new) == ("cleanup_policy", ("compact",), ("delete",))
    assert not change.safe
    assert (
        change.reason == "cleanup_policy from compact to delete would drop the latest value per key"
    )
    both = replace(BASE, "topics", "events", compact=True, delete=True)
    assert not only(both, BASE).safe


def test_cleanup_policy_to_compact_is_safe() -> None:
    assert only(BASE, replace(BASE, "topics", "events", compact=True, delete=False)).safe
    compacted = replace(BASE, "topics", "events", compact=True, delete=False)
    assert only(compacted, replace(BASE, "topics", "events", compact=True, delete=True)).safe


def test_retention_changes_are_safe_and_named_like_yaml() -> None:
    change = only(BASE, replace(BASE, "topics", "events", retention=Retention(time_s=3600.0)))
    assert (change.field, change.old, change.new, change.safe) == (
        "retention.time",
        604800.0,
        3600.0,
        True,
    )


@pytest.mark.parametrize(("field", "value"), [("type", ExchangeType.DIRECT), ("durable", False)])
def test_exchange_type_or_durability_change_is_unsafe(field: str, value: object) -> None:
    change = only(BASE, replace(BASE, "exchanges", "orders", **{field: value}))
    assert change.field == field and not change.safe
    assert change.reason == f"an exchange's {field} cannot change; declare a new exchange"


@pytest.mark.parametrize(("field", "value"), [("internal", True), ("alternate_exchange", "x")])
def test_other_exchange_changes_are_safe(field: str, value: object) -> None:
    assert only(BASE, replace(BASE, "exchanges", "orders", **{field: value})).safe


@pytest.mark.parametrize(("field", "value"), [("max_priority", 5), ("durable", False)])
def test_queue_priority_or_durability_change_is_unsafe(field: str, value: object) -> None:
    change = only(BASE, replace(BASE, "queues", "email", **{field: value}))
    assert change.field == field and not change.safe
    assert change.reason == f"a queue's {field} cannot change; declare a new queue"


@pytest.mark.parametrize(
    ("field", "model_field", "value"),
    [
        ("message_ttl", "message_ttl_s", 3600.0),
        ("max_length", "max_length", 10),
        ("max_length_bytes", "max_length_bytes", 1024),
        ("delivery_limit", "delivery_limit", 5),
        ("single_active_consumer", "single_active_consumer", True),
    ],
)
def test_queue_limits_and_ttls_are_safe(field: str, model_field: str, value: object) -> None:
    change = only(BASE, replace(BASE, "queues", "email", **{model_field: value}))
    assert change.field == field and change.new == value and change.safe


def test_dead_letter_changes_are_per_field_when_both_exist() -> None:
    old = replace(BASE, "queues", "email", dead_letter=DeadLetter("dlx"))
    new = replace(BASE, "queues", "email", dead_letter=DeadLetter("dlx2", "dead"))
    plan = diff(old, new)
    assert [(c.field, c.old, c.new, c.safe) for c in plan.changes] == [
        ("dead_letter.exchange", "dlx", "dlx2", True),
        ("dead_letter.routing_key", None, "dead", True),
    ]
    added = only(BASE, new)
    assert (added.field, added.old, added.new) == ("dead_letter", None, DeadLetter("dlx2", "dead"))


def test_policy_handler_concurrency_and_instances_changes_are_safe() -> None:
    t = replace(BASE, "dlq_policies", "standard", max_retries=9, backoff=ExponentialBackoff())
    t = replace(t, "consumers", "c", handler="m:other", concurrency=4, prefetch=40)
    t = replace(t, "consumer_groups", "g", instances=3)
    plan = diff(BASE, t)
    assert {(c.entity, c.field) for c in plan.changes} == {
        ("dlq_policy", "max_retries"),
        ("dlq_policy", "backoff"),
        ("consumer", "handler"),
        ("consumer", "concurrency"),
        ("consumer", "prefetch"),
        ("consumer_group", "instances"),
    }
    assert not plan.unsafe


def test_a_changed_binding_is_a_removal_and_an_addition() -> None:
    new = dataclasses.replace(
        BASE, bindings=(Binding("orders", queue="email", routing_key="orders.*"),)
    )
    plan = diff(BASE, new)
    assert [(c.kind, c.entity, c.name, c.safe) for c in plan.changes] == [
        ("removed", "binding", 'orders -> queue email key "orders.#"', True),
        ("added", "binding", 'orders -> queue email key "orders.*"', True),
    ]


def test_a_duplicated_binding_counts_once_per_copy() -> None:
    b = BASE.bindings[0]
    doubled = dataclasses.replace(BASE, bindings=(b, b))
    change = only(BASE, doubled)
    assert (change.kind, change.entity, change.new) == ("added", "binding", b)


def test_topology_name_change_is_safe() -> None:
    change = only(BASE, dataclasses.replace(BASE, name="shop"))
    assert (change.entity, change.field, change.old, change.new, change.safe) == (
        "topology",
        "name",
        None,
        "shop",
        True,
    )


def test_unsafe_lists_only_the_unsafe_changes() -> None:
    t = replace(BASE, "topics", "events", partitions=1)
    t = replace(t, "queues", "email", message_ttl_s=60.0)
    plan = diff(BASE, t)
    assert len(plan.changes) == 2
    assert [c.field for c in plan.unsafe] == ["partitions"]


def test_to_json_is_plain_json_with_every_change_field() -> None:
    t = replace(BASE, "topics", "events", partitions=2)
    t = without(t, "exchanges", "orders")
    data = to_json(diff(BASE, t))
    assert json.loads(json.dumps(data)) == data
    assert data["safe"] is False
    changes = data["changes"]
    assert isinstance(changes, list)
    assert changes[0] == {
        "kind": "changed",
        "entity": "topic",
        "name": "events",
        "field": "partitions",
        "old": 4,
        "new": 2,
        "safe": False,
        "reason": "fewer partitions (4 -> 2): a topic can only grow",
    }
    assert changes[1]["kind"] == "removed" and changes[1]["entity"] == "exchange"
    assert changes[1]["old"] == {
        "name": "orders",
        "type": "topic",
        "durable": True,
        "internal": False,
        "alternate_exchange": None,
        "publish_rate": None,
    }
