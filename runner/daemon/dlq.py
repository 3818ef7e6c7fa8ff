"""The DLQ tools for callers still holding the raw `Engine` (the HTTP API's
handlers in `runner.daemon.http`, which has not moved onto the contract yet).

The tools themselves are on the engine contract in `runner.daemon.dlq_ops`
(the console calls them there with its backend); each function here wraps the
engine as the contract's `EmbeddedBackend` and runs them, with the same
answers, errors and durability. Delete this module once `http` passes its
backend.
"""

from __future__ import annotations

from typing import Any

from runner.daemon import dlq_ops
from runner.daemon.dlq_ops import (
    LEASE_S,
    NOT_A_DEAD_LETTER,
    PAGE,
    REPLAY_MESSAGE_ID,
    TOOL_CONSUMER,
    check_replay_target,
    check_replay_to,
    death,
)
from runner.engine import Engine, Record
from runner.engine.embedded import EmbeddedBackend
from runner.topology.model import Topology

__all__ = [
    "LEASE_S", "NOT_A_DEAD_LETTER", "PAGE", "REPLAY_MESSAGE_ID", "TOOL_CONSUMER",
    "check_replay_target", "check_replay_to", "death", "forget_settled", "purge",
    "purge_topic", "replay_to", "replay_topic", "topic_letters", "topic_positions",
    "topic_summary",
]


def backend_of(engine: Engine) -> EmbeddedBackend:
    """The engine through the contract (no fanout cap: the tools' steps never had one)."""
    return EmbeddedBackend(engine)


async def purge(engine: Engine, queue: str) -> int:
    return await dlq_ops.purge(backend_of(engine), queue)


def replay_to(engine: Engine, topology: Topology, source: str, dest: str, n: int) -> int:
    return dlq_ops.replay_to(backend_of(engine), topology, source, dest, n)


def topic_positions(engine: Engine, topic: str) -> list[dict[str, Any]]:
    return dlq_ops.topic_positions(backend_of(engine), topic)


def topic_summary(engine: Engine, topic: str, now_ms: int) -> dict[str, Any]:
    return dlq_ops.topic_summary(backend_of(engine), topic, now_ms)


def topic_letters(engine: Engine, topic: str, n: int) -> list[Record]:
    return dlq_ops.topic_letters(backend_of(engine), topic, n)


def purge_topic(engine: Engine, topic: str) -> int:
    return dlq_ops.purge_topic(backend_of(engine), topic)


def forget_settled(engine: Engine, topic: str) -> None:
    dlq_ops.forget_settled(backend_of(engine), topic)


def replay_topic(engine: Engine, topology: Topology, topic: str, n: int,
                 to: str | None = None) -> dict[str, Any]:
    return dlq_ops.replay_topic(backend_of(engine), topology, topic, n, to)
