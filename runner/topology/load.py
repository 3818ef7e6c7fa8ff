"""Load: the facade that turns a topology path into a `Topology` and its problems.

    read files -> YAML with positions -> ${VAR} substitution -> JSON Schema
    -> build the model -> semantic rules (only when nothing failed before)

A path is one file or a directory: every `*.yaml` / `*.yml` in it (not
recursive, sorted by name; names starting with `.` or `#` or ending in `~` are
editor files and skipped), merged into one topology. Problems name files as
the path was given (`dir/file.yaml` inside a directory). Problems are data:
only a path that does not exist raises (`FileNotFoundError`).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from runner.topology import build as build_mod
from runner.topology import rules, schema
from runner.topology.model import Topology
from runner.topology.problems import Problem, Severity
from runner.topology.source import SourceDocument, SourceResult, read_file, read_text

_SUFFIXES = (".yaml", ".yml")


@dataclass(frozen=True, slots=True)
class LoadResult:
    """A loaded topology (None when any error was found), every problem, and a content hash."""

    topology: Topology | None
    problems: tuple[Problem, ...]
    content_hash: str

    @property
    def ok(self) -> bool:
        return not any(p.is_error for p in self.problems)

    @property
    def errors(self) -> tuple[Problem, ...]:
        return tuple(p for p in self.problems if p.is_error)

    @property
    def warnings(self) -> tuple[Problem, ...]:
        return tuple(p for p in self.problems if not p.is_error)


def topology_files(path: str) -> list[str]:
    """The files a path stands for, as they will be named in problems.

    Raises FileNotFoundError when `path` does not exist.
    """
    if os.path.isdir(path):
        names = sorted(
            name
            for name in os.listdir(path)
            if name.endswith(_SUFFIXES)
            and not name.startswith((".", "#"))
            and not name.endswith("~")
            and os.path.isfile(os.path.join(path, name))
        )
        return [os.path.join(path, name) for name in names]
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such file or directory: {path}")
    return [path]


def load(path: str, *, env: Mapping[str, str] | None = None) -> LoadResult:
    """Load the topology at `path` (a file or a directory of files)."""
    files = topology_files(path)
    digest = hashlib.sha256()
    results: list[SourceResult] = []
    for file in files:
        try:
            result, raw = read_file(file, env=env)
        except OSError as exc:
            message = f"cannot read the file: {exc.strerror or exc}"
            result = SourceResult(
                None, (Problem(file, 0, 0, "", "unreadable", Severity.ERROR, message),)
            )
            raw = b""
        results.append(result)
        if raw is None:  # too large to parse; still hash it so a change is seen
            raw = _file_digest(file)
        _hash_file(digest, file, raw)
    return _finish(path, files, results, digest.hexdigest())


def load_text(
    text: str, *, filename: str = "<string>", env: Mapping[str, str] | None = None
) -> LoadResult:
    """Load a topology from text (one file's content), e.g. in tests."""
    digest = hashlib.sha256()
    _hash_file(digest, filename, text.encode("utf-8", "surrogatepass"))
    result = read_text(text, file=filename, env=env)
    return _finish(filename, [filename], [result], digest.hexdigest())


def _finish(
    path: str, files: list[str], results: Iterable[SourceResult], content_hash: str
) -> LoadResult:
    problems: list[Problem] = []
    documents: list[SourceDocument] = []
    for result in results:
        problems.extend(result.problems)
        if result.document is None or not result.ok:
            continue
        found = schema.check(result.document)
        problems.extend(found)
        if not found:
            documents.append(result.document)
    if not files:
        problems.append(
            Problem(
                path,
                0,
                0,
                "",
                "no-files",
                Severity.ERROR,
                "no topology files (*.yaml, *.yml) in this directory",
            )
        )
    topology: Topology | None = None
    if not any(p.is_error for p in problems):
        topology, found_in_build = build_mod.build(documents)
        problems.extend(found_in_build)
        if topology is not None:
            problems.extend(rules.check(topology))
    if any(p.is_error for p in problems):
        topology = None
    problems.sort(key=Problem.sort_key)
    return LoadResult(topology, tuple(problems), content_hash)


def _file_digest(file: str) -> bytes:
    inner = hashlib.sha256()
    try:
        with open(file, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                inner.update(chunk)
    except OSError:
        return b""
    return inner.digest()


def _hash_file(digest: Any, name: str, raw: bytes) -> None:
    encoded = os.path.basename(name).encode("utf-8", "surrogatepass")
    digest.update(len(encoded).to_bytes(8, "big") + encoded)
    digest.update(len(raw).to_bytes(8, "big") + raw)
