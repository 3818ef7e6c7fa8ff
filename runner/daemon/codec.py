"""The HTTP codec: JSON request bodies to the contract's values, its answers to JSON.

Inputs and outputs are `runner.engine.contract` values (OutMessage, OutRecord,
QueueDelivery, Record), whatever the backend. The messages and records built
here carry a dict of their own as `headers` (a fresh one per item): the HTTP
layer writes the request's trace context into it (`runner.daemon.traced`).

Every function here is pure and raises `BadInput` (HTTP 400) or `TooLarge`
(HTTP 413) with a sentence naming the offending field, so the HTTP layer never
has to guess what went wrong. `body`/`value` carry any JSON value (stored as
compact JSON text, content type `application/json`); `body_b64`/`value_b64`
carry raw bytes.

Header values are JSON in the headers' tagged form (`runner.header_values`,
the one header codec): a value is any JSON value, except that a one-key
object with a `$` key is a tag: `{"$b64": "..."}` bytes, `{"$tuple": [...]}` a
tuple, `{"$dict": [[k, v], ...]}` a dict with odd keys. Answers write header
values the same way, so what a request sends comes back as sent.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson

from runner import jsontext
from runner.engine.contract import OutMessage, OutRecord, QueueDelivery, Record
from runner.errors import InvalidRequest, TooLarge
from runner.header_values import HEADER_TYPES, encode_headers, tag_value, untag_value
from runner.pipeline import replies
from runner.pipeline.replies import CORRELATION_HEADER, REPLY_TO_HEADER
from runner.timestamps import check_timestamp_ms
from runner.topology import units

JSON_CONTENT_TYPE = "application/json"


_LARGE_HINT = (
    "store the payload elsewhere (a file or object store) and send a reference to it instead"
)


class BadInput(InvalidRequest):
    """A request body or query that does not have the expected shape (HTTP 400)."""


@dataclass(frozen=True, slots=True)
class Limits:
    """Size limits applied before anything is stored."""

    max_message_bytes: int = 1024 * 1024
    max_fanout: int = 100_000  # message copies one publish request may create


def parse_duration(text: object, field: str, prefix: str = "") -> float:
    """Seconds in a request's duration string like `250ms`, `30s`, `1h30m` (the
    topology's grammar, `runner.topology.units`), at most MAX_REQUEST_DURATION_S."""
    if not isinstance(text, str) or not text:
        raise BadInput(
            f"{prefix}'{field}' must be a duration string like \"30s\", got {_show(text)}"
        )
    if text == "forever" or not units.DURATION_RE.fullmatch(text):
        raise BadInput(
            f"{prefix}'{field}' must be a duration string like \"30s\" or \"250ms\", "
            f"got {_show(text)}"
        )
    try:
        seconds = units.parse_duration(text, max_s=units.MAX_REQUEST_DURATION_S)
    except ValueError as exc:
        raise BadInput(f"{prefix}'{field}': {exc}") from exc
    assert seconds is not None
    return seconds


T = TypeVar("T")

MAX_DEPTH = 254  # the deepest JSON orjson writes back (and so the daemon can store)
MAX_ITEMS = 10_000  # messages or records in one request


def decode_json(raw: bytes) -> Any:
    """The JSON value of a request body; BadInput when it nests deeper than MAX_DEPTH."""
    if not raw.strip():
        raise BadInput("the request body is empty; send a JSON object")
    try:
        value = jsontext.loads(raw)
    except ValueError as exc:
        raise BadInput(f"the request body is not valid JSON: {exc}") from exc
    # nesting deeper than the limit needs more than 2 * MAX_DEPTH bracket bytes; writing
    # the value back is the check (orjson.dumps stops past MAX_DEPTH; ~20x cheaper than loads)
    if len(raw) > 2 * MAX_DEPTH:
        try:
            jsontext.dumps(value)
        except orjson.JSONEncodeError as exc:
            raise BadInput(
                f"the request body nests JSON deeper than {MAX_DEPTH} levels; "
                "flatten the payload or send it as 'body_b64'/'value_b64' bytes"
            ) from exc
    return value


def check_count(items: list[Any], noun: str) -> None:
    """TooLarge when a batch holds more than MAX_ITEMS items (every array of a request:
    messages, records, delivery ids, offsets)."""
    if len(items) > MAX_ITEMS:
        raise TooLarge(
            f"the batch holds {len(items)} {noun}, over the limit of {MAX_ITEMS} a request; "
            "split it into smaller batches"
        )


def require_object(value: Any, what: str = "the request body") -> dict[str, Any]:
    if not isinstance(value, dict):
        raise BadInput(f"{what} must be a JSON object, got {_kind(value)}")
    return value


def _show(value: object) -> str:
    text = jsontext.dumps(value).decode() if _jsonable(value) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _jsonable(value: object) -> bool:
    try:
        jsontext.dumps(value)
    except TypeError:
        return False
    return True


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _where(index: int | None, noun: str) -> str:
    return f"{noun} {index}: " if index is not None else ""


def _check_keys(item: Mapping[str, Any], allowed: frozenset[str], prefix: str) -> None:
    unknown = sorted(set(item) - allowed)
    if unknown:
        raise BadInput(
            f"{prefix}unknown field '{unknown[0]}' (known fields: {', '.join(sorted(allowed))})"
        )


def check_fields(obj: Mapping[str, Any], allowed: frozenset[str]) -> None:
    """BadInput naming the first field of `obj` that is not in `allowed`."""
    _check_keys(obj, allowed, "")


def _payload(
    item: Mapping[str, Any], name: str, prefix: str, *, null_is_none: bool
) -> tuple[bytes | None, str | None]:
    """(bytes, content type) from `name` (any JSON) or `name_b64` (raw bytes)."""
    b64 = f"{name}_b64"
    has_json, has_raw = name in item, b64 in item
    if has_json and has_raw:
        raise BadInput(f"{prefix}give either '{name}' or '{b64}', not both")
    if has_raw:
        raw = item[b64]
        if not isinstance(raw, str):
            raise BadInput(f"{prefix}'{b64}' must be a base64 string, got {_kind(raw)}")
        try:
            return base64.b64decode(raw, validate=True), None
        except (binascii.Error, ValueError) as exc:
            raise BadInput(f"{prefix}'{b64}' is not valid base64") from exc
    if not has_json:
        raise BadInput(f"{prefix}missing field '{name}' (any JSON value) or '{b64}' (base64 bytes)")
    value = item[name]
    if value is None and null_is_none:
        return None, None
    return jsontext.dumps(value), JSON_CONTENT_TYPE


def _headers(item: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    headers = item.get("headers", {})
    if headers is None:
        return {}
    if not isinstance(headers, dict):
        raise BadInput(f"{prefix}'headers' must be a JSON object, got {_kind(headers)}")
    if _untagged(headers):
        return headers
    out = {}
    for name, value in headers.items():
        try:
            out[name] = untag_value(value)
        except (ValueError, TypeError) as exc:  # binascii.Error is a ValueError
            raise BadInput(
                f"{prefix}header '{name}': a malformed tag ({exc}); tags are "
                '{"$b64": "<base64>"}, {"$tuple": [...]}, {"$dict": [[key, value], ...]}'
            ) from exc
    return out


def _untagged(headers: Mapping[str, Any]) -> bool:
    """No value of `headers` is an object or array (so none holds a tag)."""
    return all(type(v) is not dict and type(v) is not list for v in headers.values())


_PLAIN_TYPES = frozenset((str, int, float, bool, type(None)))


def headers_json(headers: Mapping[str, Any]) -> dict[str, Any]:
    """Header values in the tagged JSON form (bytes as `{"$b64": ...}`, ...)."""
    if all(type(v) in _PLAIN_TYPES for v in headers.values()):
        return headers if type(headers) is dict else dict(headers)
    return {name: tag_value(value) for name, value in headers.items()}


MAX_INT = 2**63 - 1  # the largest integer the engine stores (ids, offsets, timestamps)


def check_int(value: object, where: str, *, low: int = 0, high: int = MAX_INT) -> int:
    """The one integer check of the API: `value` as an int in [low, high], else BadInput
    naming the field (`where`), the allowed range and the value as written."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadInput(f"{where} must be an integer between {low} and {high}, got {_show(value)}")
    if not low <= value <= high:
        raise BadInput(f"{where} must be an integer between {low} and {high}, got {value}")
    return value


def _optional_int(
    item: Mapping[str, Any], name: str, prefix: str, *, low: int, high: int = MAX_INT
) -> int | None:
    value = item.get(name)
    return None if value is None else check_int(value, f"{prefix}'{name}'", low=low, high=high)


def _optional_str(item: Mapping[str, Any], name: str, prefix: str) -> str | None:
    value = item.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise BadInput(f"{prefix}'{name}' must be a string, got {_kind(value)}")
    return value


def headers_bytes(headers: Mapping[str, Any]) -> int:
    """What a message's or record's headers count toward the size limits: each name's
    UTF-8 bytes plus its value as a record stores it (text raw, other values as JSON)."""
    if not headers:
        return 0
    return sum(len(h.encode()) + len(v) for h, v in encode_headers(headers)
               if h != HEADER_TYPES)  # the user's headers, not the types header


def _check_message_size(body: bytes, headers: Mapping[str, Any], limit: int,
                        prefix: str) -> None:
    """TooLarge when the body, or the body with its headers, passes --max-message-bytes."""
    _check_size(len(body), limit, prefix, "(--max-message-bytes)")
    size = len(body) + headers_bytes(headers)
    if size > limit:
        raise TooLarge(
            f"{prefix}the message is {size} bytes with its headers, over the limit of "
            f"{limit} bytes (--max-message-bytes); {_LARGE_HINT}"
        )


def check_record_size(rec: OutRecord, limits: Limits, topic_limit: int, where: str) -> None:
    """TooLarge when key + value + headers pass the smaller of --max-message-bytes and
    the topic's max_message_bytes (`record` checked the value alone)."""
    if not rec.key and not rec.headers:
        return
    size = len(rec.value or b"") + len(rec.key or b"") + headers_bytes(rec.headers)
    if size <= min(limits.max_message_bytes, topic_limit):
        return
    if topic_limit < limits.max_message_bytes:
        over = f"the topic's max_message_bytes of {topic_limit} bytes"
    else:
        over = f"the limit of {limits.max_message_bytes} bytes (--max-message-bytes)"
    raise TooLarge(
        f"{where}the record is {size} bytes with its key and headers, over {over}; "
        f"{_LARGE_HINT}"
    )


def _check_size(size: int, limit: int, prefix: str, where: str) -> None:
    if size > limit:
        raise TooLarge(
            f"{prefix}the payload is {size} bytes, over the limit of {limit} bytes {where}; "
            f"{_LARGE_HINT}"
        )


_MESSAGE_KEYS = frozenset(
    {"routing_key", "body", "body_b64", "headers", "priority", "ttl", "message_id", "reply_to",
     "correlation_id"}
)


_FAST_KEYS = frozenset({"routing_key", "body", "headers", "priority", "message_id"})
_MISSING = object()


def _fast_message(item: Any, limits: Limits, default_key: str | None) -> OutMessage | None:
    """The common well-formed message without building error prefixes; None: validate fully."""
    if type(item) is not dict or not _FAST_KEYS.issuperset(item):
        return None
    key = item.get("routing_key", default_key)
    body = item.get("body", _MISSING)
    priority = item.get("priority")
    headers = item.get("headers")
    message_id = item.get("message_id")
    if (
        type(key) is not str
        or body is _MISSING
        or not (priority is None or (type(priority) is int and 0 <= priority <= 255))
        or not (headers is None or (type(headers) is dict and _untagged(headers)))
        or not (message_id is None or (type(message_id) is str and message_id[:2] != "__"))
    ):
        return None
    data = jsontext.dumps(body)
    if len(data) + (headers_bytes(headers) if headers else 0) > limits.max_message_bytes:
        return None  # the full path names what is too large
    return OutMessage(
        body=data, routing_key=key, headers=headers if headers is not None else {},
        priority=priority, message_id=message_id, content_type=JSON_CONTENT_TYPE,
    )


def message(
    item: Any, *, index: int | None, limits: Limits, default_key: str | None
) -> OutMessage:
    """One message of `POST /v1/exchanges|queues/{name}/messages`."""
    fast = _fast_message(item, limits, default_key)
    if fast is not None:
        return fast
    prefix = _where(index, "message")
    obj = require_object(item, f"{prefix.rstrip(': ') or 'the message'}")
    _check_keys(obj, _MESSAGE_KEYS, prefix)
    if "routing_key" in obj:
        key = obj["routing_key"]
        if not isinstance(key, str):
            raise BadInput(f"{prefix}'routing_key' must be a string, got {_kind(key)}")
    elif default_key is None:
        raise BadInput(f"{prefix}missing field 'routing_key' (a string; \"\" is allowed)")
    else:
        key = default_key
    body, content_type = _payload(obj, "body", prefix, null_is_none=False)
    assert body is not None
    headers = _reply_headers(obj, _headers(obj, prefix), prefix)
    _check_message_size(body, headers, limits.max_message_bytes, prefix)
    ttl = obj.get("ttl")
    return OutMessage(
        body=body,
        routing_key=key,
        headers=headers,
        priority=_optional_int(obj, "priority", prefix, low=0, high=255),
        ttl_s=None if ttl is None else parse_duration(ttl, "ttl", prefix),
        message_id=_message_id(obj, prefix),
        content_type=content_type,
    )


def _reply_headers(obj: Mapping[str, Any], headers: dict[str, Any], prefix: str) -> dict[str, Any]:
    """`reply_to` and `correlation_id` (request-reply) ride in the message's headers."""
    try:
        if obj.get("reply_to") is not None:
            headers[REPLY_TO_HEADER] = replies.check_address(obj["reply_to"])
        if obj.get("correlation_id") is not None:
            headers[CORRELATION_HEADER] = replies.check_correlation_id(obj["correlation_id"])
    except ValueError as exc:
        raise BadInput(f"{prefix}{exc}") from None
    return headers


def _message_id(obj: Mapping[str, Any], prefix: str) -> str | None:
    """The message id; ids starting with `__` belong to the engine (the ids it gives a
    step's outputs), so a producer's id can never be taken for one of them."""
    mid = _optional_str(obj, "message_id", prefix)
    if mid is not None and mid.startswith("__"):
        raise BadInput(
            f"{prefix}'message_id' {_show(mid)} starts with \"__\", which is reserved for "
            "the engine's own ids; choose another id"
        )
    return mid


def _batch(body: Any, noun: str, parse: Callable[[Any, int | None], T]) -> tuple[list[T], bool]:
    """The items of a request that is one item or `{"<noun>s": [...]}`, and whether it
    was a batch; `parse(item, index)` checks one (index None for a single item)."""
    obj = require_object(body)
    plural = f"{noun}s"
    if plural not in obj:
        return [parse(obj, None)], False
    items = obj[plural]
    if not isinstance(items, list):
        raise BadInput(f"'{plural}' must be an array of {plural}, got {_kind(items)}")
    if len(obj) > 1:
        other = sorted(k for k in obj if k != plural)[0]
        raise BadInput(f"a batch holds only '{plural}'; unexpected field '{other}'")
    check_count(items, plural)
    return [parse(item, i) for i, item in enumerate(items)], True


def messages(
    body: Any, *, limits: Limits, default_key: str | None
) -> tuple[list[OutMessage], bool]:
    """The messages of a publish request and whether it was a batch."""
    return _batch(
        body, "message",
        lambda item, i: message(item, index=i, limits=limits, default_key=default_key),
    )


_RECORD_KEYS = frozenset({"key", "key_b64", "value", "value_b64", "headers", "partition",
                          "timestamp", "reply_to", "correlation_id"})


def record(
    item: Any, *, index: int | None, limits: Limits, topic_limit: int
) -> OutRecord:
    """One record of `POST /v1/topics/{name}/records`."""
    prefix = _where(index, "record")
    obj = require_object(item, f"{prefix.rstrip(': ') or 'the record'}")
    _check_keys(obj, _RECORD_KEYS, prefix)
    key: bytes | None = None
    if "key" in obj and "key_b64" in obj:
        raise BadInput(f"{prefix}give either 'key' or 'key_b64', not both")
    if obj.get("key") is not None:
        raw_key = obj["key"]
        if not isinstance(raw_key, str):
            raise BadInput(f"{prefix}'key' must be a string, got {_kind(raw_key)}")
        key = raw_key.encode()
    elif obj.get("key_b64") is not None:
        raw = obj["key_b64"]
        if not isinstance(raw, str):
            raise BadInput(f"{prefix}'key_b64' must be a base64 string, got {_kind(raw)}")
        try:
            key = base64.b64decode(raw, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise BadInput(f"{prefix}'key_b64' is not valid base64") from exc
    value, _ = _payload(obj, "value", prefix, null_is_none=True)
    if value is not None:
        limit = min(limits.max_message_bytes, topic_limit)
        where = (
            "(the topic's max_message_bytes)"
            if topic_limit < limits.max_message_bytes
            else "(--max-message-bytes)"
        )
        _check_size(len(value), limit, prefix, where)
    return OutRecord(
        value=value,
        key=key,
        headers=_reply_headers(obj, _headers(obj, prefix), prefix),
        partition=_optional_int(obj, "partition", prefix, low=0),
        timestamp_ms=None if obj.get("timestamp") is None else check_timestamp_ms(
            obj["timestamp"], f"{prefix}'timestamp'"),
    )


def records(body: Any, *, limits: Limits, topic_limit: int) -> tuple[list[OutRecord], bool]:
    """The records of an append request and whether it was a batch."""
    return _batch(
        body, "record",
        lambda item, i: record(item, index=i, limits=limits, topic_limit=topic_limit),
    )


def int_field(
    obj: Mapping[str, Any], name: str, *, default: int | None = None, low: int = 0,
    high: int = MAX_INT,
) -> int:
    """A required (or defaulted) integer field of a JSON object."""
    if name not in obj or obj[name] is None:
        if default is None:
            raise BadInput(f"missing field '{name}' (an integer)")
        return default
    return check_int(obj[name], f"'{name}'", low=low, high=high)


def str_field(obj: Mapping[str, Any], name: str) -> str:
    value = obj.get(name)
    if value is None:
        raise BadInput(f"missing field '{name}' (a string)")
    if not isinstance(value, str):
        raise BadInput(f"'{name}' must be a string, got {_kind(value)}")
    return value


def bool_field(obj: Mapping[str, Any], name: str, *, default: bool) -> bool:
    value = obj.get(name, default)
    if not isinstance(value, bool):
        raise BadInput(f"'{name}' must be true or false, got {_show(value)}")
    return value


def delivery_ids(obj: Mapping[str, Any]) -> list[int]:
    """The `delivery_ids` array (integers between 0 and MAX_INT)."""
    ids = obj.get("delivery_ids")
    if ids is None:
        raise BadInput("missing field 'delivery_ids' (an array of integers)")
    if not isinstance(ids, list):
        raise BadInput(f"'delivery_ids' must be an array of integers, got {_kind(ids)}")
    check_count(ids, "delivery_ids")
    return [check_int(value, f"'delivery_ids[{i}]'") for i, value in enumerate(ids)]


def query_int(
    query: Mapping[str, str], name: str, *, default: int | None, low: int = 0,
    high: int = MAX_INT,
) -> int:
    """An integer query parameter."""
    text = query.get(name)
    if text is None:
        if default is None:
            raise BadInput(f"query parameter '{name}' is required (an integer)")
        return default
    value: object = int(text) if _DECIMAL.fullmatch(text) else text
    return check_int(value, f"query parameter '{name}'", low=low, high=high)


_DECIMAL = re.compile(r"-?[0-9]+")


# ------------------------------------------------------------------ answers


def _payload_out(data: bytes | None, json_content: bool, name: str) -> dict[str, Any]:
    if data is None:
        return {name: None}
    if json_content:
        # stored as JSON text by this codec or the pipeline: embed it without re-parsing
        return {name: orjson.Fragment(data)}
    return {f"{name}_b64": base64.b64encode(data).decode()}


def _looks_json(data: bytes | None) -> bool:
    if data is None:
        return False
    try:
        orjson.loads(data)
    except orjson.JSONDecodeError:
        return False
    return True


def reply_json(body: bytes, content_type: str | None, headers: Mapping[str, Any]) -> dict[str, Any]:
    """A reply as a `?wait=` publish answers it: `body` (JSON) or `body_b64`, `headers`."""
    out = _payload_out(body, content_type == JSON_CONTENT_TYPE, "body")
    out["headers"] = headers_json(headers)
    return out


def delivery_json(d: QueueDelivery) -> dict[str, Any]:
    """A delivery as the HTTP API shows it."""
    body = d.body
    out: dict[str, Any] = {"delivery_id": d.delivery_id}
    if d.content_type == JSON_CONTENT_TYPE:
        # stored as JSON text by this codec or the pipeline: embedded without re-parsing
        out["body"] = orjson.Fragment(body)
    else:
        out["body_b64"] = base64.b64encode(body).decode()
    out["headers"] = headers_json(d.headers)
    out["priority"] = d.priority
    out["redelivered"] = d.redelivered
    out["delivery_count"] = d.delivery_count
    out["routing_key"] = d.routing_key
    out["exchange"] = d.exchange
    out["message_id"] = d.message_id
    out["timestamp"] = d.timestamp_ms
    headers = d.headers
    if REPLY_TO_HEADER in headers:  # a request: where its reply goes
        out["reply_to"] = headers[REPLY_TO_HEADER]
    if CORRELATION_HEADER in headers:
        out["correlation_id"] = headers[CORRELATION_HEADER]
    return out


def record_json(r: Record) -> dict[str, Any]:
    out: dict[str, Any] = {"offset": r.offset}
    if r.key is None:
        out["key"] = None
    else:
        try:
            out["key"] = r.key.decode()
        except UnicodeDecodeError:
            out["key"] = None
            out["key_b64"] = base64.b64encode(r.key).decode()
    out.update(_payload_out(r.value, _looks_json(r.value), "value"))  # parsed once to decide
    out.update(headers=headers_json(r.headers), timestamp=r.timestamp_ms,
               partition=r.partition)
    return out
