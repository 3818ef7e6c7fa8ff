"""Topology test files: `*_test.yaml` read into cases, checked against their schema.

A test file (docs/testing.md, schemas/topology-test.schema.json) names the
topology under test and lists cases: one message or record to send, handler
failures to inject, and expectations. `load_tests(path)` reads it safely with
the topology's own YAML source (positions, duplicate keys, no tags), checks
it against the packaged schema, and returns the cases as frozen values with
their line numbers, or the problems found. `discover(paths)` finds the test
files under directories.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any

from jsonschema import Draft202012Validator

from runner.topology.model import Position
from runner.topology.problems import Problem, Severity
from runner.topology.source import read_file
from runner.topology.suggest import did_you_mean
from runner.topology.units import parse_duration

SUFFIXES = ("_test.yaml", "_test.yml")
DEFAULT_RUN_FOR_S = 30 * 86400.0


@dataclass(frozen=True, slots=True)
class Failure:
    """Make a worker's first `times` calls raise `error(message)`."""

    times: int
    error: str = "RuntimeError"
    message: str = "simulated failure"


@dataclass(frozen=True, slots=True)
class TestCase:
    """One case: what to send, what to inject, what to expect (plain data)."""

    __test__ = False  # not a pytest class

    name: str
    line: int
    publish: Mapping[str, Any] | None
    append: Mapping[str, Any] | None
    fail: Mapping[str, Failure]
    run_for_s: float
    expect: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class TestFile:
    """A test file: its topology path (resolved) and cases."""

    __test__ = False

    file: str
    topology: str
    cases: tuple[TestCase, ...]


def is_test_file(name: str) -> bool:
    return name.endswith(SUFFIXES)


def discover(paths: Iterable[str]) -> list[str]:
    """Test files: each path itself when it is a file, else every `*_test.yaml`
    below it (recursively, sorted; hidden folders skipped)."""
    found: list[str] = []
    for path in paths:
        if not os.path.isdir(path):
            found.append(path)
            continue
        for root, dirs, files in os.walk(path):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            found.extend(os.path.join(root, f) for f in sorted(files) if is_test_file(f))
    return found


def default_topology(file: str) -> str:
    """`X.yaml` beside `X_test.yaml`; else, in a `tests` folder, its parent; else the folder."""
    folder = os.path.dirname(file) or "."
    base = os.path.basename(file)
    for suffix in SUFFIXES:
        if base.endswith(suffix):
            stem = base[: -len(suffix)]
            for ext in (".yaml", ".yml"):
                beside = os.path.join(folder, stem + ext)
                if os.path.isfile(beside):
                    return beside
    if os.path.basename(os.path.abspath(folder)) == "tests":
        return os.path.dirname(os.path.abspath(folder))
    return folder


@lru_cache(maxsize=1)
def _validator() -> Draft202012Validator:
    text = (resources.files("runner.topology") / "topology-test.schema.json").read_text("utf-8")
    return Draft202012Validator(json.loads(text))


def schema_text() -> str:
    """The JSON Schema of test files, as shipped."""
    return (resources.files("runner.topology") / "topology-test.schema.json").read_text("utf-8")


def _path(parts: Iterable[str | int]) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _choice(error: Any) -> bool:
    """A `oneOf` of `required` branches only: "exactly one of these keys"."""
    branches = error.schema.get("oneOf") if error.validator == "oneOf" else None
    return (isinstance(branches, list) and isinstance(error.instance, dict)
            and all(set(b) == {"required"} for b in branches))


def _schema_problems(
    file: str, data: Any, positions: Mapping[str, Position], keys: Mapping[str, Position],
) -> list[Problem]:
    problems: dict[str, Problem] = {}
    for error in _validator().iter_errors(data):
        # a oneOf/anyOf failure: report the most specific reason underneath
        best = error
        while best.context and not _choice(best):
            best = min(best.context, key=lambda e: (-len(e.absolute_path), str(e.message)))
        path = _path(best.absolute_path)
        if best.validator == "additionalProperties" and isinstance(best.instance, dict):
            allowed = list(best.schema.get("properties", {}))
            extra = [k for k in best.instance if k not in allowed]
            for key in extra:
                key_path = f"{path}.{key}" if path else key
                pos = (keys.get(key_path) or positions.get(key_path) or positions.get(path)
                       or Position(file, 0, 0))
                message = f'unknown key "{key}"{did_you_mean(key, allowed)}'
                problems.setdefault(key_path, Problem(file, pos.line, pos.column, key_path,
                                                      "test-schema", Severity.ERROR, message))
            continue
        if _choice(best):
            one_of = [k for b in best.schema.get("oneOf", ()) for k in b.get("required", ())]
            given = [k for k in one_of if k in best.instance]
            message = (f"give exactly one of {', '.join(one_of)}" if not given
                       else f"give only one of {', '.join(given)}")
        elif best.validator == "required":
            message = best.message.replace("is a required property", "is required")
        else:
            message = best.message
        pos = positions.get(path) or Position(file, 0, 0)
        where = f"{path}: " if path else ""
        problems.setdefault(path, Problem(file, pos.line, pos.column, path, "test-schema",
                                          Severity.ERROR, where + message))
    return sorted(problems.values(), key=Problem.sort_key)


def _failure(value: Any) -> Failure:
    if isinstance(value, int):
        return Failure(value)
    return Failure(int(value["times"]), str(value.get("error", "RuntimeError")),
                   str(value.get("message", "simulated failure")))


def load_tests(file: str) -> tuple[TestFile | None, list[Problem]]:
    """Read and check one test file: (the file's cases, []) or (None, problems)."""
    try:
        result, _ = read_file(file)
    except OSError as exc:
        return None, [Problem(file, 0, 0, "", "io", Severity.ERROR,
                              f"cannot read the test file: {exc.strerror}")]
    if result.document is None or not result.ok:
        return None, [p for p in result.problems if p.is_error]
    doc = result.document
    problems = _schema_problems(file, doc.data, doc.positions, doc.key_positions)
    if problems:
        return None, problems
    data: dict[str, Any] = doc.data
    folder = os.path.dirname(file) or "."
    topology = (os.path.normpath(os.path.join(folder, data["topology"]))
                if "topology" in data else default_topology(file))
    cases = []
    for i, case in enumerate(data["tests"]):
        pos = doc.positions.get(f"tests[{i}]") or Position(file, 0, 0)
        run_for = case.get("run_for")
        cases.append(TestCase(
            name=case["name"], line=pos.line, publish=case.get("publish"),
            append=case.get("append"),
            fail={k: _failure(v) for k, v in (case.get("fail") or {}).items()},
            run_for_s=parse_duration(run_for) or 0.0 if run_for else DEFAULT_RUN_FOR_S,
            expect=case["expect"],
        ))
    return TestFile(file, topology, tuple(cases)), []
