"""Publish limits: `publish_rate: N/s` per producer on exchanges, queues and topics.

A producer is its bearer token when it sends one (a digest of it is kept,
never the token), else its client address: every producer gets its own token
bucket per destination (`runner.pipeline.pacing.TokenBucket`, bursts up to one
second's worth). A request of n messages takes n tokens; past the rate it is
refused whole with 429 and `Retry-After` (whole seconds, at least 1, as HTTP
wants) and counted per destination for `runner_publish_throttled_total`.

Memory is bounded: at most `max_producers` buckets are kept; full buckets (idle
producers, who would be admitted anyway) are dropped first, then the oldest.
Buckets are keyed by rate too, so a reload that changes a rate starts afresh.
"""

from __future__ import annotations

import hashlib
import math
from collections import OrderedDict
from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from runner.clock import Clock
from runner.errors import Refused
from runner.pipeline.pacing import TokenBucket
from runner.topology.model import Topology
from runner.topology.units import format_rate

MAX_PRODUCERS = 10_000


class Throttled(Refused):
    """A publish over the destination's `publish_rate` (HTTP 429 with Retry-After)."""

    def __init__(self, message: str, *, retry_after_s: int) -> None:
        super().__init__(message, accepted=0, routed=())
        self.retry_after_s = retry_after_s


# (kind, name, producer, rate): kind is "exchange", "queue" or "topic". A plain tuple,
# not a NamedTuple: one is made for every limited publish, and a plain one is 5x cheaper.
_Key = tuple[str, str, str, float]


def rates(topology: Topology) -> dict[tuple[str, str], float]:
    """(kind, name) -> publish_rate of every destination that has one."""
    found: list[tuple[str, str, float | None]] = [
        *(("exchange", n, e.publish_rate) for n, e in topology.exchanges),
        *(("queue", n, q.publish_rate) for n, q in topology.queues),
        *(("topic", n, t.publish_rate) for n, t in topology.topics),
    ]
    return {(kind, name): rate for kind, name, rate in found if rate is not None}


def producer_of(authorization: str | None, peer: str | None) -> str:
    """Who a request's producer is: `token:<digest>` for a bearer token, else
    `addr:<client address>`."""
    scheme, _, given = (authorization or "").strip().partition(" ")
    if scheme.lower() == "bearer" and given.strip():
        digest = hashlib.sha256(given.strip().encode()).hexdigest()[:16]
        return f"token:{digest}"
    return f"addr:{peer or 'unknown'}"


class PublishLimiter:
    """Token buckets per (destination, producer); `admit` raises `Throttled`."""

    def __init__(self, clock: Clock, *, max_producers: int = MAX_PRODUCERS) -> None:
        self._clock = clock
        self._max = max_producers
        self._buckets: OrderedDict[_Key, TokenBucket] = OrderedDict()
        self.throttled: dict[tuple[str, str], int] = {}
        self._rates_of: Topology | None = None
        self._rates: dict[tuple[str, str], float] = {}

    def rate_of(self, topology: Topology, kind: str, name: str) -> float | None:
        """The destination's publish_rate (per second), None when unlimited or unknown
        (resolved once per topology value, so an unlimited publish costs one lookup)."""
        if topology is not self._rates_of:
            self._rates_of = topology
            self._rates = rates(topology)
        return self._rates.get((kind, name))

    def admit(self, kind: str, name: str, rate: float | None, producer: str, n: int) -> None:
        """Take `n` tokens of `producer`'s bucket for this destination, or raise
        Throttled (nothing taken). A no-op when `rate` is None."""
        if rate is None or n <= 0:
            return
        now = self._clock.monotonic()
        key: _Key = (kind, name, producer, rate)
        bucket = self._buckets.get(key)
        if bucket is None:
            self._make_room(now)
            bucket = self._buckets[key] = TokenBucket.full(rate, now)
        else:
            self._buckets.move_to_end(key)
        wait = bucket.take(now, n)
        if wait > 0:
            where = (kind, name)
            self.throttled[where] = self.throttled.get(where, 0) + 1
            retry = max(1, math.ceil(wait))
            what = "message" if kind != "topic" else "record"
            raise Throttled(
                f"{kind} '{name}' takes at most {format_rate(rate)} from one producer "
                f"(publish_rate); {n} {what}{'s' if n != 1 else ''} refused, none stored: "
                f"retry in {retry}s",
                retry_after_s=retry,
            )

    def _make_room(self, now: float) -> None:
        if len(self._buckets) < self._max:
            return
        idle = [k for k, b in self._buckets.items() if b.is_full(now)]
        for key in idle:
            del self._buckets[key]
        while len(self._buckets) >= self._max:
            self._buckets.popitem(last=False)

    def __len__(self) -> int:
        return len(self._buckets)


class ThrottleCollector(Collector):
    """`runner_publish_throttled_total{kind,name}`: publishes refused by publish_rate;
    every destination with a publish_rate has its series from the first scrape."""

    def __init__(self, limiter: PublishLimiter, topology: Callable[[], Topology]) -> None:
        self._limiter = limiter
        self._topology = topology

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "runner_publish_throttled",
            "HTTP publishes refused with 429 because the producer passed the destination's "
            "publish_rate.",
            labels=["kind", "name"],
        )
        seen = dict.fromkeys(rates(self._topology()), 0)
        seen.update(self._limiter.throttled)
        for (kind, name), count in sorted(seen.items()):
            family.add_metric([kind, name], count)
        yield family
