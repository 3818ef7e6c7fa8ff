"""The embedded engine: one object that opens `log/` and `broker/` for a Topology.

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

import base64
import fcntl
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, NamedTuple

import orjson

from runner.broker.broker import Broker, PublishRefused
from runner.broker.changes import exchange_unsafe, queue_unsafe
from runner.broker.deadletter import DEATH_HEADER as DEAD_LETTER_HEADER
from runner.broker.deadletter import REPLAY_HEADER as REPLAY_COUNT_HEADER
from runner.broker.deadletter import replay_target
from runner.broker.headers import decode_value, encode_value
from runner.broker.message import Message
from runner.broker.routing import Route
from runner.clock import Clock, SystemClock
from runner.errors import (
    Conflict,
    EngineError,
    InvalidRequest,
    NotFound,
    Refused,
    StorageError,
    UnsafeChange,
)
from runner.log.journal import StepJournal
from runner.log.partition import TopicPartition as LogTopicPartition
from runner.log.record import Fsync
from runner.log.store import AppendRecord, Store
from runner.topology.model import Queue, Topology

log = logging.getLogger(__name__)


class FsyncPolicy(str, Enum):  # noqa: UP042 - contract type, str() kept as is
    ALWAYS = "always"
    INTERVAL = "interval"
    NEVER = "never"


class TopicPartition(NamedTuple):
    topic: str
    partition: int


# ------------------------------------------------------------------ inputs


@dataclass(slots=True)
class OutMessage:
    """A message to publish through an exchange or straight into a queue."""

    body: bytes
    routing_key: str = ""
    headers: dict[str, Any] = field(default_factory=dict)
    priority: int | None = None
    ttl_s: float | None = None  # per-message TTL (AMQP `expiration`)
    message_id: str | None = None  # dedup within the engine's window when set
    content_type: str | None = None  # "application/json" when body is JSON text


@dataclass(slots=True)
class OutRecord:
    """A record to append to a topic."""

    value: bytes | None  # None: a tombstone
    key: bytes | None = None  # None: the topic's `key` field from a JSON value, else keyless
    headers: dict[str, Any] = field(default_factory=dict)
    partition: int | None = None  # explicit partition, else partitioner
    timestamp_ms: int | None = None  # default: now
    producer_id: str | None = None  # idempotent producer: (producer_id, sequence)
    sequence: int | None = None


# ------------------------------------------------------------------ outputs


@dataclass(frozen=True, slots=True)
class Record:
    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    headers: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class QueueDelivery:
    """A message handed to a consumer; settle it with ack / nack / retry / dead_letter."""

    queue: str
    delivery_id: int  # unique per queue for the life of the data dir
    body: bytes
    headers: Mapping[str, Any]
    routing_key: str
    exchange: str  # "" when published straight to the queue
    priority: int
    redelivered: bool
    delivery_count: int  # 1 on first delivery
    message_id: str | None
    timestamp_ms: int
    content_type: str | None


@dataclass(frozen=True, slots=True)
class PartitionInfo:
    partition: int
    log_start_offset: int
    log_end_offset: int
    size_bytes: int


@dataclass(frozen=True, slots=True)
class GroupPartition:
    topic: str
    partition: int
    committed: int | None  # None: never committed
    position: int  # committed, else the reset position
    log_end_offset: int
    lag: int
    member: str | None


@dataclass(frozen=True, slots=True)
class GroupInfo:
    name: str
    members: tuple[str, ...]
    partitions: tuple[GroupPartition, ...]


@dataclass(frozen=True, slots=True)
class ReplayOutcome:
    """What `Engine.replay_detail` did: how many dead letters went back, how many
    stayed, and why (reason sentence -> count)."""

    replayed: int
    skipped: int
    reasons: Mapping[str, int]


@dataclass(frozen=True, slots=True)
class QueueInfo:
    name: str
    ready: int
    unacked: int
    delayed: int  # waiting for a retry delay
    oldest_ready_age_s: float  # 0 when empty


# ------------------------------------------------------------------ atomic step


@dataclass(slots=True)
class Step:
    """One durable unit for exactly-once: all of it happens or none of it.

    `acks`: queue deliveries to ack; `commits`: group offsets to commit (next
    offset to read); `publishes`: (exchange, messages) to route; `queue_puts`:
    (queue, messages) straight into queues; `appends`: (topic, records).
    """

    acks: list[tuple[str, int]] = field(default_factory=list)
    commits: list[tuple[str, TopicPartition, int]] = field(default_factory=list)
    publishes: list[tuple[str, list[OutMessage]]] = field(default_factory=list)
    queue_puts: list[tuple[str, list[OutMessage]]] = field(default_factory=list)
    appends: list[tuple[str, list[OutRecord]]] = field(default_factory=list)


# ------------------------------------------------------------------ counters


@dataclass(slots=True)
class QueueStats:
    ready: int = 0
    unacked: int = 0
    published: int = 0
    delivered: int = 0
    acked: int = 0
    redelivered: int = 0
    rejected_publishes: int = 0
    dead_lettered: dict[str, int] = field(default_factory=dict)  # reason -> count
    oldest_ready_age_s: float = 0.0


@dataclass(slots=True)
class EngineStats:
    """A snapshot for the metrics collector (cheap: copies of plain ints)."""

    topic_records: dict[str, int] = field(default_factory=dict)
    partitions: dict[TopicPartition, PartitionInfo] = field(default_factory=dict)
    group_committed: dict[tuple[str, TopicPartition], int] = field(default_factory=dict)
    group_lag: dict[tuple[str, TopicPartition], int] = field(default_factory=dict)
    group_members: dict[str, int] = field(default_factory=dict)
    exchange_published: dict[str, int] = field(default_factory=dict)
    exchange_unroutable: dict[str, int] = field(default_factory=dict)
    queues: dict[str, QueueStats] = field(default_factory=dict)


# ------------------------------------------------------------------ engine internals

REPLAY_NOT_A_DEAD_LETTER = "not a dead letter (no x-dead-letter header naming where it died)"
REPLAY_QUEUE_FULL = "original queue is full (the rest waits for the next replay)"
REPLAY_PREFIX = "__replay."  # + group: the replay queue of a consumer group
STEP_PRODUCER = "__engine_step__"  # producer id of records appended by commit_step
STEP_STRIDE = 1 << 20  # sequence numbers per step and partition
DEDUP_WINDOW_S = 3600.0

# headers the engine adds to records and replayed records
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
_RECORD_HEADERS = (
    RECORD_TOPIC_HEADER, RECORD_PARTITION_HEADER, RECORD_OFFSET_HEADER, ORIGINAL_KEY_HEADER,
    ORIGINAL_KEY_B64_HEADER, ORIGINAL_TIMESTAMP_HEADER, NULL_VALUE_HEADER,
)


def replay_queue_name(group: str) -> str:
    return f"{REPLAY_PREFIX}{group}"


def encode_headers(headers: Mapping[str, Any]) -> tuple[tuple[str, bytes], ...]:
    """Record headers on disk: bytes as they are, anything else as JSON text."""
    out: list[tuple[str, bytes]] = []
    for name, value in headers.items():
        if isinstance(value, bytes | bytearray | memoryview):
            out.append((name, bytes(value)))
        else:
            out.append((name, orjson.dumps(value, default=str)))
    return tuple(out)


def decode_headers(headers: Sequence[tuple[str, bytes]]) -> dict[str, Any]:
    """Back from disk: JSON values, else UTF-8 text, else bytes."""
    out: dict[str, Any] = {}
    for name, raw in headers:
        try:
            out[name] = orjson.loads(raw)
        except orjson.JSONDecodeError:
            try:
                out[name] = raw.decode()
            except UnicodeDecodeError:
                out[name] = raw
    return out


def _content_type(value: bytes | None) -> str | None:
    """`application/json` when `value` is JSON text, else None (bytes)."""
    if not value:
        return None
    try:
        orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    return JSON_CONTENT_TYPE


def _b64(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode()


def _unb64(text: str | None) -> bytes | None:
    return None if text is None else base64.b64decode(text)


def _enc_msg(m: OutMessage) -> dict[str, Any]:
    return {"b": _b64(m.body), "k": m.routing_key, "h": encode_value(m.headers), "p": m.priority,
            "t": m.ttl_s, "i": m.message_id, "c": m.content_type}


def _dec_msg(d: Mapping[str, Any]) -> OutMessage:
    return OutMessage(body=_unb64(d["b"]) or b"", routing_key=d["k"], headers=decode_value(d["h"]),
                      priority=d["p"], ttl_s=d["t"], message_id=d["i"], content_type=d["c"])


def _record_of_message(m: OutMessage, exchange: str) -> AppendRecord:
    """A message routed to a topic: its body as value, keyed by the topic's `key`
    field when the topic has one (else keyless); routing facts go in headers."""
    headers = dict(m.headers)
    headers[ROUTING_KEY_HEADER] = m.routing_key
    headers[EXCHANGE_HEADER] = exchange
    return AppendRecord(value=m.body, key=None, headers=encode_headers(headers),
                        message_id=m.message_id)


def _to_append(r: OutRecord) -> AppendRecord:
    return AppendRecord(
        value=r.value, key=r.key, headers=encode_headers(r.headers), partition=r.partition,
        timestamp_ms=r.timestamp_ms, producer_id=r.producer_id, sequence=r.sequence,
    )


def _topic_reach(topology: Topology) -> set[str]:
    """Exchanges from which some topic binding is reachable (e2e and alternates)."""
    edges: dict[str, set[str]] = {}
    reach: set[str] = set()
    for b in topology.bindings:
        if b.topic is not None:
            reach.add(b.exchange)
        if b.to_exchange is not None:
            edges.setdefault(b.to_exchange, set()).add(b.exchange)
    for name, ex in topology.exchanges:
        if ex.alternate_exchange:
            edges.setdefault(ex.alternate_exchange, set()).add(name)
    todo = list(reach)
    while todo:
        for src in edges.get(todo.pop(), ()):
            if src not in reach:
                reach.add(src)
                todo.append(src)
    return reach


class Engine:
    """The embedded engine for one Topology in one data directory.

    Storage under `data_dir`: `topics/`, `__consumer_offsets/`, `__log_steps/`
    (runner.log.Store), `queues/`, `steps/`, `spill/`, `epoch` (runner.broker.Broker)
    and `engine_steps/` (the journal of cross-system steps, see `commit_step`).
    """

    topology: Topology
    _lock_fd: int

    @classmethod
    def open(
        cls,
        topology: Topology,
        data_dir: Path,
        *,
        fsync: FsyncPolicy = FsyncPolicy.ALWAYS,
        clock: Clock | None = None,
        memory_budget_bytes: int = 256 * 1024 * 1024,
        disk_budget_bytes: int | None = None,
    ) -> Engine:
        """Open (recovering) the data dir and declare everything in `topology`."""
        clock = clock or SystemClock()
        data_dir = Path(data_dir)
        try:
            data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot create data dir {data_dir}: {exc.strerror}") from exc
        policy = Fsync(FsyncPolicy(fsync).value)
        lock = _lock_data_dir(data_dir)
        engine = cls.__new__(cls)
        engine._lock_fd = lock
        try:
            engine._setup(topology, data_dir, policy, clock, memory_budget_bytes,
                          disk_budget_bytes)
        except BaseException:
            os.close(lock)
            raise
        return engine

    def __init__(self) -> None:  # pragma: no cover - use Engine.open
        raise TypeError("use Engine.open(topology, data_dir, ...)")

    def _setup(
        self, topology: Topology, data_dir: Path, fsync: Fsync, clock: Clock,
        memory_budget_bytes: int, disk_budget_bytes: int | None,
    ) -> None:
        self.clock = clock
        self.data_dir = data_dir
        self.fsync = fsync
        self.topology = Topology()
        self.sink_dropped = 0  # dead letters to a topic that refused them
        self._topic_reach: set[str] = set()
        self._closed = False
        self._half_applied = False
        self._seek_versions: dict[str, int] = {}
        try:
            self.store = Store(data_dir, fsync=fsync, clock=clock,
                               dedup_window_s=DEDUP_WINDOW_S)
        except OSError as exc:
            raise StorageError(f"cannot open the topics in {data_dir}: {exc}") from exc
        try:
            self.broker = Broker(
                data_dir, fsync=fsync, clock=clock, memory_budget_bytes=memory_budget_bytes,
                disk_budget_bytes=disk_budget_bytes, dedup_window_s=DEDUP_WINDOW_S,
                topic_sink=self._sink,
            )
            self.journal = StepJournal(data_dir / "engine_steps", fsync=fsync, clock=clock)
        except BaseException as exc:
            self.store.close()
            if isinstance(exc, OSError):
                raise StorageError(f"cannot open the queues in {data_dir}: {exc}") from exc
            raise
        try:
            self.apply(topology, force=True)
            self._recover_steps()
        except BaseException:
            self._close_parts()
            raise

    # -------------------------------------------------------------- lifecycle
    def _broker_queues(self, new: Topology) -> list[Queue]:
        """The topology's queues plus one replay queue per consumer group (and
        the non-empty replay queues of removed groups, kept until drained)."""
        queues = [q for _, q in new.queues]
        wanted = {replay_queue_name(g) for g, _ in new.consumer_groups}
        for name, mq in self.broker.queues.items():
            if name.startswith(REPLAY_PREFIX) and name not in wanted and len(mq):
                wanted.add(name)
        queues.extend(Queue(name) for name in sorted(wanted))
        return queues

    def apply(self, new: Topology, *, force: bool = False) -> list[str]:
        """Apply a new topology as one step; returns a line per applied change.
        Raises UnsafeChange (nothing applied) for what TOPOLOGY.md calls unsafe."""
        queues = self._broker_queues(new)
        problems: list[str] = []
        router = self.broker.router
        for _, ex in new.exchanges:
            if router.has_exchange(ex.name):
                problems.extend(exchange_unsafe(router.exchange(ex.name), ex))
        names = {q.name for q in queues}
        for q in queues:
            mq = self.broker.queues.get(q.name)
            if mq is not None:
                problems.extend(queue_unsafe(mq.spec, q))
        for name, mq in self.broker.queues.items():
            if name not in names and len(mq) and not force:
                problems.append(f"queue '{name}' holds {len(mq)} messages: not removed")
        problems.extend(self._topic_problems(new))
        if problems:
            raise UnsafeChange("; ".join(problems))
        lines = self.store.apply(new.topic_map(), new.group_map())
        lines += self.broker.apply([e for _, e in new.exchanges], queues, new.bindings,
                                   force=force)
        self.topology = new
        self._topic_reach = _topic_reach(new)
        return lines

    def _topic_problems(self, new: Topology) -> list[str]:
        """What `Store.apply` would refuse (same sentences), checked up front so a
        refused reload touches neither side."""
        problems: list[str] = []
        topics = new.topic_map()
        for name in self.store.topic_names():
            old = self.store.topic(name)
            parts = self.store.partitions(name)
            t = topics.get(name)
            if t is None:
                if any(p.log_end_offset > p.log_start_offset for p in parts):
                    problems.append(f"topic {name} holds records and cannot be removed")
                continue
            if t.partitions < len(parts):
                problems.append(f"topic {name}: partitions cannot shrink from "
                                f"{len(parts)} to {t.partitions}")
            if old.compact and not t.compact:
                problems.append(f"topic {name}: cleanup_policy cannot change from compact "
                                f"to delete")
        return problems

    def tick(self) -> None:
        """Time-driven work; see the module docstring."""
        if self._half_applied:
            try:
                self._recover_steps()
            except Exception as exc:
                log.error("engine steps still not applied: %s", exc)
        self.store.tick()
        self.broker.tick()
        if self.fsync is Fsync.INTERVAL:
            self.journal.maybe_sync()

    def flush(self) -> None:
        """fsync everything written so far (used at shutdown and by `interval`)."""
        self.store.flush()
        self.broker.flush()
        self.journal.sync()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._close_parts()
        finally:
            os.close(self._lock_fd)  # releases the data dir lock

    def _close_parts(self) -> None:
        for part in (self.journal, self.broker, self.store):
            try:
                part.close()
            except Exception:  # close the others anyway
                log.exception("closing %s failed", type(part).__name__)

    # -------------------------------------------------------------- producing
    def _sink(self, topic: str, message: Message) -> None:
        """Dead letters reaching a topic (a DLX bound to a topic, or to_topic)."""
        rec = _record_of_message(
            OutMessage(message.body, message.routing_key, dict(message.headers),
                       message_id=message.message_id), "")
        try:
            self.store.append(topic, [rec])
        except EngineError as exc:
            self.sink_dropped += 1
            log.warning("dead letter to topic %s dropped: %s", topic, exc)

    def _check_topic_routes(self, exchange: str, messages: Sequence[OutMessage]) -> None:
        if exchange not in self._topic_reach:
            return
        for m in messages:
            route = self.broker.router.route(exchange, m.routing_key, m.headers, count=False)
            for topic in route.topics:
                self.store.resolve(topic, [_record_of_message(m, exchange)])

    def _append_routed(self, exchange: str, messages: Sequence[OutMessage],
                       routes: Sequence[Route]) -> None:
        for m, route in zip(messages, routes, strict=False):
            for topic in route.topics:
                self.store.append(topic, [_record_of_message(m, exchange)])

    def publish(self, exchange: str, messages: Sequence[OutMessage]) -> list[list[str]]:
        """Route through an exchange; per message the queue/topic names it reached.
        Forbidden for internal exchanges, NotFound for unknown ones, Refused
        (accepted=i, routed=...) at the first message some destination refuses.

        A message reaching a topic becomes a record: value = body, key = the
        topic's `key` field of a JSON body when the topic has one (else
        keyless), headers = the message headers plus `x-routing-key` and
        `x-exchange` (and `x-message-id` when it has one: within the dedup
        window a message id is stored once per topic)."""
        self.broker.router.check_publish(exchange)
        self._check_topic_routes(exchange, messages)
        try:
            routes = self.broker.publish(exchange, messages)
        except PublishRefused as exc:
            # what was stored before the refused message, and the refused message
            # in the topics that `routed` says took it (a topic never refuses here)
            self._append_routed(exchange, messages, exc.routes)
            topics = self._topic_map_names()
            took = Route((), tuple(t for t in exc.routed if t in topics))
            self._append_routed(exchange, [messages[exc.accepted]], [took])
            raise
        self._append_routed(exchange, messages, routes)
        return [r.destinations for r in routes]

    def _topic_map_names(self) -> set[str]:
        return set(self.store.topic_names())

    def publish_to_queue(self, queue: str, messages: Sequence[OutMessage]) -> list[list[str]]:
        """AMQP's default exchange: straight into one queue."""
        return [r.destinations for r in self.broker.publish_to_queue(queue, messages)]

    def append(self, topic: str, records: Sequence[OutRecord]) -> list[tuple[int, int]]:
        """Append records; returns (partition, offset) per record.
        InvalidRequest for a keyless record on a compacted topic, TooLarge over
        max_message_bytes, NotFound for an unknown topic or partition."""
        return self.store.append(topic, [_to_append(r) for r in records])

    # -------------------------------------------------------------- topics
    def read(
        self, topic: str, partition: int, offset: int, *, max_records: int = 100,
        max_bytes: int = 1024 * 1024,
    ) -> tuple[list[Record], int]:
        """Records from `offset` on, and the next offset to read: after the last
        record returned, or past offsets compaction removed up to the log end
        (a reader at a compacted tail moves on instead of reading it forever).
        OffsetOutOfRange below the log start offset."""
        recs, next_offset = self.store.read_from(topic, partition, offset,
                                                 max_records=max_records, max_bytes=max_bytes)
        out = [Record(topic, partition, r.offset, r.timestamp_ms, r.key, r.value,
                      decode_headers(r.headers)) for r in recs]
        return out, next_offset

    def offset_for_time(self, topic: str, partition: int, timestamp_ms: int) -> int:
        return self.store.offset_for_timestamp(LogTopicPartition(topic, partition), timestamp_ms)

    def partitions(self, topic: str) -> list[PartitionInfo]:
        return [PartitionInfo(p.partition, p.log_start_offset, p.log_end_offset, p.size_bytes)
                for p in self.store.partitions(topic)]

    # -------------------------------------------------------------- groups
    def join(self, group: str, member_id: str) -> None:
        self.store.groups.join(group, member_id)

    def leave(self, group: str, member_id: str) -> None:
        self.store.groups.leave(group, member_id)

    def heartbeat(self, group: str, member_id: str) -> None:
        self.store.groups.heartbeat(group, member_id)

    def assignment(self, group: str, member_id: str) -> list[TopicPartition]:
        return [TopicPartition(*tp) for tp in self.store.groups.assignment(group, member_id)]

    def position(self, group: str, tp: TopicPartition) -> int:
        """The committed offset, else the group's reset position."""
        return self.store.groups.position(group, _log_tp(tp))

    def commit(
        self, group: str, offsets: Mapping[TopicPartition, int], *,
        member_id: str | None = None, generation: int | None = None,
        external: bool | None = None,
    ) -> None:
        """Commit next offsets to read.

        `member_id` / `generation`: a member of the group committing (the
        pipeline); a zombie is fenced off with Conflict "group 'g' rebalanced:
        ...". `external` (default: no `member_id` given) is a commit from
        outside, e.g. HTTP: refused with Conflict for a group this runner runs
        with a handler (its members own the offsets; seek it instead)."""
        if external is None:
            external = member_id is None
        if external:
            g = self.topology.group_map().get(group)
            if g is not None and g.handler is not None:
                raise Conflict(f"group {group} is run by this daemon's handler; use "
                               f"POST /v1/groups/{group}/offsets to seek it")
        self.store.groups.commit(group, {_log_tp(tp): off for tp, off in offsets.items()},
                                 member_id=member_id, generation=generation)

    def seek(
        self, group: str, tp: TopicPartition, *, offset: int | None = None,
        timestamp_ms: int | None = None,
    ) -> int:
        """Move the group's position (a commit); bumps `seek_version(group)` so the
        group's running members re-read their positions and do not commit
        records they read before the seek."""
        pos = self.store.groups.seek(group, _log_tp(tp), offset=offset,
                                     timestamp_ms=timestamp_ms)
        self._seek_versions[group] = self._seek_versions.get(group, 0) + 1
        return pos

    def seek_version(self, group: str) -> int:
        """How many seeks `group` has had since the engine opened (members compare it
        on every poll: a change means their positions are stale)."""
        return self._seek_versions.get(group, 0)

    def group_info(self, group: str) -> GroupInfo:
        groups = self.store.groups
        config = groups.config(group)
        parts: list[GroupPartition] = []
        for topic in config.topics:
            for p in range(self.store.partition_count(topic)):
                tp = _log_tp(TopicPartition(topic, p))
                pos = groups.position(group, tp)
                end = self.store.log_end(tp)
                parts.append(GroupPartition(topic, p, groups.committed(group, tp), pos, end,
                                            max(0, end - pos), groups.owner(group, tp)))
        return GroupInfo(group, tuple(groups.members(group)), tuple(parts))

    # -------------------------------------------------------------- queues
    def pull(
        self, queue: str, max_messages: int, *, lease_s: float, consumer_id: str,
    ) -> list[QueueDelivery]:
        """Deliver up to `max_messages` ready messages under a lease; an expired
        lease redelivers. Expired (TTL) messages are dead-lettered, not delivered."""
        got = self.broker.pull(queue, max_messages, consumer_id=consumer_id, lease_s=lease_s)
        return [QueueDelivery(*d) for d in got]

    def ack(self, queue: str, delivery_ids: Sequence[int]) -> list[int]:
        """Ack; returns the ids that were unknown or expired (the known ones settle)."""
        return self.broker.ack(queue, delivery_ids)

    def nack(self, queue: str, delivery_ids: Sequence[int], *, requeue: bool) -> list[int]:
        """Requeue in place (redelivered) or dead-letter with reason `rejected`."""
        return self.broker.nack(queue, delivery_ids, requeue=requeue)

    def retry_later(self, queue: str, delivery_id: int, delay_s: float) -> None:
        """Settle now and make the message ready again after `delay_s` without
        blocking the messages behind it (delivery_count kept)."""
        self.broker.retry_later(queue, delivery_id, delay_s)

    def dead_letter(
        self, queue: str, delivery_id: int, *, reason: str, death: Mapping[str, Any],
        to_queue: str | None = None, to_topic: str | None = None,
    ) -> None:
        """Settle and dead-letter with the `x-dead-letter` header `death`, through
        the queue's dead_letter exchange, or into `to_queue` / `to_topic` (a
        DLQ policy's dead_letter_queue)."""
        if to_topic is not None:
            self.store.topic(to_topic)  # NotFound before the message is settled
        self.broker.dead_letter(queue, delivery_id, reason=reason, death=death,
                                to_queue=to_queue, to_topic=to_topic)

    def peek(self, queue: str, n: int) -> list[QueueDelivery]:
        return [QueueDelivery(*d) for d in self.broker.peek(queue, n)]

    def replay(self, queue: str, max_messages: int | None = None) -> int:
        """Dead letters in `queue` back to where they died; how many went back
        (`replay_detail` also says what was skipped and why)."""
        return self.replay_detail(queue, max_messages).replayed

    def replay_detail(self, queue: str, max_messages: int | None = None) -> ReplayOutcome:
        """Dead letters in `queue` back to where they died (see TOPOLOGY.md).

        A queue message goes back into its original queue. A topic record
        goes to the replay queue of the group that failed it
        (`__replay.<group>`, read by the group's workers before its
        partitions), never to the topic again. What cannot go back stays in
        `queue` and is counted in `skipped`, by reason: a message that is no
        dead letter, an original queue or group that no longer exists, an
        original queue that is full (the rest waits for the next replay)."""
        info = self.broker.queue_info(queue)
        reasons: dict[str, int] = {}

        def skip(reason: str, n: int = 1) -> None:
            reasons[reason] = reasons.get(reason, 0) + n

        targets = 0
        gone_queues = 0
        look = info.ready if max_messages is None else min(info.ready, max_messages + 1000)
        for d in self.broker.peek(queue, look) if look else ():
            target = replay_target(QueueDelivery(*d).headers)
            if target is None:
                skip(REPLAY_NOT_A_DEAD_LETTER)
                continue
            if max_messages is not None and targets >= max_messages:
                break
            targets += 1
            if target.queue is not None and target.queue not in self.broker.queues:
                skip(f"original queue '{target.queue}' no longer exists")
                gone_queues += 1
        result = self.broker.replay(queue, max_messages)
        placed = 0
        kept = 0
        for letter in result.topic_letters:
            group = letter.death.get("original_group")
            target_q = replay_queue_name(str(group)) if group else None
            msg = letter.message
            if target_q is not None and target_q in self.broker.queues:
                headers = dict(msg.headers)
                headers[RECORD_TOPIC_HEADER] = letter.target.topic
                headers[RECORD_PARTITION_HEADER] = letter.target.partition
                headers[RECORD_OFFSET_HEADER] = letter.target.offset
                self.broker.publish_to_queue(target_q, [Message(
                    msg.body, msg.routing_key, headers, msg.priority, None, None,
                    msg.content_type)])
                placed += 1
                continue
            log.warning("replay from %s: no group %r to return a %s record to; kept",
                        queue, group, letter.target.topic)
            skip(f"consumer group '{group}' no longer exists" if group
                 else "a topic record without its consumer group")
            kept += 1
            headers = dict(msg.headers)
            headers.pop(REPLAY_COUNT_HEADER, None)
            headers[DEAD_LETTER_HEADER] = dict(letter.death)
            self.broker.publish_to_queue(queue, [Message(
                msg.body, msg.routing_key, headers, msg.priority, None, None,
                msg.content_type)])
        left = targets - result.replayed - placed - kept - gone_queues
        if left > 0:
            skip(REPLAY_QUEUE_FULL, left)
        return ReplayOutcome(result.replayed + placed, sum(reasons.values()), reasons)

    def replay_queue(self, group: str) -> str | None:
        """The replay queue of `group` (None when the group has none)."""
        name = replay_queue_name(group)
        return name if name in self.broker.queues else None

    def replayed_record(self, delivery: QueueDelivery) -> Record:
        """The topic record carried by a delivery from a replay queue."""
        h = dict(delivery.headers)
        topic = str(h.pop(RECORD_TOPIC_HEADER, ""))
        partition = int(h.pop(RECORD_PARTITION_HEADER, -1) or 0)
        offset = int(h.pop(RECORD_OFFSET_HEADER, -1) or 0)
        key_text = h.pop(ORIGINAL_KEY_HEADER, None)
        key_b64 = h.pop(ORIGINAL_KEY_B64_HEADER, None)
        key = (str(key_text).encode() if key_text is not None
               else _unb64(str(key_b64)) if key_b64 is not None else None)
        ts = h.pop(ORIGINAL_TIMESTAMP_HEADER, None)
        ts_ms = int(ts) if isinstance(ts, int) else delivery.timestamp_ms
        value = None if h.pop(NULL_VALUE_HEADER, None) is True else delivery.body
        return Record(topic, partition, offset, ts_ms, key, value, h)

    def dead_letter_step(
        self, group: str, record: Record, death: Mapping[str, Any], *,
        to_queue: str | None = None, to_topic: str | None = None,
    ) -> Step:
        """The Step that dead-letters a topic record (add the input's commit or
        ack to it, then `commit_step`). Into a topic the record keeps value
        (a tombstone stays one), key and headers. Into a queue it becomes a
        message: the value as body with content type `application/json` when
        it is JSON, a null value as an empty body with `x-null-value: true`,
        the key in `x-original-key` (or `-b64`), the timestamp in
        `x-original-timestamp`; its message id is the record's own
        (`x-message-id`), else `<topic>/<partition>/<offset>`, with `~<n>` added
        from the second death on (`death_count` n) so the dedup window never
        swallows a later death of the same record."""
        death = dict(death)
        death.setdefault("original_group", group)
        headers = dict(record.headers)
        headers[DEAD_LETTER_HEADER] = death
        step = Step()
        if to_topic is not None:
            step.appends.append((to_topic, [OutRecord(value=record.value, key=record.key,
                                                      headers=headers)]))
            return step
        if to_queue is None:
            raise InvalidRequest(f"dead letter of group {group!r} needs to_queue or to_topic")
        if record.key is not None:
            try:
                headers[ORIGINAL_KEY_HEADER] = record.key.decode()
            except UnicodeDecodeError:
                headers[ORIGINAL_KEY_B64_HEADER] = _b64(record.key)
        headers[ORIGINAL_TIMESTAMP_HEADER] = record.timestamp_ms
        if record.value is None:
            headers[NULL_VALUE_HEADER] = True
        own = headers.get(MESSAGE_ID_HEADER)
        mid = (str(own) if own is not None
               else f"{record.topic}/{record.partition}/{record.offset}")
        deaths = death.get("death_count", 1)
        if isinstance(deaths, int) and deaths > 1:
            mid = f"{mid}~{deaths}"
        step.queue_puts.append((to_queue, [OutMessage(
            body=record.value or b"", routing_key=record.topic, headers=headers,
            message_id=mid, content_type=_content_type(record.value))]))
        return step

    def dead_letter_record(
        self, group: str, record: Record, death: Mapping[str, Any], *,
        to_queue: str | None = None, to_topic: str | None = None,
        with_step: Step | None = None,
    ) -> None:
        """Dead-letter a topic record that `group` failed (durably; together with
        `with_step`, e.g. the commit past it, as one step)."""
        step = self.dead_letter_step(group, record, death, to_queue=to_queue, to_topic=to_topic)
        if with_step is not None:
            step.acks.extend(with_step.acks)
            step.commits.extend(with_step.commits)
            step.publishes.extend(with_step.publishes)
            step.queue_puts.extend(with_step.queue_puts)
            step.appends.extend(with_step.appends)
        self.commit_step(step)

    def queue_info(self, queue: str) -> QueueInfo:
        i = self.broker.queue_info(queue)
        return QueueInfo(i.name, i.ready, i.unacked, i.delayed, i.oldest_ready_age_s)

    # -------------------------------------------------------------- exactly-once
    def commit_step(self, step: Step) -> None:
        """Apply `step` as one durable unit (see `Step`).

        1. Everything is checked first (unknown names, stale delivery ids:
           Conflict, records a topic would refuse); nothing is written on error.
        2. The whole step is written to the engine's journal as one record
           (fsynced per the policy). Outputs get message ids `__e<step>-<n>`
           when they have none; records (appended, or routed to a topic by a
           publish) get their partition fixed and the idempotent producer
           `__engine_step__` with sequence `step * 2^20 + n` per partition.
        3. It is applied: topic records (a re-append is dropped by the
           producer sequence), the broker's acks + publishes as one broker step
           (re-published ids are dropped by its dedup window; acks go by
           message, so a stale delivery id still settles), then the offsets.
        4. It is marked done. At open, steps not marked done are applied again.
        """
        if self._half_applied:
            self._recover_steps()
        for queue, did in step.acks:
            self.broker.check_ids(queue, [did])
        for group, tp, off in step.commits:
            self.store.groups.position(group, _log_tp(tp))
            if off < 0:
                raise InvalidRequest(f"offset {off} for {tp.topic}/{tp.partition} is negative")
        # unknown / internal exchanges and queues, and outputs a full
        # `reject-publish` queue would refuse: Refused before anything is written
        # (a step is all or nothing), as is an exhausted disk budget
        self.broker.check_publish(step.publishes, step.queue_puts)
        if not step.commits and not step.appends and not any(
                self.broker.router.route(ex, m.routing_key, m.headers, count=False).topics
                for ex, msgs in step.publishes if ex in self._topic_reach for m in msgs):
            # queues only: the broker's own step journal makes this one durable
            # unit (it names outputs by its step and acks by message): one journal less
            self.broker.commit_step(acks=step.acks, publishes=step.publishes,
                                    queue_puts=step.queue_puts)
            return
        sid = self.journal_next_id()
        n = 0
        publishes: list[tuple[str, list[OutMessage]]] = []
        records: list[tuple[str, AppendRecord]] = []
        for exchange, msgs in step.publishes:
            owned = []
            for m in msgs:
                m = _with_id(m, f"__e{sid}-{n}")
                n += 1
                owned.append(m)
                route = self.broker.router.route(exchange, m.routing_key, m.headers, count=False)
                records.extend((t, _record_of_message(m, exchange)) for t in route.topics)
            publishes.append((exchange, owned))
        puts: list[tuple[str, list[OutMessage]]] = []
        for queue, msgs in step.queue_puts:
            owned = []
            for m in msgs:
                owned.append(_with_id(m, f"__e{sid}-{n}"))
                n += 1
            puts.append((queue, owned))
        for topic, recs in step.appends:
            records.extend((topic, _to_append(r)) for r in recs)
        resolved: list[list[Any]] = []
        for topic, rec in records:
            ((p, (key, value, headers, ts)),) = self.store.resolve(topic, [rec])
            resolved.append([topic, p, _b64(key), _b64(value),
                             [[h, _b64(v)] for h, v in headers], ts])
        doc = {
            "acks": [[q, d] for q, d in step.acks],
            "commits": [[g, tp.topic, tp.partition, off] for g, tp, off in step.commits],
            "pub": [[ex, [_enc_msg(m) for m in ms]] for ex, ms in publishes],
            "put": [[q, [_enc_msg(m) for m in ms]] for q, ms in puts],
            "rec": resolved,
        }
        written = self.journal.write(orjson.dumps(doc, default=str))
        if written != sid:
            raise StorageError(f"engine step journal out of order ({written} != {sid})")
        try:
            refused = self._apply_step(sid, doc)
        except Exception as exc:
            # durable but half applied: re-applied (idempotently) by the next
            # commit_step or tick, or at the next open
            self._half_applied = True
            log.error("engine step %d is journaled but not fully applied: %s", sid, exc)
            raise StorageError(f"step {sid} is stored but not fully applied yet: {exc}; "
                               "it is completed automatically") from exc
        self.journal.mark_done(sid)
        if refused is not None:
            raise refused

    def journal_next_id(self) -> int:
        """The id the next journal record gets (its offset in the journal log)."""
        return self.journal.next_id

    def _apply_step(self, sid: int, doc: Mapping[str, Any]) -> Refused | None:
        """Apply a journaled step (idempotent). A queue refusing an output
        (`reject-publish`) ends the step like a refused batch: what was stored
        stays, the input is not settled, and the Refused is returned."""
        counters: dict[tuple[str, int], int] = {}
        by_topic: dict[str, list[AppendRecord]] = {}
        for topic, p, key, value, headers, ts in doc["rec"]:
            k = counters.get((topic, p), 0)
            counters[(topic, p)] = k + 1
            by_topic.setdefault(topic, []).append(AppendRecord(
                value=_unb64(value), key=_unb64(key),
                headers=tuple((h, _unb64(v) or b"") for h, v in headers), partition=p,
                timestamp_ms=ts, producer_id=STEP_PRODUCER, sequence=sid * STEP_STRIDE + k,
            ))
        for topic, recs in by_topic.items():
            try:
                self.store.append(topic, recs)
            except NotFound as exc:  # the topic or partition went away before a replay
                log.warning("step %d: records for %s dropped: %s", sid, topic, exc)
            except InvalidRequest as exc:
                # the step producer's sequences only grow and steps apply in order:
                # a lower sequence that is no remembered retry was stored long ago
                log.warning("step %d: records for %s already stored: %s", sid, topic, exc)
        acks = [(str(q), int(d)) for q, d in doc["acks"]]
        pubs = [(str(ex), [_dec_msg(m) for m in ms]) for ex, ms in doc["pub"]
                if self.broker.router.has_exchange(ex)]
        puts = [(str(q), [_dec_msg(m) for m in ms]) for q, ms in doc["put"]
                if q in self.broker.queues]
        acks = [(q, d) for q, d in acks if q in self.broker.queues]
        if acks or pubs or puts:
            try:
                self.broker.commit_step(acks=acks, publishes=pubs, queue_puts=puts)
            except Refused as exc:
                log.warning("step %d: an output was refused: %s", sid, exc)
                return exc
        commits: dict[str, dict[LogTopicPartition, int]] = {}
        for g, topic, p, off in doc["commits"]:
            commits.setdefault(g, {})[LogTopicPartition(topic, p)] = off
        for g, offsets in commits.items():
            try:
                self.store.groups.commit(g, offsets)
            except EngineError as exc:
                log.warning("step %d: commit of group %s dropped: %s", sid, g, exc)
        return None

    def _recover_steps(self) -> None:
        """Apply again every journaled step not marked done (oldest first)."""
        for sid, payload in self.journal.pending():
            log.info("re-applying engine step %d", sid)
            self._apply_step(sid, orjson.loads(payload))
            self.journal.mark_done(sid)
        self._half_applied = False

    # -------------------------------------------------------------- metrics
    def stats(self) -> EngineStats:
        out = EngineStats()
        out.topic_records = self.store.records_appended()
        for topic in self.store.topic_names():
            for pc in self.store.partitions(topic):
                out.partitions[TopicPartition(topic, pc.partition)] = PartitionInfo(
                    pc.partition, pc.log_start_offset, pc.log_end_offset, pc.size_bytes)
        groups = self.store.groups
        for group in groups.names():
            out.group_members[group] = len(groups.members(group))
            for topic in groups.config(group).topics:
                for p in range(self.store.partition_count(topic)):
                    tp = TopicPartition(topic, p)
                    committed = groups.committed(group, _log_tp(tp))
                    if committed is not None:
                        out.group_committed[(group, tp)] = committed
                    out.group_lag[(group, tp)] = groups.lag(group, _log_tp(tp))
        b = self.broker.stats()
        out.exchange_published = b.exchange_published
        out.exchange_unroutable = b.exchange_unroutable
        for name, q in b.queues.items():
            out.queues[name] = QueueStats(
                ready=q.ready, unacked=q.unacked, published=q.published, delivered=q.delivered,
                acked=q.acked, redelivered=q.redelivered,
                rejected_publishes=q.rejected_publishes, dead_lettered=dict(q.dead_lettered),
                oldest_ready_age_s=q.oldest_ready_age_s,
            )
        return out


LOCK_FILE = ".lock"


def _lock_data_dir(data_dir: Path) -> int:
    """Take the exclusive lock of `data_dir` (`<data_dir>/.lock`, holding our pid)
    for the engine's life; StorageError naming the holder's pid when taken.
    The OS drops the lock when the process dies, even by SIGKILL."""
    path = data_dir / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise StorageError(f"cannot open the lock file {path}: {exc.strerror}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        try:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        finally:
            os.close(fd)
        raise StorageError(f"data directory {data_dir} is in use by another runner "
                           f"(pid {holder})") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _log_tp(tp: tuple[str, int]) -> LogTopicPartition:
    return LogTopicPartition(tp[0], tp[1])


def _with_id(m: OutMessage, mid: str) -> OutMessage:
    if m.message_id is not None:
        return m
    return OutMessage(body=m.body, routing_key=m.routing_key, headers=m.headers,
                      priority=m.priority, ttl_s=m.ttl_s, message_id=mid,
                      content_type=m.content_type)
