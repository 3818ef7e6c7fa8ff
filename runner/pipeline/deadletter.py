"""The `x-dead-letter` header a handler failure writes on a dead letter.

Shape (TOPOLOGY.md, "dlq_policies"): reason, error {type, message,
stack_trace}, retry_count, first_attempt, last_attempt (ISO 8601 UTC), the
origin (`original_queue` / `original_exchange` / `original_routing_key`, or
`original_topic` / `original_partition` / `original_offset` plus
`original_group` so a replay goes back to the group that failed it),
`consumer_id` and `death_count`.
"""

from __future__ import annotations

import builtins
import os
import traceback
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from runner.pipeline.message import Message, QueueMessage

DEAD_LETTER_HEADER = "x-dead-letter"
REPLAY_COUNT_HEADER = "x-replay-count"


def iso_utc(ts: float | None) -> str | None:
    """Seconds since the epoch as ISO 8601 UTC, `Z`, milliseconds when not whole."""
    if ts is None:
        return None
    dt = datetime.fromtimestamp(ts, tz=UTC)
    if dt.microsecond // 1000:
        return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


def error_type(exc: BaseException) -> str:
    """The bare name for builtins, else `module.QualName`."""
    cls = type(exc)
    if cls.__module__ == "builtins" and getattr(builtins, cls.__name__, None) is cls:
        return str(cls.__name__)
    return f"{cls.__module__}.{cls.__qualname__}"


_RUNNER_FRAMES = (
    f"{os.sep}runner{os.sep}pipeline{os.sep}", f"{os.sep}asyncio{os.sep}",
    f"{os.sep}concurrent{os.sep}futures{os.sep}",
)


def stack_trace(exc: BaseException) -> str:
    """The formatted traceback of `exc`, without the runner's own frames that
    called the handler (they say nothing about the failure)."""
    te = traceback.TracebackException.from_exception(exc)
    frames = list(te.stack)
    k = 0
    while k < len(frames) - 1 and any(part in frames[k].filename for part in _RUNNER_FRAMES):
        k += 1
    te.stack = traceback.StackSummary.from_list(frames[k:])
    return "".join(te.format())


def previous_deaths(headers: Mapping[str, Any]) -> int:
    """How many times this message died before (from an old header or replays)."""
    old = headers.get(DEAD_LETTER_HEADER)
    if isinstance(old, Mapping):
        count = old.get("death_count", 1)
        return int(count) if isinstance(count, int) else 1
    replays = headers.get(REPLAY_COUNT_HEADER, 0)
    return int(replays) if isinstance(replays, int) else 0


def build_death(
    message: Message, exc: BaseException, *, retry_count: int, first_attempt: float | None,
    last_attempt: float | None, consumer_id: str, group: str | None = None,
    reason: str = "handler_error",
) -> dict[str, Any]:
    """The `x-dead-letter` value for `message` that failed with `exc`."""
    death: dict[str, Any] = {
        "reason": reason,
        "error": {
            "type": error_type(exc),
            "message": str(exc),
            "stack_trace": stack_trace(exc),
        },
        "retry_count": retry_count,
        "first_attempt": iso_utc(first_attempt),
        "last_attempt": iso_utc(last_attempt),
    }
    if isinstance(message, QueueMessage):
        death["original_queue"] = message.queue
        death["original_exchange"] = message.exchange
        death["original_routing_key"] = message.routing_key
    else:
        death["original_topic"] = message.topic
        death["original_partition"] = message.partition
        death["original_offset"] = message.offset
        if group is not None:
            death["original_group"] = group
    death["consumer_id"] = consumer_id
    death["death_count"] = previous_deaths(message.headers) + 1
    return death
