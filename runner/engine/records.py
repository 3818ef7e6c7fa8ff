"""Record encoding: headers on disk, and messages or OutRecords as records to append.

Also the header names the engine adds to records (a message routed to a
topic) and to dead-lettered or replayed records.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from runner import jsontext
from runner.broker.headers import tag_value, untag_value
from runner.engine.values import OutMessage, OutRecord
from runner.log.store import AppendRecord

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


def encode_headers(headers: Mapping[str, Any]) -> tuple[tuple[str, bytes], ...]:
    """Record headers on disk, each value read back exactly by `decode_headers`.

    Values are JSON text in the queues' tagged form (`runner.broker.headers`,
    the one header codec: bytes as `{"$b64": ...}`, tuples and odd dicts
    tagged). Bytes that no reader could take for text or JSON (not UTF-8)
    stay raw, as Kafka clients write and expect them."""
    out: list[tuple[str, bytes]] = []
    for name, value in headers.items():
        if isinstance(value, bytes | bytearray | memoryview):
            raw = bytes(value)
            if not _reads_as_text(raw):
                out.append((name, raw))
                continue
            value = raw
        out.append((name, jsontext.dumps(tag_value(value), default=str)))
    return tuple(out)


def _reads_as_text(raw: bytes) -> bool:
    try:
        raw.decode()
    except UnicodeDecodeError:
        return False
    return True


def decode_headers(headers: Sequence[tuple[str, bytes]]) -> dict[str, Any]:
    """Back from disk: tagged JSON values, else UTF-8 text (a raw header a Kafka
    client wrote), else bytes."""
    out: dict[str, Any] = {}
    for name, raw in headers:
        try:
            out[name] = untag_value(jsontext.loads(raw))
        except ValueError:
            try:
                out[name] = raw.decode()
            except UnicodeDecodeError:
                out[name] = raw
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


def unb64(text: str | None) -> bytes | None:
    return None if text is None else base64.b64decode(text)


def record_of_message(m: OutMessage, exchange: str) -> AppendRecord:
    """A message routed to a topic: its body as value, keyed by the topic's `key`
    field when the topic has one (else keyless); routing facts go in headers."""
    headers = dict(m.headers)
    headers[ROUTING_KEY_HEADER] = m.routing_key
    headers[EXCHANGE_HEADER] = exchange
    return AppendRecord(value=m.body, key=None, headers=encode_headers(headers),
                        message_id=m.message_id)


def to_append(r: OutRecord) -> AppendRecord:
    return AppendRecord(
        value=r.value, key=r.key, headers=encode_headers(r.headers), partition=r.partition,
        timestamp_ms=r.timestamp_ms, producer_id=r.producer_id, sequence=r.sequence,
    )
