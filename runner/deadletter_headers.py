"""The header vocabulary of dead letters and replays, shared by every layer.

A base module (beside `runner.datapath`): the broker builds and reads these
headers, the engine adds a record's facts when it dead-letters one into a
queue, and the daemon's DLQ tools (on the engine contract) read them back --
so none of them needs another's internals to agree on a name.

`x-dead-letter` (TOPOLOGY.md) is built by `death_header` alone (the broker's
deaths and the pipeline's handler failures write the same fields, times in
`iso_utc`, `death_count` from `deaths_before`); it says where a message died
(`replay_target`); a replay removes it and counts `x-replay-count`
(`replayed_headers`). A topic
record dead-lettered into a queue carries its key, timestamp, topic,
partition and offset in the `x-original-*` / `x-record-*` headers, and a
message routed into a topic keeps its routing key and exchange.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

DEATH_HEADER = "x-dead-letter"
REPLAY_HEADER = "x-replay-count"

ROUTING_KEY_HEADER = "x-routing-key"
EXCHANGE_HEADER = "x-exchange"
MESSAGE_ID_HEADER = "x-message-id"
ORIGINAL_KEY_HEADER = "x-original-key"
ORIGINAL_KEY_B64_HEADER = "x-original-key-b64"
ORIGINAL_TIMESTAMP_HEADER = "x-original-timestamp"
RECORD_TOPIC_HEADER = "x-record-topic"
RECORD_PARTITION_HEADER = "x-record-partition"
RECORD_OFFSET_HEADER = "x-record-offset"
NULL_VALUE_HEADER = "x-null-value"  # a dead-lettered tombstone (null value) in a queue
JSON_CONTENT_TYPE = "application/json"


def previous_death(headers: Mapping[str, Any]) -> Mapping[str, Any] | None:
    found = headers.get(DEATH_HEADER)
    return found if isinstance(found, Mapping) else None


@dataclass(frozen=True, slots=True)
class ReplayTarget:
    """Where a dead letter goes back to: a queue, or a topic partition offset (caller's)."""

    queue: str | None
    routing_key: str
    exchange: str
    topic: str | None = None
    partition: int | None = None
    offset: int | None = None


def replay_target(headers: Mapping[str, Any]) -> ReplayTarget | None:
    """Where the dead letter with these headers died; None if it is not a dead letter."""
    death = previous_death(headers)
    if death is None:
        return None
    if death.get("original_topic"):
        part = death.get("original_partition")
        off = death.get("original_offset")
        return ReplayTarget(
            None, str(death.get("original_routing_key") or ""), "",
            str(death["original_topic"]), int(part) if part is not None else None,
            int(off) if off is not None else None,
        )
    queue = death.get("original_queue")
    if not queue:
        return None
    return ReplayTarget(
        str(queue), str(death.get("original_routing_key") or queue),
        str(death.get("original_exchange") or ""),
    )


def replayed_headers(headers: Mapping[str, Any]) -> dict[str, Any]:
    """The headers of a replayed message: no death header, `x-replay-count` + 1."""
    out = {k: v for k, v in headers.items() if k != DEATH_HEADER}
    try:
        count = int(out.get(REPLAY_HEADER, 0))
    except (TypeError, ValueError):
        count = 0
    out[REPLAY_HEADER] = count + 1
    return out


def content_type(value: bytes | None) -> str | None:
    """`application/json` when `value` is JSON text, else None (bytes)."""
    if not value:
        return None
    try:
        orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    return JSON_CONTENT_TYPE


def b64(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode()


def iso_utc(seconds: float | None) -> str | None:
    """Wall-clock seconds as ISO 8601 UTC: `2024-01-15T10:00:00Z`, with
    milliseconds (`...:00.250Z`) when they are not zero (sub-millisecond parts
    are cut). The one format of every time in an `x-dead-letter` header."""
    if seconds is None:
        return None
    dt = datetime.fromtimestamp(seconds, tz=UTC)
    ms = dt.microsecond // 1000
    if ms:
        return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms:03d}Z"
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


def deaths_before(headers: Mapping[str, Any]) -> int:
    """How many times a message with these headers died before: its header's
    `death_count`, else how often it was replayed (`x-replay-count`: a replay
    removes the header and follows a death). Every `death_count` is this + 1."""
    prev = previous_death(headers)
    if prev is not None:
        count = prev.get("death_count", 1)
        return count if _is_count(count) else 1
    replays = headers.get(REPLAY_HEADER, 0)
    return replays if _is_count(replays) else 0


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def queue_origin(queue: str, exchange: str, routing_key: str) -> dict[str, Any]:
    """The origin fields of a queue message's death."""
    return {"original_queue": queue, "original_exchange": exchange,
            "original_routing_key": routing_key}


def topic_origin(
    topic: str, partition: int, offset: int, group: str | None = None,
) -> dict[str, Any]:
    """The origin fields of a topic record's death (`original_group`: the group that
    failed it, where a replay returns it)."""
    out: dict[str, Any] = {"original_topic": topic, "original_partition": partition,
                           "original_offset": offset}
    if group is not None:
        out["original_group"] = group
    return out


def death_header(
    *, reason: str, headers: Mapping[str, Any], origin: Mapping[str, Any],
    error: Mapping[str, Any] | None = None, retry_count: int = 0,
    first_attempt: float | None = None, last_attempt: float | None = None,
    consumer_id: str | None = None,
) -> dict[str, Any]:
    """The `x-dead-letter` header of a message (with these `headers`) dying now: the
    one builder of it, used by the broker (TTL, overflow, rejection, delivery
    limit) and by the pipeline (a handler failure), so both write the same
    fields in the same order, times in `iso_utc`, `death_count` from
    `deaths_before`. `origin` is `queue_origin(...)` or `topic_origin(...)`."""
    return {
        "reason": reason,
        "error": dict(error) if error is not None else None,
        "retry_count": max(0, retry_count),
        "first_attempt": iso_utc(first_attempt),
        "last_attempt": iso_utc(last_attempt),
        **origin,
        "consumer_id": consumer_id,
        "death_count": deaths_before(headers) + 1,
    }


def dead_letter_id(owner: str, base: str | None, death_count: object) -> str | None:
    """The message id of the dead letter that consumer or group `owner` writes for
    the message or record `base` (None: a message without an id has none):
    `<owner>:<base>`, with `~<n>` from the second death on (`death_count` n).

    Another consumer or group failing the same message or record, and a later
    death of it, get their own id, so the publish dedup window never swallows
    their dead letter; the same failure applied again (a step re-applied after
    a crash) keeps its id and is still stored once."""
    if base is None:
        return None
    mid = f"{owner}:{base}"
    if isinstance(death_count, int) and not isinstance(death_count, bool) and death_count > 1:
        mid = f"{mid}~{death_count}"
    return mid
