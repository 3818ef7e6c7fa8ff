"""Injected time: the real clock and a manual one for tests.

TTL, retention, backoff, leases and debounce read time through a `Clock` so
tests drive them with `ManualClock.advance` instead of `sleep`.
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def time(self) -> float:
        """Wall-clock seconds since the Unix epoch (for timestamps)."""
        ...

    def monotonic(self) -> float:
        """Seconds from an arbitrary origin that never goes back (for timeouts)."""
        ...


class SystemClock:
    """The real clock."""

    __slots__ = ()

    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()


class ManualClock:
    """A clock that moves only when told to."""

    __slots__ = ("_now", "_mono")

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self._now = now
        self._mono = 1000.0

    def time(self) -> float:
        return self._now

    def monotonic(self) -> float:
        return self._mono

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("a clock never goes back")
        self._now += seconds
        self._mono += seconds


def now_ms(clock: Clock) -> int:
    """Milliseconds since the epoch (Kafka's timestamp unit)."""
    return int(clock.time() * 1000)
