"""Publish limits per producer (`publish_rate`) with the manual clock: buckets per
destination and producer, Retry-After, the bound on remembered producers, the metric."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from runner.clock import ManualClock
from runner.daemon.ratelimit import PublishLimiter, ThrottleCollector, Throttled, producer_of
from runner.topology.load import load_text
from runner.topology.model import Topology

TOPOLOGY = """\
version: 1
exchanges:
  orders: {type: direct, publish_rate: 2/s}
  free: {type: direct}
queues:
  slow: {publish_rate: 30/m}
topics:
  clicks: {publish_rate: 100/s}
"""


def _topology() -> Topology:
    result = load_text(TOPOLOGY, filename="t.yaml", env={})
    assert result.topology is not None, result.problems
    return result.topology


def _admit(limiter: PublishLimiter, kind: str, name: str, producer: str, n: int = 1) -> None:
    limiter.admit(kind, name, limiter.rate_of(_topology(), kind, name), producer, n)


def test_each_producer_has_its_own_bucket_per_destination() -> None:
    clock = ManualClock()
    limiter = PublishLimiter(clock)
    _admit(limiter, "exchange", "orders", "addr:a", 2)
    with pytest.raises(Throttled) as refused:
        _admit(limiter, "exchange", "orders", "addr:a")
    assert str(refused.value) == (
        "exchange 'orders' takes at most 2/s from one producer (publish_rate); "
        "1 message refused, none stored: retry in 1s"
    )
    assert refused.value.retry_after_s == 1 and refused.value.accepted == 0
    _admit(limiter, "exchange", "orders", "addr:b", 2)  # another producer: its own bucket
    _admit(limiter, "topic", "clicks", "addr:a", 100)  # another destination: its own bucket
    for _ in range(1000):
        _admit(limiter, "exchange", "free", "addr:a")  # no publish_rate: never limited
    clock.advance(0.5)
    _admit(limiter, "exchange", "orders", "addr:a")  # half a second: one token back
    assert limiter.throttled == {("exchange", "orders"): 1}


def test_retry_after_is_whole_seconds_rounded_up() -> None:
    clock = ManualClock()
    limiter = PublishLimiter(clock)
    _admit(limiter, "queue", "slow", "addr:a")
    clock.advance(0.5)
    with pytest.raises(Throttled) as refused:  # 30/m: the next token in 1.5s
        _admit(limiter, "queue", "slow", "addr:a")
    assert refused.value.retry_after_s == 2
    assert "queue 'slow' takes at most 30/m from one producer" in str(refused.value)
    clock.advance(1.5)
    _admit(limiter, "queue", "slow", "addr:a")


def test_a_batch_takes_one_token_per_message_and_is_refused_whole() -> None:
    clock = ManualClock()
    limiter = PublishLimiter(clock)
    _admit(limiter, "topic", "clicks", "addr:a", 60)
    with pytest.raises(Throttled, match="50 records refused, none stored: retry in 1s"):
        _admit(limiter, "topic", "clicks", "addr:a", 50)
    _admit(limiter, "topic", "clicks", "addr:a", 40)  # the refused batch took nothing


def test_the_producer_is_the_token_digest_or_else_the_address() -> None:
    assert producer_of("Bearer s3cret", "10.0.0.1") == producer_of("bearer  s3cret ", "10.0.0.2")
    assert producer_of("Bearer s3cret", None).startswith("token:")
    assert "s3cret" not in producer_of("Bearer s3cret", None)
    assert producer_of("Bearer other", None) != producer_of("Bearer s3cret", None)
    assert producer_of(None, "10.0.0.1") == "addr:10.0.0.1"
    assert producer_of("Basic abc", "10.0.0.1") == "addr:10.0.0.1"


def test_remembered_producers_are_bounded_idle_ones_go_first() -> None:
    clock = ManualClock()
    limiter = PublishLimiter(clock, max_producers=3)
    _admit(limiter, "exchange", "orders", "addr:busy", 2)
    _admit(limiter, "exchange", "orders", "addr:b")
    _admit(limiter, "exchange", "orders", "addr:c")
    clock.advance(10)  # every bucket is full again
    _admit(limiter, "exchange", "orders", "addr:busy", 2)  # busy's is empty: must be kept
    _admit(limiter, "exchange", "orders", "addr:d")  # a fourth: the full ones (b, c) go
    assert len(limiter) == 2
    with pytest.raises(Throttled):  # busy's debt was not forgotten
        _admit(limiter, "exchange", "orders", "addr:busy")
    for i in range(100):
        _admit(limiter, "exchange", "orders", f"addr:x{i}", 2)
    assert len(limiter) == 3


def test_the_metric_has_a_series_per_limited_destination_from_the_start() -> None:
    clock = ManualClock()
    limiter = PublishLimiter(clock)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ThrottleCollector(limiter, _topology))
    sample = registry.get_sample_value
    name = "runner_publish_throttled_total"
    assert sample(name, {"kind": "exchange", "name": "orders"}) == 0
    assert sample(name, {"kind": "queue", "name": "slow"}) == 0
    assert sample(name, {"kind": "topic", "name": "clicks"}) == 0
    assert sample(name, {"kind": "exchange", "name": "free"}) is None
    _admit(limiter, "exchange", "orders", "addr:a", 2)
    for _ in range(3):
        with pytest.raises(Throttled):
            _admit(limiter, "exchange", "orders", "addr:a")
    assert sample(name, {"kind": "exchange", "name": "orders"}) == 3
