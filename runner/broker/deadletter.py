"""Dead-lettering: the `x-dead-letter` header, cycle breaking, and replay.

A dead letter keeps its body and properties and gains one header,
`x-dead-letter` (TOPOLOGY.md): the latest death's reason, error, retry count,
first/last attempt (ISO 8601 UTC, `iso_utc`), where it came from and
`death_count` (`deaths_before` + 1, replays included). This module is the one
home of that header: `death_header` builds every one, the broker's deaths here
and the pipeline's handler failures (through `runner.engine.deadletters`).
The cycle watch is kept out of that header (in the queued message's `props`,
see `death_path`): the queues it died from automatically (not `rejected` or
`handler_error`) since its last rejection; a dead letter that would return to
one of them is a cycle and is dropped, as RabbitMQ does. Replay removes the
header and counts `x-replay-count`.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from runner.broker.message import QueuedMessage
from runner.deadletter_headers import (
    DEATH_HEADER,
    REPLAY_HEADER,
    ReplayTarget,
    previous_death,
    replay_target,
    replayed_headers,
)

__all__ = [
    "CONSUMER_REASONS", "DEATH_HEADER", "REPLAY_HEADER", "ReplayTarget", "build_death",
    "dead_letter_id", "death_header", "death_path", "deaths_before", "is_cycle", "iso_utc",
    "previous_death", "queue_origin", "replay_target", "replayed_headers", "topic_origin",
    "with_death",
]

# deaths decided by a consumer: they end a dead-letter cycle watch (RabbitMQ: `rejected`)
CONSUMER_REASONS = frozenset({"rejected", "handler_error"})


def iso_utc(seconds: float | None) -> str | None:
    """Wall-clock seconds as ISO 8601 UTC: `2024-01-15T10:00:00Z`, with
    milliseconds (`...:00.250Z`) when they are not zero (sub-millisecond parts
    are cut). The one format of every time in an `x-dead-letter` header."""
    if seconds is None:
        return None
    dt = datetime.fromtimestamp(seconds, tz=UTC)
    ms = dt.microsecond // 1000
    if ms:
        return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms:03d}Z"
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


def deaths_before(headers: Mapping[str, Any]) -> int:
    """How many times a message with these headers died before: its header's
    `death_count`, else how often it was replayed (`x-replay-count`: a replay
    removes the header and follows a death). Every `death_count` is this + 1."""
    prev = previous_death(headers)
    if prev is not None:
        count = prev.get("death_count", 1)
        return count if _is_count(count) else 1
    replays = headers.get(REPLAY_HEADER, 0)
    return replays if _is_count(replays) else 0


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def queue_origin(queue: str, exchange: str, routing_key: str) -> dict[str, Any]:
    """The origin fields of a queue message's death."""
    return {"original_queue": queue, "original_exchange": exchange,
            "original_routing_key": routing_key}


def topic_origin(
    topic: str, partition: int, offset: int, group: str | None = None,
) -> dict[str, Any]:
    """The origin fields of a topic record's death (`original_group`: the group that
    failed it, where a replay returns it)."""
    out: dict[str, Any] = {"original_topic": topic, "original_partition": partition,
                           "original_offset": offset}
    if group is not None:
        out["original_group"] = group
    return out


def death_header(
    *, reason: str, headers: Mapping[str, Any], origin: Mapping[str, Any],
    error: Mapping[str, Any] | None = None, retry_count: int = 0,
    first_attempt: float | None = None, last_attempt: float | None = None,
    consumer_id: str | None = None,
) -> dict[str, Any]:
    """The `x-dead-letter` header of a message (with these `headers`) dying now: the
    one builder of it, used by the broker (TTL, overflow, rejection, delivery
    limit) and by the pipeline (a handler failure), so both write the same
    fields in the same order, times in `iso_utc`, `death_count` from
    `deaths_before`. `origin` is `queue_origin(...)` or `topic_origin(...)`."""
    return {
        "reason": reason,
        "error": dict(error) if error is not None else None,
        "retry_count": max(0, retry_count),
        "first_attempt": iso_utc(first_attempt),
        "last_attempt": iso_utc(last_attempt),
        **origin,
        "consumer_id": consumer_id,
        "death_count": deaths_before(headers) + 1,
    }


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


def dead_letter_id(owner: str, base: str | None, death_count: object) -> str | None:
    """The message id of the dead letter that consumer or group `owner` writes for
    the message or record `base` (None: a message without an id has none):
    `<owner>:<base>`, with `~<n>` from the second death on (`death_count` n).

    Another consumer or group failing the same message or record, and a later
    death of it, get their own id, so the publish dedup window never swallows
    their dead letter; the same failure applied again (a step re-applied after
    a crash) keeps its id and is still stored once."""
    if base is None:
        return None
    mid = f"{owner}:{base}"
    if isinstance(death_count, int) and not isinstance(death_count, bool) and death_count > 1:
        mid = f"{mid}~{death_count}"
    return mid


def is_cycle(path: tuple[str, ...], target_queue: str) -> bool:
    """Would this dead letter return to a queue it died from with no rejection since?"""
    return target_queue in path
