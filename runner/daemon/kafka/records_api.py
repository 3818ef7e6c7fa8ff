"""Produce, Fetch and ListOffsets: records in and out of the declared topics.

Produce: each partition's record batches are CRC-32C checked, decompressed
and appended in order; the answer comes once the append returned, which under
`--fsync always` means fsynced (acks=1 and acks=all alike: one node is every
replica). acks=0 gets no answer, as in Kafka. An idempotent producer's batch
(producer id and base sequence) goes through the engine's sequence checks:
an exact retry gets its original offsets and is not stored twice, and a batch
from an older producer epoch is refused with INVALID_PRODUCER_EPOCH (as Kafka
2.7+ answers a fenced producer's produce). A record whose key, value and
headers pass `--max-message-bytes` refuses the partition's batches with
MESSAGE_TOO_LARGE, nothing of them stored, as the HTTP API answers 413 (the
topic's own `max_message_bytes` is checked by the log, with the same code).

Fetch: from each partition's fetch offset up to its `partition_max_bytes`
(at least one record, as Kafka does, so a large record never stalls a
consumer) and the request's `max_bytes`; with fewer than `min_bytes` ready it
waits up to `max_wait_ms` for an append. Records go out as one uncompressed
batch per partition; fetch sessions are not created (session id 0: clients
send full fetches).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from runner.daemon.kafka.batches import (
    Batch,
    InvalidBatch,
    UnsupportedBatch,
    decode_batches,
    encode_batch,
)
from runner.daemon.kafka.port import ProducerFenced
from runner.daemon.kafka.protocol import ErrorCode
from runner.daemon.kafka.session import Session, millis
from runner.errors import (
    EngineError,
    InvalidRequest,
    NotFound,
    OffsetOutOfRange,
    StorageError,
    TooLarge,
)

log = logging.getLogger(__name__)

EARLIEST, LATEST, MAX_TIMESTAMP = -2, -1, -3


def engine_error_code(exc: EngineError) -> int:
    """The Kafka error code of an engine refusal."""
    if isinstance(exc, NotFound):
        return ErrorCode.unknown_topic_or_partition
    if isinstance(exc, TooLarge):
        return ErrorCode.message_too_large
    if isinstance(exc, OffsetOutOfRange):
        return ErrorCode.offset_out_of_range
    if isinstance(exc, StorageError):
        return ErrorCode.kafka_storage_error
    if isinstance(exc, ProducerFenced):
        return ErrorCode.invalid_producer_epoch
    if isinstance(exc, InvalidRequest):
        if "out of order sequence" in str(exc):
            return ErrorCode.out_of_order_sequence_number
        return ErrorCode.invalid_record
    return ErrorCode.unknown_server_error


# ---------------------------------------------------------------- Produce
async def produce_api(session: Session, body: Any, version: int) -> dict[str, Any] | None:
    broker = session.broker
    topics_out = []
    for topic in body.topic_data:
        parts_out = []
        for pd in topic.partition_data:
            parts_out.append(_produce_partition(session, topic.name, pd.index, pd.records))
        topics_out.append({"name": topic.name, "partition_responses": parts_out})
    broker.appended.wake()
    if body.acks == 0:
        return None
    return {"responses": topics_out}


def _produce_partition(session: Session, topic: str, partition: int,
                       records: bytes | None) -> dict[str, Any]:
    port = session.broker.port
    out: dict[str, Any] = {"index": partition, "error_code": 0, "base_offset": -1,
                           "log_start_offset": -1, "record_errors": [], "error_message": None}
    try:
        batches = decode_batches(records or b"", limit=session.broker.max_request_bytes)
    except InvalidBatch as exc:
        return _refuse(session, out, ErrorCode.corrupt_message, topic, partition, str(exc))
    except UnsupportedBatch as exc:
        code = (ErrorCode.unsupported_compression_type if "codec" in str(exc)
                else ErrorCode.invalid_record)
        return _refuse(session, out, code, topic, partition, str(exc))
    if not batches:
        return _refuse(session, out, ErrorCode.corrupt_message, topic, partition,
                       "no record batch in the request")
    too_large = _over_message_limit(batches, session.broker.max_message_bytes)
    if too_large is not None:
        return _refuse(session, out, ErrorCode.message_too_large, topic, partition, too_large)
    first = -1
    try:
        for batch in batches:
            recs = batch.records
            if not recs:
                continue
            offset = port.append(topic, partition, recs, producer_id=batch.producer_id,
                                 producer_epoch=batch.producer_epoch,
                                 base_sequence=batch.base_sequence)
            if batch.producer_id >= 0:
                session.broker.note_epoch(batch.producer_id, batch.producer_epoch)
            if first < 0:
                first = offset
        out["log_start_offset"] = port.offsets(topic, partition).log_start
    except EngineError as exc:
        return _refuse(session, out, engine_error_code(exc), topic, partition, str(exc))
    out["base_offset"] = first
    return out


def _over_message_limit(batches: Sequence[Batch], limit: int) -> str | None:
    """Why a record of these batches is over --max-message-bytes (its key, value and
    headers, as the HTTP API counts a record; the topic's own max_message_bytes is
    the log's to check), or None. Kafka refuses the whole batch: MESSAGE_TOO_LARGE."""
    n = 0
    for batch in batches:
        for rec in batch.records:
            size = len(rec.value or b"") + len(rec.key or b"")
            for name, value in rec.headers:
                size += len(name.encode()) + len(value or b"")
            if size > limit:
                return (f"record {n}: the record is {size} bytes with its key and headers, "
                        f"over the limit of {limit} bytes (--max-message-bytes)")
            n += 1
    return None


def _refuse(session: Session, out: dict[str, Any], code: int, topic: str, partition: int,
            message: str) -> dict[str, Any]:
    log.warning("kafka produce to %s/%d refused (%s): %s", topic, partition,
                ErrorCode(code).name, message,
                extra={"event": "kafka_produce_refused", "peer": session.peer})
    out["error_code"] = code
    out["error_message"] = message
    return out


# ---------------------------------------------------------------- Fetch
async def fetch_api(session: Session, body: Any, version: int) -> dict[str, Any]:
    broker = session.broker
    if getattr(body, "session_epoch", -1) > 0 or getattr(body, "session_id", 0) != 0:
        return {"error_code": ErrorCode.fetch_session_id_not_found, "session_id": 0,
                "responses": []}
    wait_s = max(0, millis(body.max_wait)) / 1000.0
    deadline = broker.clock.monotonic() + wait_s
    min_bytes = max(1, body.min_bytes)
    while True:
        responses, size = _fetch_once(session, body)
        remaining = deadline - broker.clock.monotonic()
        if size >= min_bytes or remaining <= 0 or _has_errors(responses):
            return {"error_code": 0, "session_id": 0, "responses": responses}
        await broker.appended.wait(min(remaining, 0.25))


def _has_errors(responses: list[dict[str, Any]]) -> bool:
    return any(p["error_code"] for t in responses for p in t["partitions"])


def _fetch_once(session: Session, body: Any) -> tuple[list[dict[str, Any]], int]:
    port = session.broker.port
    budget = body.max_bytes if body.max_bytes > 0 else 50 * 1024 * 1024
    total = 0
    responses = []
    for topic in body.topics:
        parts = []
        for fp in topic.partitions:
            entry: dict[str, Any] = {"partition_index": fp.partition, "error_code": 0,
                                     "high_watermark": -1, "last_stable_offset": -1,
                                     "log_start_offset": -1, "preferred_read_replica": -1,
                                     "records": b""}
            parts.append(entry)
            try:
                offs = port.offsets(topic.topic, fp.partition)
            except EngineError as exc:
                entry["error_code"] = engine_error_code(exc)
                continue
            entry.update(high_watermark=offs.log_end, last_stable_offset=offs.log_end,
                         log_start_offset=offs.log_start)
            offset = fp.fetch_offset
            if not offs.log_start <= offset <= offs.log_end:
                entry["error_code"] = ErrorCode.offset_out_of_range
                continue
            if offset == offs.log_end or budget - total <= 0 and total > 0:
                continue
            limit = min(fp.partition_max_bytes, budget - total)
            try:
                recs = port.read(topic.topic, fp.partition, offset, max_bytes=max(limit, 1))
            except EngineError as exc:
                entry["error_code"] = engine_error_code(exc)
                continue
            if recs:
                data = encode_batch(recs)
                entry["records"] = data
                total += len(data)
        responses.append({"topic": topic.topic, "partitions": parts})
    return responses, total


# ---------------------------------------------------------------- ListOffsets
async def list_offsets_api(session: Session, body: Any, version: int) -> dict[str, Any]:
    port = session.broker.port
    topics = []
    for topic in body.topics:
        parts = []
        for lp in topic.partitions:
            entry: dict[str, Any] = {"partition_index": lp.partition_index, "error_code": 0,
                                     "timestamp": -1, "offset": -1, "leader_epoch": 0}
            try:
                entry.update(_list_offset(port, topic.name, lp.partition_index, lp.timestamp))
            except EngineError as exc:
                entry["error_code"] = engine_error_code(exc)
            parts.append(entry)
        topics.append({"name": topic.name, "partitions": parts})
    return {"topics": topics}


def _list_offset(port: Any, topic: str, partition: int, ts: int) -> dict[str, int]:
    offs = port.offsets(topic, partition)
    if ts == EARLIEST:
        return {"offset": offs.log_start, "timestamp": -1}
    if ts == LATEST:
        return {"offset": offs.log_end, "timestamp": -1}
    if ts == MAX_TIMESTAMP:
        if offs.log_end == offs.log_start:
            return {"offset": -1, "timestamp": -1}
        return _record_at(port, topic, partition, offs.log_end - 1)
    if ts < 0:
        return {"offset": -1, "timestamp": -1, "error_code": ErrorCode.invalid_request}
    offset = port.offset_for_time(topic, partition, ts)
    if offset >= offs.log_end:
        return {"offset": -1, "timestamp": -1}
    return _record_at(port, topic, partition, offset)


def _record_at(port: Any, topic: str, partition: int, offset: int) -> dict[str, int]:
    recs = port.read(topic, partition, offset, max_bytes=1, max_records=1)
    if not recs:
        return {"offset": offset, "timestamp": -1}
    return {"offset": recs[0][0], "timestamp": recs[0][1]}
