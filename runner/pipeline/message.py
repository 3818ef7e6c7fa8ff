"""The message a handler receives, and the context it publishes onward through.

A handler is called with one `QueueMessage` (from a queue consumer) or
`TopicMessage` (from a consumer group), and optionally a `Context`. The
context stages what the handler publishes; the worker applies the staged
outputs only when the handler returns normally (see docs/handlers.md).
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from runner import jsontext
from runner.engine.contract import OutMessage, OutRecord, QueueDelivery, Record
from runner.pipeline.replies import (
    CORRELATION_HEADER,
    REPLY_TO_HEADER,
    check_address,
    check_correlation_id,
    destination,
    is_private,
    reply_message,
)
from runner.pipeline.tracing import TRACEPARENT, TraceContext, of_headers
from runner.timestamps import check_timestamp_ms

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

    @property
    def reply_to(self) -> str | None:
        """Where the handler's return value goes (the `x-reply-to` header), or None."""
        return _text(self.headers.get(REPLY_TO_HEADER))

    @property
    def correlation_id(self) -> str | None:
        """The `x-correlation-id` header, echoed on the reply."""
        return _text(self.headers.get(CORRELATION_HEADER))

    @property
    def trace(self) -> TraceContext | None:
        """The W3C trace context of its `traceparent` / `tracestate` headers, or None."""
        return of_headers(self.headers)


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

    @property
    def reply_to(self) -> str | None:
        """Where the handler's return value goes (the `x-reply-to` header), or None."""
        return _text(self.headers.get(REPLY_TO_HEADER))

    @property
    def correlation_id(self) -> str | None:
        """The `x-correlation-id` header, echoed on the reply."""
        return _text(self.headers.get(CORRELATION_HEADER))

    @property
    def trace(self) -> TraceContext | None:
        """The W3C trace context of its `traceparent` / `tracestate` headers, or None."""
        return of_headers(self.headers)


Message = QueueMessage | TopicMessage


def _text(value: Any) -> str | None:
    """A header as text (a Kafka client may have sent it as bytes)."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return str(value)


class ContextClosed(RuntimeError):
    """The handler's call is over (it failed or timed out); nothing more can be staged."""


@dataclass(slots=True)
class Outputs:
    """What a handler staged: publishes through exchanges and topic appends, in order;
    and its reply: `puts` (straight into a queue) or `replies` (to a request waiting
    in this daemon, handed over in memory once the rest is settled)."""

    publishes: list[tuple[str, OutMessage]] = field(default_factory=list)
    appends: list[tuple[str, OutRecord]] = field(default_factory=list)
    puts: list[tuple[str, OutMessage]] = field(default_factory=list)
    replies: list[tuple[str, OutMessage]] = field(default_factory=list)
    call: Any = None  # the call's open spans (runner.pipeline.otel), when tracing

    def __bool__(self) -> bool:
        return bool(self.publishes or self.appends or self.puts or self.replies)

    def grouped_publishes(self) -> list[tuple[str, list[OutMessage]]]:
        return _group(self.publishes)

    def grouped_puts(self) -> list[tuple[str, list[OutMessage]]]:
        return _group(self.puts)

    def add_reply(self, address: str, message: OutMessage) -> None:
        """Stage a reply to `address` (see runner.pipeline.replies for the forms)."""
        if is_private(address):
            self.replies.append((address, message))
            return
        name, key = destination(address)
        if key is None:
            self.puts.append((name, dataclasses.replace(message, routing_key=name)))
        else:
            self.publishes.append((name, dataclasses.replace(message, routing_key=key)))

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


class Requester(Protocol):
    """Sends a request now and waits for its reply (the pipeline's, for `ctx.request`)."""

    def __call__(
        self, exchange: str, routing_key: str, body: Any, *, headers: Mapping[str, Any] | None,
        timeout_s: float,
    ) -> Awaitable[Any]: ...


class Context:
    """The second handler parameter: stage onward publishes and appends.

    Safe to call from the handler's thread. Nothing is sent until the handler
    returns normally; after a failure or timeout the staged outputs are
    discarded and further calls raise `ContextClosed`."""

    __slots__ = ("consumer", "message", "_outputs", "_lock", "_closed", "_requester", "trace",
                 "call")

    def __init__(
        self, consumer: str, message: Message, requester: Requester | None = None,
        trace: TraceContext | None = None,
    ) -> None:
        self.consumer = consumer
        self.message = message
        self._outputs = Outputs()
        self._lock = threading.Lock()
        self._closed = False
        self._requester = requester
        # where what the handler sends sits in the trace: the message's trace id,
        # the handler's span as parent (None: the message carried no trace)
        self.trace = trace
        self.call: Any = None

    def _traced(self, headers: dict[str, Any]) -> dict[str, Any]:
        if self.trace is not None and TRACEPARENT not in headers:
            self.trace.write(headers)
        return headers

    def request(
        self, exchange: str, routing_key: str, body: Any, timeout: float = 30.0,
        headers: Mapping[str, Any] | None = None,
    ) -> Awaitable[Any]:
        """Publish `body` through `exchange` NOW (not staged) with a private reply
        address and wait up to `timeout` seconds for the reply: `await` it for the
        reply's body (JSON value or bytes). Raises ReplyError (the other handler
        failed for good), ReplyTimeout, NoRoute (no binding matched).

        For `async def` handlers only: the reply is awaited on the daemon's loop,
        and a sync handler would hold a pool thread for the whole wait (the
        handlers that must answer may need those very threads)."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            raise RuntimeError(
                "ctx.request is for async handlers (async def): a sync handler runs in a "
                "pool thread, and waiting there for a reply would hold the thread (and "
                "could starve the handlers that answer); publish with ctx.publish and a "
                "reply_to instead, or make the handler async") from None
        if self._requester is None:
            raise RuntimeError("ctx.request is not available outside a running pipeline")
        if timeout <= 0:
            raise ValueError(f"timeout must be more than 0 seconds, got {timeout!r}")
        with self._lock:
            self._check_open()
        out = self._traced(dict(headers or {}))
        return self._requester(exchange, routing_key, body, headers=out, timeout_s=timeout)

    def stage_reply(self, value: Any) -> None:
        """The handler returned `value`: stage it as the reply when the message asked
        for one (TypeError when JSON cannot encode it)."""
        address = self.message.reply_to
        if address is None:
            return
        body, ctype = encode_body(value)
        reply = reply_message(body, ctype, self.message.correlation_id)
        reply = dataclasses.replace(reply, headers=self._traced(dict(reply.headers)))
        with self._lock:
            self._outputs.add_reply(address, reply)

    def publish(
        self, exchange: str, routing_key: str, body: Any, headers: Mapping[str, Any] | None = None,
        priority: int | None = None, *, reply_to: str | None = None,
        correlation_id: str | None = None,
    ) -> None:
        """Stage a publish through `exchange` (bytes as they are, else JSON). With
        `reply_to` (a queue or `exchange/routing_key`) the handler that takes the
        message sends its return value there, with `correlation_id`."""
        payload, ctype = encode_body(body)
        out = self._traced(dict(headers or {}))
        if reply_to is not None:
            out[REPLY_TO_HEADER] = check_address(reply_to)
        if correlation_id is not None:
            out[CORRELATION_HEADER] = check_correlation_id(correlation_id)
        msg = OutMessage(
            body=payload, routing_key=routing_key, headers=out, priority=priority,
            content_type=ctype,
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
        rec = OutRecord(value=payload, key=encode_key(key),
                        headers=self._traced(dict(headers or {})), timestamp_ms=ts)
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
