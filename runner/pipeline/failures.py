"""Failure log lines of a worker: one structured line per failure, storms rate-limited.

A handler that raises and outputs that cannot be applied (`ctx.publish` to an
exchange that does not exist...) are logged the same way: the consumer or
group, where the message came from (message id, or topic/partition/offset),
the error type and message. Identical failures (same consumer, stage and
error type) within `window_s` after a logged one are only counted; the next
line of that kind says how many were not logged (`repeated`), so a storm of
50,000 failures writes a few lines, not 50,000.
"""

from __future__ import annotations

import logging
from typing import Any

from runner.clock import Clock
from runner.pipeline.deadletter import error_type
from runner.pipeline.message import Message, QueueMessage

log = logging.getLogger("runner.pipeline.worker")

WINDOW_S = 10.0
MAX_KINDS = 1000  # distinct (stage, error type) kept per worker; older ones forgotten

STAGES = {
    "handler": ("handler_failed", "handler failed"),
    "outputs": ("outputs_failed", "applying the handler's outputs failed"),
}


def origin(message: Message) -> dict[str, Any]:
    """Where a message came from, as log fields."""
    if isinstance(message, QueueMessage):
        return {"queue": message.queue, "message_id": message.message_id,
                "delivery_id": message.delivery_id}
    return {"topic": message.topic, "partition": message.partition, "offset": message.offset,
            "message_id": message.message_id}


def _where(fields: dict[str, Any]) -> str:
    if "topic" in fields:
        return f"topic {fields['topic']} partition {fields['partition']} offset {fields['offset']}"
    return f"queue {fields['queue']} message {fields['message_id'] or fields['delivery_id']}"


class FailureLog:
    """The failure lines of one consumer or group."""

    def __init__(self, consumer: str, clock: Clock, window_s: float = WINDOW_S) -> None:
        self.consumer = consumer
        self.clock = clock
        self.window_s = window_s
        # (stage, error type) -> [monotonic time of the last line, failures not logged since]
        self._kinds: dict[tuple[str, str], list[float]] = {}

    def report(self, stage: str, exc: BaseException, message: Message | None) -> bool:
        """Log the failure, or count it when an identical one was logged within the
        window; whether a line was written."""
        kind = error_type(exc)
        key = (stage, kind)
        now = self.clock.monotonic()
        seen = self._kinds.get(key)
        if seen is not None and now - seen[0] < self.window_s:
            seen[1] += 1
            return False
        repeated = int(seen[1]) if seen is not None else 0
        if seen is None and len(self._kinds) >= MAX_KINDS:
            self._kinds.pop(next(iter(self._kinds)))
        self._kinds[key] = [now, 0]
        event, what = STAGES[stage]
        fields: dict[str, Any] = {"event": event, "consumer": self.consumer, "stage": stage,
                                  "error_type": kind, "error": str(exc)}
        where = ""
        if message is not None:
            fields.update(origin(message))
            where = f" ({_where(fields)})"
        more = ""
        if repeated:
            fields["repeated"] = repeated
            more = f" [{repeated} more like it in the last {self.window_s:g}s not logged]"
        log.warning("consumer %s: %s: %s: %s%s%s", self.consumer, what, kind, exc, where, more,
                    extra=fields)
        return True
