"""The header vocabulary of dead letters and replays, shared by every layer.

A base module (beside `runner.datapath`): the broker builds and reads these
headers, the engine adds a record's facts when it dead-letters one into a
queue, and the daemon's DLQ tools (on the engine contract) read them back --
so none of them needs another's internals to agree on a name.

`x-dead-letter` (TOPOLOGY.md) says where a message died (`replay_target`); a
replay removes it and counts `x-replay-count` (`replayed_headers`). A topic
record dead-lettered into a queue carries its key, timestamp, topic,
partition and offset in the `x-original-*` / `x-record-*` headers, and a
message routed into a topic keeps its routing key and exchange.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass
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
