"""Handler counters for metrics: duration histogram, errors by type, retries.

Plain ints and floats updated on the loop thread; `snapshot()` copies them
for the metrics collector (`runner_handler_duration_seconds{consumer}`,
`runner_handler_errors_total{consumer,error_type}`,
`runner_handler_retries_total{consumer}`).
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping
from dataclasses import dataclass, field

# Prometheus' default buckets; +Inf is implied by `count`.
DURATION_BUCKETS: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)


@dataclass(frozen=True, slots=True)
class ConsumerStats:
    """One consumer's (or group's) counters at one moment."""

    buckets: tuple[tuple[float, int], ...]  # (upper bound, cumulative count); +Inf = count
    duration_sum: float
    duration_count: int
    errors: Mapping[str, int]  # error_type -> count
    retries: int
    succeeded: int
    dead_lettered: int
    dropped: int  # failures with nowhere to dead-letter (logged)
    skipped: int  # duplicates skipped by the idempotency window
    retry_waiting: int = 0  # records a group holds back until their retry is due


@dataclass(frozen=True, slots=True)
class PipelineStats:
    """Per consumer name (queue consumers and consumer groups)."""

    consumers: Mapping[str, ConsumerStats] = field(default_factory=dict)


class HandlerCounters:
    """The live counters of one consumer or group."""

    __slots__ = (
        "_bins", "duration_sum", "duration_count", "errors", "retries", "succeeded",
        "dead_lettered", "dropped", "skipped", "retry_waiting",
    )

    def __init__(self) -> None:
        self._bins = [0] * len(DURATION_BUCKETS)
        self.duration_sum = 0.0
        self.duration_count = 0
        self.errors: dict[str, int] = {}
        self.retries = 0
        self.succeeded = 0
        self.dead_lettered = 0
        self.dropped = 0
        self.skipped = 0
        self.retry_waiting = 0

    def observe(self, seconds: float) -> None:
        i = bisect.bisect_left(DURATION_BUCKETS, seconds)
        if i < len(self._bins):
            self._bins[i] += 1
        self.duration_sum += seconds
        self.duration_count += 1

    def error(self, error_type: str) -> None:
        self.errors[error_type] = self.errors.get(error_type, 0) + 1

    def snapshot(self) -> ConsumerStats:
        cumulative: list[tuple[float, int]] = []
        total = 0
        for bound, n in zip(DURATION_BUCKETS, self._bins, strict=True):
            total += n
            cumulative.append((bound, total))
        return ConsumerStats(
            buckets=tuple(cumulative), duration_sum=self.duration_sum,
            duration_count=self.duration_count, errors=dict(self.errors), retries=self.retries,
            succeeded=self.succeeded, dead_lettered=self.dead_lettered, dropped=self.dropped,
            skipped=self.skipped, retry_waiting=self.retry_waiting,
        )
