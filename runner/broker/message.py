"""Messages of the broker: what publishers hand in, what queues hold, what consumers get.

A queued message is a `__slots__` object (about 140 bytes beyond its body)
because a queue may hold millions; deliveries are NamedTuples (cheap to build,
immutable; the engine re-exports `Delivery` as `runner.engine.QueueDelivery`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

READY = 0
UNACKED = 1
DELAYED = 2
GONE = 3

# bits of a delivery tag kept for the delivery count: tag = uid << 10 | count
TAG_BITS = 10
TAG_MASK = (1 << TAG_BITS) - 1

EMPTY_HEADERS: Mapping[str, Any] = {}

# What a queued message costs in memory besides its body: its QueuedMessage, its
# routing key and props, its deque and journal slots. Measured through the daemon:
# ~230 B for a headerless message, ~580 B with two small headers; the budget counts
# 512 B (issue 17 item 3: counting bodies alone let 400,000 tiny messages take
# 1.76 GB under a 16 MiB budget).
MESSAGE_OVERHEAD = 512

# What a queued message's headers cost besides MESSAGE_OVERHEAD (issue 17: header
# bytes were not counted, so a flood of messages with big headers passed the budget).
# An estimate of CPython's objects, on the high side: measured with tracemalloc, two
# small headers take ~280 B (this says ~420), ten ~910 B (~1,450: orjson shares the
# names' objects), a 1,000-character one ~1,250 B (1,307). A dict takes at least
# 184 B (its first 5 entries), an entry 24 B beside its name and value objects.
_STR, _BYTES, _NUMBER, _LIST, _ITEM, _DICT, _ENTRY = 49, 33, 32, 56, 8, 184, 24


def headers_memory(headers: Mapping[str, Any]) -> int:
    """Bytes of memory `headers` hold (0 for none): what the memory budget counts for
    them beside MESSAGE_OVERHEAD. Headers stay in memory when a body is spilled."""
    if not headers:
        return 0
    # the usual flat headers inline (~2x faster than recursing for every name and value)
    n = _DICT
    for k, v in headers.items():
        n += _ENTRY + (_STR + (len(k) if k.isascii() else 4 * len(k)) if type(k) is str
                       else _value_memory(k))
        kind = type(v)
        if kind is str:
            n += _STR + (len(v) if v.isascii() else 4 * len(v))
        elif kind is not bool and v is not None:
            n += _value_memory(v)
    return n


def _value_memory(value: Any) -> int:
    kind = type(value)
    if kind is str:
        return _STR + (len(value) if value.isascii() else 4 * len(value))
    if kind is bool or value is None:
        return 0  # singletons
    if kind is int:
        return _NUMBER + (int(value).bit_length() >> 3)  # JSON integers of any size
    if kind is float:
        return _NUMBER
    if kind is bytes:
        return _BYTES + len(value)
    if isinstance(value, Mapping):
        return _DICT + sum(_ENTRY + _value_memory(k) + _value_memory(v)
                           for k, v in value.items())
    if isinstance(value, list | tuple):
        return _LIST + sum(_ITEM + _value_memory(v) for v in value)
    return _NUMBER  # other JSON scalars (e.g. a big-number text type)

# a queued message's (message_id, content_type[, death_queues]); None when all are absent.
# `death_queues` (dead letters only) is the broker's dead-letter cycle watch: the queues
# the message died from automatically since its last rejection. It is never a header.
Props = tuple[str | None, str | None] | tuple[str | None, str | None, tuple[str, ...]]


class Publishable(Protocol):
    """Anything with the fields of an AMQP basic.publish (engine.OutMessage fits)."""

    @property
    def body(self) -> bytes: ...
    @property
    def routing_key(self) -> str: ...
    @property
    def headers(self) -> Mapping[str, Any]: ...
    @property
    def priority(self) -> int | None: ...
    @property
    def ttl_s(self) -> float | None: ...
    @property
    def message_id(self) -> str | None: ...
    @property
    def content_type(self) -> str | None: ...


@dataclass(slots=True)
class Message:
    """A message to publish (the broker's own Publishable)."""

    body: bytes
    routing_key: str = ""
    headers: dict[str, Any] = field(default_factory=dict)
    priority: int | None = None
    ttl_s: float | None = None
    message_id: str | None = None
    content_type: str | None = None


class QueuedMessage:
    """One message in one queue.

    `uid` orders the queue and identifies the message (for a durable queue it
    is the log offset of its first publish record); `body` is the bytes, or an
    int location on disk when the body was spilled past the memory budget.
    """

    __slots__ = (
        "uid", "body", "size", "priority", "routing_key", "exchange", "headers", "props",
        "timestamp_ms", "expires_at", "delivery_count", "state", "attempts",
    )

    def __init__(
        self, uid: int, body: bytes | int, size: int, priority: int, routing_key: str,
        exchange: str, headers: Mapping[str, Any], props: Props | None,
        timestamp_ms: int, expires_at: float | None, delivery_count: int = 0,
    ) -> None:
        self.uid = uid
        self.body = body
        self.size = size
        self.priority = priority
        self.routing_key = routing_key
        self.exchange = exchange
        self.headers = headers
        self.props = props  # (message_id, content_type[, death_queues]) or None
        self.timestamp_ms = timestamp_ms
        self.expires_at = expires_at  # wall-clock seconds
        self.delivery_count = delivery_count
        self.state = READY
        # first / last delivery (wall seconds) and the consumer of the last one
        self.attempts: tuple[float, float, str] | None = None

    @property
    def owner(self) -> str | None:
        """The consumer of the latest delivery (while unacked: the one holding it)."""
        return self.attempts[2] if self.attempts else None

    @property
    def message_id(self) -> str | None:
        return self.props[0] if self.props else None

    @property
    def content_type(self) -> str | None:
        return self.props[1] if self.props else None

    @property
    def death_queues(self) -> tuple[str, ...]:
        """Queues this dead letter died from automatically since its last rejection."""
        props = self.props
        return props[2] if props is not None and len(props) == 3 else ()


class Delivery(NamedTuple):
    """A message handed to a consumer; settle it by `delivery_id`."""

    queue: str
    delivery_id: int
    body: bytes
    headers: Mapping[str, Any]
    routing_key: str
    exchange: str
    priority: int
    redelivered: bool
    delivery_count: int
    message_id: str | None
    timestamp_ms: int
    content_type: str | None


def tag_uid(tag: int) -> int:
    """The message uid inside a delivery tag."""
    return tag >> TAG_BITS
