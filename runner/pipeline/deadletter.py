"""The `x-dead-letter` header a handler failure writes on a dead letter.

Shape (TOPOLOGY.md, "dlq_policies"): reason, error {type, message,
stack_trace}, retry_count, first_attempt, last_attempt (ISO 8601 UTC), the
origin (`original_queue` / `original_exchange` / `original_routing_key`, or
`original_topic` / `original_partition` / `original_offset` plus
`original_group` so a replay goes back to the group that failed it),
`consumer_id` and `death_count`. The header itself is built by
`death_header` (`runner.deadletter_headers`, its one home, a base module the
broker uses too): the same message gets the same header fields whichever side
writes its death; this module adds only the error.
"""

from __future__ import annotations

import builtins
import os
import traceback
from typing import Any

from runner.deadletter_headers import DEATH_HEADER as DEAD_LETTER_HEADER
from runner.deadletter_headers import REPLAY_HEADER as REPLAY_COUNT_HEADER
from runner.deadletter_headers import (
    dead_letter_id,
    death_header,
    iso_utc,
    queue_origin,
    topic_origin,
)
from runner.pipeline.message import Message, QueueMessage

__all__ = [
    "DEAD_LETTER_HEADER", "REPLAY_COUNT_HEADER", "build_death", "dead_letter_id",
    "error_type", "iso_utc", "stack_trace",
]


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


def build_death(
    message: Message, exc: BaseException, *, retry_count: int, first_attempt: float | None,
    last_attempt: float | None, consumer_id: str, group: str | None = None,
    reason: str = "handler_error",
) -> dict[str, Any]:
    """The `x-dead-letter` value for `message` that failed with `exc`."""
    if isinstance(message, QueueMessage):
        origin = queue_origin(message.queue, message.exchange, message.routing_key)
    else:
        origin = topic_origin(message.topic, message.partition, message.offset, group)
    return death_header(
        reason=reason, headers=message.headers, origin=origin,
        error={"type": error_type(exc), "message": str(exc), "stack_trace": stack_trace(exc)},
        retry_count=retry_count, first_attempt=first_attempt, last_attempt=last_attempt,
        consumer_id=consumer_id,
    )
