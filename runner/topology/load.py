"""Load: the facade that turns a topology path into a `Topology` and its problems.

    read files -> YAML with positions -> ${VAR} substitution -> JSON Schema
    -> build the model -> semantic rules

Every problem is reported in one run: a file with errors still takes part
(see `runner.topology.partial`): the topology is built from its valid parts
and the rules run on that, skipping what merely follows from an error already
reported. `LoadResult.topology` is None when any error exists; the partial
topology is `LoadResult.partial` (e.g. to check the readable handlers).

A path is one file or a directory: every `*.yaml` / `*.yml` in it (not
recursive, sorted by name; names starting with `.` or `#` or ending in `~` are
editor files and skipped, and so are directories), merged into one topology.
Only regular files are read (`runner.topology.source.read_file`): a FIFO, socket
or device among them is a problem, never a reader blocked for good; with
`follow_symlinks=False` so is a symbolic link. Problems name files as
the path was given (`dir/file.yaml` inside a directory). Problems are data:
only a path that does not exist raises (`FileNotFoundError`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from runner.topology import build as build_mod
from runner.topology import rules, schema
from runner.topology.model import Topology
from runner.topology.partial import SECTIONS, Damage, covered
from runner.topology.problems import Problem, Severity
from runner.topology.source import SourceDocument, SourceResult, read_file, read_text

_SUFFIXES = (".yaml", ".yml")
# Entities of one topology (all files): validating costs ~50-100 us each, so
# this bounds a validation to a few seconds. Far above any real topology.
MAX_ENTITIES = 20_000
# source problems after which a file's data cannot be trusted anywhere
_FATAL_SOURCE_RULES = frozenset({"alias-limit", "nesting-depth", "top-level-type"})


@dataclass(frozen=True, slots=True)
class LoadResult:
    """A loaded topology (None when any error was found), every problem, and a content hash."""

    topology: Topology | None
    problems: tuple[Problem, ...]
    content_hash: str
    # the topology of the valid parts, also when there are errors (never to be run)
    partial: Topology | None = field(default=None, compare=False, repr=False)

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
            and not os.path.isdir(os.path.join(path, name))
        )
        return [os.path.join(path, name) for name in names]
    if not os.path.exists(path):
        raise FileNotFoundError(f"no such file or directory: {path}")
    return [path]


def load(
    path: str, *, env: Mapping[str, str] | None = None, follow_symlinks: bool = True
) -> LoadResult:
    """Load the topology at `path` (a file or a directory of files); with
    `follow_symlinks=False` a topology file that is a symbolic link is refused."""
    files = topology_files(path)
    digest = hashlib.sha256()
    results: list[SourceResult] = []
    for file in files:
        try:
            result, raw = read_file(file, env=env, follow_symlinks=follow_symlinks)
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
    readable: list[SourceResult] = []
    unreadable = False
    for result in results:
        problems.extend(result.problems)
        doc = result.document
        if (
            doc is None
            or not isinstance(doc.data, dict)
            or any(p.rule in _FATAL_SOURCE_RULES for p in result.problems)
        ):
            unreadable = True
        else:
            readable.append(result)
    count = sum(_entity_count(r.document) for r in readable if r.document is not None)
    if count > MAX_ENTITIES:
        message = (
            f"topology is too large to validate: {count:,} entities (topics, exchanges, "
            f"queues, bindings, dlq_policies, consumer groups and consumers); "
            f"the limit is {MAX_ENTITIES:,}"
        )
        problems.append(Problem(path, 0, 0, "", "too-many-entities", Severity.ERROR, message))
        problems.sort(key=Problem.sort_key)
        return LoadResult(None, tuple(problems), content_hash)
    documents: list[SourceDocument] = []
    damages: list[Damage] = []
    for result in readable:
        doc = result.document
        assert doc is not None
        # A value the source part refused is None in the data: schema problems
        # about it would only repeat that. ("" is the file itself: a dropped key.)
        refused = {p.path for p in result.problems if p.is_error and p.path}
        bad = set(refused)
        for subject, problem in schema.check_subjects(doc):
            if covered(subject, refused):
                continue
            problems.append(problem)
            bad.add(subject)
        documents.append(doc)
        damages.append(Damage.of(bad, doc.data))
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
    topology, found_in_build, gaps = build_mod.build_partial(documents, damages)
    problems.extend(found_in_build)
    if topology is not None:
        if unreadable:  # what an unreadable file defines is unknown: any name may exist
            gaps = dataclasses.replace(gaps, unknown=frozenset((*SECTIONS, "bindings")))
        problems.extend(rules.check(topology, gaps=gaps))
    partial = topology
    if any(p.is_error for p in problems):
        topology = None
    problems.sort(key=Problem.sort_key)
    return LoadResult(topology, tuple(problems), content_hash, partial)


def _entity_count(doc: SourceDocument) -> int:
    named = sum(len(v) for k, v in doc.data.items() if k in SECTIONS and isinstance(v, dict))
    bindings = doc.data.get("bindings")
    return named + (len(bindings) if isinstance(bindings, list) else 0)


def _file_digest(file: str) -> bytes:
    inner = hashlib.sha256()
    try:
        fd = os.open(file, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return b""
    try:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            while chunk := os.read(fd, 1 << 20):
                inner.update(chunk)
    except OSError:
        return b""
    finally:
        os.close(fd)
    return inner.digest()


def _hash_file(digest: Any, name: str, raw: bytes) -> None:
    encoded = os.path.basename(name).encode("utf-8", "surrogatepass")
    digest.update(len(encoded).to_bytes(8, "big") + encoded)
    digest.update(len(raw).to_bytes(8, "big") + raw)
