"""A resolved topology as plain JSON data and back (what a data dir records).

`to_document` writes every field of the model's frozen dataclasses (enums as
their values, tuples as lists; source positions and file names are left
out, and so is what is not an `__init__` field: a topology's maps, built on
use). `from_document` reads it back guided by the model's type hints, so the
value compares equal to the one written. A field the document lacks gets its
default (a data dir recorded by an older version), a field the model lacks is
ignored (one recorded by a newer version): reading never depends on a list
of fields kept by hand.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from enum import Enum
from functools import cache
from typing import Any, TypeVar, Union

from runner.topology.model import Topology

_SKIPPED = frozenset({"pos", "positions", "files"})

T = TypeVar("T")


class SnapshotError(ValueError):
    """A document that is not a recorded topology."""


def to_document(topology: Topology) -> dict[str, Any]:
    """`topology` as JSON-ready data."""
    out = _encode(topology)
    assert isinstance(out, dict)
    return out


def from_document(document: object) -> Topology:
    """The topology recorded in `document`; SnapshotError when it is not one."""
    try:
        topology: Topology = _decode(Topology, document)
    except (TypeError, ValueError, KeyError) as exc:
        raise SnapshotError(f"not a recorded topology: {exc}") from exc
    return topology


def _encode(value: object) -> object:
    if isinstance(value, Enum):
        return value.value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _encode(getattr(value, f.name))
                for f in dataclasses.fields(value) if f.init and f.name not in _SKIPPED}
    if isinstance(value, tuple | list):
        return [_encode(v) for v in value]
    return value


@cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _decode(hint: Any, data: object) -> Any:
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        return _decode_union(typing.get_args(hint), data)
    if origin is tuple:
        args = typing.get_args(hint)
        if not isinstance(data, list):
            raise TypeError(f"expected a list for {hint}, got {type(data).__name__}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_decode(args[0], item) for item in data)
        if len(args) != len(data):
            raise ValueError(f"expected {len(args)} items for {hint}, got {len(data)}")
        return tuple(_decode(a, item) for a, item in zip(args, data, strict=True))
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        if not isinstance(data, dict):
            raise TypeError(f"expected an object for {hint.__name__}")
        hints = _hints(hint)
        kwargs = {f.name: _decode(hints[f.name], data[f.name])
                  for f in dataclasses.fields(hint)
                  if f.init and f.name not in _SKIPPED and f.name in data}
        return hint(**kwargs)
    if isinstance(hint, type) and issubclass(hint, Enum):
        return hint(data)
    if hint is Any:
        return data
    if hint is float and isinstance(data, int) and not isinstance(data, bool):
        return float(data)
    if hint is type(None):
        if data is not None:
            raise TypeError("expected null")
        return None
    if isinstance(hint, type) and not isinstance(data, hint):
        raise TypeError(f"expected {hint.__name__}, got {type(data).__name__}")
    if hint is int and isinstance(data, bool):
        raise TypeError("expected int, got bool")
    return data


def _decode_union(options: tuple[Any, ...], data: object) -> Any:
    if data is None and type(None) in options:
        return None
    errors = []
    for option in options:
        if option is type(None):
            continue
        try:
            return _decode(option, data)
        except (TypeError, ValueError, KeyError) as exc:
            errors.append(str(exc))
    raise TypeError("; ".join(errors) or "no type fits")
