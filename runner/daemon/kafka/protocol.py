"""The Kafka wire protocol: frames, request and response headers, message bodies.

The message bodies are the `kio` library's entities, generated from Apache
Kafka's own JSON message definitions (`clients/src/main/resources/common/
message/*.json`): this module is the only one that imports `kio`. It knows
which APIs and versions the listener serves (`SUPPORTED`), decodes a request
frame into its header and body, and encodes a response body built from plain
values (`build`), so the API modules never deal with a version's exact shape.

Frame: `int32 size` then the message. Request header v1: `int16 api_key,
int16 api_version, int32 correlation_id, nullable string client_id`; v2 (the
flexible versions of an API) adds tagged fields. Response header v0:
`int32 correlation_id`; v1 adds tagged fields (ApiVersions always answers
with v0, so that a client can read the answer of any version).
"""

from __future__ import annotations

import dataclasses
import datetime
import io
import struct
import types
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any, get_args, get_origin

from kio.index import UnknownAPIKey, UnknownEntity, load_request_schema, load_response_schema
from kio.schema.errors import ErrorCode
from kio.schema.request_header.v1.header import RequestHeader as RequestHeaderV1
from kio.schema.request_header.v2.header import RequestHeader as RequestHeaderV2
from kio.serial import entity_reader, entity_writer
from kio.serial.errors import BufferUnderflow

__all__ = ["SUPPORTED", "ErrorCode", "Frame", "ProtocolError", "Request", "build",
           "decode_request", "encode_response", "error_response", "topic_id"]

# api key -> (name, lowest version, highest version) this listener answers
SUPPORTED: Mapping[int, tuple[str, int, int]] = {
    0: ("Produce", 3, 11),
    1: ("Fetch", 4, 12),
    2: ("ListOffsets", 1, 8),
    3: ("Metadata", 0, 12),
    8: ("OffsetCommit", 2, 8),
    9: ("OffsetFetch", 1, 7),
    10: ("FindCoordinator", 0, 4),
    11: ("JoinGroup", 0, 9),
    12: ("Heartbeat", 0, 4),
    13: ("LeaveGroup", 0, 5),
    14: ("SyncGroup", 0, 5),
    15: ("DescribeGroups", 0, 5),
    16: ("ListGroups", 0, 4),
    17: ("SaslHandshake", 0, 1),
    18: ("ApiVersions", 0, 3),
    22: ("InitProducerId", 0, 4),
    36: ("SaslAuthenticate", 0, 2),
}
API_VERSIONS = 18
_HEAD = struct.Struct(">hhi")
_SIZE = struct.Struct(">i")
_TOPIC_NAMESPACE = uuid.UUID("6f1c5a0e-3b7e-4c55-9f65-1c0de7a1f00d")


class ProtocolError(Exception):
    """A frame this listener cannot answer in the protocol (the connection closes)."""


@dataclass(frozen=True, slots=True)
class Frame:
    """The fixed start of every request: enough to answer it with an error."""

    api_key: int
    api_version: int
    correlation_id: int


@dataclass(frozen=True, slots=True)
class Request:
    frame: Frame
    client_id: str | None
    body: Any  # the kio request entity of (api_key, api_version)


def topic_id(name: str) -> uuid.UUID:
    """A topic's id (Metadata v10+): stable for its name across restarts."""
    return uuid.uuid5(_TOPIC_NAMESPACE, name)


def supported(api_key: int, version: int) -> bool:
    entry = SUPPORTED.get(api_key)
    return entry is not None and entry[1] <= version <= entry[2]


def read_frame_start(data: bytes) -> Frame:
    if len(data) < _HEAD.size:
        raise ProtocolError(f"a request of {len(data)} bytes is shorter than its header")
    key, version, correlation = _HEAD.unpack_from(data)
    return Frame(key, version, correlation)


def decode_request(data: bytes, frame: Frame) -> Request:
    """The header and body of a supported request (ProtocolError when malformed)."""
    try:
        schema = load_request_schema(frame.api_key, frame.api_version)
        header_cls = RequestHeaderV2 if schema.__flexible__ else RequestHeaderV1
        header, used = _reader(header_cls)(data, 0)
        body, size = _reader(schema)(data, used)
    except (UnknownAPIKey, UnknownEntity) as exc:
        raise ProtocolError(f"no message definition: {exc}") from None
    except (BufferUnderflow, ValueError, TypeError, UnicodeDecodeError, OverflowError) as exc:
        raise ProtocolError(f"malformed {_name(frame.api_key)} v{frame.api_version} request: "
                            f"{exc}") from None
    except Exception as exc:  # the native reader's own errors: still the caller's bytes
        raise ProtocolError(f"malformed {_name(frame.api_key)} v{frame.api_version} request: "
                            f"{type(exc).__name__}: {exc}") from None
    if used + size != len(data):
        raise ProtocolError(f"malformed {_name(frame.api_key)} v{frame.api_version} request: "
                            f"{len(data) - used - size} bytes left after the body")
    return Request(frame, header.client_id, body)


def _name(api_key: int) -> str:
    return SUPPORTED.get(api_key, (f"api key {api_key}", 0, 0))[0]


@cache
def _reader(cls: type) -> Callable[[bytes, int], tuple[Any, int]]:
    return entity_reader(cls)


@cache
def _writer(cls: type) -> Callable[[io.BytesIO, Any], None]:
    return entity_writer(cls)


def response_class(api_key: int, version: int) -> type:
    return load_response_schema(api_key, version)


def encode_response(frame: Frame, body: Any) -> bytes:
    """A whole response frame: size, header (v0 or v1 by the body's schema), body."""
    out = io.BytesIO()
    out.write(b"\0\0\0\0")
    out.write(_SIZE.pack(frame.correlation_id))
    cls: type = type(body)
    if cls.__header_schema__.__version__ == 1:  # type: ignore[attr-defined]
        out.write(b"\0")  # no tagged fields
    _writer(cls)(out, body)
    data = out.getbuffer()
    _SIZE.pack_into(data, 0, len(data) - 4)
    return bytes(data)


def build(cls: type, values: Mapping[str, Any]) -> Any:
    """An entity of `cls` from plain values: names the version lacks are dropped,
    names not given take a zero value (0, "", empty, or None where nullable);
    nested entities and arrays of them are built from mappings."""
    kwargs: dict[str, Any] = {}
    for name, kind, nested, nullable, has_default in _fields(cls):
        if name in values:
            kwargs[name] = _convert(values[name], kind, nested, nullable)
        elif has_default:
            continue
        elif nullable:
            kwargs[name] = None
        elif nested is not None:
            kwargs[name] = ()
        else:
            kwargs[name] = _zero(kind)
    return cls(**kwargs)


def _convert(value: Any, kind: str | None, nested: type | None, nullable: bool) -> Any:
    if value is None:
        return None if nullable else _zero(kind)
    if nested is not None:
        if isinstance(value, Mapping):
            return build(nested, value)
        return tuple(build(nested, v) for v in value)
    if kind == "error_code":
        return ErrorCode(int(value))
    if kind in ("timedelta_i32", "timedelta_i64"):
        return datetime.timedelta(milliseconds=int(value))
    if kind == "datetime_i64":
        return datetime.datetime.fromtimestamp(int(value) / 1000, datetime.UTC)
    if isinstance(value, list):
        return tuple(value)
    return value


def _zero(kind: str | None) -> Any:
    if kind in ("string",):
        return ""
    if kind in ("bytes", "records"):
        return b""
    if kind == "bool":
        return False
    if kind == "error_code":
        return ErrorCode.none
    if kind in ("timedelta_i32", "timedelta_i64"):
        return datetime.timedelta(0)
    if kind == "uuid":
        return None
    if kind is None:
        return ()
    return 0


@cache
def _fields(cls: type) -> tuple[tuple[str, str | None, type | None, bool, bool], ...]:
    """(name, kafka type, nested entity class, nullable, has a default) per field."""
    out: list[tuple[str, str | None, type | None, bool, bool]] = []
    for f in dataclasses.fields(cls):
        kind = f.metadata.get("kafka_type")
        tp = f.type
        nullable = False
        if get_origin(tp) in (types.UnionType,) and type(None) in get_args(tp):
            nullable = True
            tp = next(a for a in get_args(tp) if a is not type(None))
        nested: type | None = None
        if get_origin(tp) is tuple:
            inner = get_args(tp)[0]
            if isinstance(inner, type) and dataclasses.is_dataclass(inner):
                nested = inner
        elif isinstance(tp, type) and dataclasses.is_dataclass(tp):
            nested = tp
        has_default = (f.default is not dataclasses.MISSING
                       or f.default_factory is not dataclasses.MISSING)
        out.append((f.name, kind, nested, nullable, has_default))
    return tuple(out)


def error_response(frame: Frame, code: int) -> bytes | None:
    """A response with `code` at its top (and in every entry of its first array
    built from the request is not possible: those stay empty), for a request
    that is understood but refused; None when the API has no such response."""
    try:
        cls = response_class(frame.api_key, frame.api_version)
    except (UnknownAPIKey, UnknownEntity):
        return None
    names = {f[0] for f in _fields(cls)}
    values: dict[str, Any] = {}
    if "error_code" in names:
        values["error_code"] = code
    if frame.api_key == API_VERSIONS:
        values["api_keys"] = api_versions()
    return encode_response(frame, build(cls, values))


def api_versions() -> list[dict[str, int]]:
    return [{"api_key": k, "min_version": lo, "max_version": hi}
            for k, (_, lo, hi) in sorted(SUPPORTED.items())]


def unsupported_api_versions(frame: Frame) -> bytes:
    """Kafka's answer to an ApiVersions request of a version it does not know:
    a v0 body with UNSUPPORTED_VERSION and the versions it does know."""
    v0 = Frame(frame.api_key, 0, frame.correlation_id)
    cls = response_class(API_VERSIONS, 0)
    return encode_response(v0, build(cls, {"error_code": ErrorCode.unsupported_version,
                                            "api_keys": api_versions()}))
