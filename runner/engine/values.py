"""The engine's contract values: what callers hand in, what they get back, the counters.

Where the broker already has a value with the same fields (a message to
publish, a queue's info and counters) the engine re-exports it rather than
defining a twin; the rest are the engine's own frozen values.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from runner.broker.message import Delivery as QueueDelivery
from runner.broker.message import Message as OutMessage
from runner.broker.results import QueueInfo
from runner.engine.contract import BackendStats as EngineStats
from runner.engine.contract import (
    FsyncPolicy,
    GroupInfo,
    GroupPartition,
    PartitionInfo,
    QueueStats,
    Record,
    ReplayOutcome,
    TopicPartition,
)

__all__ = [
    "EngineStats", "FsyncPolicy", "GroupInfo", "GroupPartition", "OutMessage", "OutRecord",
    "PartitionInfo", "QueueDelivery", "QueueInfo", "QueueStats", "Record", "ReplayOutcome",
    "Step", "TopicPartition",
]




# ------------------------------------------------------------------ inputs
# OutMessage (a message to publish through an exchange or straight into a
# queue) is the broker's Message: body, routing_key, headers, priority, ttl_s
# (AMQP `expiration`), message_id (dedup within the engine's window when set),
# content_type ("application/json" when the body is JSON text).


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



# QueueDelivery (a message handed to a consumer; settle it with ack / nack /
# retry / dead_letter) is the broker's Delivery NamedTuple, returned by `pull`
# as the broker built it: queue, delivery_id (unique per queue for the life of
# the data dir), body, headers, routing_key, exchange ("" when published
# straight to the queue), priority, redelivered, delivery_count (1 on first
# delivery), message_id, timestamp_ms, content_type.






# QueueInfo (name, ready, unacked, delayed: waiting for a retry delay,
# oldest_ready_age_s: 0 when empty) is the broker's own.


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

    def extend(self, other: Step) -> None:
        """Add everything `other` does to this step."""
        self.acks.extend(other.acks)
        self.commits.extend(other.commits)
        self.publishes.extend(other.publishes)
        self.queue_puts.extend(other.queue_puts)
        self.appends.extend(other.appends)


# ------------------------------------------------------------------ counters
# EngineStats is the contract's BackendStats, QueueStats the contract's: the
# engine's snapshot (runner.engine.snapshots) copies the broker's QueueCounters
# into them.
