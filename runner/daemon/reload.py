"""Reload outcomes: what one attempt to apply a new topology did, as data.

`ReloadResult` is what the admin endpoint answers and what the supervisor logs
and counts; `ReloadCounters` holds the `runner_topology_reloads_total` values.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

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


def _plain(value: Any) -> Any:
    try:
        return orjson.loads(orjson.dumps(value))
    except TypeError:
        return str(value)


def change_json(change: Any) -> dict[str, Any]:
    """A diff Change as JSON (its fields, values made printable)."""
    out: dict[str, Any] = {}
    for name in ("kind", "entity", "name", "field", "old", "new", "safe", "reason"):
        if hasattr(change, name):
            value = getattr(change, name)
            out[name] = value.value if hasattr(value, "value") and name == "kind" else value
    return {k: _plain(v) for k, v in out.items()}


def changes_json(changes: Iterable[Any]) -> list[dict[str, Any]]:
    return [change_json(c) for c in changes]
