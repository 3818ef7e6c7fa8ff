"""`runner test`: run topology tests (`*_test.yaml`) and report like pytest.

Each PATH is a test file or a directory searched for `*_test.yaml`. Every
case runs on a fresh simulation of its topology (runner.simulate.testrun).
Formats: `text` (a line per case, the failures, a summary), `json`, `github`
(workflow annotations). Exit 0 when every case passed, 1 when one failed or
could not run (also an invalid test file or topology), 2 for usage: a path
that does not exist, or no test file found.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from runner.cli import pythonpath, report
from runner.topology.model import Topology
from runner.topology.problems import Problem, Severity

if TYPE_CHECKING:
    from runner.simulate.testrun import CaseResult

USAGE = 2
FORMATS = ("text", "json", "github")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "test",
        help="run topology tests (*_test.yaml)",
        description="Run topology tests: each case sends a message through the topology on a "
        "simulated engine (manual clock) with the real handlers and checks where it lands. "
        "Exit 0 all passed, 1 a failure, 2 usage.",
    )
    p.add_argument("paths", nargs="+", metavar="PATH",
                   help="a *_test.yaml file, or a directory searched for them")
    p.add_argument("--format", choices=FORMATS, default="text")
    pythonpath.add_option(p)
    p.set_defaults(func=test_command)


@dataclass(frozen=True, slots=True)
class Run:
    """Everything one `runner test` found: case results and file problems."""

    results: tuple[CaseResult, ...]
    problems: tuple[Problem, ...]
    files: int
    duration_s: float


def _load_topology(path: str, cache: dict[str, tuple[Topology | None, list[Problem]]],
                   ) -> tuple[Topology | None, list[Problem]]:
    from runner.topology.load import load

    if path not in cache:
        loaded = load(path)
        errors = [p for p in loaded.problems if p.is_error]
        cache[path] = (loaded.topology if not errors else None, errors)
    return cache[path]


def collect(paths: Sequence[str]) -> Run:
    """Run every case of every test file under `paths`."""
    from runner.simulate.testrun import run_case
    from runner.topology.testcases import discover, load_tests

    started = time.perf_counter()
    results: list[CaseResult] = []
    problems: list[Problem] = []
    topologies: dict[str, tuple[Topology | None, list[Problem]]] = {}
    files = discover(paths)
    for file in files:
        tests, found = load_tests(file)
        problems.extend(found)
        if tests is None:
            continue
        if not os.path.exists(tests.topology):
            problems.append(Problem(file, 0, 0, "topology", "test-topology",
                                    Severity.ERROR,
                                    f"the topology under test {tests.topology} does not exist"))
            continue
        topology, errors = _load_topology(tests.topology, topologies)
        if topology is None:
            problems.extend(errors)
            problems.append(Problem(file, 0, 0, "topology", "test-topology",
                                    Severity.ERROR,
                                    f"the topology under test {tests.topology} is not valid"))
            continue
        for case in tests.cases:
            results.append(run_case(topology, case, file=file))
    return Run(tuple(results), tuple(problems), len(files), time.perf_counter() - started)


def test_command(args: argparse.Namespace) -> int:
    from runner.topology.testcases import discover

    paths: list[str] = args.paths
    missing = [p for p in paths if not os.path.exists(p)]
    for path in missing:
        print(f"runner test: {path}: no such file or directory", file=sys.stderr)
    if missing:
        return USAGE
    refused = pythonpath.apply(args, "test")
    if refused is not None:
        print(refused, file=sys.stderr)
        return USAGE
    if not discover(paths):
        print(f"runner test: no *_test.yaml file under {' '.join(paths)}", file=sys.stderr)
        return USAGE
    # the library's own warnings (a dropped message, a member rejoining) are what the
    # cases check; keep them off the terminal. Handlers' prints must not corrupt json.
    logging.getLogger("runner").addHandler(logging.NullHandler())
    logging.getLogger("runner").propagate = False
    with contextlib.redirect_stdout(sys.stderr):
        run = collect(paths)
    sys.stdout.write(REPORTERS[args.format](run))
    return 0 if _passed(run) else 1


# ---------------------------------------------------------------- reporters


def _passed(run: Run) -> bool:
    return not run.problems and all(r.passed for r in run.results)


def _counts(run: Run) -> tuple[int, int, int]:
    passed = failed = errors = 0
    for r in run.results:
        if r.error is not None:
            errors += 1
        elif r.failures:
            failed += 1
        else:
            passed += 1
    return passed, failed, errors + len(run.problems)


def summary(run: Run) -> str:
    passed, failed, errors = _counts(run)
    parts = [f"{n} {word}" for n, word in ((failed, "failed"), (passed, "passed"),
                                           (errors, "error" if errors == 1 else "errors")) if n]
    return f"{', '.join(parts) or 'no cases'} in {run.duration_s:.2f}s"


def text(run: Run) -> str:
    lines = [report.problem_line(p) for p in run.problems]
    bad: list[CaseResult] = []
    for r in run.results:
        outcome = "PASSED" if r.passed else ("ERROR" if r.error else "FAILED")
        lines.append(f"{r.file}::{r.name} {outcome}")
        if not r.passed:
            bad.append(r)
    if bad:
        lines.append("")
        lines.append(" FAILURES ".center(72, "="))
        for r in bad:
            lines.append(f" {r.file}:{r.line}: {r.name} ".center(72, "_"))
            if r.error is not None:
                lines.append(f"    error: {r.error}")
            lines.extend(f"    - {f}" for f in r.failures)
    lines.append(f" {summary(run)} ".center(72, "="))
    return "\n".join(lines) + "\n"


def to_json(run: Run) -> str:
    passed, failed, errors = _counts(run)
    cases = []
    for r in run.results:
        cases.append({
            "file": r.file, "line": r.line, "name": r.name,
            "outcome": "passed" if r.passed else ("error" if r.error else "failed"),
            "failures": list(r.failures), "error": r.error, "calls": r.calls,
            "simulated_seconds": r.simulated_s, "duration_seconds": round(r.duration_s, 6),
        })
    document = {
        "passed": _passed(run),
        "summary": {"passed": passed, "failed": failed, "errors": errors, "files": run.files},
        "cases": cases,
        "problems": [{"file": p.file, "line": p.line, "column": p.column, "path": p.path,
                      "severity": p.severity.value, "message": p.message}
                     for p in run.problems],
    }
    return json.dumps(document, indent=2) + "\n"


def github(run: Run) -> str:
    lines = report.github(report.Outcome(run.problems, ())).splitlines()
    for r in run.results:
        if r.passed:
            continue
        details = ([f"error: {r.error}"] if r.error else []) + list(r.failures)
        title = report.escape_property(f"{r.name} {'errored' if r.error else 'failed'}")
        lines.append(f"::error file={report.escape_property(r.file)},line={r.line},"
                     f"title={title}::{report.escape_data(chr(10).join(details))}")
    lines.append(summary(run))
    return "\n".join(lines) + "\n"


REPORTERS: dict[str, Callable[[Run], str]] = {"text": text, "json": to_json, "github": github}
