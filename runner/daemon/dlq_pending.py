"""Pending dead letters of a dead-letter topic from a stats snapshot (no read).

A dead-letter topic's pending letters are those from its replay position
(`dlq_position_group(topic)`'s committed offsets) on, less those replayed or
purged on their own above it (see runner.daemon.dlq_ops). Metrics and the
console's live feed count them from `Admin.stats()` alone.
"""

from __future__ import annotations

from runner.engine.contract import BackendStats, TopicPartition, dlq_position_group


def pending_in_stats(stats: BackendStats, topic: str, partitions: int) -> list[int]:
    """Pending dead letters per partition of dead-letter topic `topic` from a
    stats snapshot (no read: for metrics and the console's live feed)."""
    out = []
    for p in range(partitions):
        tp = TopicPartition(topic, p)
        info = stats.partitions.get(tp)
        kept = info.log_end_offset - info.log_start_offset if info else 0
        lag = stats.group_lag.get((dlq_position_group(topic), tp), kept)
        out.append(max(0, min(lag, kept) - stats.dlq_settled.get(tp, 0)))
    return out
