"""Dead-lettering: the `x-dead-letter` header, cycle breaking, and replay.

A dead letter keeps its body and properties and gains one header,
`x-dead-letter` (TOPOLOGY.md): the latest death's reason, error, retry count,
first/last attempt (ISO 8601 UTC, `iso_utc`), where it came from and
`death_count` (`deaths_before` + 1, replays included). The header's one
builder, `death_header`, and its vocabulary live in the base module
`runner.deadletter_headers` (re-exported here): the broker's deaths here and
the pipeline's handler failures write the same fields.
The cycle watch is kept out of that header (in the queued message's `props`,
see `death_path`): the queues it died from automatically (not `rejected` or
`handler_error`) since its last rejection; a dead letter that would return to
one of them is a cycle and is dropped, as RabbitMQ does. Replay removes the
header and counts `x-replay-count`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from runner.broker.message import QueuedMessage
from runner.deadletter_headers import (
    DEATH_HEADER,
    REPLAY_HEADER,
    ReplayTarget,
    dead_letter_id,
    death_header,
    deaths_before,
    iso_utc,
    previous_death,
    queue_origin,
    replay_target,
    replayed_headers,
    topic_origin,
)

__all__ = [
    "CONSUMER_REASONS", "DEATH_HEADER", "REPLAY_HEADER", "ReplayTarget", "build_death",
    "dead_letter_id", "death_header", "death_path", "deaths_before", "is_cycle", "iso_utc",
    "previous_death", "queue_origin", "replay_target", "replayed_headers", "topic_origin",
    "with_death",
]

# deaths decided by a consumer: they end a dead-letter cycle watch (RabbitMQ: `rejected`)
CONSUMER_REASONS = frozenset({"rejected", "handler_error"})


def build_death(
    msg: QueuedMessage, *, queue: str, reason: str, given: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The `x-dead-letter` header for `msg` dying in `queue` now (`death_header`).

    A caller's ready-made `given` header (a handler error with its stack trace,
    from `death_header` too) wins field by field; the broker fills what it leaves
    out and always sets `death_count`.
    """
    attempts = msg.attempts
    death = death_header(
        reason=reason, headers=msg.headers,
        origin=queue_origin(queue, msg.exchange, msg.routing_key),
        retry_count=msg.delivery_count - 1,
        first_attempt=attempts[0] if attempts else None,
        last_attempt=attempts[1] if attempts else None, consumer_id=msg.owner,
    )
    count = death["death_count"]
    if given:
        death.update(given)
    death["reason"] = death.get("reason") or reason
    death["death_count"] = count
    death.pop("death_queues", None)  # where older versions kept the cycle watch
    return death


def death_path(msg: QueuedMessage, *, queue: str, reason: str) -> tuple[str, ...]:
    """The cycle watch of `msg` dying in `queue` for `reason` (its final reason):
    the queues it died from automatically since its last rejection (a consumer's
    decision resets it)."""
    if reason in CONSUMER_REASONS:
        return ()
    path = msg.death_queues
    return path if queue in path else (*path, queue)


def with_death(headers: Mapping[str, Any], death: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(headers)
    out[DEATH_HEADER] = dict(death)
    return out


def is_cycle(path: tuple[str, ...], target_queue: str) -> bool:
    """Would this dead letter return to a queue it died from with no rejection since?"""
    return target_queue in path
