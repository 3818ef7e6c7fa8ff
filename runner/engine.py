"""The embedded engine: one object that opens `log/` and `broker/` for a Topology.

CONTRACT (written first so that the daemon, the pipeline and the engine can be
built in parallel; implementation fills in the bodies, signatures stay):

* Plain synchronous code with a single owner (the daemon's asyncio loop, or a
  test). No async API, no locks in the hot path.
* Everything takes and returns batches.
* Errors are the `runner.errors` tree: NotFound (404), InvalidRequest (400),
  Forbidden (403), Conflict (409), TooLarge (413), Refused (429, with
  `accepted` / `routed`), UnsafeChange (reload refused), OffsetOutOfRange.
* Durability: when `publish`, `publish_to_queue`, `append`, `ack`, `commit`
  or `commit_step` return, their effects are as durable as the fsync policy
  promises (`always`: fsynced, many callers may share one fsync inside a
  batch; `interval`: fsynced within a few ms by `tick`/a flusher; `never`: OS).
* `tick()` is called by the owner every ~50-100 ms: message TTL expiry,
  lease expiry (redelivery), delayed retries coming due, group member
  session timeouts, retention and compaction scheduling, interval fsync.
* Counters for metrics are plain ints read at scrape time via `stats()`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, NamedTuple

from runner.clock import Clock, SystemClock
from runner.topology.model import Topology


class FsyncPolicy(str, Enum):
    ALWAYS = "always"
    INTERVAL = "interval"
    NEVER = "never"


class TopicPartition(NamedTuple):
    topic: str
    partition: int


# ------------------------------------------------------------------ inputs


@dataclass(slots=True)
class OutMessage:
    """A message to publish through an exchange or straight into a queue."""

    body: bytes
    routing_key: str = ""
    headers: dict[str, Any] = field(default_factory=dict)
    priority: int | None = None
    ttl_s: float | None = None  # per-message TTL (AMQP `expiration`)
    message_id: str | None = None  # dedup within the engine's window when set
    content_type: str | None = None  # "application/json" when body is JSON text


@dataclass(slots=True)
class OutRecord:
    """A record to append to a topic."""

    value: bytes | None  # None: a tombstone
    key: bytes | None = None  # None: the topic's `key` field from a JSON value, else keyless
    headers: dict[str, Any] = field(default_factory=dict)
    partition: int | None = None  # explicit partition, else partitioner
    timestamp_ms: int | None = None  # default: now
    producer_id: str | None = None  # idempotent producer: (producer_id, sequence)
    sequence: int | None = None


# ------------------------------------------------------------------ outputs


@dataclass(frozen=True, slots=True)
class Record:
    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    headers: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class QueueDelivery:
    """A message handed to a consumer; settle it with ack / nack / retry / dead_letter."""

    queue: str
    delivery_id: int  # unique per queue for the life of the data dir
    body: bytes
    headers: Mapping[str, Any]
    routing_key: str
    exchange: str  # "" when published straight to the queue
    priority: int
    redelivered: bool
    delivery_count: int  # 1 on first delivery
    message_id: str | None
    timestamp_ms: int
    content_type: str | None


@dataclass(frozen=True, slots=True)
class PartitionInfo:
    partition: int
    log_start_offset: int
    log_end_offset: int
    size_bytes: int


@dataclass(frozen=True, slots=True)
class GroupPartition:
    topic: str
    partition: int
    committed: int | None  # None: never committed
    position: int  # committed, else the reset position
    log_end_offset: int
    lag: int
    member: str | None


@dataclass(frozen=True, slots=True)
class GroupInfo:
    name: str
    members: tuple[str, ...]
    partitions: tuple[GroupPartition, ...]


@dataclass(frozen=True, slots=True)
class QueueInfo:
    name: str
    ready: int
    unacked: int
    delayed: int  # waiting for a retry delay
    oldest_ready_age_s: float  # 0 when empty


# ------------------------------------------------------------------ atomic step


@dataclass(slots=True)
class Step:
    """One durable unit for exactly-once: all of it happens or none of it.

    `acks`: queue deliveries to ack; `commits`: group offsets to commit (next
    offset to read); `publishes`: (exchange, messages) to route; `queue_puts`:
    (queue, messages) straight into queues; `appends`: (topic, records).
    """

    acks: list[tuple[str, int]] = field(default_factory=list)
    commits: list[tuple[str, TopicPartition, int]] = field(default_factory=list)
    publishes: list[tuple[str, list[OutMessage]]] = field(default_factory=list)
    queue_puts: list[tuple[str, list[OutMessage]]] = field(default_factory=list)
    appends: list[tuple[str, list[OutRecord]]] = field(default_factory=list)


# ------------------------------------------------------------------ counters


@dataclass(slots=True)
class QueueStats:
    ready: int = 0
    unacked: int = 0
    published: int = 0
    delivered: int = 0
    acked: int = 0
    redelivered: int = 0
    rejected_publishes: int = 0
    dead_lettered: dict[str, int] = field(default_factory=dict)  # reason -> count
    oldest_ready_age_s: float = 0.0


@dataclass(slots=True)
class EngineStats:
    """A snapshot for the metrics collector (cheap: copies of plain ints)."""

    topic_records: dict[str, int] = field(default_factory=dict)
    partitions: dict[TopicPartition, PartitionInfo] = field(default_factory=dict)
    group_committed: dict[tuple[str, TopicPartition], int] = field(default_factory=dict)
    group_lag: dict[tuple[str, TopicPartition], int] = field(default_factory=dict)
    group_members: dict[str, int] = field(default_factory=dict)
    exchange_published: dict[str, int] = field(default_factory=dict)
    exchange_unroutable: dict[str, int] = field(default_factory=dict)
    queues: dict[str, QueueStats] = field(default_factory=dict)


class Engine:
    """The embedded engine for one Topology in one data directory."""

    topology: Topology

    @classmethod
    def open(
        cls,
        topology: Topology,
        data_dir: Path,
        *,
        fsync: FsyncPolicy = FsyncPolicy.ALWAYS,
        clock: Clock | None = None,
        memory_budget_bytes: int = 256 * 1024 * 1024,
        disk_budget_bytes: int | None = None,
    ) -> Engine:
        """Open (recovering) the data dir and declare everything in `topology`."""
        raise NotImplementedError

    def __init__(self) -> None:  # pragma: no cover - replaced by the implementation
        self.clock: Clock = SystemClock()

    # -------------------------------------------------------------- lifecycle
    def apply(self, new: Topology, *, force: bool = False) -> list[str]:
        """Apply a new topology as one step; returns a line per applied change.
        Raises UnsafeChange (nothing applied) for what TOPOLOGY.md calls unsafe."""
        raise NotImplementedError

    def tick(self) -> None:
        """Time-driven work; see the module docstring."""
        raise NotImplementedError

    def flush(self) -> None:
        """fsync everything written so far (used at shutdown and by `interval`)."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    # -------------------------------------------------------------- producing
    def publish(self, exchange: str, messages: Sequence[OutMessage]) -> list[list[str]]:
        """Route through an exchange; per message the queue/topic names it reached.
        Forbidden for internal exchanges, NotFound for unknown ones, Refused
        (accepted=i, routed=...) at the first message some destination refuses."""
        raise NotImplementedError

    def publish_to_queue(self, queue: str, messages: Sequence[OutMessage]) -> list[list[str]]:
        """AMQP's default exchange: straight into one queue."""
        raise NotImplementedError

    def append(self, topic: str, records: Sequence[OutRecord]) -> list[tuple[int, int]]:
        """Append records; returns (partition, offset) per record.
        InvalidRequest for a keyless record on a compacted topic, TooLarge over
        max_message_bytes, NotFound for an unknown topic or partition."""
        raise NotImplementedError

    # -------------------------------------------------------------- topics
    def read(
        self, topic: str, partition: int, offset: int, *, max_records: int = 100,
        max_bytes: int = 1024 * 1024,
    ) -> tuple[list[Record], int]:
        """Records from `offset` on, and the next offset to read.
        OffsetOutOfRange below the log start offset."""
        raise NotImplementedError

    def offset_for_time(self, topic: str, partition: int, timestamp_ms: int) -> int:
        raise NotImplementedError

    def partitions(self, topic: str) -> list[PartitionInfo]:
        raise NotImplementedError

    # -------------------------------------------------------------- groups
    def join(self, group: str, member_id: str) -> None:
        raise NotImplementedError

    def leave(self, group: str, member_id: str) -> None:
        raise NotImplementedError

    def heartbeat(self, group: str, member_id: str) -> None:
        raise NotImplementedError

    def assignment(self, group: str, member_id: str) -> list[TopicPartition]:
        raise NotImplementedError

    def position(self, group: str, tp: TopicPartition) -> int:
        """The committed offset, else the group's reset position."""
        raise NotImplementedError

    def commit(self, group: str, offsets: Mapping[TopicPartition, int]) -> None:
        raise NotImplementedError

    def seek(
        self, group: str, tp: TopicPartition, *, offset: int | None = None,
        timestamp_ms: int | None = None,
    ) -> int:
        raise NotImplementedError

    def group_info(self, group: str) -> GroupInfo:
        raise NotImplementedError

    # -------------------------------------------------------------- queues
    def pull(
        self, queue: str, max_messages: int, *, lease_s: float, consumer_id: str,
    ) -> list[QueueDelivery]:
        """Deliver up to `max_messages` ready messages under a lease; an expired
        lease redelivers. Expired (TTL) messages are dead-lettered, not delivered."""
        raise NotImplementedError

    def ack(self, queue: str, delivery_ids: Sequence[int]) -> list[int]:
        """Ack; returns the ids that were unknown or expired (the known ones settle)."""
        raise NotImplementedError

    def nack(self, queue: str, delivery_ids: Sequence[int], *, requeue: bool) -> list[int]:
        """Requeue in place (redelivered) or dead-letter with reason `rejected`."""
        raise NotImplementedError

    def retry_later(self, queue: str, delivery_id: int, delay_s: float) -> None:
        """Settle now and make the message ready again after `delay_s` without
        blocking the messages behind it (delivery_count kept)."""
        raise NotImplementedError

    def dead_letter(
        self, queue: str, delivery_id: int, *, reason: str, death: Mapping[str, Any],
        to_queue: str | None = None, to_topic: str | None = None,
    ) -> None:
        """Settle and dead-letter with the `x-dead-letter` header `death`, through
        the queue's dead_letter exchange, or into `to_queue` / `to_topic` (a
        DLQ policy's dead_letter_queue)."""
        raise NotImplementedError

    def peek(self, queue: str, n: int) -> list[QueueDelivery]:
        raise NotImplementedError

    def replay(self, queue: str, max_messages: int | None = None) -> int:
        """Dead letters in `queue` back to where they died (see TOPOLOGY.md)."""
        raise NotImplementedError

    def queue_info(self, queue: str) -> QueueInfo:
        raise NotImplementedError

    # -------------------------------------------------------------- exactly-once
    def commit_step(self, step: Step) -> None:
        """Apply `step` as one durable unit (see `Step`)."""
        raise NotImplementedError

    # -------------------------------------------------------------- metrics
    def stats(self) -> EngineStats:
        raise NotImplementedError
