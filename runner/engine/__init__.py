"""The embedded engine: one object that opens `log/` and `broker/` for a Topology.

Modules: `values` (the contract's values), `facade` (`Engine`), `steps`
(exactly-once steps and their journal), `deadletters` (topic dead letters and
replay), `changes` (reload checks), `records` (record encoding), `snapshots`
(group info and metrics counters), `datadir` (the data directory lock).
Everything public is re-exported here.

CONTRACT (written first so that the daemon, the pipeline and the engine can be
built in parallel; implementation fills in the bodies, signatures stay):

* Plain synchronous code with a single owner (the daemon's asyncio loop, or a
  test). No async API, no locks in the hot path.
* Everything takes and returns batches.
* Errors are the `runner.errors` tree: NotFound (404), InvalidRequest (400),
  Forbidden (403), Conflict (409), TooLarge (413), Refused (429, with
  `accepted` / `routed`), UnsafeChange (reload refused), OffsetOutOfRange.
* Durability: when `publish`, `publish_to_queue`, `append`, `ack`, `commit`
  or `commit_step` return, their effects are as durable as the fsync policy
  promises (`always`: fsynced, many callers may share one fsync inside a
  batch; `interval`: fsynced within a few ms by `tick`/a flusher; `never`: OS).
* `tick()` is called by the owner every ~50-100 ms: message TTL expiry,
  lease expiry (redelivery), delayed retries coming due, group member
  session timeouts, retention and compaction scheduling, interval fsync.
* Counters for metrics are plain ints read at scrape time via `stats()`.
"""

from __future__ import annotations

from runner.engine.datadir import LOCK_FILE
from runner.engine.deadletters import (
    DEAD_LETTER_HEADER,
    DLQ_POSITION_PREFIX,
    REPLAY_COUNT_HEADER,
    REPLAY_NOT_A_DEAD_LETTER,
    REPLAY_PREFIX,
    REPLAY_QUEUE_FULL,
    dlq_position_group,
    dlq_settled_queue,
    replay_queue_name,
    settled_marker,
)
from runner.engine.facade import DEDUP_WINDOW_S, Engine
from runner.engine.records import (
    EXCHANGE_HEADER,
    HEADER_TYPES,
    JSON_CONTENT_TYPE,
    MESSAGE_ID_HEADER,
    NULL_VALUE_HEADER,
    ORIGINAL_KEY_B64_HEADER,
    ORIGINAL_KEY_HEADER,
    ORIGINAL_TIMESTAMP_HEADER,
    RECORD_OFFSET_HEADER,
    RECORD_PARTITION_HEADER,
    RECORD_TOPIC_HEADER,
    ROUTING_KEY_HEADER,
    decode_headers,
    encode_headers,
    kafka_headers,
    raw_headers,
)
from runner.engine.steps import STEP_PRODUCER, STEP_STRIDE
from runner.engine.values import (
    EngineStats,
    FsyncPolicy,
    GroupInfo,
    GroupPartition,
    OutMessage,
    OutRecord,
    PartitionInfo,
    QueueDelivery,
    QueueInfo,
    QueueStats,
    Record,
    ReplayOutcome,
    Step,
    TopicPartition,
)
from runner.timestamps import MAX_TIMESTAMP_MS, check_timestamp_ms

__all__ = [
    "MAX_TIMESTAMP_MS",
    "check_timestamp_ms",
    "DEAD_LETTER_HEADER",
    "DEDUP_WINDOW_S",
    "EXCHANGE_HEADER",
    "JSON_CONTENT_TYPE",
    "LOCK_FILE",
    "MESSAGE_ID_HEADER",
    "NULL_VALUE_HEADER",
    "ORIGINAL_KEY_B64_HEADER",
    "ORIGINAL_KEY_HEADER",
    "ORIGINAL_TIMESTAMP_HEADER",
    "RECORD_OFFSET_HEADER",
    "RECORD_PARTITION_HEADER",
    "RECORD_TOPIC_HEADER",
    "REPLAY_COUNT_HEADER",
    "REPLAY_NOT_A_DEAD_LETTER",
    "REPLAY_PREFIX",
    "REPLAY_QUEUE_FULL",
    "ROUTING_KEY_HEADER",
    "STEP_PRODUCER",
    "STEP_STRIDE",
    "Engine",
    "EngineStats",
    "FsyncPolicy",
    "GroupInfo",
    "GroupPartition",
    "OutMessage",
    "OutRecord",
    "PartitionInfo",
    "QueueDelivery",
    "QueueInfo",
    "QueueStats",
    "Record",
    "ReplayOutcome",
    "Step",
    "TopicPartition",
    "decode_headers",
    "encode_headers",
    "HEADER_TYPES",
    "kafka_headers",
    "raw_headers",
    "replay_queue_name",
    "dlq_position_group",
    "dlq_settled_queue",
    "settled_marker",
    "DLQ_POSITION_PREFIX",
]
