"""Partial topologies: what to leave out when parts of the files are invalid.

Validation reports every problem in one run: when a file has YAML-level or
schema errors, the loader still builds the topology from what is readable and
runs the semantic rules on it. This module says what that partial topology
lacks, so nothing downstream reports a mere consequence of an error already
reported:

- `Damage` (one file): the document paths that had errors, grouped into whole
  sections, whole entities and single fields of an entity. The builder leaves
  whole sections and entities out and builds the others without their invalid
  fields (their defaults apply).
- `Gaps` (the merged topology): names defined but not built, sections not
  read at all, entities built from partly invalid data ("tainted") and the
  invalid paths. The rules skip a reference to a name that exists but was not
  built, every problem at or under an invalid path, and every problem but a
  missing reference on a tainted entity.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

SECTIONS = ("topics", "exchanges", "queues", "dlq_policies", "consumer_groups", "consumers")
KINDS = {  # section -> what one entity of it is called in messages
    "topics": "topic",
    "exchanges": "exchange",
    "queues": "queue",
    "dlq_policies": "dlq_policy",
    "consumer_groups": "consumer group",
    "consumers": "consumer",
}
WHOLE = ""  # the field name that stands for the entity itself


def parent(path: str) -> str:
    """The document path one level up: `a.b[2]` -> `a.b`, `a.b` -> `a`, `a` -> ``."""
    cut = max(path.rfind("."), path.rfind("["))
    return path[:cut] if cut > 0 else ""


def covered(path: str, paths: Iterable[str] | frozenset[str] | set[str]) -> bool:
    """Whether `path` or one of its ancestors is in `paths`."""
    members = paths if isinstance(paths, (set, frozenset)) else set(paths)
    if not members:
        return False
    while True:
        if path in members:
            return True
        if not path:
            return False
        path = parent(path)


def locate(path: str, data: Mapping[str, Any]) -> tuple[str, str] | None:
    """(entity path, field) of a document path inside one file's data.

    The field is the entity's top-level key the path runs through, or `WHOLE`
    for the entity itself. None when the path is above the entities (the top
    level, `version`, `name`, a whole section). Entity names may contain dots,
    so the longest name of the section that starts the path wins.
    """
    if path.startswith("bindings["):
        end = path.find("]")
        if end < 0:
            return None
        return path[: end + 1], _first_field(path[end + 1 :])
    section, dot, rest = path.partition(".")
    if not dot or section not in SECTIONS:
        return None
    names = data.get(section)
    if isinstance(names, dict):
        for end in sorted(_name_ends(rest), reverse=True):
            if rest[:end] in names:
                return f"{section}.{rest[:end]}", _first_field(rest[end:])
    name = rest.split(".", 1)[0]
    return f"{section}.{name}", _first_field(rest[len(name) :])


def _name_ends(rest: str) -> list[int]:
    ends = [i for i, char in enumerate(rest) if char in ".["]
    ends.append(len(rest))
    return ends


def _first_field(rest: str) -> str:
    if not rest.startswith("."):
        return WHOLE
    rest = rest[1:]
    for index, char in enumerate(rest):
        if char in ".[":
            return rest[:index]
    return rest


@dataclass(slots=True)
class Damage:
    """The invalid parts of one file's data, from the paths of its errors."""

    paths: set[str] = field(default_factory=set)
    sections: set[str] = field(default_factory=set)  # sections not read at all
    top: set[str] = field(default_factory=set)  # top-level keys with errors (name, version)
    entities: dict[str, set[str]] = field(default_factory=dict)  # entity path -> bad fields

    @classmethod
    def of(cls, paths: Iterable[str], data: Mapping[str, Any]) -> Damage:
        damage = cls()
        for path in paths:
            damage.paths.add(path)
            found = locate(path, data)
            if found is not None:
                entity, name = found
                damage.entities.setdefault(entity, set()).add(name)
            elif path in SECTIONS or path == "bindings":
                damage.sections.add(path)
            else:
                damage.top.add(path.split(".", 1)[0].split("[", 1)[0])
        return damage

    def fields(self, entity: str) -> set[str] | None:
        """The invalid fields of an entity (`WHOLE` among them: all of it); None: none."""
        return self.entities.get(entity)


@dataclass(frozen=True, slots=True)
class Gaps:
    """What a partial topology lacks compared with what its files define."""

    unbuilt: Mapping[str, frozenset[str]] = field(
        default_factory=lambda: MappingProxyType({})
    )  # section -> names that are defined but were not built
    unknown: frozenset[str] = frozenset()  # sections that could not be read at all
    tainted: frozenset[str] = frozenset()  # entity paths built from partly invalid data
    invalid: frozenset[str] = frozenset()  # document paths already reported invalid

    @property
    def complete(self) -> bool:
        return not (self.unbuilt or self.unknown or self.tainted)

    def may_exist(self, section: str, name: str) -> bool:
        """Whether `name` may be defined in `section` although it was not built."""
        return section in self.unknown or name in self.unbuilt.get(section, ())

    def sound(self, entity: str) -> bool:
        """Whether an entity (`queues.q`, `bindings[3]`) was built from valid data only."""
        return entity not in self.tainted

    def covers(self, path: str) -> bool:
        """Whether `path` is, or is inside, a value already reported invalid."""
        return covered(path, self.invalid)


NO_GAPS = Gaps()
