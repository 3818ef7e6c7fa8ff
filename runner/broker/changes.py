"""Topology changes for the broker: what differs and what is unsafe.

Which exchange and queue changes are unsafe, and the sentence each is refused
with, is the plan's rule (`runner.topology.diff`, its one home): a reload the
broker refuses says exactly what `runner plan` says about the same change.
"""

from __future__ import annotations

from dataclasses import fields
from enum import Enum

from runner.topology.diff import entity_changes, removal, unsafe_sentence
from runner.topology.model import Exchange, Queue


def queue_unsafe(old: Queue, new: Queue) -> list[str]:
    """Why changing queue `old` to `new` is refused (the plan's sentences), or []."""
    return [unsafe_sentence(c) for c in entity_changes("queue", old.name, old, new) if not c.safe]


def exchange_unsafe(old: Exchange, new: Exchange) -> list[str]:
    """Why changing exchange `old` to `new` is refused (the plan's sentences), or []."""
    return [unsafe_sentence(c)
            for c in entity_changes("exchange", old.name, old, new) if not c.safe]


def held_queue_removal(name: str) -> str:
    """Why removing queue `name`, which holds messages, is refused."""
    return unsafe_sentence(removal("queue", name, empty=False))


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
