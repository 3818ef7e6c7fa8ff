"""Injected time: the real clock and a manual one for tests.

TTL, retention, backoff, leases and debounce read time through a `Clock` so
tests drive them with `ManualClock.advance` instead of `sleep`.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from typing import Protocol


class Clock(Protocol):
    def time(self) -> float:
        """Wall-clock seconds since the Unix epoch (for timestamps)."""
        ...

    def monotonic(self) -> float:
        """Seconds from an arbitrary origin that never goes back (for timeouts)."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait `seconds` of this clock's time (a retry's backoff, a pacer's wait)."""
        ...


class SystemClock:
    """The real clock."""

    __slots__ = ()

    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


class ManualClock:
    """A clock that moves only when told to.

    `sleep` waits until `advance` moves the clock past its deadline (the
    sleeper wakes on the loop it slept on, also when `advance` runs on
    another thread); `sleepers` says how many wait."""

    __slots__ = ("_now", "_mono", "_sleepers", "_seq")

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self._now = now
        self._mono = 1000.0
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def time(self) -> float:
        return self._now

    def monotonic(self) -> float:
        return self._mono

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("a clock never goes back")
        self._now += seconds
        self._mono += seconds
        while self._sleepers and self._sleepers[0][0] <= self._mono:
            fut = heapq.heappop(self._sleepers)[2]
            fut.get_loop().call_soon_threadsafe(_wake, fut)

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._mono + seconds, next(self._seq), fut))
        await fut

    @property
    def sleepers(self) -> int:
        """How many `sleep` calls wait for the clock to move."""
        return sum(1 for *_, fut in self._sleepers if not fut.done())


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():  # a cancelled sleeper stays cancelled
        fut.set_result(None)


def now_ms(clock: Clock) -> int:
    """Milliseconds since the epoch (Kafka's timestamp unit)."""
    return int(clock.time() * 1000)
