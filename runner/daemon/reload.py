"""Reload outcomes: what one attempt to apply a new topology did, as data.

`ReloadResult` is what the admin endpoint answers and what the supervisor logs
and counts; `ReloadCounters` holds the `runner_topology_reloads_total` values.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
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


@dataclass(slots=True)
class ReloadCounters:
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(RESULTS, 0))
    last_timestamp_s: float = 0.0

    def count(self, result: str, now_s: float) -> None:
        if result in self.counts:
            self.counts[result] += 1
            self.last_timestamp_s = now_s


def problem_json(p: Problem) -> dict[str, Any]:
    return {
        "file": p.file,
        "line": p.line,
        "column": p.column,
        "path": p.path,
        "severity": p.severity.value,
        "message": p.message,
        "rule": p.rule,
    }


def problem_line(p: Problem) -> str:
    where = f" (at {p.path})" if p.path else ""
    return f"{p.file}:{p.line}:{p.column}: {p.severity.value}: {p.message}{where}"


def change_json(change: Change) -> dict[str, Any]:
    """A diff Change as JSON."""
    return {
        "kind": change.kind,
        "entity": change.entity,
        "name": change.name,
        "field": change.field,
        "old": jsonable(change.old),
        "new": jsonable(change.new),
        "safe": change.safe,
        "reason": change.reason,
    }


def changes_json(changes: Iterable[Change]) -> list[dict[str, Any]]:
    return [change_json(c) for c in changes]
