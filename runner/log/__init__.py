"""The Kafka side of the embedded engine: segmented logs, partitions, groups.

Public API (see docs/log.md):

* `SegmentedLog`, `LogRecord`, `Fsync` - the storage primitive (also used by
  `runner.broker`);
* `Store`, `AppendRecord`, `PartitionCounters`, `TopicPartition` - topics,
  partitions, groups and exactly-once steps of one data directory;
* `StepJournal` - the durable write-ahead step journal (the engine's `engine_steps/`);
* `murmur2`, `partition_for_key` - Kafka's default partitioner;
* `assign_range`, `assign_roundrobin`, `assign_sticky` - group assignors.
"""

from __future__ import annotations

from runner.log.assignors import assign_range, assign_roundrobin, assign_sticky
from runner.log.journal import StepJournal
from runner.log.partition import TopicPartition
from runner.log.partitioner import murmur2, partition_for_key
from runner.log.record import Fsync, LogRecord
from runner.log.segment import SegmentedLog
from runner.log.store import AppendRecord, PartitionCounters, Store

__all__ = [
    "AppendRecord",
    "Fsync",
    "LogRecord",
    "PartitionCounters",
    "SegmentedLog",
    "StepJournal",
    "Store",
    "TopicPartition",
    "assign_range",
    "assign_roundrobin",
    "assign_sticky",
    "murmur2",
    "partition_for_key",
]
