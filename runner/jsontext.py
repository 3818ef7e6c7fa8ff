"""JSON text that keeps every integer exact: the one reader and writer of user JSON.

orjson (fast) reads integers past 64 bits as floats and refuses to write them;
JSON itself has no such limit, and a producer's `123456789012345678901234567890`
must come back as written, never as `1.2345678901234568e+29`, a 500 or a queue
that can no longer be read. So:

* `loads` reads with orjson, and re-reads with the standard library (exact
  integers) only text holding a run of 19 or more digits (the bounds of 64-bit
  integers have 19-20 digits); non-finite numbers (`1e400`, `NaN`,
  `Infinity`) are refused in both paths, as orjson refuses them;
* `dumps` writes with orjson and, only when an integer is past its range
  (-2^63 .. 2^64-1), writes those integers as pre-rendered fragments.

The decision (docs/daemon.md "Numbers"): integers of any size are stored and
returned exactly, in bodies, values and headers alike.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

import orjson

_DIGITS_ONLY = bytes(0x30 if 0x30 <= b <= 0x39 else 0x20 for b in range(256))  # "0" or " "
_DIGIT_RUN = b"0" * 19
_LOW, _HIGH = -(2**63), 2**64 - 1  # what orjson writes as integers


def _finite(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"number {text[:40]} is infinity when parsed as double")
    return value


def _no_constant(text: str) -> Any:
    raise ValueError(f"{text} is not a JSON number")


def loads(raw: bytes | str) -> Any:
    """The JSON value of `raw` with integers exact; ValueError (orjson.JSONDecodeError
    or json.JSONDecodeError, both ValueErrors) when it is not JSON."""
    value = orjson.loads(raw)
    data = raw.encode() if isinstance(raw, str) else raw
    if _DIGIT_RUN in data.translate(_DIGITS_ONLY):
        # translate + `in` finds the digit runs ~10x faster than a regex
        value = json.loads(data, parse_float=_finite, parse_constant=_no_constant)
    return value


# orjson returns bytes that keep the whole buffer it wrote into (at least 4 KiB, about
# 8x the text for strings): a queue of tiny JSON bodies held 4,365 bytes of RSS a
# message (measured over 100,000 through the daemon). Results below this size are
# copied into an exact-size object (~0.1 us); larger ones are not retained for long
# (answers) or are few, and their untouched pages are never resident.
_EXACT_BELOW = 1 << 20


def dumps(value: Any, *, default: Callable[[Any], Any] | None = None) -> bytes:
    """Compact JSON bytes of `value`; integers of any size written exactly; a result
    under 1 MiB is an exact-size object (safe to keep in a queue)."""
    try:
        out = orjson.dumps(value, default=default)
    except orjson.JSONEncodeError as exc:
        if "Integer exceeds" not in str(exc):
            raise
        out = orjson.dumps(_wide(value, 0), default=default)
    return bytes(memoryview(out)) if len(out) < _EXACT_BELOW else out


MAX_DEPTH = 254  # orjson's own limit when writing


def _wide(value: Any, depth: int) -> Any:
    """`value` with every integer orjson cannot write replaced by its exact text."""
    if type(value) is int:
        return value if _LOW <= value <= _HIGH else orjson.Fragment(str(value).encode())
    if depth > MAX_DEPTH and isinstance(value, dict | list | tuple):
        raise orjson.JSONEncodeError(f"Recursion limit reached (deeper than {MAX_DEPTH})")
    if isinstance(value, dict):
        return {k: _wide(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_wide(v, depth + 1) for v in value]
    return value


def key_from_json(payload: bytes | None, path: str) -> bytes | None:
    """The record key at dotted `path` of a JSON object payload; None when the
    payload is not JSON, not an object, or has no such field (or it is null)."""
    if not payload:
        return None
    try:
        node: object = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        return None
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    if node is None:
        return None
    if isinstance(node, str):
        return node.encode()
    return json.dumps(node, separators=(",", ":"), ensure_ascii=False).encode()
