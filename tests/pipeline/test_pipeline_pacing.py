"""The token bucket and the pacer of `rate_limit`, driven by a manual clock."""

from __future__ import annotations

import asyncio

import pytest

from runner.clock import ManualClock
from runner.pipeline.pacing import Pacer, TokenBucket


def test_a_bucket_bursts_one_seconds_worth_then_refills_at_the_rate() -> None:
    bucket = TokenBucket.full(4.0, now=0.0)
    assert [bucket.take(0.0) for _ in range(4)] == [0.0] * 4
    assert bucket.take(0.0) == pytest.approx(0.25)  # the fifth waits for one token
    assert bucket.take(0.25) == 0.0
    assert bucket.take(0.25) == pytest.approx(0.25)
    # idle for a minute: full again, never more than one second's worth
    assert [bucket.take(60.0) for _ in range(5)] == [0.0] * 4 + [pytest.approx(0.25)]


def test_a_slow_rate_still_allows_one_at_a_time() -> None:
    bucket = TokenBucket.full(0.5, now=0.0)  # 30/m: capacity one token
    assert bucket.take(0.0) == 0.0
    assert bucket.take(0.0) == pytest.approx(2.0)
    assert bucket.take(1.9) == pytest.approx(0.1)
    assert bucket.take(2.0) == 0.0


def test_a_refused_take_changes_nothing() -> None:
    bucket = TokenBucket.full(2.0, now=0.0)
    assert bucket.take(0.0, 2) == 0.0
    for _ in range(3):
        assert bucket.take(0.0) == pytest.approx(0.5)
    assert bucket.take(0.5) == 0.0


def test_a_batch_larger_than_the_burst_goes_when_full_and_the_debt_is_waited_out() -> None:
    bucket = TokenBucket.full(10.0, now=0.0)
    assert bucket.take(0.0, 30) == 0.0  # 10 in the bucket, 20 owed
    assert bucket.take(0.0) == pytest.approx(2.1)
    assert bucket.take(1.0) == pytest.approx(1.1)
    assert bucket.take(2.1) == 0.0
    # over any long stretch the rate holds: 30 + 1 + 10 * (t - 2.1) tokens by time t
    assert bucket.take(2.1, 5) == pytest.approx(0.5)


def test_a_rate_of_zero_is_refused() -> None:
    with pytest.raises(ValueError, match="more than 0"):
        TokenBucket.full(0.0, now=0.0)


def test_the_pacer_holds_calls_to_the_rate_with_the_manual_clock() -> None:
    clock = ManualClock()
    slept: list[float] = []

    async def sleep(seconds: float) -> bool:
        slept.append(seconds)
        clock.advance(seconds)
        return True

    pacer = Pacer(5.0, now=clock.monotonic, sleep=sleep)
    start = clock.monotonic()

    async def run() -> list[float]:
        times = []
        for _ in range(15):
            assert await pacer.admit()
            times.append(clock.monotonic() - start)
        return times

    times = asyncio.run(run())
    assert times[:5] == [0.0] * 5  # the burst: one second's worth
    assert times[5:] == pytest.approx([0.2 * i for i in range(1, 11)])  # then 5 a second
    assert pacer.waited_s == pytest.approx(2.0)
    assert len(slept) == 10


def test_a_pacer_stopped_while_waiting_says_so() -> None:
    clock = ManualClock()

    async def stopped(seconds: float) -> bool:
        return False

    pacer = Pacer(1.0, now=clock.monotonic, sleep=stopped)

    async def run() -> tuple[bool, bool]:
        return await pacer.admit(), await pacer.admit()

    assert asyncio.run(run()) == (True, False)


def test_the_pacer_takes_without_waiting_while_tokens_are_there_and_else_takes_none() -> None:
    clock = ManualClock()

    async def never(seconds: float) -> bool:
        raise AssertionError("take never waits")

    pacer = Pacer(2.0, now=clock.monotonic, sleep=never)
    assert [pacer.take(), pacer.take(), pacer.take()] == [True, True, False]
    assert pacer.take(0) is True and pacer.waited_s == 0.0
    clock.advance(0.25)
    assert pacer.take() is False  # half a token: a refused take leaves it there
    clock.advance(0.25)
    assert pacer.take() is True and pacer.take() is False
    clock.advance(10.0)  # full again, never above one second's worth: 2
    assert pacer.take(2) is True and pacer.take() is False
