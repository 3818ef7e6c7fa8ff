"""`runner.daemon.remote.fetch_burst`, the RabbitMQ daemon's pull: what is buffered at
once; with nothing buffered, the first delivery within the wait and, woken by it, the
rest of its burst within the linger (the daemon's I/O thread buffers deliveries one
by one: answered on the first wake-up, a pull of 2 got 1)."""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable
from typing import Any

from runner.daemon.remote import fetch_burst
from runner.engine.contract import Event


class _Subscription:
    def __init__(self, owner: _Buffer) -> None:
        self._owner = owner

    def close(self) -> None:
        self._owner.callbacks.clear()


class _Buffer:
    """A backend's buffered deliveries and its QUEUE_READY events, nothing else."""

    def __init__(self, *ready: str) -> None:
        self.buffered: collections.deque[str] = collections.deque(ready)
        self.callbacks: list[Callable[[Event], None]] = []
        self.fetches = 0

    def subscribe(self, events: Any, callback: Callable[[Event], None]) -> _Subscription:
        self.callbacks.append(callback)
        self.event = next(iter(events))
        return _Subscription(self)

    def fetch(self, queue: str, n: int, *, lease_s: float, consumer_id: str) -> list[str]:
        self.fetches += 1
        return [self.buffered.popleft() for _ in range(min(n, len(self.buffered)))]

    def arrive(self, delivery: str) -> None:  # the I/O thread buffered one
        self.buffered.append(delivery)
        for callback in list(self.callbacks):
            callback(self.event)


def _pull(buffer: _Buffer, n: int, arrivals: list[tuple[float, str]], *, wait_s: float = 2.0,
          linger_s: float = 0.3) -> tuple[list[Any], float]:
    async def scenario() -> tuple[list[Any], float]:
        loop = asyncio.get_running_loop()
        for at, delivery in arrivals:
            loop.call_later(at, buffer.arrive, delivery)
        t0 = time.monotonic()
        got = await fetch_burst(buffer, "q", n, lease_s=10, consumer_id="c",  # type: ignore[arg-type]
                                wait_s=wait_s, linger_s=linger_s)
        return got, time.monotonic() - t0

    return asyncio.run(scenario())


def test_what_is_buffered_is_answered_at_once() -> None:
    got, _ = _pull(_Buffer("a", "b"), 5, [(0.05, "c")])
    assert got == ["a", "b"]  # no wait for more: "c" would have joined


def test_woken_by_a_delivery_the_pull_takes_the_rest_of_its_burst() -> None:
    got, _ = _pull(_Buffer(), 5, [(0.05, "a"), (0.06, "b"), (0.08, "c"), (1.5, "late")])
    assert got == ["a", "b", "c"]  # not "late": past the linger


def test_without_the_linger_the_burst_is_split() -> None:  # what the linger is for
    got, _ = _pull(_Buffer(), 5, [(0.05, "a"), (0.06, "b")], linger_s=0.0)
    assert got == ["a"]


def test_a_pull_that_has_all_it_asked_for_does_not_linger() -> None:
    got, took = _pull(_Buffer(), 2, [(0.05, "a"), (0.07, "b"), (0.09, "c")], linger_s=1.0)
    assert got == ["a", "b"] and took < 0.5


def test_a_pull_with_nothing_arriving_answers_empty_after_the_wait() -> None:
    got, took = _pull(_Buffer(), 2, [], wait_s=0.1)
    assert got == [] and 0.09 < took < 1.0
