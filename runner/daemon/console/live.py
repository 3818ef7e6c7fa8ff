"""The console's live feed: one sampler of the engine's own counters, many listeners.

Once a second (`interval_s`) the feed reads the daemon's `live_stats()` (the
backend's `stats()`: the same plain ints the metrics collector reads at scrape
time) and the pipeline's handler counts, turns counter deltas into rates, keeps
the last ten minutes of the overview's three rates, and hands one encoded
snapshot to every open event stream. Nothing is polled per row or per page: a
hundred open consoles cost one `stats()` a second. Over RabbitMQ a sample costs
a management API call (and, every few seconds, reads of the streams), so that
daemon samples only while an event stream is open (`idle_sampling=False`).

Snapshot shape (short keys: it is sent every second):

    {"t": seconds, "health": {...}, "totals": {"in", "out", "dead"},
     "q": {queue: {"ready", "unacked", "delayed", "age", "in", "out", "dead"}},
     "x": {exchange: {"published", "unroutable", "rate"}},
     "t_": {topic: {"records", "rate", "size", "p": [[start, end, size], ...],
            "pending" (dead-letter topics only)}},
     "g": {group: {"lag", "members", "rate"}},
     "c": {consumer: {"handled", "errors", "retries", "rate"}}}

Rates are per second over the last interval; `in` counts messages stored in
queues plus records appended to topics, `out` messages acked plus group
commit progress, `dead` arrivals in dead-letter queues and topics.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from runner.clock import Clock
from runner.daemon.dlq_ops import DlqBackend
from runner.daemon.dlq_pending import pending_in_stats
from runner.daemon.metrics import HandlerView
from runner.daemon.status import dead_letter_queues
from runner.engine.contract import BackendStats, TopicPartition
from runner.topology.model import Topology

log = logging.getLogger(__name__)

HISTORY_S = 600.0
MAX_LISTENERS = 200  # event streams at once; more are refused (each holds a queue)
LISTENER_BACKLOG = 4  # snapshots a slow listener may lag behind before it is dropped


class FeedSource(Protocol):
    """What the feed reads from the daemon."""

    @property
    def backend(self) -> DlqBackend:
        """The engine through the contract (what the pages and actions read)."""
        ...

    @property
    def topology(self) -> Topology: ...

    @property
    def accepting(self) -> bool: ...

    @property
    def generation(self) -> int: ...

    @property
    def content_hash(self) -> str: ...

    def handler_view(self) -> HandlerView: ...

    async def live_stats(self) -> BackendStats:
        """The counters a snapshot is made of (the embedded engine's `stats()`; over
        RabbitMQ the broker's, read off the loop)."""
        ...


@dataclass(slots=True)
class _Counters:
    """The cumulative counters of one sample, to difference against the next."""

    at_s: float
    queue_in: dict[str, int] = field(default_factory=dict)
    queue_out: dict[str, int] = field(default_factory=dict)
    queue_dead: dict[str, int] = field(default_factory=dict)
    exchange: dict[str, int] = field(default_factory=dict)
    topic: dict[str, int] = field(default_factory=dict)
    group: dict[str, int] = field(default_factory=dict)
    handled: dict[str, int] = field(default_factory=dict)


def _rate(now: int, before: int | None, dt: float) -> float:
    if before is None or dt <= 0:
        return 0.0
    return round(max(0, now - before) / dt, 2)


class LiveFeed:
    """Samples the daemon's counters and fans the snapshot out to event streams."""

    def __init__(self, source: FeedSource, clock: Clock, *, interval_s: float = 1.0,
                 idle_sampling: bool = True) -> None:
        self._source = source
        self._clock = clock
        self.interval_s = interval_s
        self.idle_sampling = idle_sampling  # False: sample only while a stream listens
        self._last: _Counters | None = None
        self._snapshot: dict[str, Any] = {}
        self._encoded = b"{}"
        self._history: deque[tuple[float, float, float, float]] = deque(
            maxlen=max(1, int(HISTORY_S / interval_s))
        )
        self._listeners: set[asyncio.Queue[bytes | None]] = set()
        self._task: asyncio.Task[None] | None = None
        self._failures = 0

    # ------------------------------------------------------------ reading
    async def snapshot(self) -> dict[str, Any]:
        """The latest snapshot (sampled now when none was taken yet, or when the feed
        does not sample while idle and the last one is older than an interval)."""
        if self._stale():
            await self.sample()
        return self._snapshot

    async def encoded(self) -> bytes:
        if self._stale():
            await self.sample()
        return self._encoded

    def _stale(self) -> bool:
        if not self._snapshot:
            return True
        if self.idle_sampling or self._last is None:
            return False
        return self._clock.time() - self._last.at_s >= self.interval_s

    def history(self) -> list[tuple[float, float, float, float]]:
        """(time, in rate, out rate, dead rate) of the last ten minutes, oldest first."""
        return list(self._history)

    # ------------------------------------------------------------ sampling
    async def sample(self) -> None:
        src = self._source
        stats = await src.live_stats()
        topology = src.topology
        now = self._clock.time()
        current = _count(topology, stats, src.handler_view(), now)
        last = self._last
        if last is not None and not self.idle_sampling and now - last.at_s > 5 * self.interval_s:
            last = None  # after a pause nobody watched: no rate averaged over the gap
        dt = current.at_s - last.at_s if last is not None else 0.0
        snap = _snapshot(topology, stats, src.handler_view(), current, last, dt)
        snap["health"] = {
            "accepting": src.accepting,
            "generation": src.generation,
            "hash": src.content_hash,
        }
        if last is not None:
            totals = snap["totals"]
            self._history.append((round(now, 3), totals["in"], totals["out"], totals["dead"]))
        self._last = current
        self._snapshot = snap
        self._encoded = orjson.dumps(snap)

    async def run(self) -> None:
        """Sample every `interval_s` and publish, until cancelled."""
        while True:
            # sleep first: at startup the daemon is not serving yet (a snapshot taken
            # then would say so for a whole interval); `snapshot()` samples on demand
            await asyncio.sleep(self.interval_s)
            if not self.idle_sampling and not self._listeners:
                continue
            try:
                await self.sample()
            except Exception:
                self._failures += 1
                if self._failures in (1, 10) or self._failures % 1000 == 0:
                    log.exception("console sampling failed (%d times)", self._failures)
            else:
                self._publish(b"event: snapshot\ndata: " + self._encoded + b"\n\n")

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.ensure_future(self.run())

    async def stop(self) -> None:
        """Stop sampling and end every open stream."""
        for queue in list(self._listeners):
            _offer(queue, None)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    # ------------------------------------------------------------ listeners
    def listen(self) -> asyncio.Queue[bytes | None] | None:
        """A queue of encoded events for one stream; None when too many are open."""
        if len(self._listeners) >= MAX_LISTENERS:
            return None
        queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=LISTENER_BACKLOG)
        self._listeners.add(queue)
        return queue

    def forget(self, queue: asyncio.Queue[bytes | None]) -> None:
        self._listeners.discard(queue)

    def _publish(self, event: bytes) -> None:
        for queue in list(self._listeners):
            if not _offer(queue, event):
                # a stream that cannot keep up ends; the browser reconnects and
                # gets a fresh snapshot rather than a growing backlog
                self._listeners.discard(queue)
                _offer(queue, None, force=True)


def _offer(queue: asyncio.Queue[bytes | None], item: bytes | None, *, force: bool = False) -> bool:
    if force and queue.full():
        with contextlib.suppress(asyncio.QueueEmpty):
            queue.get_nowait()
    try:
        queue.put_nowait(item)
    except asyncio.QueueFull:
        return False
    return True


def _count(topology: Topology, stats: BackendStats, view: HandlerView, now: float) -> _Counters:
    c = _Counters(now)
    for name, _ in topology.queues:
        q = stats.queues.get(name)
        if q is not None:
            c.queue_in[name] = q.published
            c.queue_out[name] = q.acked
            c.queue_dead[name] = sum(q.dead_lettered.values())
    for name, _ in topology.exchanges:
        c.exchange[name] = stats.exchange_published.get(name, 0)
    for name, _ in topology.topics:
        c.topic[name] = stats.topic_records.get(name, 0)
    committed: dict[str, int] = {}
    for (group, _tp), offset in stats.group_committed.items():
        committed[group] = committed.get(group, 0) + offset
    c.group = committed
    c.handled = {name: h.count for name, h in view.durations.items()}
    return c


def _snapshot(
    topology: Topology, stats: BackendStats, view: HandlerView, now: _Counters,
    last: _Counters | None, dt: float,
) -> dict[str, Any]:
    def rate(pick: Callable[[_Counters], dict[str, int]], name: str) -> float:
        return _rate(pick(now).get(name, 0), pick(last).get(name) if last else None, dt)

    queues: dict[str, Any] = {}
    for name, _ in topology.queues:
        q = stats.queues.get(name)
        if q is None:
            continue
        queues[name] = {
            "ready": q.ready, "unacked": q.unacked, "delayed": q.delayed,
            "age": round(q.oldest_ready_age_s, 3),
            "in": rate(lambda c: c.queue_in, name),
            "out": rate(lambda c: c.queue_out, name),
            "dead": sum(q.dead_lettered.values()),
        }
    exchanges = {
        name: {
            "published": stats.exchange_published.get(name, 0),
            "unroutable": stats.exchange_unroutable.get(name, 0),
            "rate": rate(lambda c: c.exchange, name),
        }
        for name, _ in topology.exchanges
    }
    topics: dict[str, Any] = {}
    dlt = topology.dead_letter_topics()
    for name, topic in topology.topics:
        parts = []
        size = 0
        for p in range(topic.partitions):
            info = stats.partitions.get(TopicPartition(name, p))
            if info is None:
                parts.append([0, 0, 0])
                continue
            parts.append([info.log_start_offset, info.log_end_offset, info.size_bytes])
            size += info.size_bytes
        topics[name] = {
            "records": sum(end - start for start, end, _ in parts),
            "rate": rate(lambda c: c.topic, name), "size": size, "p": parts,
        }
        if name in dlt:  # dead letters not yet replayed or purged
            topics[name]["pending"] = sum(pending_in_stats(stats, name, topic.partitions))
    lag: dict[str, int] = {}
    for (group, _tp), behind in stats.group_lag.items():
        lag[group] = lag.get(group, 0) + behind
    groups = {
        name: {
            "lag": lag.get(name, 0),
            "members": stats.group_members.get(name, 0),
            "rate": rate(lambda c: c.group, name),
        }
        for name, _ in topology.consumer_groups
    }
    errors: dict[str, int] = {}
    for (who, _type), n in view.errors.items():
        errors[who] = errors.get(who, 0) + n
    consumers = {
        name: {
            "handled": now.handled.get(name, 0), "errors": errors.get(name, 0),
            "retries": view.retries.get(name, 0), "rate": rate(lambda c: c.handled, name),
        }
        for name in sorted(set(now.handled) | {n for n, _ in topology.consumers}
                           | {n for n, g in topology.consumer_groups if g.handler})
    }
    dlq = dead_letter_queues(topology)
    totals = {
        "in": round(sum(q["in"] for n, q in queues.items() if n not in dlq)
                    + sum(t["rate"] for n, t in topics.items() if n not in dlt), 2),
        "out": round(sum(q["out"] for q in queues.values())
                     + sum(g["rate"] for g in groups.values()), 2),
        "dead": round(sum(q["in"] for n, q in queues.items() if n in dlq)
                      + sum(t["rate"] for n, t in topics.items() if n in dlt), 2),
    }
    return {
        "t": round(now.at_s, 3), "totals": totals, "q": queues, "x": exchanges,
        "t_": topics, "g": groups, "c": consumers,
    }
