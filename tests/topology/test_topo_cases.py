"""The case-driven harness: folders of good and bad topologies with their problems.

- `cases/good/NAME.yaml` (or a directory `NAME/`) must load with no problem at
  all, warnings included.
- `cases/bad/NAME.yaml` (or a directory `NAME/`) has `cases/bad/NAME.expect`
  beside it: one expected problem a line, `LINE:COL SEVERITY MESSAGE`, exactly
  as the loader reports them (sorted by file, line, column). Inside a
  directory case, prefix the file: `a.yaml:LINE:COL SEVERITY MESSAGE`. Blank
  lines and lines starting with `#` are ignored.

Cases are loaded from inside their folder, so files are named as a user would
type them (`NAME.yaml`, `NAME/a.yaml`), with the fixed environment `CASE_ENV`.

To see what a case reports (when writing a new one):
    .venv/bin/python -m tests.topology.test_topo_cases bad/NAME.yaml
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from runner.topology.load import LoadResult, load
from runner.topology.problems import Problem

CASES = Path(__file__).parent / "cases"
CASE_ENV = {
    "RUNNER_TEST_PARTITIONS": "12",
    "RUNNER_TEST_NAME": "orders",
    "RUNNER_TEST_WORD": "ten",
    "RUNNER_TEST_EMPTY": "",
}


def _cases(kind: str) -> list[str]:
    folder = CASES / kind
    names = []
    for entry in sorted(folder.iterdir()):
        if entry.is_dir() or entry.suffix in (".yaml", ".yml"):
            names.append(entry.name)
    return names


def _load_case(kind: str, name: str) -> LoadResult:
    cwd = os.getcwd()
    os.chdir(CASES / kind)
    try:
        return load(name, env=CASE_ENV)
    finally:
        os.chdir(cwd)


def _format(problem: Problem, case: str) -> str:
    where = f"{problem.line}:{problem.column}"
    if problem.file.startswith(case + "/"):
        where = f"{problem.file[len(case) + 1 :]}:{where}"
    return f"{where} {problem.severity.value} {problem.message}"


def _expected(kind: str, name: str) -> list[str]:
    stem = name.rsplit(".", 1)[0] if not (CASES / kind / name).is_dir() else name
    expect = CASES / kind / f"{stem}.expect"
    lines = expect.read_text("utf-8").splitlines()
    return [line for line in lines if line.strip() and not line.startswith("#")]


def test_there_are_enough_cases() -> None:
    assert len(_cases("bad")) >= 40
    assert len(_cases("good")) >= 3


@pytest.mark.parametrize("name", _cases("good"))
def test_good_case_loads_without_problems(name: str) -> None:
    result = _load_case("good", name)
    assert [_format(p, name) for p in result.problems] == []
    assert result.topology is not None


@pytest.mark.parametrize("name", _cases("bad"))
def test_bad_case_reports_exactly_its_problems(name: str) -> None:
    result = _load_case("bad", name)
    actual = [_format(p, name) for p in result.problems]
    assert actual == _expected("bad", name)
    assert actual, "a bad case must report something"
    if any(p.is_error for p in result.problems):
        assert result.topology is None


def test_every_expect_file_has_its_case() -> None:
    folder = CASES / "bad"
    for expect in folder.glob("*.expect"):
        stem = expect.name[: -len(".expect")]
        candidates = [folder / stem, folder / f"{stem}.yaml", folder / f"{stem}.yml"]
        assert any(c.exists() for c in candidates), f"{expect.name} has no case"


def main(argv: list[str]) -> int:
    """Print a case's problems in .expect format (a helper for writing cases)."""
    for arg in argv:
        kind, _, name = arg.partition("/")
        for line in (_format(p, name) for p in _load_case(kind, name).problems):
            sys.stdout.write(line + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
