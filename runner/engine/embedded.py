"""The embedded engine behind the contract: `EmbeddedBackend` wraps one `Engine`.

`open_embedded(...)` is the factory the daemon and tests call; what they get
back is a `runner.engine.contract.Backend`. The adapter turns the engine's
answers into the contract's values and owns the in-process group members; the
engine itself fires the contract's events (runner.engine.events), so writes
that reach it some other way (the HTTP API, the Kafka listener) wake
subscribers too.

Durability: every write returns a `Ticket`. Producer writes (publish, put,
append) run in `Engine.ticketed()` blocks: under `--fsync always` they return
once written, with a real ticket a group-commit round resolves (on the
event loop through Linux AIO, or the data dir's flusher thread:
`runner.log.commits`), and `durable` awaits it without blocking the loop.
Settlements (`settle`), commits from outside (`Coordinator.commit`) and
in-process members' commits are ticketed the same way; an exactly-once step
syncs its journal record at once and leaves its apply's fsyncs to the flusher
(`Engine.commit_step_ticketed`). A write that syncs at once first syncs whatever the
flusher has pending, and a flusher round syncs its logs in the order they were
first written; callers that ack an input after its outputs await the outputs'
ticket before the ack is written, so an ack never becomes durable before them. `durable` raises the
LogFailed of a failed fsync in the ticket's own flusher round only.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from runner.broker.message import Message
from runner.clock import Clock
from runner.engine.contract import (
    Ack,
    Appended,
    Capability,
    DeadLetter,
    Event,
    GroupInfo,
    Outcome,
    OutMessage,
    OutRecord,
    PartitionInfo,
    Published,
    QueueDelivery,
    QueueInfo,
    Read,
    Record,
    ReplayOutcome,
    Requeue,
    Retry,
    RouteHop,
    Settled,
    Step,
    Ticket,
    TopicPartition,
    WireRecord,
    WireStored,
)
from runner.engine.events import Subscription
from runner.engine.facade import Engine
from runner.engine.merged import Positions, Routes, WriteMerger
from runner.engine.records import kafka_headers, raw_headers
from runner.engine.values import EngineStats, FsyncPolicy
from runner.engine.values import OutRecord as EngineRecord
from runner.engine.values import Step as EngineStep
from runner.errors import Conflict, FanoutTooLarge, NotFound
from runner.fs import LOCAL, FileSystem
from runner.log.partition import TopicPartition as LogTopicPartition
from runner.log.store import AppendRecord
from runner.topology.model import Topology

CAPABILITIES = frozenset(Capability)  # the embedded engine does everything

Callback = Callable[[Event], None]


def open_embedded(
    topology: Topology, data_dir: Path, *, fsync: FsyncPolicy = FsyncPolicy.ALWAYS,
    clock: Clock | None = None, memory_budget_bytes: int = 256 * 1024 * 1024,
    disk_budget_bytes: int | None = None, fs: FileSystem = LOCAL,
) -> EmbeddedBackend:
    """Open (recovering) `data_dir` for `topology`: the embedded engine as a Backend."""
    engine = Engine.open(topology, data_dir, fsync=fsync, clock=clock,
                         memory_budget_bytes=memory_budget_bytes,
                         disk_budget_bytes=disk_budget_bytes, fs=fs)
    return EmbeddedBackend(engine)


def _message(m: OutMessage) -> Message:
    return Message(m.body, m.routing_key, dict(m.headers), m.priority, m.ttl_s, m.message_id,
                   m.content_type)


def _record(r: OutRecord) -> EngineRecord:
    return EngineRecord(r.value, r.key, dict(r.headers), r.partition, r.timestamp_ms,
                        r.producer_id, r.sequence)


class EmbeddedMember:
    """An in-process member of one group on the embedded engine."""

    def __init__(self, backend: EmbeddedBackend, group: str, member_id: str) -> None:
        self._backend = backend
        self._group = group
        self._member_id = member_id
        self.closed = False
        backend.engine.join(group, member_id, local=True)  # fires ASSIGNMENT_CHANGED
        backend._members[(group, member_id)] = self

    @property
    def group(self) -> str:
        return self._group

    @property
    def member_id(self) -> str:
        return self._member_id

    @property
    def generation(self) -> int:
        return self._backend._generation(self._group)

    def assignment(self) -> tuple[TopicPartition, ...]:
        engine = self._backend.engine
        try:
            return tuple(engine.assignment(self._group, self._member_id))
        except NotFound:  # expired (should not happen to a local member): join again
            engine.join(self._group, self._member_id, local=True)
            return tuple(engine.assignment(self._group, self._member_id))

    def position(self, tp: TopicPartition) -> int:
        return self._backend.engine.position(self._group, tp)

    def commit(self, offsets: Mapping[TopicPartition, int]) -> Ticket:
        engine = self._backend.engine
        with engine.ticketed() as box:  # written now, synced by the flusher: await it
            engine.commit(self._group, offsets, member_id=self._member_id)
        return Ticket(box.seq)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._backend._members.pop((self._group, self._member_id), None)
        self._backend.engine.leave(self._group, self._member_id)


class EmbeddedBackend:
    """The embedded engine served through `runner.engine.contract.Backend`."""

    def __init__(self, engine: Engine, *, max_fanout: int | None = None) -> None:
        self.engine = engine
        # message copies one write may create (the daemon's --max-fanout; None: any)
        self.max_fanout = max_fanout
        self._members: dict[tuple[str, str], EmbeddedMember] = {}
        self._merger = WriteMerger(self, max_copies=min(1000, max_fanout or 1000))

    # ------------------------------------------------------------- basics
    @property
    def capabilities(self) -> frozenset[Capability]:
        return CAPABILITIES

    @property
    def topology(self) -> Topology:
        return self.engine.topology

    def subscribe(self, events: Iterable[Event], callback: Callback) -> Subscription:
        return self.engine.events.add(events, callback)

    async def durable(self, ticket: Ticket) -> None:
        # raises the error of the flusher round that held it, or held any write it
        # covers when combined (a failed fsync); a log that failed in another round
        # does not fail this ticket
        await self.engine.durable(ticket.seq, also=ticket.others if ticket.combined else ())

    def holds_back(self, ticket: Ticket) -> bool:
        return self.engine.commits.holds_back(ticket.seq)

    def taken(self) -> Ticket:
        with self.engine.ticketed() as box:  # an empty block: the ticket of what is pending
            pass
        return Ticket(box.seq)

    def next_due(self) -> float | None:
        return self.engine.timer_due()

    def tick(self) -> None:
        self.engine.tick()  # fires what came due

    def close(self) -> None:
        self.engine.close()

    def _generation(self, group: str) -> int:
        try:
            rebalances = self.engine.store.groups.generation(group)
        except NotFound:
            return 0
        return rebalances + self.engine.seek_version(group)

    # ------------------------------------------------------------- Producer
    def publish(self, exchange: str, messages: Sequence[OutMessage]) -> Published:
        self._check_fanout(((exchange, messages),), 0)
        with self.engine.ticketed() as box:
            routes = self.engine.publish(exchange, [_message(m) for m in messages])
        return Published(tuple(tuple(r) for r in routes), Ticket(box.seq))

    def put(self, queue: str, messages: Sequence[OutMessage]) -> Published:
        self._check_fanout((), len(messages))
        with self.engine.ticketed() as box:
            routes = self.engine.publish_to_queue(queue, [_message(m) for m in messages])
        return Published(tuple(tuple(r) for r in routes), Ticket(box.seq))

    def append(self, topic: str, records: Sequence[OutRecord]) -> Appended:
        return self._append(topic, records, sticky=False)

    def append_together(self, topic: str, records: Sequence[OutRecord]) -> Appended:
        """`append`, with every keyless record on one partition (the next of the
        sticky writes' own round robin): the merged appends of many requests
        (`WriteTarget`)."""
        return self._append(topic, records, sticky=True)

    def _append(self, topic: str, records: Sequence[OutRecord], *, sticky: bool) -> Appended:
        self._check_fanout((), len(records))
        # records in several partitions depend on none of each other: the flusher
        # syncs the partitions in any order (a request's batch may touch several;
        # it is answered once all of them are synced)
        with self.engine.ticketed(ordered=False) as box:
            positions = self.engine.append(topic, [_record(r) for r in records], sticky=sticky)
        return Appended(tuple(positions), Ticket(box.seq))

    def _check_fanout(
        self, publishes: Iterable[tuple[str, Sequence[OutMessage]]], direct: int,
    ) -> None:
        """FanoutTooLarge, nothing stored, when a write of handler outputs would create
        more than `max_fanout` message copies: `direct` (puts and appends, one copy
        each) plus each published message once per queue and topic it reaches (issue
        17: a handler's publishes were not capped, so one call could make millions of
        copies in one step). Cheap when no publish can reach past the cap: a message
        reaches at most every queue and topic."""
        limit = self.max_fanout
        if limit is None or (not publishes and direct <= limit):
            return  # puts and appends alone: one copy each, no routes to count
        engine = self.engine
        widest = len(engine.broker.queues) + len(engine.store.topic_names())
        publishes = list(publishes)
        if direct + sum(len(ms) for _, ms in publishes) * widest <= limit:
            return
        total = direct
        most: tuple[int, str, int, int] | None = None  # copies, exchange, messages, widest
        for exchange, msgs in publishes:
            counts = engine.fanout(exchange, [_message(m) for m in msgs])
            n = sum(counts)
            total += n
            if most is None or n > most[0]:
                most = (n, exchange, len(msgs), max(counts, default=0))
        if total <= limit:
            return
        where = "" if most is None else (
            f" ({most[2]} messages through exchange '{most[1]}', up to {most[3]} "
            "destinations each)")
        raise FanoutTooLarge(
            f"the handler's outputs would create {total} message copies{where}, over the "
            f"limit of {limit} a handler call (--max-fanout); nothing of them was stored: "
            "publish fewer messages a call"
        )

    # ------------------------------------------------------------- MergedWrites
    def put_merged(self, queue: str, messages: Sequence[OutMessage]) -> Awaitable[Routes]:
        return self._merger.put(queue, messages)

    def publish_merged(self, exchange: str, messages: Sequence[OutMessage],
                       copies: int) -> Awaitable[Routes]:
        return self._merger.publish(exchange, messages, copies)

    def append_merged(self, topic: str, records: Sequence[OutRecord]) -> Awaitable[Positions]:
        return self._merger.append(topic, records)

    # ------------------------------------------------------------- DeadLetterTopics
    def dlq_settled(self, topic: str) -> dict[int, set[int]]:
        return self.engine.dlq_settled(topic)

    def purge_page(self, queue: str, ids: Collection[int] | None, limit: int) -> int:
        return self.engine.purge(queue, ids, limit=limit)

    # ------------------------------------------------------------- StorageHealth
    def failed_logs(self) -> dict[str, str]:
        return self.engine.failed_logs()

    # ------------------------------------------------------------- Flushable
    def flush(self) -> None:
        self.engine.flush()

    # ------------------------------------------------------------- WireTopics
    def topic_partitions(self) -> dict[str, int]:
        store = self.engine.store
        return {name: store.partition_count(name) for name in store.topic_names()}

    def log_offsets(self, topic: str, partition: int) -> tuple[int, int]:
        part = self.engine.store.partition(topic, partition)
        return part.log_start_offset, part.log_end_offset

    def producer_sequence(self, topic: str, partition: int, producer_id: str) -> int:
        return self.engine.store.producer_sequence(topic, partition, producer_id)

    def append_wire(
        self, topic: str, partition: int, records: Sequence[WireRecord], *,
        producer_id: str | None = None, base_sequence: int | None = None,
        allow_gap: bool = False, restart: bool = False,
    ) -> int:
        # stored headers say how to read them back (records.HEADER_TYPES): every
        # value raw, a null one marked
        out = [AppendRecord(value=r.value, key=r.key, headers=raw_headers(r.headers),
                            partition=partition, timestamp_ms=r.timestamp_ms,
                            producer_id=producer_id,
                            sequence=None if base_sequence is None else base_sequence + i)
               for i, r in enumerate(records)]
        placed = self.engine.store.append(topic, out, allow_gap=allow_gap, restart=restart)
        return placed[0][1] if placed else -1

    def read_wire(
        self, topic: str, partition: int, offset: int, *, max_records: int, max_bytes: int,
    ) -> list[WireStored]:
        recs, _ = self.engine.store.read_from(topic, partition, offset,
                                              max_records=max_records, max_bytes=max_bytes)
        return [(r.offset, r.timestamp_ms, r.key, r.value,
                 kafka_headers(r.headers) if r.headers else ()) for r in recs]

    # ------------------------------------------------------------- FanoutCounter
    def fanout(self, exchange: str, messages: Sequence[OutMessage]) -> list[int]:
        return self.engine.fanout(exchange, [_message(m) for m in messages])

    # ------------------------------------------------------------- RouteExplainer
    def explain(
        self, exchange: str, routing_key: str, headers: Mapping[str, Any] | None = None,
    ) -> tuple[RouteHop, ...]:
        router = self.engine.broker.router
        router.check_publish(exchange)
        _, hops = router.explain(exchange, routing_key, headers or {})
        return tuple(RouteHop(*hop) for hop in hops)

    # ------------------------------------------------------------- QueueConsumer
    def fetch(
        self, queue: str, max_messages: int, *, lease_s: float, consumer_id: str,
    ) -> list[QueueDelivery]:
        got = self.engine.pull(queue, max_messages, lease_s=lease_s, consumer_id=consumer_id)
        return [tuple.__new__(QueueDelivery, d) for d in got]

    def settle(self, queue: str, outcomes: Sequence[Outcome]) -> Settled:
        # ticketed: under --fsync always the settlement returns once written and the
        # flusher syncs it (a write that syncs now syncs it first, so nothing written
        # after it becomes durable before it); the caller awaits the ticket
        unknown: list[int] = []
        with self.engine.ticketed() as box:
            self._settle(queue, outcomes, unknown)
        return Settled(tuple(unknown), Ticket(box.seq))

    def _settle(self, queue: str, outcomes: Sequence[Outcome], unknown: list[int]) -> None:
        """Apply `outcomes` in order, each run of acks, of requeues and of plain rejects
        in one engine call; unknown ids into `unknown`."""
        engine = self.engine
        run: list[int] = []
        kind: type[Outcome] | None = None  # of the run: Ack, Requeue or DeadLetter

        def flush() -> None:
            if not run:
                return
            if kind is Ack:
                unknown.extend(engine.ack(queue, run))
            else:
                unknown.extend(engine.nack(queue, run, requeue=kind is Requeue))
            run.clear()

        for o in outcomes:
            if isinstance(o, Ack | Requeue) or (isinstance(o, DeadLetter) and o.death is None):
                if type(o) is not kind:
                    flush()
                    kind = type(o)
                run.append(o.delivery_id)
                continue
            flush()
            kind = None
            if isinstance(o, Retry):
                try:
                    engine.retry_later(queue, o.delivery_id, o.delay_s)
                except (NotFound, Conflict):
                    unknown.append(o.delivery_id)
            else:
                assert o.death is not None
                engine.dead_letter(queue, o.delivery_id, reason=o.reason, death=o.death,
                                   to_queue=o.to_queue, to_topic=o.to_topic)
        flush()

    # ------------------------------------------------------------- TopicReader
    def read(
        self, topic: str, partition: int, offset: int, *, max_records: int = 500,
        max_bytes: int | None = None,
    ) -> Read:
        if max_bytes is None:
            records, next_offset = self.engine.read(topic, partition, offset,
                                                    max_records=max_records)
        else:
            records, next_offset = self.engine.read(topic, partition, offset,
                                                    max_records=max_records,
                                                    max_bytes=max_bytes)
        return Read(tuple(records), next_offset)

    def partitions(self, topic: str) -> list[PartitionInfo]:
        return self.engine.partitions(topic)

    def offset_for_time(self, topic: str, partition: int, timestamp_ms: int) -> int:
        return self.engine.offset_for_time(topic, partition, timestamp_ms)

    # ------------------------------------------------------------- groups
    def open_member(self, group: str, member_id: str) -> EmbeddedMember:
        return EmbeddedMember(self, group, member_id)

    def join(self, group: str, member_id: str) -> None:
        self.engine.join(group, member_id)

    def heartbeat(self, group: str, member_id: str) -> None:
        self.engine.heartbeat(group, member_id)

    def leave(self, group: str, member_id: str) -> None:
        self.engine.leave(group, member_id)

    def assignment(self, group: str, member_id: str) -> list[TopicPartition]:
        return self.engine.assignment(group, member_id)

    def position(self, group: str, tp: TopicPartition) -> int:
        return self.engine.position(group, tp)

    def commit(
        self, group: str, offsets: Mapping[TopicPartition, int], *,
        member_id: str | None = None, generation: int | None = None,
    ) -> Ticket:
        with self.engine.ticketed() as box:  # as `settle`: the caller awaits the ticket
            self.engine.commit(group, offsets, member_id=member_id, generation=generation)
        return Ticket(box.seq)

    # ------------------------------------------------------------- Admin
    def apply(self, topology: Topology, *, force: bool = False) -> list[str]:
        return self.engine.apply(topology, force=force)

    def queue_info(self, queue: str) -> QueueInfo:
        i = self.engine.queue_info(queue)
        return QueueInfo(i.name, i.ready, i.unacked, i.delayed, i.oldest_ready_age_s)

    def group_info(self, group: str) -> GroupInfo:
        return self.engine.group_info(group)

    def seek(
        self, group: str, tp: TopicPartition, *, offset: int | None = None,
        timestamp_ms: int | None = None,
    ) -> int:
        return self.engine.seek(group, tp, offset=offset, timestamp_ms=timestamp_ms)

    def peek_ids(self, queue: str, n: int) -> list[tuple[int, QueueDelivery]]:
        return [(i, tuple.__new__(QueueDelivery, d)) for i, d in self.engine.peek_ids(queue, n)]

    def purge(self, queue: str, ids: Collection[int] | None = None) -> int:
        return self.engine.purge(queue, ids)

    def replay(
        self, queue: str, max_messages: int | None = None, *,
        only: Collection[int] | None = None,
    ) -> ReplayOutcome:
        return self.engine.replay_detail(queue, max_messages, only=only)

    def replay_queue(self, group: str) -> str | None:
        return self.engine.replay_queue(group)

    def replayed_record(self, delivery: QueueDelivery) -> Record:
        return self.engine.replayed_record(delivery)  # type: ignore[arg-type]

    def stats(self) -> EngineStats:
        return self.engine.stats()

    # ------------------------------------------------------------- Steps
    def commit_step(self, step: Step) -> Ticket:
        for group, member_id, generation, partitions in step.all_fences():
            if self._generation(group) != generation:
                raise Conflict(f"group {group!r} rebalanced or was sought: generation "
                               f"{generation} is stale, current is {self._generation(group)}")
            self.engine.store.groups.check_member(
                group, [LogTopicPartition(*tp) for tp in partitions], member_id=member_id)
        self._check_fanout(step.publishes, sum(len(ms) for _, ms in step.puts)
                           + sum(len(rs) for _, rs in step.appends))
        # the journal record is synced now, the apply by the flusher: await the ticket
        return Ticket(self.engine.commit_step_ticketed(EngineStep(
            acks=list(step.acks),
            commits=list(step.commits),
            publishes=[(ex, [_message(m) for m in ms]) for ex, ms in step.publishes],
            queue_puts=[(q, [_message(m) for m in ms]) for q, ms in step.puts],
            appends=[(t, [_record(r) for r in rs]) for t, rs in step.appends],
        )))

    def dead_letter_step(
        self, group: str, record: Record, death: Mapping[str, Any], *,
        to_queue: str | None = None, to_topic: str | None = None,
    ) -> Step:
        s = self.engine.dead_letter_step(group, record, death, to_queue=to_queue,
                                         to_topic=to_topic)
        return Step(
            acks=tuple(s.acks), commits=tuple(s.commits),
            publishes=tuple((ex, tuple(_out_message(m) for m in ms)) for ex, ms in s.publishes),
            puts=tuple((q, tuple(_out_message(m) for m in ms)) for q, ms in s.queue_puts),
            appends=tuple((t, tuple(_out_record(r) for r in rs)) for t, rs in s.appends),
        )


def _out_message(m: Message) -> OutMessage:
    return OutMessage(m.body, m.routing_key, m.headers, m.priority, m.ttl_s, m.message_id,
                      m.content_type)


def _out_record(r: EngineRecord) -> OutRecord:
    return OutRecord(r.value, r.key, r.headers, r.partition, r.timestamp_ms, r.producer_id,
                     r.sequence)
