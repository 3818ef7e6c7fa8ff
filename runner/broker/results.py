"""Values the broker returns: routes refused mid-batch, queue info, counters, replays."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from runner.broker.deadletter import ReplayTarget
from runner.broker.message import Message
from runner.broker.routing import Route
from runner.errors import Refused


class PublishRefused(Refused):
    """A batch publish stopped at message `accepted`; `routes` are those stored before it."""

    def __init__(self, message: str, *, accepted: int, routed: tuple[str, ...],
                 routes: list[Route]) -> None:
        super().__init__(message, accepted=accepted, routed=routed)
        self.routes = routes


@dataclass(frozen=True, slots=True)
class QueueInfo:
    name: str
    ready: int
    unacked: int
    delayed: int
    oldest_ready_age_s: float


@dataclass(slots=True)
class QueueCounters:
    ready: int = 0
    unacked: int = 0
    delayed: int = 0
    published: int = 0
    delivered: int = 0
    acked: int = 0
    redelivered: int = 0
    rejected_publishes: int = 0
    dead_lettered: dict[str, int] = field(default_factory=dict)
    oldest_ready_age_s: float = 0.0
    dead_letter_loops: int = 0  # dead letters dropped by the hop guard (dlx.MAX_HOPS)


@dataclass(slots=True)
class BrokerStats:
    exchange_published: dict[str, int] = field(default_factory=dict)
    exchange_unroutable: dict[str, int] = field(default_factory=dict)
    queues: dict[str, QueueCounters] = field(default_factory=dict)
    dead_letters_dropped: int = 0  # no dead-letter exchange, or nowhere to go
    dead_letter_cycles: int = 0  # dropped to break a dead-letter cycle
    dead_letter_loops: int = 0  # dropped by the hop guard (also per queue in `queues`)


@dataclass(frozen=True, slots=True)
class TopicLetter:
    """A replayed dead letter of a topic record: the caller hands it back to its group."""

    target: ReplayTarget
    message: Message
    death: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class ReplayResult:
    replayed: int  # dead letters put back into their queue
    topic_letters: tuple[TopicLetter, ...] = ()
    # dead letters left in place because their queue would not keep them: why -> count
    refused: Mapping[str, int] = field(default_factory=dict)
