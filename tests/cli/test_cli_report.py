"""Reporters as pure functions: escaping, units and the shape of a problem line."""

from __future__ import annotations

from runner.cli.report import (
    Outcome,
    escape_data,
    escape_property,
    github,
    human_size,
    human_value,
    problem_line,
    summary,
)
from runner.topology.problems import Problem, Severity


def problem(line: int = 3, column: int = 5, path: str = "queues.q") -> Problem:
    return Problem("a.yaml", line, column, path, "r", Severity.ERROR, "bad\nthing 100%")


def test_github_escapes_data_and_properties() -> None:
    assert escape_data("a%b\r\nc") == "a%25b%0D%0Ac"
    assert escape_property("dir,x/a:b.yaml") == "dir%2Cx/a%3Ab.yaml"
    assert github(Outcome((problem(),), ("a.yaml",))) == (
        "::error file=a.yaml,line=3,col=5::bad%0Athing 100%25\n"
    )


def test_a_whole_file_problem_has_no_line_or_column() -> None:
    p = problem(line=0, column=0, path="")
    assert problem_line(p) == "a.yaml: error: bad\nthing 100%"
    assert github(Outcome((p,), ("a.yaml",))) == "::error file=a.yaml::bad%0Athing 100%25\n"


def test_summaries() -> None:
    assert summary(Outcome((), ("dir/",))) == "dir/: valid"
    assert summary(Outcome((), ("a", "b"))) == "2 topologies: valid"
    assert summary(Outcome((problem(), problem()), ("a",))) == "2 errors, 0 warnings in 1 topology"


def test_human_units_for_plan_values() -> None:
    assert human_size(1024**3) == "1GiB"
    assert human_size(5_000_000) == "5MB"
    assert human_size(1234) == "1234B"
    assert human_value("message_ttl", 86400.0) == "24h"
    assert human_value("message_ttl", None) == "none"
    assert human_value("retention.time", None) == "forever"
    assert human_value("retention.bytes", None) == "unlimited"
    assert human_value("backoff", (1.0, 5.0, 30.0)) == "[1s, 5s, 30s]"
    assert human_value("durable", False) == "false"
    assert human_value("cleanup_policy", ("compact", "delete")) == "[compact, delete]"
    assert human_value("multiplier", 2.0) == "2"


def test_github_under_strict_reports_warnings_as_errors() -> None:
    warning = Problem("a.yaml", 2, 1, "queues.q", "r", Severity.WARNING, "unused queue")
    assert github(Outcome((warning,), ("a.yaml",))) == (
        "::warning file=a.yaml,line=2,col=1::unused queue\n"
    )
    assert github(Outcome((warning, problem()), ("a.yaml",), strict=True)) == (
        "::error file=a.yaml,line=2,col=1::unused queue (a warning; an error under --strict)\n"
        "::error file=a.yaml,line=3,col=5::bad%0Athing 100%25\n"
    )
