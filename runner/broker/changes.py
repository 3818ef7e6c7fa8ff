"""Topology changes for the broker: what differs, what is unsafe, how it is said.

Unsafe changes are refused the way RabbitMQ refuses an inequivalent
re-declaration (PRECONDITION_FAILED): "inequivalent arg 'x-max-priority' for
queue 'q': received 5 but current is 10".
"""

from __future__ import annotations

from dataclasses import fields
from enum import Enum

from runner.topology.model import Exchange, Queue


def arg_text(value: object) -> str:
    """A value as RabbitMQ's precondition message prints it."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f"'{getattr(value, 'value', value)}'"
    return str(value)


def inequivalent(kind: str, name: str, arg: str, received: object, current: object) -> str:
    return (f"inequivalent arg '{arg}' for {kind} '{name}': "
            f"received {arg_text(received)} but current is {arg_text(current)}")


def queue_unsafe(old: Queue, new: Queue) -> list[str]:
    out = []
    if old.max_priority != new.max_priority:
        out.append(inequivalent("queue", old.name, "x-max-priority",
                                new.max_priority, old.max_priority))
    if old.durable != new.durable:
        out.append(inequivalent("queue", old.name, "durable", new.durable, old.durable))
    return out


def exchange_unsafe(old: Exchange, new: Exchange) -> list[str]:
    out = []
    if old.type is not new.type:
        out.append(inequivalent("exchange", old.name, "type", new.type.value, old.type.value))
    if old.durable != new.durable:
        out.append(inequivalent("exchange", old.name, "durable", new.durable, old.durable))
    return out


def _show(value: object) -> str:
    if isinstance(value, Enum):
        return str(value.value)
    return repr(value)


def describe_changes(old: object, new: object) -> list[str]:
    """`field old -> new` for each differing field of two dataclass values."""
    out = []
    for f in fields(old):  # type: ignore[arg-type]
        if f.name == "pos":
            continue
        a, b = getattr(old, f.name), getattr(new, f.name)
        if a != b:
            out.append(f"{f.name} {_show(a)} -> {_show(b)}")
    return out
