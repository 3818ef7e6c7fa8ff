"""Reload outcomes: what one attempt to apply a new topology did, as data.

`ReloadResult` is what the admin endpoint answers and what the supervisor logs
and counts; `ReloadCounters` holds the `runner_topology_reloads_total` values.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from typing import Any

from runner.topology.diff import Change, jsonable
from runner.topology.problems import Problem

RESULTS = ("applied", "invalid", "refused")


@dataclass(frozen=True, slots=True)
class ReloadResult:
    """`result` is applied | invalid | refused | unchanged (not counted)."""

    result: str
    generation: int
    changes: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    problems: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class ReloadEntry:
    """One counted reload attempt as the console lists it: when, why, what came of it."""

    at_s: float
    trigger: str
    outcome: ReloadResult


@dataclass(slots=True)
class ReloadCounters:
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(RESULTS, 0))
    last_timestamp_s: float = 0.0
    failed: bool = False  # the last attempt was refused or invalid (and not fixed since)

    def count(self, result: str, now_s: float) -> None:
        if result in self.counts:
            self.counts[result] += 1
            self.last_timestamp_s = now_s
            self.failed = result != "applied"


# the key order of `runner validate --format json`
_PROBLEM_FIELDS = ("file", "line", "column", "path", "severity", "message", "rule")


def _as_json(value: object, names: Iterable[str]) -> dict[str, Any]:
    """The named attributes of a model value as plain JSON data."""
    return {name: jsonable(getattr(value, name)) for name in names}


def problem_json(p: Problem) -> dict[str, Any]:
    return _as_json(p, _PROBLEM_FIELDS)


def problem_line(p: Problem) -> str:
    where = f" (at {p.path})" if p.path else ""
    return f"{p.file}:{p.line}:{p.column}: {p.severity.value}: {p.message}{where}"


def change_json(change: Change) -> dict[str, Any]:
    """A diff Change as JSON (every field, in declaration order)."""
    return _as_json(change, (f.name for f in fields(change)))


def changes_json(changes: Iterable[Change]) -> list[dict[str, Any]]:
    return [change_json(c) for c in changes]
