"""The metrics collector: INTERFACES.md's `runner_*` metrics read at scrape time.

A custom prometheus-client `Collector` on a per-daemon `CollectorRegistry`
(never the global one). Nothing is counted per message here: the engine and
the pipeline keep plain ints and this collector copies them when Prometheus
scrapes. Every declared entity has its series from the first scrape (zero
where nothing happened); `reason` and `result` labels start at zero for each
known value.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from runner import __version__
from runner.daemon.dlq_pending import pending_in_stats
from runner.daemon.reload import RESULTS, ReloadCounters
from runner.engine.contract import (
    BackendStats,
    QueueStats,
    TopicPartition,
    replay_queue_name,
)
from runner.pipeline.replies import Replies
from runner.pipeline.stats import DURATION_BUCKETS, PipelineStats
from runner.topology.model import Topology

DEAD_LETTER_REASONS = ("handler_error", "rejected", "expired", "maxlen", "delivery_limit")


@dataclass(frozen=True, slots=True)
class HandlerHistogram:
    """A handler duration histogram: (upper bound, cumulative count) pairs, sum, count."""

    buckets: tuple[tuple[float, int], ...]
    sum_s: float
    count: int


@dataclass(slots=True)
class HandlerView:
    """What the collector and the status need from the pipeline's stats."""

    durations: dict[str, HandlerHistogram] = field(default_factory=dict)
    errors: dict[tuple[str, str], int] = field(default_factory=dict)
    retries: dict[str, int] = field(default_factory=dict)
    dead_lettered: dict[str, int] = field(default_factory=dict)
    retry_waiting: dict[str, int] = field(default_factory=dict)


class MetricsSource(Protocol):
    """The daemon state the collector reads at scrape time."""

    @property
    def topology(self) -> Topology: ...

    @property
    def content_hash(self) -> str: ...

    @property
    def reloads(self) -> ReloadCounters: ...

    def engine_stats(self) -> BackendStats: ...

    def handler_view(self) -> HandlerView: ...


def _gauge(name: str, doc: str, *labels: str) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=list(labels))


def _counter(name: str, doc: str, *labels: str) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, labels=list(labels))


def handler_names(topology: Topology) -> list[str]:
    """Every consumer and handler-driven consumer group (the `consumer` label)."""
    names = [name for name, _ in topology.consumers]
    names += [name for name, g in topology.consumer_groups if g.handler]
    return sorted(set(names))


def queue_names(topology: Topology) -> list[str]:
    """The declared queues, then the internal replay queue of every consumer group
    (`__replay.<group>`: its dead letters replayed, read before its partitions)."""
    names = [name for name, _ in topology.queues]
    names += [replay_queue_name(name) for name, _ in topology.consumer_groups]
    return names


class RunnerCollector(Collector):
    """Reads engine, pipeline and reload state when Prometheus scrapes."""

    def __init__(self, source: MetricsSource) -> None:
        self._source = source

    def collect(self) -> Iterator[Metric]:
        src = self._source
        topology = src.topology
        stats = src.engine_stats()
        yield from _topics(topology, stats)
        view = src.handler_view()
        yield from _groups(topology, stats, view)
        yield from _exchanges(topology, stats)
        yield from _queues(topology, stats)
        yield from _handlers(topology, view)
        yield from _topology(topology, src.content_hash, src.reloads)
        yield from _storage(stats)


def _storage(stats: BackendStats) -> Iterator[Metric]:
    failed = _gauge(
        "runner_storage_failed_logs",
        "Logs refusing all reads and writes after a failed fsync (restart to recover).",
    )
    failed.add_metric([], len(stats.failed_logs))
    yield failed


def _topics(topology: Topology, stats: BackendStats) -> Iterator[Metric]:
    tp = ("topic", "partition")
    end = _gauge(
        "runner_topic_partition_log_end_offset",
        "The next offset to be written in a topic partition.", *tp,
    )
    start = _gauge(
        "runner_topic_partition_log_start_offset",
        "The first offset still stored in a topic partition (after retention).", *tp,
    )
    size = _gauge("runner_topic_partition_size_bytes", "Bytes on disk of a topic partition.", *tp)
    oldest = _gauge(
        "runner_topic_partition_oldest_record_timestamp_seconds",
        "Timestamp (seconds since the epoch) of the first record at the log start of a "
        "topic partition; 0 when the partition holds no record.", *tp,
    )
    total = _counter("runner_topic_records", "Records appended to a topic.", "topic")
    pending = _gauge(
        "runner_dead_letter_topic_pending",
        "Dead letters in a partition of a dead-letter topic not yet replayed or purged "
        "(log end minus the replay position; records removed by retention not counted).", *tp,
    )
    pending_oldest = _gauge(
        "runner_dead_letter_topic_oldest_pending_timestamp_seconds",
        "Timestamp (seconds since the epoch) of the oldest dead letter in a partition of a "
        "dead-letter topic not yet replayed or purged (the record at its replay position); "
        "0 when none is pending.", *tp,
    )
    dlq_topics = topology.dead_letter_topics()
    for name, topic in topology.topics:
        if name in dlq_topics:
            for p, n in enumerate(pending_in_stats(stats, name, topic.partitions)):
                pending.add_metric([name, str(p)], n)
                first_ms = stats.dlq_oldest_pending_ms.get(TopicPartition(name, p))
                pending_oldest.add_metric([name, str(p)],
                                          first_ms / 1000 if first_ms is not None else 0)
        for p in range(topic.partitions):
            info = stats.partitions.get(TopicPartition(name, p))
            labels = [name, str(p)]
            end.add_metric(labels, info.log_end_offset if info else 0)
            start.add_metric(labels, info.log_start_offset if info else 0)
            size.add_metric(labels, info.size_bytes if info else 0)
            first_ms = info.oldest_timestamp_ms if info else None
            oldest.add_metric(labels, first_ms / 1000 if first_ms is not None else 0)
        total.add_metric([name], stats.topic_records.get(name, 0))
    yield from (end, start, size, oldest, total, pending, pending_oldest)


def _groups(topology: Topology, stats: BackendStats, view: HandlerView) -> Iterator[Metric]:
    gtp = ("group", "topic", "partition")
    committed = _gauge(
        "runner_consumer_group_committed_offset",
        "The committed offset (next to read) of a consumer group in a partition; "
        "the reset position until the group commits.", *gtp,
    )
    lag = _gauge(
        "runner_consumer_group_lag",
        "Records of a partition not yet processed by a consumer group.", *gtp,
    )
    members = _gauge("runner_consumer_group_members", "Live members of a consumer group.", "group")
    dead = _counter(
        "runner_consumer_group_dead_lettered",
        "Records a consumer group's handler gave up on and dead-lettered.", "group",
    )
    waiting = _gauge(
        "runner_consumer_group_retry_waiting",
        "Records a consumer group holds back until their retry is due (each pauses its "
        "partition).", "group",
    )
    topics = topology.topic_map()
    for name, group in topology.consumer_groups:
        for topic_name in group.topics:
            topic = topics.get(topic_name)
            for p in range(topic.partitions if topic else 0):
                tp = TopicPartition(topic_name, p)
                key = (name, tp)
                labels = [name, topic_name, str(p)]
                behind = stats.group_lag.get(key, 0)
                position = stats.group_committed.get(key)
                if position is None:  # never committed: the reset position (log end - lag)
                    info = stats.partitions.get(tp)
                    position = max(0, (info.log_end_offset if info else 0) - behind)
                committed.add_metric(labels, position)
                lag.add_metric(labels, behind)
        members.add_metric([name], stats.group_members.get(name, 0))
        dead.add_metric([name], view.dead_lettered.get(name, 0))
        waiting.add_metric([name], view.retry_waiting.get(name, 0))
    yield from (committed, lag, members, dead, waiting)


def _exchanges(topology: Topology, stats: BackendStats) -> Iterator[Metric]:
    published = _counter(
        "runner_exchange_published", "Messages published to an exchange.", "exchange"
    )
    unroutable = _counter(
        "runner_exchange_unroutable",
        "Messages published to an exchange that reached no destination at all.", "exchange",
    )
    for name, _ in topology.exchanges:
        published.add_metric([name], stats.exchange_published.get(name, 0))
        unroutable.add_metric([name], stats.exchange_unroutable.get(name, 0))
    yield from (published, unroutable)


def _queues(topology: Topology, stats: BackendStats) -> Iterator[Metric]:
    def gauge(name: str, doc: str) -> GaugeMetricFamily:
        return _gauge(name, doc, "queue")

    def counter(name: str, doc: str) -> CounterMetricFamily:
        return _counter(name, doc, "queue")

    ready = gauge("runner_queue_messages_ready", "Messages ready for delivery in a queue.")
    unacked = gauge(
        "runner_queue_messages_unacked", "Messages delivered from a queue and not yet settled."
    )
    retry_waiting = gauge(
        "runner_queue_messages_retry_waiting",
        "Messages of a queue waiting for their retry to come due (not ready yet).",
    )
    age = gauge(
        "runner_queue_oldest_message_age_seconds",
        "Age of the oldest ready message of a queue (0 when empty).",
    )
    published = counter("runner_queue_published", "Messages stored in a queue.")
    delivered = counter("runner_queue_delivered", "Deliveries from a queue.")
    acked = counter("runner_queue_acked", "Messages acknowledged in a queue.")
    redelivered = counter("runner_queue_redelivered", "Redeliveries from a queue.")
    rejected = counter(
        "runner_queue_rejected_publishes",
        "Publishes a queue refused by its overflow policy.",
    )
    dead = _counter(
        "runner_queue_dead_lettered", "Messages dead-lettered from a queue, by reason.",
        "queue", "reason",
    )
    loops = counter(
        "runner_queue_dead_letter_loops",
        "Dead letters from a queue dropped because one publish caused more than 1,000 "
        "dead-letter hops.",
    )
    for name in queue_names(topology):
        q = stats.queues.get(name) or QueueStats()
        ready.add_metric([name], q.ready)
        retry_waiting.add_metric([name], q.delayed)
        unacked.add_metric([name], q.unacked)
        age.add_metric([name], q.oldest_ready_age_s)
        published.add_metric([name], q.published)
        delivered.add_metric([name], q.delivered)
        acked.add_metric([name], q.acked)
        redelivered.add_metric([name], q.redelivered)
        rejected.add_metric([name], q.rejected_publishes)
        reasons = dict.fromkeys(DEAD_LETTER_REASONS, 0)
        reasons.update(q.dead_lettered)
        for reason, count in sorted(reasons.items()):
            dead.add_metric([name, reason], count)
        loops.add_metric([name], q.dead_letter_loops)
    yield from (ready, unacked, retry_waiting, age, published, delivered, acked, redelivered,
                rejected, dead, loops)


def _handlers(topology: Topology, view: HandlerView) -> Iterator[Metric]:
    duration = HistogramMetricFamily(
        "runner_handler_duration_seconds",
        "Time a handler took per message (successes and failures).",
        labels=["consumer"],
    )
    errors = _counter(
        "runner_handler_errors", "Handler failures by exception type.", "consumer", "error_type"
    )
    retries = _counter(
        "runner_handler_retries", "Retries scheduled after handler failures.", "consumer"
    )
    for name in handler_names(topology):
        hist = view.durations.get(name)
        if hist is None:
            hist = HandlerHistogram(tuple((b, 0) for b in DURATION_BUCKETS), 0.0, 0)
        duration.add_metric([name], _cumulative(hist), hist.sum_s)
        retries.add_metric([name], view.retries.get(name, 0))
    for (consumer, error_type), count in sorted(view.errors.items()):
        errors.add_metric([consumer, error_type], count)
    yield from (duration, errors, retries)


def _cumulative(hist: HandlerHistogram) -> list[tuple[str, float]]:
    out = [(_bound(bound), float(n)) for bound, n in hist.buckets if not math.isinf(bound)]
    out.append(("+Inf", float(hist.count)))
    return out


def _bound(value: float) -> str:
    return repr(float(value))


def _topology(topology: Topology, content_hash: str, reloads: ReloadCounters) -> Iterator[Metric]:
    total = _counter(
        "runner_topology_reloads",
        "Topology reload attempts by result (a file save that changes nothing is not counted).",
        "result",
    )
    for result in RESULTS:
        total.add_metric([result], reloads.counts.get(result, 0))
    ok = _gauge(
        "runner_topology_last_reload_successful",
        "1 unless the last reload attempt was refused or invalid (0 until a reload is "
        "applied or the files are saved back to the running topology).",
    )
    ok.add_metric([], 0 if reloads.failed else 1)
    last = _gauge(
        "runner_topology_last_reload_timestamp_seconds",
        "Unix time of the last counted reload attempt (0 before the first).",
    )
    last.add_metric([], reloads.last_timestamp_s)
    info = _gauge("runner_topology_info", "The running topology (always 1).", "name", "hash")
    info.add_metric([topology.name or "", content_hash], 1)
    build = _gauge(
        "runner_build_info", "The running topology-runner version (always 1).", "version"
    )
    build.add_metric([__version__], 1)
    yield from (total, ok, last, info, build)


class RepliesCollector(Collector):
    """Request-reply: `runner_requests_waiting` (HTTP `?wait=` publishes and
    `ctx.request` calls waiting for a reply now) and `runner_replies_total{result}`
    (`delivered` to a waiting request, `dropped`: nobody waited for it any more,
    `timed_out`: a request that got none in time)."""

    def __init__(self, replies: Replies) -> None:
        self._replies = replies

    def collect(self) -> Iterator[Metric]:
        replies = self._replies
        waiting = _gauge("runner_requests_waiting",
                         "Requests waiting for a reply in this daemon (no queue nor thread each).")
        waiting.add_metric([], len(replies))
        yield waiting
        total = _counter("runner_replies", "Replies to private reply addresses, by what became "
                         "of them; timed_out counts requests that got none in time.", "result")
        for result, count in (("delivered", replies.delivered), ("dropped", replies.dropped),
                              ("timed_out", replies.timed_out)):
            total.add_metric([result], count)
        yield total


def build_registry(source: MetricsSource, *, process: bool = True) -> CollectorRegistry:
    """A registry for one daemon: the runner collector and the process collector."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RunnerCollector(source))
    if process:
        ProcessCollector(registry=registry)
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)


def handler_view_from(stats: PipelineStats) -> HandlerView:
    """The pipeline's `stats()` as a `HandlerView`."""
    view = HandlerView()
    for name, c in stats.consumers.items():
        view.durations[name] = HandlerHistogram(c.buckets, c.duration_sum, c.duration_count)
        for error_type, count in c.errors.items():
            view.errors[(name, error_type)] = count
        view.retries[name] = c.retries
        view.dead_lettered[name] = c.dead_lettered
        view.retry_waiting[name] = c.retry_waiting
    return view
