"""Record encoding: headers on disk, and messages or OutRecords as records to append.

Also the header names the engine adds to records (a message routed to a
topic) and to dead-lettered or replayed records.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any

from runner import jsontext
from runner.deadletter_headers import (
    EXCHANGE_HEADER,
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
    b64,
    content_type,
)
from runner.engine.values import OutMessage, OutRecord
from runner.header_values import HEADER_TYPES, encode_headers, untag_value
from runner.log.store import AppendRecord

__all__ = [
    "EXCHANGE_HEADER", "HEADER_TYPES", "HeaderValue", "JSON_CONTENT_TYPE", "MESSAGE_ID_HEADER",
    "NULL_VALUE_HEADER", "ORIGINAL_KEY_B64_HEADER", "ORIGINAL_KEY_HEADER",
    "ORIGINAL_TIMESTAMP_HEADER", "RECORD_OFFSET_HEADER", "RECORD_PARTITION_HEADER",
    "RECORD_TOPIC_HEADER", "ROUTING_KEY_HEADER", "b64", "content_type", "decode_headers",
    "encode_headers", "kafka_headers", "raw_headers", "record_of_message", "to_append", "unb64",
]

_RAW, _NULL = "r", "n"

HeaderValue = bytes | None  # a Kafka header value: bytes, or null


def raw_headers(headers: Sequence[tuple[str, HeaderValue]]) -> tuple[tuple[str, bytes], ...]:
    """Headers a Kafka client produced, as stored: every value raw (an empty
    `HEADER_TYPES` after them); when a value is null, stored empty with the letter
    `n` (the others `r`, raw) so that it reads back as null."""
    if not headers:
        return ()
    if all(v is not None for _, v in headers):
        return (*headers, (HEADER_TYPES, b""))  # type: ignore[arg-type]
    kinds = "".join(_NULL if v is None else _RAW for _, v in headers)
    return (*((n, b"" if v is None else v) for n, v in headers),
            (HEADER_TYPES, kinds.encode()))


def kafka_headers(headers: Sequence[tuple[str, bytes]]) -> Sequence[tuple[str, HeaderValue]]:
    """Stored headers as Kafka clients see them: without `HEADER_TYPES`, a value
    stored as null (`n`) null again."""
    for i in range(len(headers) - 1, -1, -1):
        if headers[i][0] == HEADER_TYPES:
            kinds = headers[i][1]
            if b"n" not in kinds:
                return (*headers[:i], *headers[i + 1:])
            return (*((name, None if kinds[j:j + 1] == b"n" else v)
                      for j, (name, v) in enumerate(headers[:i])), *headers[i + 1:])
    return headers


def decode_headers(headers: Sequence[tuple[str, bytes]]) -> dict[str, Any]:
    """Back from disk (a repeated name: the last value). With `HEADER_TYPES`, each
    header before it as its letter says and the rest (added by the store after
    it, e.g. `x-message-id`) raw: UTF-8 text, else bytes. Records written before
    `HEADER_TYPES` existed hold JSON values: tagged JSON, else text, else bytes."""
    mark = -1
    for i in range(len(headers) - 1, -1, -1):
        if headers[i][0] == HEADER_TYPES:
            mark = i
            break
    out: dict[str, Any] = {}
    if mark < 0:
        for name, raw in headers:
            try:
                out[name] = untag_value(jsontext.loads(raw))
            except ValueError:
                out[name] = _raw(raw)
        return out
    kinds = headers[mark][1]
    for i, (name, raw) in enumerate(headers):
        kind = kinds[i:i + 1] if i < mark else b""
        if i == mark:
            continue
        if kind == b"j":
            try:
                out[name] = untag_value(jsontext.loads(raw))
                continue
            except ValueError:
                pass
        elif kind == b"b":
            out[name] = bytes(raw)
            continue
        elif kind == b"n":
            out[name] = None
            continue
        out[name] = _raw(raw)
    return out


def _raw(raw: bytes) -> str | bytes:
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return bytes(raw)


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
