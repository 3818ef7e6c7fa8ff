"""A small in-memory engine with the Engine contract's semantics, for in-process daemon tests.

Not the embedded engine: just enough routing, queues, leases, topics and
groups to drive the HTTP layer, the metrics collector and reloads through a
real aiohttp server. The end-to-end tests run the real engine.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from runner.engine import (
    REPLAY_NOT_A_DEAD_LETTER,
    EngineStats,
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
    TopicPartition,
)
from runner.errors import Forbidden, InvalidRequest, NotFound, Refused, UnsafeChange
from runner.topology.matching import topic_matches
from runner.topology.model import Overflow, Topology


@dataclass
class _Msg:
    out: OutMessage
    exchange: str
    count: int = 0


@dataclass
class FakeEngine:
    topology: Topology
    ticks: int = 0
    closed: bool = False
    ready: dict[str, deque[_Msg]] = field(default_factory=dict)
    leased: dict[str, dict[int, _Msg]] = field(default_factory=dict)
    logs: dict[TopicPartition, list[Record]] = field(default_factory=dict)
    committed: dict[tuple[str, TopicPartition], int] = field(default_factory=dict)
    qstats: dict[str, QueueStats] = field(default_factory=dict)
    published: dict[str, int] = field(default_factory=dict)
    unroutable: dict[str, int] = field(default_factory=dict)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def __post_init__(self) -> None:
        self._declare(self.topology)

    def _declare(self, t: Topology) -> None:
        for name, _ in t.queues:
            self.ready.setdefault(name, deque())
            self.leased.setdefault(name, {})
            self.qstats.setdefault(name, QueueStats())
        for name, topic in t.topics:
            for p in range(topic.partitions):
                self.logs.setdefault(TopicPartition(name, p), [])

    # lifecycle
    def apply(self, new: Topology, *, force: bool = False) -> list[str]:
        for name, _ in self.topology.queues:
            if name not in new.queue_map() and self.ready[name] and not force:
                raise UnsafeChange(f"queue {name} holds messages")
        self.topology = new
        self._declare(new)
        return []

    def tick(self) -> None:
        self.ticks += 1

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    # producing
    def _put(self, queue: str, msg: _Msg) -> None:
        spec = self.topology.queue_map()[queue]
        if spec.max_length is not None and len(self.ready[queue]) >= spec.max_length:
            if spec.overflow is not Overflow.DROP_HEAD:
                self.qstats[queue].rejected_publishes += 1
                raise Refused(f"queue '{queue}' is full (max_length {spec.max_length})")
            self.ready[queue].popleft()
        self.ready[queue].append(msg)
        self.qstats[queue].published += 1

    def publish(self, exchange: str, messages: Sequence[OutMessage]) -> list[list[str]]:
        spec = self.topology.exchange_map().get(exchange)
        if spec is None:
            raise NotFound(f"exchange '{exchange}' not found")
        if spec.internal:
            raise Forbidden(f"exchange '{exchange}' is internal")
        out: list[list[str]] = []
        for i, m in enumerate(messages):
            routed: list[str] = []
            for b in self.topology.bindings:
                if b.exchange == exchange and topic_matches(b.routing_key, m.routing_key):
                    if b.queue:
                        try:
                            self._put(b.queue, _Msg(m, exchange))
                        except Refused as exc:
                            raise Refused(str(exc), accepted=i, routed=tuple(routed)) from exc
                    elif b.topic:
                        self.append(b.topic, [OutRecord(m.body)])
                    routed.append(b.destination)
            self.published[exchange] = self.published.get(exchange, 0) + 1
            if not routed:
                self.unroutable[exchange] = self.unroutable.get(exchange, 0) + 1
            out.append(routed)
        return out

    def fanout(self, exchange: str, messages: Sequence[OutMessage]) -> list[int]:
        spec = self.topology.exchange_map().get(exchange)
        if spec is None:
            raise NotFound(f"exchange '{exchange}' not found")
        if spec.internal:
            raise Forbidden(f"exchange '{exchange}' is internal")
        return [sum(1 for b in self.topology.bindings
                    if b.exchange == exchange and topic_matches(b.routing_key, m.routing_key))
                for m in messages]

    def publish_to_queue(self, queue: str, messages: Sequence[OutMessage]) -> list[list[str]]:
        if queue not in self.ready:
            raise NotFound(f"queue '{queue}' not found")
        for i, m in enumerate(messages):
            try:
                self._put(queue, _Msg(m, ""))
            except Refused as exc:
                raise Refused(str(exc), accepted=i) from exc
        return [[queue] for _ in messages]

    def append(self, topic: str, records: Sequence[OutRecord]) -> list[tuple[int, int]]:
        spec = self.topology.topic_map().get(topic)
        if spec is None:
            raise NotFound(f"topic '{topic}' not found")
        out = []
        for r in records:
            if spec.compact and r.key is None:
                raise InvalidRequest(f"topic '{topic}' is compacted: a record needs a key")
            p = r.partition if r.partition is not None else 0
            log = self.logs[TopicPartition(topic, p)]
            log.append(Record(topic, p, len(log), 1000, r.key, r.value, dict(r.headers)))
            out.append((p, len(log) - 1))
        return out

    # topics
    def read(self, topic: str, partition: int, offset: int, *, max_records: int = 100,
             max_bytes: int = 1 << 20) -> tuple[list[Record], int]:
        log = self.logs[TopicPartition(topic, partition)]
        got = log[offset:offset + max_records]
        return got, offset + len(got)

    def partitions(self, topic: str) -> list[PartitionInfo]:
        spec = self.topology.topic_map()[topic]
        return [PartitionInfo(p, 0, len(self.logs[TopicPartition(topic, p)]), 0)
                for p in range(spec.partitions)]

    # groups
    def commit(self, group: str, offsets: Mapping[TopicPartition, int]) -> None:
        for tp, off in offsets.items():
            self.committed[(group, tp)] = off

    def seek(self, group: str, tp: TopicPartition, *, offset: int | None = None,
             timestamp_ms: int | None = None) -> int:
        pos = offset if offset is not None else 0
        self.committed[(group, tp)] = pos
        return pos

    def group_info(self, group: str) -> GroupInfo:
        spec = self.topology.group_map()[group]
        parts = []
        for topic in spec.topics:
            for info in self.partitions(topic):
                tp = TopicPartition(topic, info.partition)
                c = self.committed.get((group, tp))
                pos = c or 0
                parts.append(GroupPartition(topic, info.partition, c, pos, info.log_end_offset,
                                            info.log_end_offset - pos, None))
        return GroupInfo(group, (), tuple(parts))

    # queues
    def pull(self, queue: str, max_messages: int, *, lease_s: float,
             consumer_id: str) -> list[QueueDelivery]:
        out = []
        while self.ready[queue] and len(out) < max_messages:
            msg = self.ready[queue].popleft()
            msg.count += 1
            did = next(self._ids)
            self.leased[queue][did] = msg
            self.qstats[queue].delivered += 1
            out.append(self._delivery(queue, did, msg))
        return out

    def _delivery(self, queue: str, did: int, msg: _Msg) -> QueueDelivery:
        m = msg.out
        return QueueDelivery(queue, did, m.body, dict(m.headers), m.routing_key, msg.exchange,
                             m.priority or 0, msg.count > 1, max(msg.count, 1), m.message_id,
                             1000, m.content_type)

    def ack(self, queue: str, delivery_ids: Sequence[int]) -> list[int]:
        unknown = [d for d in delivery_ids if self.leased[queue].pop(d, None) is None]
        self.qstats[queue].acked += len(delivery_ids) - len(unknown)
        return unknown

    def nack(self, queue: str, delivery_ids: Sequence[int], *, requeue: bool) -> list[int]:
        unknown = []
        for d in delivery_ids:
            msg = self.leased[queue].pop(d, None)
            if msg is None:
                unknown.append(d)
            elif requeue:
                self.ready[queue].appendleft(msg)
        return unknown

    def peek(self, queue: str, n: int) -> list[QueueDelivery]:
        return [self._delivery(queue, 0, m) for m in list(self.ready[queue])[:n]]

    def replay(self, queue: str, max_messages: int | None = None) -> int:
        return self.replay_detail(queue, max_messages).replayed

    def replay_detail(self, queue: str, max_messages: int | None = None) -> ReplayOutcome:
        n = len(self.ready[queue]) if max_messages is None else max_messages
        moved = 0
        kept: list[Any] = []
        while self.ready[queue] and moved < n:
            msg = self.ready[queue].popleft()
            death: Any = msg.out.headers.get("x-dead-letter")
            if not death:
                kept.append(msg)
                continue
            self.ready[death["original_queue"]].append(msg)
            moved += 1
        self.ready[queue].extendleft(reversed(kept))
        reasons = {REPLAY_NOT_A_DEAD_LETTER: len(kept)} if kept else {}
        return ReplayOutcome(moved, len(kept), reasons)

    def queue_info(self, queue: str) -> QueueInfo:
        return QueueInfo(queue, len(self.ready[queue]), len(self.leased[queue]), 0, 0.0)

    def failed_logs(self) -> dict[str, str]:
        return {}

    def stats(self) -> EngineStats:
        stats = EngineStats()
        for name, q in self.qstats.items():
            q.ready, q.unacked = len(self.ready[name]), len(self.leased[name])
            stats.queues[name] = q
        for tp, log in self.logs.items():
            stats.partitions[tp] = PartitionInfo(tp.partition, 0, len(log), 10 * len(log))
            stats.topic_records[tp.topic] = stats.topic_records.get(tp.topic, 0) + len(log)
        stats.group_committed = dict(self.committed)
        stats.exchange_published = dict(self.published)
        stats.exchange_unroutable = dict(self.unroutable)
        return stats
