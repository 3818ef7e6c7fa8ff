"""The topology model: frozen, typed values for every entity of TOPOLOGY.md.

Everything here is resolved: durations are float seconds, sizes are int bytes,
defaults are filled in, `topic: x` is normalised to `topics: ("x",)`. A
`Topology` is a hashable value, so diff and reload compare values. Source
positions ride along (`pos`, and `Topology.positions` for every node path) but
never take part in equality, so moving a line is not a change.

This module is pure: no YAML, no I/O. `runner.log` and `runner.broker` import
only this half of `runner.topology`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from types import MappingProxyType
from typing import Any, NamedTuple


class Position(NamedTuple):
    """Where a node starts in its source file (1-based line and column)."""

    file: str
    line: int
    column: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


NOWHERE = Position("<none>", 0, 0)


def _no_pos() -> Position:
    return NOWHERE


class ExchangeType(str, Enum):
    DIRECT = "direct"
    FANOUT = "fanout"
    TOPIC = "topic"
    HEADERS = "headers"


class Overflow(str, Enum):
    DROP_HEAD = "drop-head"
    REJECT_PUBLISH = "reject-publish"
    REJECT_PUBLISH_DLX = "reject-publish-dlx"


class Delivery(str, Enum):
    AT_MOST_ONCE = "at-most-once"
    AT_LEAST_ONCE = "at-least-once"
    EXACTLY_ONCE = "exactly-once"


class Assignment(str, Enum):
    RANGE = "range"
    ROUNDROBIN = "roundrobin"
    STICKY = "sticky"


class OffsetReset(str, Enum):
    EARLIEST = "earliest"
    LATEST = "latest"

    def out_of_range(self, log_start: int, log_end: int) -> int:
        """Where a position that is no longer in the log goes (Kafka's
        auto.offset.reset): `earliest` -> the log start, `latest` -> the log end.
        One rule for the committed position (`runner.log.groups.Groups.position`)
        and a running member's own (the pipeline's group worker), on any backend."""
        return log_end if self is OffsetReset.LATEST else log_start


class HeadersMatch(str, Enum):
    ALL = "all"
    ANY = "any"


# ---------------------------------------------------------------- topics


@dataclass(frozen=True, slots=True)
class Retention:
    """Retention of a topic partition; None means unlimited / forever."""

    time_s: float | None = 7 * 86400.0
    bytes: int | None = None


@dataclass(frozen=True, slots=True)
class Topic:
    name: str
    partitions: int = 1
    key: str | None = None  # dotted payload path used as key when none is given
    retention: Retention = Retention()
    compact: bool = False  # cleanup_policy contains "compact"
    delete: bool = True  # cleanup_policy contains "delete"
    segment_bytes: int = 64 * 1024 * 1024
    max_message_bytes: int = 1024 * 1024
    delete_retention_s: float = 86_400.0  # tombstones stay this long after compaction
    publish_rate: float | None = None  # per producer, per second; None: unlimited
    pos: Position = field(default=NOWHERE, compare=False, hash=False)

    @property
    def cleanup_policy(self) -> tuple[str, ...]:
        return tuple(p for p, on in (("compact", self.compact), ("delete", self.delete)) if on)


# ---------------------------------------------------------------- exchanges


@dataclass(frozen=True, slots=True)
class Exchange:
    name: str
    type: ExchangeType
    durable: bool = True
    internal: bool = False
    alternate_exchange: str | None = None
    publish_rate: float | None = None  # per producer, per second; None: unlimited
    pos: Position = field(default=NOWHERE, compare=False, hash=False)


# ---------------------------------------------------------------- queues


@dataclass(frozen=True, slots=True)
class DeadLetter:
    exchange: str
    routing_key: str | None = None  # None: the message's own key


@dataclass(frozen=True, slots=True)
class Queue:
    name: str
    durable: bool = True
    max_priority: int | None = None
    message_ttl_s: float | None = None
    max_length: int | None = None
    max_length_bytes: int | None = None
    overflow: Overflow = Overflow.DROP_HEAD
    delivery_limit: int | None = None
    single_active_consumer: bool = False
    dead_letter: DeadLetter | None = None
    publish_rate: float | None = None  # per producer, per second; None: unlimited
    pos: Position = field(default=NOWHERE, compare=False, hash=False)


# ---------------------------------------------------------------- bindings


@dataclass(frozen=True, slots=True)
class Binding:
    """exchange -> exactly one of queue | to_exchange | topic."""

    exchange: str
    queue: str | None = None
    to_exchange: str | None = None
    topic: str | None = None
    routing_key: str = ""
    match: HeadersMatch = HeadersMatch.ALL
    headers: tuple[tuple[str, str], ...] = ()  # sorted (name, value-as-string)
    pos: Position = field(default=NOWHERE, compare=False, hash=False)

    @property
    def destination(self) -> str:
        return self.queue or self.to_exchange or self.topic or ""

    @property
    def destination_kind(self) -> str:
        if self.queue is not None:
            return "queue"
        if self.to_exchange is not None:
            return "exchange"
        return "topic"


# ---------------------------------------------------------------- DLQ policies


@dataclass(frozen=True, slots=True)
class ExponentialBackoff:
    initial_s: float = 1.0
    multiplier: float = 2.0
    max_s: float = 30.0
    jitter: float = 0.0


@dataclass(frozen=True, slots=True)
class Alert:
    max_depth: int | None = None
    max_age_s: float | None = None


@dataclass(frozen=True, slots=True)
class DlqPolicy:
    name: str
    max_retries: int = 3
    # A schedule (wait before retry 1, 2, ...; the last repeats) or exponential.
    backoff: tuple[float, ...] | ExponentialBackoff = (1.0, 5.0, 30.0)
    dead_letter_queue: str | None = None  # a queue or a topic
    no_retry_on: tuple[str, ...] = ()
    alert: Alert | None = None
    pos: Position = field(default=NOWHERE, compare=False, hash=False)

    def delay_before_retry(self, attempt: int) -> float:
        """Seconds to wait before retry number `attempt` (1-based), without jitter."""
        if isinstance(self.backoff, ExponentialBackoff):
            b = self.backoff
            return float(min(b.max_s, b.initial_s * b.multiplier ** max(0, attempt - 1)))
        if not self.backoff:
            return 0.0
        return self.backoff[min(attempt, len(self.backoff)) - 1]


DEFAULT_DLQ_POLICY = DlqPolicy(name="__default__")


# ---------------------------------------------------------------- consumers


@dataclass(frozen=True, slots=True)
class Idempotency:
    key: str = "message_id"  # "message_id" or a dotted payload path
    window_s: float = 86400.0


@dataclass(frozen=True, slots=True)
class ConsumerGroup:
    name: str
    topics: tuple[str, ...]
    handler: str | None = None  # None: external group (HTTP consumers)
    instances: int = 1
    assignment: Assignment = Assignment.RANGE
    offset_reset: OffsetReset = OffsetReset.EARLIEST
    delivery: Delivery = Delivery.AT_LEAST_ONCE
    dlq_policy: str | None = None
    timeout_s: float = 300.0
    rate_limit: float | None = None  # handled messages per second, all instances; None: unlimited
    max_lag: int | None = None  # publishing to its topics is refused past this lag; None: off
    pos: Position = field(default=NOWHERE, compare=False, hash=False)


@dataclass(frozen=True, slots=True)
class Consumer:
    name: str
    queue: str
    handler: str
    concurrency: int = 1
    prefetch: int = 10  # resolved: default 10 x concurrency
    delivery: Delivery = Delivery.AT_LEAST_ONCE
    timeout_s: float = 300.0
    dlq_policy: str | None = None
    idempotency: Idempotency | None = None
    rate_limit: float | None = None  # handled messages per second, all instances; None: unlimited
    pos: Position = field(default=NOWHERE, compare=False, hash=False)


# ---------------------------------------------------------------- topology


def _no_positions() -> Mapping[str, Position]:
    return MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Topology:
    """A whole topology. Entity maps are sorted tuples of (name, entity) pairs
    so the value is hashable; use the `*_by_name` helpers for lookups."""

    version: int = 1
    name: str | None = None
    topics: tuple[tuple[str, Topic], ...] = ()
    exchanges: tuple[tuple[str, Exchange], ...] = ()
    queues: tuple[tuple[str, Queue], ...] = ()
    bindings: tuple[Binding, ...] = ()
    dlq_policies: tuple[tuple[str, DlqPolicy], ...] = ()
    consumer_groups: tuple[tuple[str, ConsumerGroup], ...] = ()
    consumers: tuple[tuple[str, Consumer], ...] = ()
    # document path ("queues.email_queue.dead_letter.exchange") -> position
    positions: Mapping[str, Position] = field(
        default_factory=_no_positions, compare=False, hash=False, repr=False
    )
    # the files this topology was read from, in merge order
    files: tuple[str, ...] = field(default=(), compare=False, hash=False)
    # the `*_map()` lookups, each built on first use (a request's path asks for
    # them: building one per call cost O(entities) a request); read-only views,
    # never copied by `dataclasses.replace` (not an init field)
    _maps: dict[str, Mapping[str, Any]] = field(
        default_factory=dict, init=False, compare=False, hash=False, repr=False
    )

    def _map(self, kind: str, pairs: tuple[tuple[str, Any], ...]) -> Mapping[str, Any]:
        found = self._maps.get(kind)
        if found is None:
            found = self._maps[kind] = MappingProxyType(dict(pairs))
        return found

    def topic_map(self) -> Mapping[str, Topic]:
        return self._map("topics", self.topics)

    def exchange_map(self) -> Mapping[str, Exchange]:
        return self._map("exchanges", self.exchanges)

    def queue_map(self) -> Mapping[str, Queue]:
        return self._map("queues", self.queues)

    def policy_map(self) -> Mapping[str, DlqPolicy]:
        return self._map("policies", self.dlq_policies)

    def group_map(self) -> Mapping[str, ConsumerGroup]:
        return self._map("groups", self.consumer_groups)

    def consumer_map(self) -> Mapping[str, Consumer]:
        return self._map("consumers", self.consumers)

    def dead_letter_topics(self) -> set[str]:
        """Topics that receive dead letters: dlq_policies whose dead_letter_queue is a topic."""
        topics = self.topic_map()
        return {
            p.dead_letter_queue for _, p in self.dlq_policies
            if p.dead_letter_queue and p.dead_letter_queue in topics
        }

    def position(self, path: str) -> Position:
        """The position of a document path, or of its nearest ancestor."""
        while path:
            found = self.positions.get(path)
            if found is not None:
                return found
            cut = max(path.rfind("."), path.rfind("["))
            path = path[:cut] if cut > 0 else ""
        return self.positions.get("", NOWHERE)
