"""Message headers on disk: a tagged JSON form that gives back exactly what was stored.

AMQP headers carry byte strings and nested tables, so plain JSON is not
enough. Values may be str, int, float, bool, None, bytes, tuple, list and
dict (nested freely); each comes back with its type:

* bytes -> `{"$b64": "<base64>"}`, tuple -> `{"$tuple": [...]}`;
* a dict with a key that is not a str, or that starts with `$`, ->
  `{"$dict": [[key, value], ...]}` (so a one-key dict whose key starts with
  `$` is always a tag);
* any other mapping comes back as a dict; anything else (a datetime, a set,
  a bytearray, a str or int subclass such as an enum) is refused by
  `check_headers` with InvalidRequest naming the header, before anything is
  stored (it would not come back as it went in).

Plain JSON written by earlier versions decodes unchanged. A top-level extra
(`extra`, e.g. a dead letter's cycle watch) rides under the `$x` key, apart
from the user's headers.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from runner.errors import InvalidRequest
from runner.header_values import ALLOWED, tag_value, untag_value

_PLAIN = (str, int, float, bool, type(None))
_SCALARS = frozenset((*_PLAIN, bytes))
_EXTRA = "$x"


def check_headers(headers: Mapping[str, Any]) -> None:
    """InvalidRequest naming the first header whose value cannot be stored exactly."""
    for name, value in headers.items():
        if not isinstance(name, str):
            raise InvalidRequest(
                f"header name {name!r} is a {type(name).__name__}: header names are strings")
        if type(value) in _SCALARS:
            continue
        bad = _unstorable(value)
        if bad is not None:
            raise InvalidRequest(
                f"header '{name}': a value of type {bad} cannot be stored "
                f"(allowed: {ALLOWED})")


def _unstorable(value: Any) -> str | None:
    """The type name of the first value inside `value` that cannot be stored, or None."""
    if type(value) in _SCALARS:
        return None
    if type(value) in (list, tuple):
        for v in value:
            bad = _unstorable(v)
            if bad is not None:
                return bad
        return None
    if isinstance(value, Mapping):
        for k, v in value.items():
            bad = _unstorable(k) or _unstorable(v)
            if bad is not None:
                return bad
        return None
    return type(value).__name__


def encode_headers(headers: Mapping[str, Any], extra: Any = None) -> bytes:
    """Headers (and an optional `extra`) as tagged JSON bytes."""
    doc = tag_value(headers)
    if extra is not None:
        doc = {**doc, _EXTRA: extra}
    return json.dumps(doc, separators=(",", ":")).encode()


def decode_headers(data: bytes | str) -> tuple[dict[str, Any], Any]:
    """What `encode_headers` wrote: the headers, and the extra (None without one)."""
    doc = json.loads(data)
    extra = doc.pop(_EXTRA, None)
    headers = untag_value(doc)
    return headers, extra


def encode_value(headers: Mapping[str, Any]) -> Any:
    """Headers as a JSON-able value (to embed in a larger JSON document)."""
    return tag_value(headers)


def decode_value(value: Any) -> dict[str, Any]:
    """What `encode_value` gave, back as headers."""
    out = untag_value(value)
    return out if isinstance(out, dict) else {}
