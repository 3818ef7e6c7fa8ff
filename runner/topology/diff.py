"""The plan: what changes from one topology to another, each change safe or not.

`diff(old, new)` compares two resolved topologies entity by entity and field
by field (source positions never count) and classifies each change as
TOPOLOGY.md "Changes" says. Unsafe (refused by a reload):

    fewer partitions                     topic.partitions decreased
    compact -> delete                    topic.cleanup_policy lost "compact"
    exchange type or durable changed
    queue max_priority or durable changed
    a removed queue or topic             may hold data; safe only when the
                                         caller's `is_empty(entity, name)` says so

Everything else is safe; growing partitions is safe with the note that keys
may move to another partition. Bindings have no name: a binding is its whole
value, so a changed binding is one removal plus one addition.

This module is the one home of these rules and their sentences: the engine
refuses a reload with `unsafe_sentence(change)` of the same `Change` that
`runner plan` prints (the broker through `entity_changes` and `removal`, the
topic store through `field_change` and `removal`).

Field names are the YAML keys (`message_ttl`, `retention.time`), values are the
model's resolved values (seconds, bytes); `field_unit()` tells a reporter which
fields are durations or sizes.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import Enum
from typing import Literal

from runner.topology.model import Binding, Topic, Topology

ChangeKind = Literal["added", "removed", "changed"]
EntityKind = Literal[
    "topic", "exchange", "queue", "binding", "dlq_policy", "consumer_group", "consumer", "topology"
]
IsEmpty = Callable[[str, str], bool]

GROWN_PARTITIONS = "keys may move to another partition"

# YAML field name -> "duration" | "size", for reporters that print human units.
_UNITS: dict[str, str] = {
    "retention.time": "duration",
    "retention.bytes": "size",
    "segment_bytes": "size",
    "max_message_bytes": "size",
    "delete_retention": "duration",
    "message_ttl": "duration",
    "max_length_bytes": "size",
    "timeout": "duration",
    "idempotency.window": "duration",
    "alert.max_age": "duration",
    "backoff": "duration",
    "backoff.initial": "duration",
    "backoff.max": "duration",
    "publish_rate": "rate",
    "rate_limit": "rate",
}


def field_unit(field: str) -> str | None:
    """ "duration", "size" or "rate" when `field` holds seconds, bytes or a per-second
    rate, else None."""
    return _UNITS.get(field)


@dataclass(frozen=True, slots=True)
class Change:
    """One difference between two topologies."""

    kind: ChangeKind
    entity: EntityKind
    name: str
    field: str | None  # None for a whole entity added or removed
    old: object
    new: object
    safe: bool
    reason: str | None  # why unsafe, or a note on a safe change


@dataclass(frozen=True, slots=True)
class Plan:
    """Every change from an old topology to a new one, in a stable order."""

    changes: tuple[Change, ...] = ()

    @property
    def unsafe(self) -> tuple[Change, ...]:
        """The changes a reload refuses; empty (falsy) when the plan is safe."""
        return tuple(c for c in self.changes if not c.safe)

    @property
    def empty(self) -> bool:
        return not self.changes


# ---------------------------------------------------------------- fields


def _yaml_name(name: str) -> str:
    return name[:-2] if name.endswith("_s") else name


def _fields(value: object, prefix: str = "") -> Iterator[tuple[str, object]]:
    """(YAML field path, value) of an entity; nested values flattened one level."""
    assert dataclasses.is_dataclass(value)
    for f in dataclasses.fields(value):
        if f.name in ("name", "pos"):
            continue
        v = getattr(value, f.name)
        if isinstance(value, Topic) and f.name in ("compact", "delete"):
            continue  # compared together as cleanup_policy
        yield prefix + _yaml_name(f.name), v
    if isinstance(value, Topic):
        yield prefix + "cleanup_policy", value.cleanup_policy


def _field_changes(
    entity: EntityKind, name: str, old: object, new: object
) -> Iterator[tuple[str, object, object]]:
    olds = dict(_fields(old))
    for key, new_value in _fields(new):
        old_value = olds[key]
        if old_value == new_value:
            continue
        if (
            dataclasses.is_dataclass(old_value)
            and type(old_value) is type(new_value)
            and not isinstance(old_value, type)
        ):
            inner_old = dict(_fields(old_value, key + "."))
            for inner_key, inner_new in _fields(new_value, key + "."):
                if inner_old[inner_key] != inner_new:
                    yield inner_key, inner_old[inner_key], inner_new
        else:
            yield key, old_value, new_value


def classify(entity: EntityKind, field: str, old: object, new: object) -> tuple[bool, str | None]:
    """(safe, reason) of changing `field` of a `entity` from `old` to `new`."""
    if entity == "topic" and field == "partitions":
        assert isinstance(old, int) and isinstance(new, int)
        if new < old:
            return False, f"fewer partitions ({old} -> {new}): a topic can only grow"
        return True, GROWN_PARTITIONS
    if entity == "topic" and field == "cleanup_policy":
        assert isinstance(old, tuple) and isinstance(new, tuple)
        if "compact" in old and "compact" not in new:
            return (
                False,
                "cleanup_policy from compact to delete would drop the latest value per key",
            )
    if entity == "exchange" and field in ("type", "durable"):
        return False, f"an exchange's {field} cannot change; declare a new exchange"
    if entity == "queue" and field in ("max_priority", "durable"):
        return False, f"a queue's {field} cannot change; declare a new queue"
    return True, None


def field_change(entity: EntityKind, name: str, field: str, old: object, new: object) -> Change:
    """The classified change of one field of entity `name`."""
    safe, reason = classify(entity, field, old, new)
    return Change("changed", entity, name, field, old, new, safe, reason)


def entity_changes(entity: EntityKind, name: str, old: object, new: object) -> list[Change]:
    """The classified field changes from `old` to `new`, two values of entity `name`."""
    return [field_change(entity, name, f, a, b)
            for f, a, b in _field_changes(entity, name, old, new)]


def unsafe_sentence(change: Change) -> str:
    """The sentence an unsafe `change` is refused with, naming what it changes:
    `queue 'q' max_priority: a queue's max_priority cannot change; declare a new
    queue`. Plans, the daemon's reload refusal and the engine say it this way."""
    where = f"{change.entity} '{change.name}'" + (f" {change.field}" if change.field else "")
    return f"{where}: {change.reason or 'unsafe'}"


# ---------------------------------------------------------------- entities


def binding_name(b: Binding) -> str:
    """A binding's name in plans: `EX -> queue Q key "K"` (a binding is its whole value)."""
    kind = {"queue": "queue", "exchange": "exchange", "topic": "topic"}[b.destination_kind]
    text = f"{b.exchange} -> {kind} {b.destination}"
    if b.routing_key:
        text += f' key "{b.routing_key}"'
    if b.headers:
        pairs = ", ".join(f"{k}={v}" for k, v in b.headers)
        text += f" headers {b.match.value} {{{pairs}}}"
    return text


_ENTITIES: tuple[tuple[EntityKind, str], ...] = (
    ("topic", "topics"),
    ("exchange", "exchanges"),
    ("queue", "queues"),
    ("dlq_policy", "dlq_policies"),
    ("consumer_group", "consumer_groups"),
    ("consumer", "consumers"),
)


def removal(entity: EntityKind, name: str, *, empty: bool | None) -> Change:
    """The classified removal of entity `name`; `empty`: whether the queue or topic
    holds nothing (None: unknown)."""
    safe, reason = _removal(entity, name, None if empty is None else (lambda _e, _n: empty))
    return Change("removed", entity, name, None, None, None, safe, reason)


def _removal(entity: EntityKind, name: str, is_empty: IsEmpty | None) -> tuple[bool, str | None]:
    if entity not in ("queue", "topic"):
        return True, None
    holds = "messages" if entity == "queue" else "records"
    if is_empty is None:
        return False, f"removing a {entity} loses the {holds} it may hold"
    if is_empty(entity, name):
        return True, f"the {entity} is empty"
    return False, f"the {entity} holds {holds}"


def diff(old: Topology, new: Topology, *, is_empty: IsEmpty | None = None) -> Plan:
    """The plan from `old` to `new`; `is_empty(entity, name)` lets removal of an
    empty queue or topic be safe (without it, removing one is unsafe)."""
    changes: list[Change] = []
    for attr in ("name", "version"):
        before, after = getattr(old, attr), getattr(new, attr)
        if before != after:
            changes.append(Change("changed", "topology", "", attr, before, after, True, None))
    for entity, attr in _ENTITIES:
        before_map: dict[str, object] = dict(getattr(old, attr))
        after_map: dict[str, object] = dict(getattr(new, attr))
        for name in sorted(before_map.keys() | after_map.keys()):
            was, now = before_map.get(name), after_map.get(name)
            if now is None:
                safe, reason = _removal(entity, name, is_empty)
                changes.append(Change("removed", entity, name, None, was, None, safe, reason))
            elif was is None:
                changes.append(Change("added", entity, name, None, None, now, True, None))
            elif was != now:
                for field, a, b in _field_changes(entity, name, was, now):
                    safe, reason = classify(entity, field, a, b)
                    changes.append(Change("changed", entity, name, field, a, b, safe, reason))
    before_b, after_b = Counter(old.bindings), Counter(new.bindings)
    for b in sorted((before_b - after_b).elements(), key=binding_name):
        changes.append(Change("removed", "binding", binding_name(b), None, b, None, True, None))
    for b in sorted((after_b - before_b).elements(), key=binding_name):
        changes.append(Change("added", "binding", binding_name(b), None, None, b, True, None))
    return Plan(tuple(changes))


# ---------------------------------------------------------------- JSON


def jsonable(value: object) -> object:
    """A model value as plain JSON data (entities as objects without positions)."""
    if isinstance(value, Enum):
        return value.value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {k: jsonable(v) for k, v in _fields(value)} | (
            {"name": value.name} if hasattr(value, "name") else {}
        )
    if isinstance(value, tuple | list):
        return [jsonable(v) for v in value]
    return value


def to_json(plan: Plan) -> dict[str, object]:
    """The plan as JSON data: `{"safe": bool, "changes": [...]}`."""
    return {
        "safe": not plan.unsafe,
        "changes": [
            {
                "kind": c.kind,
                "entity": c.entity,
                "name": c.name,
                "field": c.field,
                "old": jsonable(c.old),
                "new": jsonable(c.new),
                "safe": c.safe,
                "reason": c.reason,
            }
            for c in plan.changes
        ],
    }
