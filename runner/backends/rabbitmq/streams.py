"""Reading topic partitions back from their streams (the TopicReader of `RabbitBackend`).

AMQP 0-9-1 reads a stream with basic.consume and the `x-stream-offset` argument
(an offset, `first`, `last`, or an AMQP timestamp in seconds); every delivery
carries its offset in the `x-stream-offset` header. The broker attaches at the
start of the *chunk* that holds the asked offset, so earlier records of that
chunk are delivered too and are dropped here.

A consume never says "this was the end of the stream": a scan ends when it has
what it was asked for, or after `QUIET_S` without a delivery. The log end is
the offset after the last record of the `last` chunk (the broker delivers that
chunk at once), the log start the first record a `first` consume gets. 3.10's
management API has neither (its `messages` count lags by seconds), so each
call costs one connection and at least one quiet period.
"""

from __future__ import annotations

import contextlib
import datetime
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel

from runner.engine.contract import PartitionInfo, Read, Record
from runner.errors import InvalidRequest, OffsetOutOfRange, StorageError

QUIET_S = 0.2  # a scan ends after this long without a delivery
DRAIN_S = 0.05  # once it has enough: the quiet that says nothing is in flight
PREFETCH = 500  # stream consumers need basic.qos: unacked deliveries in flight
SEEK_SLACK_S = 5  # offset_for_time attaches this much before the asked second

OFFSET_HEADER = "x-stream-offset"
KEY_HEADER = "x-runner-key"  # the record's key (bytes)
NULL_HEADER = "x-runner-null"  # a tombstone (no value)
TIMESTAMP_HEADER = "x-runner-timestamp-ms"  # the record's own timestamp, milliseconds
JSON_HEADER = "x-runner-json-headers"  # headers a 3.10 stream cannot keep, as JSON
OWN_HEADERS = (OFFSET_HEADER, KEY_HEADER, NULL_HEADER, TIMESTAMP_HEADER, JSON_HEADER)

Decode = Callable[[Any], Any]


@dataclass(frozen=True, slots=True)
class Entry:
    offset: int
    props: Any
    body: bytes


def stream_headers(headers: Mapping[str, Any],
                   encode: Callable[[Mapping[str, Any]], dict[str, Any]]) -> dict[str, Any]:
    """A record's headers as a 3.10 stream keeps them. Measured on 3.10.8: a decimal
    value (how pika sends a float) crashes the publishing channel, a table or array
    value is silently dropped. So those travel as one JSON object in
    `x-runner-json-headers` (read back by `record_of`); InvalidRequest when JSON
    cannot hold one either (bytes inside a list or map)."""
    plain = {k: v for k, v in headers.items() if not isinstance(v, (float, Mapping, list, tuple))}
    out = encode(plain)
    rest = {k: v for k, v in headers.items() if k not in plain}
    if rest:
        try:
            out[JSON_HEADER] = json.dumps(rest, separators=(",", ":"), allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise InvalidRequest(f"a header value a RabbitMQ stream cannot carry: {exc}") from exc
    return out


def unpack_json_headers(headers: dict[str, Any]) -> None:
    """`x-runner-json-headers` (`stream_headers`) back into `headers`, in place."""
    packed = headers.pop(JSON_HEADER, None)
    if isinstance(packed, bytes):
        packed = packed.decode()
    if isinstance(packed, str):
        headers.update(json.loads(packed))


def record_of(topic: str, partition: int, e: Entry, decode: Decode) -> Record:
    """The Record a stream entry written by `RabbitBackend.append` stands for."""
    raw: Mapping[str, Any] = e.props.headers or {}
    headers = {k: decode(v) for k, v in raw.items()
               if k not in OWN_HEADERS or k == JSON_HEADER}
    unpack_json_headers(headers)
    key = raw.get(KEY_HEADER)
    if isinstance(key, str):
        key = key.encode()
    return Record(topic, partition, e.offset, timestamp_of(e), key,
                  None if raw.get(NULL_HEADER) else e.body, headers)


def timestamp_of(e: Entry) -> int:
    """The record's milliseconds (`x-runner-timestamp-ms`, else the AMQP second)."""
    stamp = (e.props.headers or {}).get(TIMESTAMP_HEADER)
    if isinstance(stamp, int):
        return stamp
    return int(e.props.timestamp or 0) * 1000


def out_of_range(topic: str, partition: int, offset: int, start: int,
                 end: int) -> OffsetOutOfRange:
    """The embedded engine's sentence (runner.log.segment)."""
    where = "below the log start" if offset < start else "above the log end"
    return OffsetOutOfRange(f"{topic}/{partition}: offset {offset} is {where} (log start "
                            f"{start}, log end {end})", log_start=start, log_end=end)


class StreamReader:
    """Blocking reads of the streams of one vhost, each call on a connection of
    its own (run it off the owner's loop)."""

    def __init__(self, connect: Callable[[], pika.BlockingConnection], where: str) -> None:
        self._connect = connect
        self._where = where

    def scan(self, stream: str, start: object, enough: Callable[[list[Entry]], bool],
             *, prefetch: int = PREFETCH) -> list[Entry]:
        """Entries from `start` (an `x-stream-offset` value) until `enough(got)` or
        QUIET_S without a delivery."""
        conn = self._open()
        try:
            ch = conn.channel()
            return self._scan(conn, ch, stream, start, enough, prefetch)
        except pika.exceptions.AMQPError as exc:
            raise StorageError(f"{self._where}: reading stream '{stream}' failed: "
                               f"{exc!r}") from exc
        finally:
            if conn.is_open:
                # what was read stands even if a late delivery makes this fail
                with contextlib.suppress(pika.exceptions.AMQPError):
                    conn.close()

    def bounds(self, stream: str) -> tuple[int, int, Entry | None]:
        """(log start, log end, the first entry or None when empty)."""
        first = self.scan(stream, "first", lambda got: len(got) >= 1, prefetch=1)
        if not first:
            return 0, 0, None
        last = self.scan(stream, "last", lambda got: False)
        end = max([e.offset for e in last] + [first[0].offset]) + 1
        return first[0].offset, end, first[0]

    def read(self, topic: str, stream: str, partition: int, offset: int, max_records: int,
             max_bytes: int | None, decode: Decode) -> Read:
        size = [0]

        def enough(got: list[Entry]) -> bool:
            e = got[-1]
            if e.offset >= offset:
                size[0] += len(e.body)
            n = sum(1 for x in got if x.offset >= offset)
            return n >= max_records or (max_bytes is not None and n > 0 and size[0] >= max_bytes)

        got = [] if offset < 0 else self.scan(stream, offset, enough,
                                              prefetch=min(PREFETCH, max_records + 100))
        if offset < 0 or (got and got[0].offset > offset):
            # below the log start, or in a gap: offsets are not contiguous (3.10.8
            # starts each segment with a tracking chunk that takes an offset)
            start, end, _ = self.bounds(stream)
            if offset < start:
                raise out_of_range(topic, partition, offset, start, end)
        mine = [e for e in got if e.offset >= offset][:max_records]
        if not mine:
            start, end, _ = self.bounds(stream)
            if offset > end or offset < start:
                raise out_of_range(topic, partition, offset, start, end)
            return Read((), offset)
        if max_bytes is not None:
            kept: list[Entry] = []
            total = 0
            for e in mine:
                if kept and total + len(e.body) > max_bytes:
                    break
                kept.append(e)
                total += len(e.body)
            mine = kept
        return Read(tuple(record_of(topic, partition, e, decode) for e in mine),
                    mine[-1].offset + 1)

    def partition(self, stream: str, partition: int) -> PartitionInfo:
        start, end, first = self.bounds(stream)
        return PartitionInfo(partition, start, end, 0,
                             None if first is None else timestamp_of(first))

    def offset_for_time(self, stream: str, timestamp_ms: int) -> int:
        """The first offset whose record's timestamp is >= `timestamp_ms`, scanning
        from the chunk the broker finds for SEEK_SLACK_S before that second."""
        since = max(0, timestamp_ms // 1000 - SEEK_SLACK_S)
        at = datetime.datetime.fromtimestamp(since, tz=datetime.UTC)
        got = self.scan(stream, at, lambda g: timestamp_of(g[-1]) >= timestamp_ms)
        for e in got:
            if timestamp_of(e) >= timestamp_ms:
                return e.offset
        return self.bounds(stream)[1]

    # ------------------------------------------------------------ internals
    def _open(self) -> pika.BlockingConnection:
        try:
            return self._connect()
        except Exception as exc:  # live.Unreachable and pika's own
            raise StorageError(f"{self._where}: cannot connect to read streams: "
                               f"{exc}") from exc

    @staticmethod
    def _scan(conn: pika.BlockingConnection, ch: BlockingChannel, stream: str, start: object,
              enough: Callable[[list[Entry]], bool], prefetch: int) -> list[Entry]:
        # Closing a stream consumer must not reject anything: pika's basic.cancel
        # rejects the deliveries it still holds, and a stream answers a reject by
        # closing the connection (540). So once `enough`, nothing more is acked
        # (the broker sends no more than its prefetch credit) and what is still
        # in flight is received, unacked, before the connection closes.
        got: list[Entry] = []
        done = [False]
        seen = [0]
        ch.basic_qos(prefetch_count=max(1, prefetch))

        def on(channel: BlockingChannel, method: Any, props: Any, body: bytes) -> None:
            seen[0] += 1
            if done[0]:
                return
            offset = (props.headers or {}).get(OFFSET_HEADER)
            if isinstance(offset, int):
                got.append(Entry(int(offset), props, body))
                done[0] = enough(got)
            if not done[0]:
                channel.basic_ack(method.delivery_tag)

        ch.basic_consume(stream, on, arguments={OFFSET_HEADER: start})
        while True:
            before = seen[0]
            conn.process_data_events(time_limit=DRAIN_S if done[0] else QUIET_S)
            if seen[0] == before:
                return got
