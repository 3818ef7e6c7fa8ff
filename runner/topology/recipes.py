"""Migration recipes: the safe way to make a change that a reload refuses.

For every unsafe change of a plan (`diff.py`) -- a queue's `max_priority` or
`durable`, an exchange's `type` or `durable`, fewer partitions, compact ->
delete, removing a queue or topic that may hold data -- `recipe(change, old,
new)` gives the steps RabbitMQ and Kafka operators follow: declare the entity
again under a new name with the new settings, route to it beside or instead
of the old one, let the old one drain while consumers move over, then remove
the old one. Each `Step` is a concrete edit of the topology document
(`set`: section -> name -> entity, or None to remove it; bindings to add and
remove), so it can be printed as YAML snippets and applied mechanically; a
step that needs time says what to wait for. Every step is a safe change,
except removing the drained queue or topic, which a reload accepts only once
it is empty (`safety`).
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from runner.topology.diff import Change
from runner.topology.model import (
    Binding,
    ConsumerGroup,
    DlqPolicy,
    ExponentialBackoff,
    Queue,
    Topic,
    Topology,
)
from runner.topology.units import format_duration

SAFE = "safe"
SAFE_WHEN_EMPTY = "safe once empty"
UNTIL_RETENTION = "refused while it holds records"

Doc = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Step:
    """One edit of the topology document, applied as one reload."""

    title: str
    set: Mapping[str, Mapping[str, Doc | None]] = dataclasses.field(default_factory=dict)
    add_bindings: tuple[Doc, ...] = ()
    remove_bindings: tuple[Doc, ...] = ()
    wait: str | None = None  # what must be true before the next step
    safety: str = SAFE
    note: str | None = None


@dataclass(frozen=True, slots=True)
class Recipe:
    """The steps replacing `entity` `name` by `new_name` (None when it just goes)."""

    entity: str
    name: str
    new_name: str | None
    steps: tuple[Step, ...]


# ---------------------------------------------------------------- entities as YAML data


def _value(name: str, v: Any) -> Any:
    if isinstance(v, enum.Enum):
        return v.value
    if name.endswith("_s") and isinstance(v, int | float):
        return format_duration(float(v))
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return _doc(v)
    if isinstance(v, tuple):
        return [_value(name, x) for x in v]
    return v


def _doc(entity: Any) -> Doc:
    """An entity as the YAML mapping a person writes (defaults left out)."""
    out: Doc = {}
    for f in dataclasses.fields(entity):
        if f.name in ("name", "pos"):
            continue
        v = getattr(entity, f.name)
        if f.default is not dataclasses.MISSING and v == f.default:
            continue
        key = f.name[:-2] if f.name.endswith("_s") else f.name
        if isinstance(entity, Topic) and f.name in ("compact", "delete"):
            continue
        if isinstance(entity, Topic) and f.name == "retention":
            out["retention"] = {"time": "forever" if v.time_s is None
                                else format_duration(v.time_s)}
            if v.bytes is not None:
                out["retention"]["bytes"] = v.bytes
            continue
        if isinstance(entity, DlqPolicy) and f.name == "backoff":
            out["backoff"] = (_doc(v) if isinstance(v, ExponentialBackoff)
                              else [format_duration(x) for x in v])
            continue
        if isinstance(entity, Queue) and f.name == "dead_letter" and v is not None:
            out["dead_letter"] = {k: x for k, x in (("exchange", v.exchange),
                                                   ("routing_key", v.routing_key)) if x is not None}
            continue
        out[key] = _value(f.name, v)
    if isinstance(entity, Topic) and entity.cleanup_policy != ("delete",):
        out["cleanup_policy"] = list(entity.cleanup_policy)
    if isinstance(entity, ConsumerGroup) and "topics" in out and len(entity.topics) == 1:
        out["topic"] = out.pop("topics")[0]
    if getattr(entity, "prefetch", None) == 10 * getattr(entity, "concurrency", 0):
        out.pop("prefetch", None)
    return out


def binding_doc(b: Binding) -> Doc:
    out: Doc = {"exchange": b.exchange, b.destination_kind if b.destination_kind != "exchange"
                else "to_exchange": b.destination}
    if b.routing_key:
        out["routing_key"] = b.routing_key
    if b.headers:
        out["match"] = b.match.value
        out["headers"] = dict(b.headers)
    return out


def fresh_name(topology: Topology, name: str) -> str:
    """`name.v2` (or .v3, ...) not used by any topic, queue or exchange yet."""
    taken = ({n for n, _ in topology.queues} | {n for n, _ in topology.topics}
             | {n for n, _ in topology.exchanges})
    n = 2
    while f"{name}.v{n}" in taken:
        n += 1
    return f"{name}.v{n}"


# ---------------------------------------------------------------- recipes


def _queue(old: Topology, new: Topology, name: str) -> Recipe:
    target = fresh_name(new, name)
    spec = dataclasses.replace(new.queue_map()[name], name=target)
    bound = [b for b in old.bindings if b.queue == name]
    moved = tuple(binding_doc(dataclasses.replace(b, queue=target)) for b in bound)
    policies = {p: _doc(dataclasses.replace(pol, dead_letter_queue=target))
                for p, pol in old.dlq_policies if pol.dead_letter_queue == name}
    consumers = [c for _, c in old.consumers if c.queue == name]
    switch = {c.name: _doc(dataclasses.replace(c, queue=target)) for c in consumers}
    drains = {f"{c.name}.drain": _doc(c) for c in consumers}
    steps = [
        Step(f"declare queue {target} with the new settings", {"queues": {target: _doc(spec)}}),
        Step(f"route to {target} instead of {name}: the same bindings, moved in one reload "
             "(no message is missed or doubled)" + (", and the DLQ policies with it"
                                                     if policies else ""),
             {"dlq_policies": policies} if policies else {}, moved,
             tuple(binding_doc(b) for b in bound),
             note=f"producers that publish straight into queue {name} switch to {target}"),
        Step(f"move the consumers to {target}; a temporary copy drains {name}"
             if consumers else f"drain {name}",
             {"consumers": {**switch, **drains}} if consumers else {},
             note=None if consumers else f"{name} has no consumer here: drain it over HTTP "
                                         f"(pull/ack) or move what it holds to {target}",
             wait=f"queue {name} is empty: `runner status` shows ready 0 and unacked 0 "
                  f"(runner_queue_messages_ready{{queue=\"{name}\"}} == 0)"),
        Step(f"remove {name}" + (" and the draining consumers" if consumers else ""),
             {"queues": {name: None}} | ({"consumers": dict.fromkeys(drains)} if drains else {}),
             safety=SAFE_WHEN_EMPTY,
             note="a reload removes an empty queue; `runner plan` offline cannot see that it "
                  "is empty and marks the removal unsafe"),
    ]
    return Recipe("queue", name, target, tuple(s for s in steps if s.set or s.add_bindings
                                               or s.remove_bindings or s.wait or s.note))


def _exchange(old: Topology, new: Topology, name: str) -> Recipe:
    target = fresh_name(new, name)
    spec = dataclasses.replace(new.exchange_map()[name], name=target)
    outgoing = [b for b in new.bindings if b.exchange == name]
    incoming = [b for b in old.bindings if b.to_exchange == name]
    queues = {q.name: _doc(dataclasses.replace(
        q, dead_letter=dataclasses.replace(q.dead_letter, exchange=target)))
        for _, q in old.queues if q.dead_letter is not None and q.dead_letter.exchange == name}
    alternates = {e.name: _doc(dataclasses.replace(e, alternate_exchange=target))
                  for _, e in old.exchanges if e.alternate_exchange == name}
    refs: dict[str, Mapping[str, Doc | None]] = {}
    if queues:
        refs["queues"] = queues
    if alternates:
        refs["exchanges"] = alternates
    return Recipe("exchange", name, target, (
        Step(f"declare exchange {target} with the new settings, bound like {name}",
             {"exchanges": {target: _doc(spec)}},
             tuple(binding_doc(dataclasses.replace(b, exchange=target)) for b in outgoing)
             + tuple(binding_doc(dataclasses.replace(b, to_exchange=target))
                     for b in incoming)),
        Step(f"switch to {target}: dead-letter exchanges and alternate exchanges point to "
             f"it, exchanges that forwarded to {name} forward to {target} only",
             refs, remove_bindings=tuple(binding_doc(b) for b in incoming),
             note=f"producers (HTTP and handlers' ctx.publish) switch from {name} to {target}; "
                  f"until they do, {name} keeps routing as before",
             wait=f"nothing publishes to {name} any more "
                  f"(runner_exchange_published_total{{exchange=\"{name}\"}} stops growing)"),
        Step(f"remove {name} and its bindings", {"exchanges": {name: None}},
             remove_bindings=tuple(binding_doc(b) for b in old.bindings if b.exchange == name)),
    ))


def _topic(old: Topology, new: Topology, name: str, change: Change) -> Recipe:
    target = fresh_name(new, name)
    spec = dataclasses.replace(new.topic_map()[name], name=target)
    bound = [b for b in old.bindings if b.topic == name]
    policies = {p: _doc(dataclasses.replace(pol, dead_letter_queue=target))
                for p, pol in old.dlq_policies if pol.dead_letter_queue == name}
    groups = [g for _, g in old.consumer_groups if name in g.topics]
    both = {g.name: _doc(dataclasses.replace(g, topics=(*g.topics, target))) for g in groups}
    only = {g.name: _doc(dataclasses.replace(
        g, topics=tuple(target if t == name else t for t in g.topics))) for g in groups}
    copy_note = (f"records are not copied: to keep the latest value per key, read {name} from "
                 f"the start and append to {target} before the groups leave {name}"
                 if change.field == "cleanup_policy" else None)
    steps = [
        Step(f"declare topic {target} with the new settings", {"topics": {target: _doc(spec)}},
             note=copy_note),
        Step(f"write to {target} instead of {name}" + (": bindings and DLQ policies move"
                                                      if policies else ": bindings move"),
             {"dlq_policies": policies} if policies else {},
             tuple(binding_doc(dataclasses.replace(b, topic=target)) for b in bound),
             tuple(binding_doc(b) for b in bound),
             note=f"producers (HTTP and handlers' ctx.append) switch from {name} to {target}"),
        Step(f"consumer groups read both {name} and {target}", {"consumer_groups": both},
             wait=f"every group's lag on {name} is 0 "
                  f"(runner_consumer_group_lag{{topic=\"{name}\"}} == 0)"),
        Step(f"consumer groups read {target} only", {"consumer_groups": only}),
        Step(f"remove {name}", {"topics": {name: None}}, safety=UNTIL_RETENTION,
             note=f"a reload refuses to remove a topic that holds records: keep {name} until "
                  "its retention has deleted them, then remove it"),
    ]
    return Recipe("topic", name, target, tuple(s for s in steps if s.set or s.add_bindings
                                               or s.remove_bindings or s.wait or s.note))


def _removal(old: Topology, entity: str, name: str) -> Recipe:
    if entity == "queue":
        bound = tuple(binding_doc(b) for b in old.bindings if b.queue == name)
        return Recipe("queue", name, None, (
            Step(f"stop routing to {name}", remove_bindings=bound,
                 wait=f"queue {name} is empty (its consumers drain it; `runner status`)"),
            Step(f"remove {name}", {"queues": {name: None}}, safety=SAFE_WHEN_EMPTY,
                 note="a reload removes an empty queue"),
        ))
    bound = tuple(binding_doc(b) for b in old.bindings if b.topic == name)
    return Recipe("topic", name, None, (
        Step(f"stop writing to {name}", remove_bindings=bound,
             wait=f"every group's lag on {name} is 0, and retention has deleted its records"),
        Step(f"remove {name}", {"topics": {name: None}}, safety=UNTIL_RETENTION),
    ))


def recipe(change: Change, old: Topology, new: Topology) -> Recipe | None:
    """The safe migration for an unsafe `change` of the plan from `old` to `new`."""
    if change.safe:
        return None
    if change.kind == "removed" and change.entity in ("queue", "topic"):
        return _removal(old, change.entity, change.name)
    if change.kind != "changed":
        return None
    if change.entity == "queue" and change.name in new.queue_map():
        return _queue(old, new, change.name)
    if change.entity == "exchange" and change.name in new.exchange_map():
        return _exchange(old, new, change.name)
    if change.entity == "topic" and change.name in new.topic_map():
        return _topic(old, new, change.name, change)
    return None


# ---------------------------------------------------------------- output


def to_json(r: Recipe) -> Doc:
    return {
        "entity": r.entity, "name": r.name, "new_name": r.new_name,
        "steps": [{"title": s.title, "set": {k: dict(v) for k, v in s.set.items()},
                   "add_bindings": list(s.add_bindings),
                   "remove_bindings": list(s.remove_bindings), "wait": s.wait,
                   "safety": s.safety, "note": s.note} for s in r.steps],
    }


def _yaml(data: Any) -> str:
    return str(yaml.safe_dump(data, sort_keys=False, default_flow_style=None, width=96))


def step_text(step: Step) -> list[str]:
    """A step's edits as YAML snippets: what to add or change, what to delete."""
    lines: list[str] = []
    put = {sec: {n: e for n, e in ents.items() if e is not None}
           for sec, ents in step.set.items()}
    put = {sec: ents for sec, ents in put.items() if ents}
    if put:
        lines.append("add or change:")
        lines.extend("  " + ln for ln in _yaml(put).splitlines())
    if step.add_bindings:
        lines.append("add bindings:")
        lines.extend("  " + ln for ln in _yaml(list(step.add_bindings)).splitlines())
    gone = [f"{sec}.{n}" for sec, ents in step.set.items() for n, e in ents.items() if e is None]
    if gone:
        lines.append("delete: " + ", ".join(gone))
    if step.remove_bindings:
        lines.append("delete bindings:")
        lines.extend("  " + ln for ln in _yaml(list(step.remove_bindings)).splitlines())
    return lines


def apply_step(document: Doc, step: Step) -> Doc:
    """The topology document (plain YAML data) with `step` applied."""
    out = {k: (dict(v) if isinstance(v, dict) else list(v) if isinstance(v, list) else v)
           for k, v in document.items()}
    for section, entities in step.set.items():
        current = dict(out.get(section) or {})
        for name, entity in entities.items():
            if entity is None:
                current.pop(name, None)
            else:
                current[name] = entity
        out[section] = current
    bindings = [b for b in (out.get("bindings") or []) if b not in step.remove_bindings]
    bindings.extend(step.add_bindings)
    out["bindings"] = bindings
    return out
