"""The plan against a live broker: `runner plan PATH --against amqp://...`.

`express(definitions, like)` reads a vhost's definitions back as the topology
they express (exchanges, queues, bindings; streams `T.P` as topic `T`); the
runner-side entities (policies, consumers, groups, the topology's name) are
taken from `like`, since the broker does not hold them. `plan(live, topology)`
is then the ordinary `diff` from that topology to the file's, with RabbitMQ's
own limits applied on top:

- a changed queue argument, queue type (delivery_limit on/off) or stream
  argument is unsafe: RabbitMQ cannot change a queue's arguments in place
  (a declare with other arguments fails with PRECONDITION_FAILED);
- a changed exchange type, durability, internal flag or alternate exchange
  is unsafe for the same reason;
- a live queue whose arguments differ in something the topology cannot hold
  (x-expires, a policy-free argument of another tool) is a change of its
  `arguments`, unsafe;
- what the backend cannot express at all (`mapping.unsupported`) is marked
  unsafe with the reason (an added entity, or a change of that field).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator

from runner.backends.rabbitmq.live import Live
from runner.backends.rabbitmq.mapping import (
    RUNNER_PREFIX,
    Definitions,
    QueueDef,
    definitions,
    unsupported,
)
from runner.topology.diff import Change, Plan, binding_name, diff
from runner.topology.model import (
    Binding,
    DeadLetter,
    Exchange,
    ExchangeType,
    HeadersMatch,
    Overflow,
    Queue,
    Retention,
    Topic,
    Topology,
)

IN_PLACE = ("RabbitMQ cannot change {what} in place ({detail}): delete and declare it again "
            "(its messages are lost) or declare a new one")


def _stream_of(name: str, queue: QueueDef) -> tuple[str, int] | None:
    topic, dot, partition = name.rpartition(".")
    if queue.type != "stream" or not dot or not partition.isdigit():
        return None
    return topic, int(partition)


def _queue(q: QueueDef) -> Queue:
    a = dict(q.arguments)
    dlx = a.get("x-dead-letter-exchange")
    limit = a.get("x-delivery-limit")
    ttl = a.get("x-message-ttl")
    return Queue(
        q.name, q.durable,
        max_priority=_int(a.get("x-max-priority")),
        message_ttl_s=None if not isinstance(ttl, int) else ttl / 1000,
        max_length=_int(a.get("x-max-length")),
        max_length_bytes=_int(a.get("x-max-length-bytes")),
        overflow=Overflow(str(a.get("x-overflow", "drop-head"))),
        delivery_limit=None if not isinstance(limit, int) else limit + 1,
        single_active_consumer=a.get("x-single-active-consumer") is True,
        dead_letter=None if dlx is None else DeadLetter(
            str(dlx), None if a.get("x-dead-letter-routing-key") is None
            else str(a["x-dead-letter-routing-key"])),
    )


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _seconds(age: object) -> float | None:
    units = {"Y": 365 * 86400, "M": 30 * 86400, "D": 86400, "h": 3600, "m": 60, "s": 1}
    if not isinstance(age, str) or not age[:-1].isdigit() or age[-1:] not in units:
        return None
    return float(int(age[:-1]) * units[age[-1]])


def express(live: Definitions, like: Topology) -> Topology:
    """The topology the live definitions express (see the module docstring)."""
    exchanges = {}
    for e in live.exchanges:
        if e.name.startswith(RUNNER_PREFIX) or e.type not in {t.value for t in ExchangeType}:
            continue
        alternate = dict(e.arguments).get("alternate-exchange")
        exchanges[e.name] = Exchange(
            e.name, ExchangeType(e.type), e.durable, e.internal,
            None if alternate is None else str(alternate),
            publish_rate=getattr(like.exchange_map().get(e.name), "publish_rate", None),
        )
    queues: dict[str, Queue] = {}
    topics: dict[str, Topic] = {}
    for q in live.queues:
        if q.name.startswith(RUNNER_PREFIX):
            continue
        stream = _stream_of(q.name, q)
        if stream is None:
            queues[q.name] = dataclasses.replace(
                _queue(q), publish_rate=getattr(like.queue_map().get(q.name), "publish_rate", None)
            )
            continue
        topic, partition = stream
        a = dict(q.arguments)
        seen = topics.get(topic)
        size = _int(a.get("x-stream-max-segment-size-bytes"))
        topics[topic] = dataclasses.replace(
            like.topic_map().get(topic, Topic(topic)), compact=False, delete=True,
            partitions=max(partition + 1, seen.partitions if seen else 0),
            retention=Retention(_seconds(a.get("x-max-age")), _int(a.get("x-max-length-bytes"))),
            segment_bytes=size if size is not None else 500_000_000,
        )
    bindings = []
    for b in live.bindings:
        if b.source.startswith(RUNNER_PREFIX):
            continue
        args = dict(b.arguments)
        match = HeadersMatch(str(args.pop("x-match", "all")))
        headers = tuple(sorted((k, str(v)) for k, v in args.items() if not k.startswith("x-")))
        stream = _stream_of(b.destination, live.queue_map().get(b.destination, QueueDef("")))
        if b.destination_type == "exchange":
            bindings.append(Binding(b.source, to_exchange=b.destination,
                                    routing_key=b.routing_key, match=match, headers=headers))
        elif stream is not None:
            bindings.append(Binding(b.source, topic=stream[0], routing_key=b.routing_key,
                                    match=match, headers=headers))
        else:
            bindings.append(Binding(b.source, queue=b.destination, routing_key=b.routing_key,
                                    match=match, headers=headers))
    return dataclasses.replace(
        like,
        topics=tuple(sorted(topics.items())),
        exchanges=tuple(sorted(exchanges.items())),
        queues=tuple(sorted(queues.items())),
        bindings=tuple(bindings),
    )


def _rabbitmq_limits(change: Change) -> Change:
    if change.kind != "changed" or not change.safe:
        return change
    field = change.field or ""
    if change.entity == "queue" and field != "publish_rate":
        what = "a queue's type" if field == "delivery_limit" and None in (
            change.old, change.new) else "a queue's arguments"
        return dataclasses.replace(change, safe=False, reason=IN_PLACE.format(
            what=what, detail=field))
    if change.entity == "exchange" and field != "publish_rate":
        return dataclasses.replace(change, safe=False, reason=IN_PLACE.format(
            what="an exchange's type, flags or arguments", detail=field))
    if change.entity == "topic" and field in ("retention.time", "retention.bytes",
                                              "segment_bytes"):
        return dataclasses.replace(change, safe=False, reason=IN_PLACE.format(
            what="a stream's arguments", detail=field))
    return change


def _hidden_arguments(live: Definitions, want: Definitions, plan: Plan) -> Iterator[Change]:
    """Queues whose live arguments differ where the topology's fields see no difference."""
    changed = {c.name for c in plan.changes if c.entity == "queue"}
    wanted = want.queue_map()
    for q in live.queues:
        w = wanted.get(q.name)
        if w is None or q.name in changed or _stream_of(q.name, q) is not None:
            continue
        if _typed(q.arguments) != _typed(w.arguments):
            yield Change("changed", "queue", q.name, "arguments", dict(q.arguments),
                         dict(w.arguments), False,
                         IN_PLACE.format(what="a queue's arguments",
                                         detail="arguments the topology does not declare"))


def _typed(args: Iterable[tuple[str, object]]) -> dict[str, object]:
    """Queue arguments with RabbitMQ's default type spelled out: a queue declared
    without `x-queue-type` is a classic queue (the broker takes a declare with
    `x-queue-type: classic` as equivalent)."""
    out = dict(args)
    out.setdefault("x-queue-type", "classic")
    return out


def plan(live: Live, topology: Topology) -> Plan:
    """The changes from the live vhost to `topology`, with RabbitMQ's limits marked."""
    current = express(live.definitions, topology)
    base = diff(current, topology,
                is_empty=lambda entity, name: _empty(live, current, entity, name))
    changes = [_rabbitmq_limits(c) for c in base.changes]
    changes.extend(_hidden_arguments(live.definitions, definitions(topology), base))
    for u in unsupported(topology):
        reason = f"the RabbitMQ backend cannot express this: {u.reason}"
        marked = False
        for i, c in enumerate(changes):
            same = c.entity == u.entity and (
                c.name == u.name or (isinstance(c.new, Binding) and binding_name(c.new) == u.name))
            if same and (c.kind == "added" or c.field == u.field):
                changes[i] = dataclasses.replace(c, safe=False, reason=reason)
                marked = True
        if not marked:
            changes.append(Change(
                "changed", u.entity, u.name, u.field, None,  # type: ignore[arg-type]
                _value(topology, u.entity, u.name, u.field), False, reason,
            ))
    return Plan(tuple(changes))


def reload_plan(live: Live, old: Topology, new: Topology,
                is_empty: Callable[[str, str], bool]) -> Plan:
    """A running daemon's reload from `old` to `new` on a live vhost: the changes of
    the topology as the embedded daemon plans them (`diff(old, new)`, removals safe
    when `is_empty`), each made unsafe where RabbitMQ cannot make it (the plan
    against the live broker, its reason), and the live plan's other unsafe changes
    (what `new` cannot be declared over, or cannot express). The live plan's
    removals are not made by a reload (`runner apply --prune` makes them)."""
    base = diff(old, new, is_empty=is_empty)
    broker = {(c.entity, c.name, c.field): c for c in plan(live, new).changes
              if not c.safe and c.kind != "removed"}
    out = []
    for c in base.changes:
        hit = broker.pop((c.entity, c.name, c.field), None)
        out.append(c if hit is None or not c.safe else
                   dataclasses.replace(c, safe=False, reason=hit.reason))
    out.extend(broker.values())
    return Plan(tuple(out))


_ATTRS = {"topic": "topics", "exchange": "exchanges", "queue": "queues",
          "dlq_policy": "dlq_policies", "consumer_group": "consumer_groups",
          "consumer": "consumers"}


def _value(topology: Topology, entity: str, name: str, field: str) -> object:
    """The model value of an entity's YAML field (None when not found)."""
    value: object = dict(getattr(topology, _ATTRS.get(entity, ""), ())).get(name)
    for part in field.split("."):
        if value is None:
            return None
        value = getattr(value, part if hasattr(value, part) else part + "_s", None)
    return value


def _empty(live: Live, current: Topology, entity: str, name: str) -> bool:
    if entity == "queue":
        return live.messages.get(name, 0) == 0
    topic = current.topic_map().get(name)
    if topic is None:
        return True
    return all(live.messages.get(f"{name}.{p}", 0) == 0 for p in range(topic.partitions))
