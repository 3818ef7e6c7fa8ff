"""The message a handler receives, and the context it publishes onward through.

A handler is called with one `QueueMessage` (from a queue consumer) or
`TopicMessage` (from a consumer group), and optionally a `Context`. The
context stages what the handler publishes; the worker applies the staged
outputs only when the handler returns normally (see docs/handlers.md).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from runner import jsontext
from runner.engine import OutMessage, OutRecord, QueueDelivery, Record, check_timestamp_ms

JSON_CONTENT_TYPE = "application/json"

T = TypeVar("T")


def decode_body(payload: bytes | None) -> Any:
    """The JSON value of `payload` when it is JSON text, else the bytes themselves."""
    if payload is None:
        return None
    try:
        return jsontext.loads(payload)
    except ValueError:
        return payload


def encode_body(body: Any) -> tuple[bytes, str | None]:
    """Bytes pass through untouched; any other value is sent as compact JSON."""
    if isinstance(body, bytes | bytearray | memoryview):
        return bytes(body), None
    try:
        return jsontext.dumps(body), JSON_CONTENT_TYPE
    except TypeError as exc:
        raise TypeError(f"cannot encode {type(body).__name__} as JSON: {exc}") from exc


def encode_key(key: Any) -> bytes | None:
    """A record key: str as UTF-8, bytes as they are, anything else as compact JSON."""
    if key is None:
        return None
    if isinstance(key, str):
        return key.encode()
    if isinstance(key, bytes | bytearray | memoryview):
        return bytes(key)
    return jsontext.dumps(key)


@dataclass(frozen=True, slots=True)
class QueueMessage:
    """A message delivered from a queue."""

    body: Any
    payload: bytes
    headers: Mapping[str, Any]
    message_id: str | None
    redelivered: bool
    delivery_count: int
    queue: str
    exchange: str
    routing_key: str
    priority: int
    timestamp: int
    delivery_id: int

    @classmethod
    def from_delivery(cls, d: QueueDelivery) -> QueueMessage:
        return cls(
            body=decode_body(d.body), payload=d.body, headers=dict(d.headers),
            message_id=d.message_id, redelivered=d.redelivered,
            delivery_count=d.delivery_count, queue=d.queue, exchange=d.exchange,
            routing_key=d.routing_key, priority=d.priority, timestamp=d.timestamp_ms,
            delivery_id=d.delivery_id,
        )


@dataclass(frozen=True, slots=True)
class TopicMessage:
    """A record delivered from a topic partition to a consumer group.

    `message_id` is the record's `x-message-id` (or `message_id`) header when
    it has one, else `topic/partition/offset` (stable across retries and replays)."""

    body: Any
    payload: bytes | None
    headers: Mapping[str, Any]
    message_id: str | None
    redelivered: bool
    delivery_count: int
    topic: str
    partition: int
    offset: int
    key: bytes | None
    timestamp: int

    @classmethod
    def from_record(
        cls, r: Record, *, delivery_count: int = 1, redelivered: bool = False
    ) -> TopicMessage:
        mid = r.headers.get("x-message-id", r.headers.get("message_id"))
        return cls(
            body=decode_body(r.value), payload=r.value, headers=dict(r.headers),
            message_id=str(mid) if mid is not None else f"{r.topic}/{r.partition}/{r.offset}",
            redelivered=redelivered, delivery_count=delivery_count, topic=r.topic,
            partition=r.partition, offset=r.offset, key=r.key, timestamp=r.timestamp_ms,
        )


Message = QueueMessage | TopicMessage


class ContextClosed(RuntimeError):
    """The handler's call is over (it failed or timed out); nothing more can be staged."""


@dataclass(slots=True)
class Outputs:
    """What a handler staged: publishes through exchanges and topic appends, in order."""

    publishes: list[tuple[str, OutMessage]] = field(default_factory=list)
    appends: list[tuple[str, OutRecord]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.publishes or self.appends)

    def grouped_publishes(self) -> list[tuple[str, list[OutMessage]]]:
        return _group(self.publishes)

    def grouped_appends(self) -> list[tuple[str, list[OutRecord]]]:
        return _group(self.appends)


def _group(items: list[tuple[str, T]]) -> list[tuple[str, list[T]]]:
    """Consecutive items to the same destination as one batch (order is kept)."""
    out: list[tuple[str, list[T]]] = []
    for name, item in items:
        if out and out[-1][0] == name:
            out[-1][1].append(item)
        else:
            out.append((name, [item]))
    return out


class Context:
    """The second handler parameter: stage onward publishes and appends.

    Safe to call from the handler's thread. Nothing is sent until the handler
    returns normally; after a failure or timeout the staged outputs are
    discarded and further calls raise `ContextClosed`."""

    __slots__ = ("consumer", "message", "_outputs", "_lock", "_closed")

    def __init__(self, consumer: str, message: Message) -> None:
        self.consumer = consumer
        self.message = message
        self._outputs = Outputs()
        self._lock = threading.Lock()
        self._closed = False

    def publish(
        self, exchange: str, routing_key: str, body: Any, headers: Mapping[str, Any] | None = None,
        priority: int | None = None,
    ) -> None:
        """Stage a publish through `exchange` (bytes as they are, else JSON)."""
        payload, ctype = encode_body(body)
        msg = OutMessage(
            body=payload, routing_key=routing_key, headers=dict(headers or {}),
            priority=priority, content_type=ctype,
        )
        with self._lock:
            self._check_open()
            self._outputs.publishes.append((exchange, msg))

    def append(
        self, topic: str, value: Any, key: Any = None, headers: Mapping[str, Any] | None = None,
        timestamp: int | None = None,
    ) -> None:
        """Stage an append to `topic`; `value=None` is a tombstone. `timestamp`: the
        record's time in epoch milliseconds (default: the append time); a bad one
        raises InvalidRequest here."""
        ts = None if timestamp is None else check_timestamp_ms(timestamp)
        payload = None if value is None else encode_body(value)[0]
        rec = OutRecord(value=payload, key=encode_key(key), headers=dict(headers or {}),
                        timestamp_ms=ts)
        with self._lock:
            self._check_open()
            self._outputs.appends.append((topic, rec))

    def _check_open(self) -> None:
        if self._closed:
            raise ContextClosed(f"the call of consumer {self.consumer!r} is over")

    def close(self) -> Outputs:
        """End the call: return what was staged and refuse anything more."""
        with self._lock:
            self._closed = True
            out, self._outputs = self._outputs, Outputs()
            return out
