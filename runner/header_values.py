"""Header values shared by every layer: the tagged JSON form and record headers.

A base module (beside `runner.deadletter_headers`): the broker stores queue
headers in the tagged form, the engine stores record headers with
`encode_headers`, and the daemon's HTTP codec reads and writes both forms (and
counts header sizes as records store them) -- all through this module, so no
layer needs another's internals to agree on a byte.

The tagged form (`tag_value` / `untag_value`): values may be str, int, float,
bool, None, bytes, tuple, list and dict (nested freely); bytes are
`{"$b64": "<base64>"}`, a tuple `{"$tuple": [...]}`, a dict with a key that is
not a str or starts with `$` `{"$dict": [[key, value], ...]}`.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any

from runner import jsontext
from runner.errors import InvalidRequest

__all__ = ["ALLOWED", "HEADER_TYPES", "encode_headers", "tag_value", "untag_value"]

ALLOWED = "str, int, float, bool, None, bytes, list, tuple or dict"


def tag_value(value: Any) -> Any:
    """One header value in the tagged JSON-able form (bytes, tuples, odd dicts tagged)."""
    if isinstance(value, str | bool | int | float) or value is None:
        return value
    if isinstance(value, bytes):
        return {"$b64": base64.b64encode(value).decode("ascii")}
    if isinstance(value, list):
        return [tag_value(v) for v in value]
    if isinstance(value, tuple):
        return {"$tuple": [tag_value(v) for v in value]}
    if isinstance(value, Mapping):
        if all(isinstance(k, str) and not k.startswith("$") for k in value):
            return {k: tag_value(v) for k, v in value.items()}
        return {"$dict": [[tag_value(k), tag_value(v)] for k, v in value.items()]}
    raise InvalidRequest(f"a header value of type {type(value).__name__} cannot be stored "
                         f"(allowed: {ALLOWED})")


def untag_value(value: Any) -> Any:
    """What `tag_value` gave, back as the value."""
    if isinstance(value, list):
        return [untag_value(v) for v in value]
    if isinstance(value, dict):
        if len(value) == 1:
            ((k, v),) = value.items()
            if k == "$b64":
                return base64.b64decode(v)
            if k == "$tuple":
                return tuple(untag_value(x) for x in v)
            if k == "$dict":
                return {untag_value(a): untag_value(b) for a, b in v}
        return {k: untag_value(v) for k, v in value.items()}
    return value


HEADER_TYPES = "x-runner-header-types"
"""The record header that says how to read the headers before it (see `encode_headers`)."""

_TEXT, _BYTES, _JSON, _NULL = "s", "b", "j", "n"  # the letters of HEADER_TYPES

def encode_headers(headers: Mapping[str, Any]) -> tuple[tuple[str, bytes], ...]:
    """Record headers on disk, each value read back exactly by `decode_headers`.

    A Kafka header value is bytes or null, and Kafka clients read what is
    stored, so: a str is stored raw as its UTF-8 bytes (a Kafka consumer sees
    `abc`, not `"abc"`), bytes raw, None as a null value, and any other value
    (int, float, bool, list, tuple, dict) as JSON text in the queues' tagged
    form (`tag_value` above, the one header codec: `3`, `true`,
    `{"a":1}`; bytes inside as `{"$b64": ...}`). How to read each value back is
    kept in one last header, `HEADER_TYPES`: one letter per header before it
    (`s` text, `b` bytes, `j` JSON, `n` null, stored empty), e.g. `sjb`. The
    Kafka listener never shows that header to Kafka clients, and gives records
    that Kafka clients produce an empty one (every value raw), or, when one of
    their values is null, `r` (raw) and `n` letters."""
    if not headers:
        return ()
    out: list[tuple[str, bytes]] = []
    kinds: list[str] = []
    for name, value in headers.items():
        if type(value) is str:
            try:
                out.append((name, value.encode()))
                kinds.append(_TEXT)
                continue
            except UnicodeEncodeError:  # a lone surrogate: only JSON can carry it
                pass
        elif isinstance(value, bytes | bytearray | memoryview):
            out.append((name, bytes(value)))
            kinds.append(_BYTES)
            continue
        elif value is None:  # a Kafka null header value
            out.append((name, b""))
            kinds.append(_NULL)
            continue
        out.append((name, jsontext.dumps(tag_value(value), default=str)))
        kinds.append(_JSON)
    out.append((HEADER_TYPES, "".join(kinds).encode()))
    return tuple(out)
