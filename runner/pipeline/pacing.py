"""Pacing: a token bucket, and handlers paced by it (`rate_limit: 200/s`).

A `TokenBucket` holds up to one second's worth of tokens (at least one) and
refills continuously at `rate` per second. Taking `n` tokens succeeds when the
bucket holds `min(n, capacity)`; it may then go below zero (a debt the next
takers wait out), so a batch larger than the burst is admitted once the bucket
is full and the long-run rate still holds. A refused take changes nothing and
says how long to wait. Time is a number passed in (the caller's injected
clock), so the bucket is tested with a manual clock.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

_EPSILON = 1e-9


@dataclass(slots=True)
class TokenBucket:
    """Tokens refilled at `rate` a second up to `capacity` (one second's worth)."""

    rate: float
    capacity: float
    tokens: float
    stamp: float  # monotonic seconds of the last refill

    @classmethod
    def full(cls, rate: float, now: float) -> TokenBucket:
        """A full bucket for `rate` per second (bursts up to one second's worth)."""
        if rate <= 0:
            raise ValueError(f"a rate must be more than 0; got {rate}")
        capacity = max(1.0, rate)
        return cls(rate=rate, capacity=capacity, tokens=capacity, stamp=now)

    def _refill(self, now: float) -> None:
        # no min(): this runs before every paced call and every limited publish
        if now > self.stamp:
            tokens = self.tokens + (now - self.stamp) * self.rate
            self.tokens = tokens if tokens < self.capacity else self.capacity
            self.stamp = now

    def take(self, now: float, n: int = 1) -> float:
        """0.0 when `n` tokens were taken; else the seconds until they could be
        (nothing taken).

        >>> b = TokenBucket.full(2.0, now=0.0)
        >>> b.take(0.0), b.take(0.0), b.take(0.0)
        (0.0, 0.0, 0.5)
        >>> b.take(0.5)
        0.0
        """
        self._refill(now)
        tokens = self.tokens
        need = n if n < self.capacity else self.capacity
        if tokens + _EPSILON >= need:
            self.tokens = tokens - n
            return 0.0
        return (need - tokens) / self.rate

    def is_full(self, now: float) -> bool:
        """Whether the bucket is full at `now` (an idle producer's bucket can go)."""
        self._refill(now)
        return self.tokens + _EPSILON >= self.capacity


class Pacer:
    """Waits before handler calls so that they run at most `rate` a second,
    across every instance of one consumer or group (they share the pacer)."""

    def __init__(
        self, rate: float, *, now: Callable[[], float],
        sleep: Callable[[float], Awaitable[bool]],
    ) -> None:
        self._now = now
        self._sleep = sleep  # False: stopped while waiting
        self._bucket = TokenBucket.full(rate, now())
        self.waited_s = 0.0  # total time calls were held back (for tests and status)

    def take(self, n: int = 1) -> bool:
        """Take `n` calls' tokens if they are there now (True), without waiting: the
        common case, with no coroutine made; else `admit` waits for them."""
        return self._bucket.take(self._now(), n) <= 0

    async def admit(self, n: int = 1) -> bool:
        """Wait until `n` calls may start; False when the wait was stopped."""
        while True:
            wait = self._bucket.take(self._now(), n)
            if wait <= 0:
                return True
            self.waited_s += wait
            if not await self._sleep(wait):
                return False
