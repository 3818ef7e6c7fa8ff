"""Reporters: validation problems and plans as text, JSON or GitHub annotations.

Each reporter is a pure function from data to the text the CLI prints, so the
formats are tested without a terminal. Formats (docs/validate.md):

    text    FILE:LINE:COL: error: MESSAGE (at PATH), then a summary line
    json    {"valid": bool, "problems": [{file, line, column, path, severity,
            message, rule}]}
    github  ::error file=F,line=L,col=C::MESSAGE  (GitHub Actions workflow commands)
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum

from runner.topology import recipes
from runner.topology.diff import Change, Plan, field_unit, jsonable
from runner.topology.diff import to_json as plan_to_json
from runner.topology.model import Topology
from runner.topology.problems import Problem, Severity
from runner.topology.units import format_duration, format_rate


@dataclass(frozen=True, slots=True)
class Outcome:
    """What `runner validate` found over all its arguments."""

    problems: tuple[Problem, ...]
    paths: tuple[str, ...]
    strict: bool = False

    @property
    def errors(self) -> int:
        return sum(1 for p in self.problems if p.severity is Severity.ERROR)

    @property
    def warnings(self) -> int:
        return sum(1 for p in self.problems if p.severity is Severity.WARNING)

    @property
    def valid(self) -> bool:
        return self.errors == 0 and not (self.strict and self.warnings)


def _plural(n: int, word: str, many: str | None = None) -> str:
    return f"{n} {word if n == 1 else (many or word + 's')}"


def problem_line(p: Problem) -> str:
    """`FILE:LINE:COL: error: MESSAGE (at PATH)`; the place shrinks when unknown."""
    where = p.file
    if p.line > 0:
        where += f":{p.line}" + (f":{p.column}" if p.column > 0 else "")
    at = f" (at {p.path})" if p.path else ""
    return f"{where}: {p.severity.value}: {p.message}{at}"


def summary(outcome: Outcome) -> str:
    """`2 errors, 1 warning in 1 topology`, or `PATH: valid` when nothing was found."""
    if not outcome.problems:
        if len(outcome.paths) == 1:
            return f"{outcome.paths[0]}: valid"
        return f"{_plural(len(outcome.paths), 'topology', 'topologies')}: valid"
    counts = f"{_plural(outcome.errors, 'error')}, {_plural(outcome.warnings, 'warning')}"
    where = _plural(len(outcome.paths), "topology", "topologies")
    verdict = "" if outcome.errors or outcome.strict else " (valid)"
    return f"{counts} in {where}{verdict}"


def text(outcome: Outcome) -> str:
    lines = [problem_line(p) for p in outcome.problems]
    lines.append(summary(outcome))
    return "\n".join(lines) + "\n"


def to_json(outcome: Outcome) -> str:
    document = {
        "valid": outcome.valid,
        "problems": [
            {
                "file": p.file,
                "line": p.line,
                "column": p.column,
                "path": p.path,
                "severity": p.severity.value,
                "message": p.message,
                "rule": p.rule,
            }
            for p in outcome.problems
        ],
    }
    return json.dumps(document, indent=2) + "\n"


def escape_data(text: str) -> str:
    """GitHub workflow-command message escaping."""
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def escape_property(text: str) -> str:
    """GitHub workflow-command property escaping (also `:` and `,`)."""
    return escape_data(text).replace(":", "%3A").replace(",", "%2C")


def github(outcome: Outcome) -> str:
    """One annotation a problem; under `--strict` a warning fails the job, so it is
    an `::error` too (its message says it is a warning made an error)."""
    lines = []
    for p in outcome.problems:
        props = [f"file={escape_property(p.file)}"]
        if p.line > 0:
            props.append(f"line={p.line}")
            if p.column > 0:
                props.append(f"col={p.column}")
        level, message = p.severity.value, p.message
        if outcome.strict and p.severity is Severity.WARNING:
            level, message = "error", f"{message} (a warning; an error under --strict)"
        lines.append(f"::{level} {','.join(props)}::{escape_data(message)}")
    return "".join(line + "\n" for line in lines)


REPORTERS: dict[str, Callable[[Outcome], str]] = {"text": text, "json": to_json, "github": github}


# ---------------------------------------------------------------- plans

_SIZE_UNITS = (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024))
_SIZE_DECIMAL = (("TB", 1000**4), ("GB", 1000**3), ("MB", 1000**2), ("KB", 1000))


def human_duration(seconds: float) -> str:
    """`86400.0` -> `24h`, `5400` -> `1h30m`, `0.25` -> `250ms` (the loader's own unit form)."""
    return format_duration(seconds)


def human_size(size: int) -> str:
    """`1073741824` -> `1GiB`, `5000000` -> `5MB`, `1234` -> `1234B`."""
    for units in (_SIZE_UNITS, _SIZE_DECIMAL):
        for name, factor in units:
            if size >= factor and size % factor == 0:
                return f"{size // factor}{name}"
    return f"{size}B"


def human_value(field: str | None, value: object) -> str:
    """A changed value as a person writes it in YAML."""
    unit = field_unit(field) if field else None
    if value is None:
        if field == "retention.time":
            return "forever"
        return "unlimited" if unit in ("size", "rate") else "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if unit == "duration" and isinstance(value, int | float):
        return human_duration(float(value))
    if unit == "duration" and isinstance(value, tuple):
        return "[" + ", ".join(human_duration(float(v)) for v in value) + "]"
    if unit == "size" and isinstance(value, int):
        return human_size(value)
    if unit == "rate" and isinstance(value, int | float):
        return format_rate(float(value))
    if isinstance(value, Enum):
        return str(value.value)
    if isinstance(value, float):
        return f"{value:g}"
    return _flow(jsonable(value))


def _flow(data: object) -> str:
    if isinstance(data, dict):
        return "{" + ", ".join(f"{k}: {_flow(v)}" for k, v in data.items() if v is not None) + "}"
    if isinstance(data, list):
        return "[" + ", ".join(_flow(v) for v in data) + "]"
    if data is None:
        return "none"
    if isinstance(data, bool):
        return "true" if data else "false"
    return str(data)


def change_line(c: Change) -> str:
    """`+ queue foo`, `- binding ...`, `~ queue q: message_ttl 24h -> 1h`, marked when unsafe."""
    sign = {"added": "+", "removed": "-", "changed": "~"}[c.kind]
    head = f"{sign} {c.entity}" + (f" {c.name}" if c.name else "")
    if c.kind == "changed":
        head += f": {c.field} {human_value(c.field, c.old)} -> {human_value(c.field, c.new)}"
    if not c.safe:
        return f"{head}  ! UNSAFE: {c.reason}"
    return f"{head}  ({c.reason})" if c.reason else head


def _recipe_lines(c: Change, old: Topology | None, new: Topology | None) -> list[str]:
    if old is None or new is None:
        return []
    found = recipes.recipe(c, old, new)
    if found is None:
        return []
    what = (f"{found.entity} {found.name} becomes {found.new_name}" if found.new_name
            else f"{found.entity} {found.name} goes")
    lines = [f"    safe migration ({what}), one reload per step:"]
    for i, step in enumerate(found.steps, 1):
        mark = "" if step.safety == recipes.SAFE else f"  [{step.safety}]"
        lines.append(f"    {i}. {step.title}{mark}")
        lines.extend("       " + ln for ln in recipes.step_text(step))
        if step.note:
            lines.append(f"       note: {step.note}")
        if step.wait:
            lines.append(f"       then wait until {step.wait}")
    return lines


def plan_text(
    plan: Plan, old: Topology | None = None, new: Topology | None = None, *,
    refuser: str = "a reload",
) -> str:
    """The plan, a line per change; with `old` and `new`, each unsafe change is
    followed by its migration recipe (runner.topology.recipes). `refuser` names
    what an unsafe plan refuses in the summary line."""
    if plan.empty:
        return "no changes\n"
    lines = []
    shown: set[tuple[str, str]] = set()
    for c in plan.changes:
        lines.append(change_line(c))
        if c.safe or old is None:
            continue
        if (c.entity, c.name) in shown:
            lines.append(f"    (the migration above for {c.entity} {c.name} covers this change)")
            continue
        shown.add((c.entity, c.name))
        lines.extend(_recipe_lines(c, old, new))
    counts: dict[str, int] = {"added": 0, "changed": 0, "removed": 0}
    for c in plan.changes:
        counts[c.kind] += 1
    unsafe = len(plan.unsafe)
    lines.append(
        f"{counts['added']} to add, {counts['changed']} to change, {counts['removed']} to remove; "
        + (f"{unsafe} unsafe: {refuser} would be refused" if unsafe else "all safe")
    )
    return "\n".join(lines) + "\n"


def plan_json(plan: Plan, old: Topology | None = None, new: Topology | None = None) -> str:
    """The plan as JSON; every change also has `safety` ("safe" | "unsafe") and
    `recipe` (the migration of an unsafe change, else null) when `old` and `new` are given."""
    document = plan_to_json(plan)
    if old is not None and new is not None:
        changes = document["changes"]
        assert isinstance(changes, list)
        for c, entry in zip(plan.changes, changes, strict=True):
            found = recipes.recipe(c, old, new)
            entry["safety"] = "safe" if c.safe else "unsafe"
            entry["recipe"] = None if found is None else recipes.to_json(found)
    return json.dumps(document, indent=2) + "\n"


def problems_text(problems: Sequence[Problem]) -> str:
    return "".join(problem_line(p) + "\n" for p in problems)
