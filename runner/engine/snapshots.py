"""Snapshots of the engine's state: a group's partitions, and the counters for metrics."""

from __future__ import annotations

from runner.broker.broker import Broker
from runner.engine.values import (
    EngineStats,
    GroupInfo,
    GroupPartition,
    PartitionInfo,
    QueueStats,
    TopicPartition,
)
from runner.log.partition import TopicPartition as LogTopicPartition
from runner.log.store import Store


def group_info(store: Store, group: str) -> GroupInfo:
    """Members, and per partition of the group's topics: offsets, lag and owner."""
    groups = store.groups
    parts: list[GroupPartition] = []
    for topic in groups.config(group).topics:
        for p in range(store.partition_count(topic)):
            tp = LogTopicPartition(topic, p)
            pos = groups.position(group, tp)
            end = store.log_end(tp)
            parts.append(GroupPartition(topic, p, groups.committed(group, tp), pos, end,
                                        groups.lag(group, tp), groups.owner(group, tp)))
    return GroupInfo(group, tuple(groups.members(group)), tuple(parts))


def engine_stats(store: Store, broker: Broker) -> EngineStats:
    """The counters of both sides, copied (the collector reads them at scrape time)."""
    out = EngineStats()
    out.topic_records = store.records_appended()
    for topic in store.topic_names():
        for pc in store.partitions(topic):
            out.partitions[TopicPartition(topic, pc.partition)] = PartitionInfo(
                pc.partition, pc.log_start_offset, pc.log_end_offset, pc.size_bytes,
                pc.oldest_timestamp_ms)
    groups = store.groups
    for group in groups.names():
        out.group_members[group] = len(groups.members(group))
        for topic in groups.config(group).topics:
            for p in range(store.partition_count(topic)):
                tp = TopicPartition(topic, p)
                ltp = LogTopicPartition(topic, p)
                committed = groups.committed(group, ltp)
                if committed is not None:
                    out.group_committed[(group, tp)] = committed
                out.group_lag[(group, tp)] = groups.lag(group, ltp)
    b = broker.stats()
    out.exchange_published = b.exchange_published
    out.exchange_unroutable = b.exchange_unroutable
    for name, q in b.queues.items():
        out.queues[name] = QueueStats(
            q.ready, q.unacked, q.delayed, q.published, q.delivered, q.acked, q.redelivered,
            q.rejected_publishes, dict(q.dead_lettered), q.oldest_ready_age_s,
            q.dead_letter_loops)
    return out
