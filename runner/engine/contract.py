"""The engine contract: what every backend serves to the pipeline and the daemon.

The pipeline, the daemon and the listeners talk to a backend only through the
Protocols and values of this module. The embedded engine implements it
(`runner.engine.embedded`), a RabbitMQ cluster implements it
(`runner.backends`). Nothing here names a broker or log type.

    Backend
     |- Producer        publish (exchange), put (queue), append (topic): batches
     |- QueueConsumer   fetch up to N under a lease; settle a list of Outcomes
     |- TopicReader     read a partition from an offset; partitions; offset for time
     |- Coordinator     groups for members outside the process (Kafka/HTTP clients)
     |- Admin           apply a topology, info, stats, dead-letter tools
     |- Steps           exactly-once: one Step = acks + commits + outputs, atomically
     |- open_member()   -> GroupMember: one in-process member of one group
     |- subscribe()     events instead of polling
     |- durable()       await a write's Ticket (taken(): one covering every write so far)
     '- capabilities    what this backend can do at all
    RouteExplainer      (optional) how a message would be routed, hop by hop
    SharedKeys          (optional) idempotency windows shared by every process of a broker

Threading: a backend has one owner thread (the daemon's asyncio loop, or a
test). Every synchronous method is called on it and must not block for long:
the embedded engine does the work in place, a remote backend queues the work
to its I/O thread and answers from local state (prefetch buffers, cached
assignments, counters refreshed in the background) -- the librdkafka model.
What has to wait for something is `async`: durability and events.

Durability: a write (publish, put, append, settle, commit, commit_step,
GroupMember.commit) returns once the backend has taken it, with a `Ticket`.
`await backend.durable(ticket)` returns when it is as durable as the backend
promises (embedded: fsynced per the --fsync mode, `always` = on disk; RabbitMQ:
publisher confirm / the ack's completion). It raises the `runner.errors` error
that made the write fail durably (StorageError / LogFailed). Tickets resolve in
order per backend: once a later ticket resolved, every earlier one has too --
but a failure fails only the writes it hit (a log's failed fsync, a nacked
publish), so a later ticket may be durable while an earlier one failed. A
caller holding several combines them with `Ticket.max`, which covers them all:
awaiting the combination raises if any of them failed.
Callers that answer a client or ack an input after a write must await the
ticket first. `Ticket.DONE` is already durable.

Events: `subscribe(events, callback)` calls `callback(event)` on the owner
thread when something a consumer waits for may have happened. Events are
hints: they may be spurious, they are never missed (after the callback, a
fetch/read/assignment sees the new state), and they are edge-triggered
(subscribe first, then fetch, then wait). Callbacks must be cheap and must not
call the backend (set an asyncio.Event; `Waiter` does exactly that). Timed
work (a retry coming due, a lease or TTL expiring, a member's session timing
out) happens in `tick()`, which the owner runs at `next_due()`; whenever a
write makes `next_due()` earlier the backend fires `Event(EventKind.TIMERS)`.
While nothing happens, an owner that waits on events and next_due makes no
backend calls and wakes up not at all.

Errors are the `runner.errors` tree: NotFound, InvalidRequest, Forbidden,
Conflict (fenced / stale), TooLarge, Refused (queue full: `accepted`, `routed`),
UnsafeChange, OffsetOutOfRange, StorageError, LogFailed. A backend translates
its foreign errors at its boundary.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from types import MappingProxyType
from typing import Any, ClassVar, NamedTuple, Protocol, runtime_checkable

from runner.topology.model import Topology

__all__ = [
    "Ack", "Admin", "Appended", "Backend", "BackendStats", "Capability", "Coordinator",
    "DeadLetter", "DeadLetterTopics", "DLQ_POSITION_PREFIX", "EMPTY_HEADERS", "Event", "EventKind",
    "FanoutCounter", "Fence", "Flushable", "FsyncPolicy", "GroupInfo", "GroupMember",
    "GroupPartition", "KeyWindow", "MergedWrites", "Outcome", "OutMessage", "OutRecord",
    "PartitionInfo",
    "Producer", "Published", "QueueConsumer", "QueueDelivery", "QueueInfo", "QueueStats", "Read",
    "Record", "REPLAY_PREFIX", "ReplayOutcome", "Requeue", "Retry", "RouteExplainer", "RouteHop",
    "Settled", "SharedKeys", "Step", "Steps", "StorageHealth", "Subscription", "Ticket",
    "TopicPartition", "TopicReader",
    "Waiter", "WireRecord", "WireStored", "WireTopics", "dlq_position_group", "dlq_settled_queue",
    "marker_of", "replay_queue_name", "settled_marker",
]

EMPTY_HEADERS: Mapping[str, Any] = MappingProxyType({})


# ====================================================================== capabilities


class Capability(str, Enum):  # noqa: UP042 - str() is the name in messages
    """What a backend can do at all; `runner validate --backend` refuses a
    topology that needs one its backend lacks."""

    EXACTLY_ONCE = "exactly-once"  # Steps.commit_step: acks + commits + outputs atomically
    COMPACTION = "compaction"  # compacted topics
    PRIORITIES = "priorities"  # queue `max_priority` / message priority
    DELAYED_RETRY = "delayed-retry"  # Retry(delay_s) without blocking the queue
    MESSAGE_TTL = "message-ttl"  # per-message and per-queue TTL
    DELIVERY_LIMIT = "delivery-limit"  # queue delivery_limit
    SEEK = "seek"  # move a group's offsets (Admin.seek)
    OFFSET_FOR_TIME = "offset-for-time"  # TopicReader.offset_for_time
    HEADERS_EXCHANGE = "headers-exchange"
    TOPIC_DEAD_LETTERS = "topic-dead-letters"  # dead letters into a topic
    IDEMPOTENT_PRODUCER = "idempotent-producer"  # OutRecord.producer_id / sequence
    TOPICS = "topics"  # topics, consumer groups: append, TopicReader, open_member, Coordinator
    CHOSEN_MESSAGES = "chosen-messages"  # Admin.purge / replay of chosen ids (peek_ids')


class FsyncPolicy(str, Enum):  # noqa: UP042 - str() is the name in messages
    """When a write is durable on the embedded engine (`--fsync`; docs/engine.md):
    `always` before it is acknowledged, `interval` within a few milliseconds,
    `never` when the OS decides. The pipeline's own files (idempotency keys)
    follow it too."""

    ALWAYS = "always"
    INTERVAL = "interval"
    NEVER = "never"


# ====================================================================== values


class TopicPartition(NamedTuple):
    topic: str
    partition: int


@dataclass(frozen=True, slots=True)
class Ticket:
    """A write's place in the backend's durability order; opaque to callers.

    `seq` is only meaningful to the backend that issued it (embedded: the
    write's position in its flush order; RabbitMQ: a confirm sequence)."""

    seq: int
    # the tickets combined into this one by `max` (a tree: combining costs the same
    # however many it holds; `others` walks it when a backend asks); not compared
    # nor printed
    parts: tuple[Ticket, ...] = field(default=(), compare=False, repr=False)

    DONE: ClassVar[Ticket]  # a ticket that is durable already (set below)

    @property
    def earliest(self) -> int:
        """The first seq of the writes it covers (`seq` for a single write's)."""
        return min(self.covers) if self.parts else self.seq

    @property
    def combined(self) -> bool:
        """True when it covers other writes than its own (`max`)."""
        return bool(self.parts)

    @property
    def others(self) -> frozenset[int]:
        """The seqs of the other writes it covers when combined: a backend whose
        writes fail one by one (RabbitMQ: a nacked publish) asks exactly these, and
        one whose failures are whole flush rounds (embedded: a failed fsync) the
        rounds that held them; a failure between them that held none is not theirs."""
        seen: set[int] = set()
        stack = list(self.parts)
        while stack:
            t = stack.pop()
            seen.add(t.seq)
            stack.extend(t.parts)
        seen.discard(self.seq)
        return frozenset(seen)

    @property
    def covers(self) -> frozenset[int]:
        """The seqs of every write it covers (its own included)."""
        return self.others | {self.seq}

    def max(self, other: Ticket) -> Ticket:
        """Both tickets of the same backend as one: the later's place in the order,
        covering every write of both. Awaiting it returns once all are durable, and
        raises when any of them failed durably (a later write's round may succeed
        after an earlier one's failed: a failed fsync fails only its own round)."""
        if not other.seq or other is self:
            return self
        if not self.seq:
            return other
        later, earlier = (self, other) if self.seq >= other.seq else (other, self)
        return Ticket(later.seq, (later, earlier) if later.parts else (earlier,))


Ticket.DONE = Ticket(0)


@dataclass(frozen=True, slots=True)
class OutMessage:
    """A message to publish through an exchange or put straight into a queue.

    `ttl_s`: AMQP `expiration`; `message_id`: within the backend's dedup
    window a message id is stored once per destination; `content_type`:
    "application/json" when the body is JSON text."""

    body: bytes
    routing_key: str = ""
    headers: Mapping[str, Any] = field(default_factory=lambda: EMPTY_HEADERS)
    priority: int | None = None
    ttl_s: float | None = None
    message_id: str | None = None
    content_type: str | None = None


@dataclass(frozen=True, slots=True)
class OutRecord:
    """A record to append to a topic."""

    value: bytes | None  # None: a tombstone
    key: bytes | None = None  # None: the topic's `key` field of a JSON value, else keyless
    headers: Mapping[str, Any] = field(default_factory=lambda: EMPTY_HEADERS)
    partition: int | None = None  # explicit partition, else the partitioner
    timestamp_ms: int | None = None  # default: now
    producer_id: str | None = None  # idempotent producer (IDEMPOTENT_PRODUCER)
    sequence: int | None = None


@dataclass(frozen=True, slots=True)
class Record:
    """A record read from a topic partition."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    headers: Mapping[str, Any]


class QueueDelivery(NamedTuple):
    """A queue message handed to a consumer; settle it by `delivery_id`.

    `delivery_id` is unique per queue for the life of the backend's data;
    `exchange` is "" when the message was put straight into the queue;
    `delivery_count` is 1 on the first delivery."""

    queue: str
    delivery_id: int
    body: bytes
    headers: Mapping[str, Any]
    routing_key: str
    exchange: str
    priority: int
    redelivered: bool
    delivery_count: int
    message_id: str | None
    timestamp_ms: int
    content_type: str | None


class RouteHop(NamedTuple):
    """One exchange a message passes (`RouteExplainer.explain`): reached by the
    publish, by an exchange-to-exchange binding, or as the alternate exchange of
    `parent`; and the destinations its own bindings matched, in binding order."""

    exchange: str
    type: str  # the exchange type: direct | fanout | topic | headers
    via: str  # "publish" | "binding" | "alternate"
    parent: str | None  # the exchange it was reached from (None: the publish)
    matched: tuple[tuple[str, str], ...]  # (kind, name), kind queue | exchange | topic


# ---------------------------------------------------------------- outcomes


@dataclass(frozen=True, slots=True)
class Ack:
    """Done with it: the message leaves the queue."""

    delivery_id: int


@dataclass(frozen=True, slots=True)
class Retry:
    """Settle now; the message is ready again after `delay_s` (delivery_count kept),
    without blocking the messages behind it (DELAYED_RETRY; 0 = at once)."""

    delivery_id: int
    delay_s: float = 0.0


@dataclass(frozen=True, slots=True)
class Requeue:
    """Give it back unprocessed (a stopping consumer): ready again in place,
    `redelivered` set."""

    delivery_id: int


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """Settle and dead-letter it: with the `x-dead-letter` header `death` (see
    docs/handlers.md) through the queue's dead_letter exchange, or into
    `to_queue` / `to_topic` (a DLQ policy's dead_letter_queue). No `death`:
    a plain reject (reason `rejected`)."""

    delivery_id: int
    reason: str = "rejected"
    death: Mapping[str, Any] | None = None
    to_queue: str | None = None
    to_topic: str | None = None


Outcome = Ack | Retry | Requeue | DeadLetter


# ---------------------------------------------------------------- results


@dataclass(frozen=True, slots=True)
class Published:
    """Per message, the queue and topic names it reached (empty: unroutable)."""

    routes: tuple[tuple[str, ...], ...]
    ticket: Ticket


@dataclass(frozen=True, slots=True)
class Appended:
    """Per record, its (partition, offset)."""

    positions: tuple[tuple[int, int], ...]
    ticket: Ticket


@dataclass(frozen=True, slots=True)
class Settled:
    """`unknown`: delivery ids that were not (or no longer) held -- an expired
    lease, another consumer's id, settled twice. The others took effect."""

    unknown: tuple[int, ...]
    ticket: Ticket


@dataclass(frozen=True, slots=True)
class Read:
    """Records from one partition and the offset to read next: past the last
    record returned, or past offsets compaction removed up to the log end."""

    records: tuple[Record, ...]
    next_offset: int


@dataclass(frozen=True, slots=True)
class PartitionInfo:
    partition: int
    log_start_offset: int
    log_end_offset: int
    size_bytes: int
    oldest_timestamp_ms: int | None = None  # None: the partition is empty


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
class QueueInfo:
    name: str
    ready: int
    unacked: int
    delayed: int  # waiting for a retry delay
    oldest_ready_age_s: float  # 0 when empty


@dataclass(frozen=True, slots=True)
class ReplayOutcome:
    """How many dead letters went back, how many stayed, and why (reason -> count)."""

    replayed: int
    skipped: int
    reasons: Mapping[str, int]
    refused: int = 0  # of `skipped`: left in place because their full queue refused them


@dataclass(slots=True)
class QueueStats:
    """One queue's counts and counters in a `BackendStats` snapshot."""

    ready: int = 0
    unacked: int = 0
    delayed: int = 0
    published: int = 0
    delivered: int = 0
    acked: int = 0
    redelivered: int = 0
    rejected_publishes: int = 0
    dead_lettered: dict[str, int] = field(default_factory=dict)  # reason -> count
    oldest_ready_age_s: float = 0.0
    dead_letter_loops: int = 0  # dead letters dropped by the hop guard


@dataclass(slots=True)
class BackendStats:
    """A snapshot for the metrics collector and the console (`Admin.stats`): copies
    of plain counters; what a backend cannot count stays empty."""

    topic_records: dict[str, int] = field(default_factory=dict)
    partitions: dict[TopicPartition, PartitionInfo] = field(default_factory=dict)
    group_committed: dict[tuple[str, TopicPartition], int] = field(default_factory=dict)
    group_lag: dict[tuple[str, TopicPartition], int] = field(default_factory=dict)
    group_members: dict[str, int] = field(default_factory=dict)
    exchange_published: dict[str, int] = field(default_factory=dict)
    exchange_unroutable: dict[str, int] = field(default_factory=dict)
    queues: dict[str, QueueStats] = field(default_factory=dict)
    # logs refusing all I/O after a failed fsync: path -> why
    failed_logs: dict[str, str] = field(default_factory=dict)
    # per partition of a dead-letter topic with pending dead letters (from its replay
    # position on, `dlq_position_group(topic)`): the first one's timestamp (ms)
    dlq_oldest_pending_ms: dict[TopicPartition, int] = field(default_factory=dict)
    # per partition of a dead-letter topic: dead letters from the replay position on
    # that were replayed or purged on their own (not pending although above it)
    dlq_settled: dict[TopicPartition, int] = field(default_factory=dict)


# ---------------------------------------------------------------- reserved names
# Entities a backend creates for itself beside the topology's (user names
# starting with `__` are refused, so these never collide).

REPLAY_PREFIX = "__replay."  # + group: the replay queue of a consumer group
DLQ_POSITION_PREFIX = "__dlq."  # + topic: a dead-letter topic's hidden position group / queue


def replay_queue_name(group: str) -> str:
    """The queue of dead letters replayed back to consumer group `group`."""
    return f"{REPLAY_PREFIX}{group}"


def dlq_position_group(topic: str) -> str:
    """The hidden consumer group whose committed offsets are the replay position of
    dead-letter topic `topic` (one per partition): records below it were replayed
    or purged, records from it on are pending."""
    return f"{DLQ_POSITION_PREFIX}{topic}"


def dlq_settled_queue(topic: str) -> str:
    """The hidden queue of dead-letter topic `topic` holding one marker message per
    dead letter replayed or purged on its own above the replay position (the
    position cannot skip a record; these are the ones it will skip when it gets
    there). Written in the same step as the replay itself."""
    return f"{DLQ_POSITION_PREFIX}{topic}"


def settled_marker(partition: int, offset: int) -> OutMessage:
    """The marker of dead letter `partition`/`offset` (see `dlq_settled_queue`)."""
    return OutMessage(body=b"", routing_key=f"{partition}:{offset}",
                      message_id=f"{partition}:{offset}")


def marker_of(routing_key: str) -> tuple[int, int] | None:
    """(partition, offset) of a marker's routing key; None if it is none."""
    head, _, tail = routing_key.partition(":")
    if not (head.isdigit() and tail.isdigit()):
        return None
    return int(head), int(tail)


# ---------------------------------------------------------------- exactly-once


class Fence(NamedTuple):
    """A group member's claim on some commits of a step: the step is refused with
    Conflict, nothing applied, when `member_id` no longer owns one of
    `partitions` in `group`, or the group was rebalanced or sought since
    `generation` (`GroupMember.generation`)."""

    group: str
    member_id: str
    generation: int
    partitions: tuple[TopicPartition, ...]


@dataclass(frozen=True, slots=True)
class Step:
    """One atomic unit (EXACTLY_ONCE): all of it happens, durably, or none of it.

    `acks`: (queue, delivery_id) to ack; `commits`: (group, partition, next
    offset) to commit -- fenced by `fence` / `fences`; `publishes`: (exchange,
    messages); `puts`: (queue, messages) straight into queues; `appends`:
    (topic, records). `fence`: (group, member_id, generation) every commit of
    that group belongs to (a `Fence` over those partitions). `fences`: each
    one's own partitions -- what steps of several members merged into one
    carry (`+` keeps every part's fence). Every fence is checked before
    anything is applied. `dead_letter_of`: (group, partition, offset) of the
    group records whose dead letters this step writes (set by a backend's
    `dead_letter_step`): a backend that writes a group's commits apart from
    its steps (RabbitMQ) holds the group's commits past each until the step's
    writes are confirmed; the embedded engine, whose steps are atomic, ignores it.
    """

    acks: tuple[tuple[str, int], ...] = ()
    commits: tuple[tuple[str, TopicPartition, int], ...] = ()
    publishes: tuple[tuple[str, tuple[OutMessage, ...]], ...] = ()
    puts: tuple[tuple[str, tuple[OutMessage, ...]], ...] = ()
    appends: tuple[tuple[str, tuple[OutRecord, ...]], ...] = ()
    fence: tuple[str, str, int] | None = None
    fences: tuple[Fence, ...] = ()
    dead_letter_of: tuple[tuple[str, TopicPartition, int], ...] = ()

    def __add__(self, other: Step) -> Step:
        """Both steps as one; each keeps its own fences (`all_fences`)."""
        return Step(
            self.acks + other.acks, self.commits + other.commits,
            self.publishes + other.publishes, self.puts + other.puts,
            self.appends + other.appends, None, self.all_fences() + other.all_fences(),
            self.dead_letter_of + other.dead_letter_of,
        )

    def all_fences(self) -> tuple[Fence, ...]:
        """`fences`, and `fence` as a Fence over this step's commits of its group."""
        if self.fence is None:
            return self.fences
        group, member_id, generation = self.fence
        mine = tuple(tp for g, tp, _ in self.commits if g == group)
        return (Fence(group, member_id, generation, mine), *self.fences)

    @property
    def writes(self) -> bool:
        """True when the step produces anything (publishes, puts or appends)."""
        return bool(self.publishes or self.puts or self.appends)


# ====================================================================== events


class EventKind(str, Enum):  # noqa: UP042 - str() is the name in logs
    QUEUE_READY = "queue-ready"  # name: queue -- a message may be deliverable
    RECORDS_APPENDED = "records-appended"  # name: topic
    ASSIGNMENT_CHANGED = "assignment-changed"  # name: group (any member's)
    SEEK = "seek"  # name: group -- offsets moved from outside; positions are stale
    TIMERS = "timers"  # name: "" -- next_due() moved earlier


class Event(NamedTuple):
    kind: EventKind
    name: str = ""


class Subscription(Protocol):
    def close(self) -> None:
        """Stop calling back (idempotent)."""
        ...


class Waiter:
    """An asyncio wake-up fed by backend events: subscribe, then check, then wait.

        waiter = Waiter(backend, [Event(EventKind.QUEUE_READY, "orders")])
        while running:
            got = backend.fetch(...)
            if not got:
                await waiter.wait()
    """

    __slots__ = ("_flag", "_sub", "fired")

    def __init__(self, backend: Backend, events: Iterable[Event]) -> None:
        self._flag = asyncio.Event()
        self.fired = 0  # how many callbacks arrived (tests count wake-ups)
        self._sub = backend.subscribe(events, self._on_event)

    def _on_event(self, event: Event) -> None:
        self.fired += 1
        self._flag.set()

    def set(self) -> None:
        """Wake the waiter from the owner's side (stop, reload)."""
        self._flag.set()

    async def wait(self, timeout_s: float | None = None) -> bool:
        """Until an event (True) or `timeout_s` (False); clears the flag."""
        try:
            if timeout_s is None:
                await self._flag.wait()
            else:
                async with asyncio.timeout(timeout_s):
                    await self._flag.wait()
        except TimeoutError:
            return False
        finally:
            self._flag.clear()
        return True

    def close(self) -> None:
        self._sub.close()


# ====================================================================== protocols


class Producer(Protocol):
    def publish(self, exchange: str, messages: Sequence[OutMessage]) -> Published:
        """Route through an exchange. Forbidden for an internal exchange,
        NotFound for an unknown one, Refused(accepted=i, routed=...) at the
        first message a destination refuses (the ones before it are taken).
        A message reaching a topic becomes a record (see docs/engine.md)."""
        ...

    def put(self, queue: str, messages: Sequence[OutMessage]) -> Published:
        """Straight into one queue (AMQP's default exchange)."""
        ...

    def append(self, topic: str, records: Sequence[OutRecord]) -> Appended:
        """InvalidRequest for a keyless record on a compacted topic, TooLarge
        over the topic's max message size; nothing is appended on error."""
        ...


class QueueConsumer(Protocol):
    def fetch(
        self, queue: str, max_messages: int, *, lease_s: float, consumer_id: str,
    ) -> list[QueueDelivery]:
        """Up to `max_messages` ready messages, without waiting (wait for
        QUEUE_READY). Each is leased to `consumer_id` for `lease_s`: unsettled
        by then, it is delivered again. Expired (TTL) ones are dead-lettered."""
        ...

    def settle(self, queue: str, outcomes: Sequence[Outcome]) -> Settled:
        """Apply the outcomes in order; unknown ids are returned, not raised.
        NotFound for a DeadLetter's unknown to_queue / to_topic (nothing settled)."""
        ...


class TopicReader(Protocol):
    def read(
        self, topic: str, partition: int, offset: int, *, max_records: int = 500,
        max_bytes: int | None = None,
    ) -> Read:
        """OffsetOutOfRange below the log start (`log_start`, `log_end`)."""
        ...

    def partitions(self, topic: str) -> list[PartitionInfo]: ...

    def offset_for_time(self, topic: str, partition: int, timestamp_ms: int) -> int:
        """The first offset with a timestamp >= `timestamp_ms` (log end if none)."""
        ...


class GroupMember(Protocol):
    """One in-process member of one consumer group, from `Backend.open_member`.

    It owns its membership: it joined when opened, keeps its session alive
    (heartbeats, if the backend needs them, are its own business -- the
    pipeline never sends any) and leaves on `close`. Its assignment and
    generation are local state: reading them costs no backend call. When they
    change, or the group is sought, ASSIGNMENT_CHANGED / SEEK fire for the group.
    """

    @property
    def group(self) -> str: ...

    @property
    def member_id(self) -> str: ...

    @property
    def generation(self) -> int:
        """Bumped by every rebalance and every seek of the group: a step fenced
        with an older one is refused."""
        ...

    def assignment(self) -> tuple[TopicPartition, ...]: ...

    def position(self, tp: TopicPartition) -> int:
        """The committed offset, else the group's reset position."""
        ...

    def commit(self, offsets: Mapping[TopicPartition, int]) -> Ticket:
        """Commit next offsets to read, fenced: Conflict when a partition is no
        longer this member's or the generation moved (nothing committed)."""
        ...

    def close(self) -> None:
        """Leave the group (its partitions go to the other members)."""
        ...


@runtime_checkable
class MemberReader(Protocol):
    """Optional, beside GroupMember: a member that consumes its own partitions as they
    are assigned (a remote backend prefetching them; RabbitMQ) reads them itself,
    without waiting, instead of `TopicReader.read` (which a remote backend serves by
    a blocking call). Nothing buffered yet: no records, `next_offset` = `offset`;
    RECORDS_APPENDED fires when more arrive."""

    def read(self, tp: TopicPartition, offset: int, *, max_records: int = 500) -> Read: ...


class Coordinator(Protocol):
    """Groups for members outside the process (Kafka and HTTP clients)."""

    def join(self, group: str, member_id: str) -> None: ...

    def heartbeat(self, group: str, member_id: str) -> None:
        """NotFound when the member's session expired (join again)."""
        ...

    def leave(self, group: str, member_id: str) -> None: ...

    def assignment(self, group: str, member_id: str) -> list[TopicPartition]: ...

    def position(self, group: str, tp: TopicPartition) -> int: ...

    def commit(
        self, group: str, offsets: Mapping[TopicPartition, int], *,
        member_id: str | None = None, generation: int | None = None,
    ) -> Ticket:
        """Without `member_id`: a commit from outside, refused with Conflict for
        a group this runner runs with a handler (seek it instead)."""
        ...


class Admin(Protocol):
    @property
    def topology(self) -> Topology:
        """The topology applied last."""
        ...

    def apply(self, topology: Topology, *, force: bool = False) -> list[str]:
        """Apply a topology as one step; a line per change. UnsafeChange
        (nothing applied) for what TOPOLOGY.md calls unsafe, unless `force`."""
        ...

    def queue_info(self, queue: str) -> QueueInfo: ...

    def group_info(self, group: str) -> GroupInfo: ...

    def seek(
        self, group: str, tp: TopicPartition, *, offset: int | None = None,
        timestamp_ms: int | None = None,
    ) -> int:
        """Move a group's position; fires SEEK and bumps its members' generation."""
        ...

    def peek_ids(self, queue: str, n: int) -> list[tuple[int, QueueDelivery]]:
        """The first `n` ready messages with their ids, not delivered."""
        ...

    def purge(self, queue: str, ids: Collection[int] | None = None) -> int:
        """The ready messages of `queue` (or those of `ids`); how many went.
        `ids`: NotImplementedError without CHOSEN_MESSAGES."""
        ...

    def replay(
        self, queue: str, max_messages: int | None = None, *,
        only: Collection[int] | None = None,
    ) -> ReplayOutcome:
        """Dead letters in `queue` back to where they died (TOPOLOGY.md). `only`:
        NotImplementedError without CHOSEN_MESSAGES."""
        ...

    def replay_queue(self, group: str) -> str | None:
        """The queue of dead letters replayed back to `group` (None: none)."""
        ...

    def replayed_record(self, delivery: QueueDelivery) -> Record:
        """The topic record a delivery from a replay queue carries."""
        ...

    def stats(self) -> BackendStats:
        """A snapshot of plain counters for the metrics collector and the console."""
        ...


class Steps(Protocol):
    def commit_step(self, step: Step) -> Ticket:
        """Apply `step` atomically (see Step); checked first, nothing applied on
        error. NotImplementedError without EXACTLY_ONCE."""
        ...

    def dead_letter_step(
        self, group: str, record: Record, death: Mapping[str, Any], *,
        to_queue: str | None = None, to_topic: str | None = None,
    ) -> Step:
        """The Step that dead-letters a topic record failed by `group` (add the
        commit past it, then commit_step)."""
        ...


class WireRecord(NamedTuple):
    """A record as the Kafka wire protocol carries it (`WireTopics`): header names
    may repeat and every value is raw bytes or null."""

    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes | None], ...]
    timestamp_ms: int | None  # None: the append time


# a stored record read back for the Kafka wire: (offset, timestamp_ms, key, value,
# headers) -- a plain tuple, one per record of a fetch, kept cheap
WireStored = tuple[int, int, bytes | None, bytes | None, Sequence[tuple[str, bytes | None]]]


class WireTopics(Protocol):
    """Optional, beside Backend: topics as a Kafka listener serves them -- records
    with raw headers as Kafka clients produced them (read back byte for byte),
    and Kafka's idempotent producer checks per producer and partition. Appends
    are durable on return (as the backend's fsync policy promises)."""

    def topic_partitions(self) -> dict[str, int]:
        """Every topic and its partition count."""
        ...

    def log_offsets(self, topic: str, partition: int) -> tuple[int, int]:
        """(log start, log end); NotFound for an unknown topic or partition."""
        ...

    def producer_sequence(self, topic: str, partition: int, producer_id: str) -> int:
        """The last sequence `producer_id` appended to the partition (-1: unknown)."""
        ...

    def append_wire(
        self, topic: str, partition: int, records: Sequence[WireRecord], *,
        producer_id: str | None = None, base_sequence: int | None = None,
        allow_gap: bool = False, restart: bool = False,
    ) -> int:
        """Append to one partition; the first record's offset (-1 for none).
        With `producer_id` and `base_sequence` (one sequence per record on from
        it): an exact retry of a recent batch gets its original offset, nothing
        stored again; a sequence out of order is InvalidRequest, unless
        `allow_gap` (any higher one) or `restart` (the sequence wrapped)."""
        ...

    def read_wire(
        self, topic: str, partition: int, offset: int, *, max_records: int, max_bytes: int,
    ) -> list[WireStored]:
        """Records from `offset` with their headers as produced; OffsetOutOfRange
        outside the log."""
        ...


class DeadLetterTopics(Protocol):
    """Optional, beside Backend: what the DLQ tools (`runner.daemon.dlq_ops`) need
    beyond it -- a dead-letter topic's records settled on their own, and purges
    in pages."""

    def dlq_settled(self, topic: str) -> dict[int, set[int]]:
        """Per partition of dead-letter topic `topic`, the offsets at or above its
        replay position (`dlq_position_group`) that were replayed or purged on
        their own (markers in `dlq_settled_queue(topic)`; older ones are obsolete)."""
        ...

    def purge_page(self, queue: str, ids: Collection[int] | None, limit: int) -> int:
        """`Admin.purge` of at most `limit` messages, the first in delivery order
        (a page: the loop serves other requests between pages); how many went."""
        ...


class StorageHealth(Protocol):
    """Optional, beside Backend: the daemon's readiness probe (`/readyz`) asks it."""

    def failed_logs(self) -> dict[str, str]:
        """Logs refusing all reads and writes after a failed fsync, path -> why
        (LogFailed until a restart recovers them); empty when all is well."""
        ...


@runtime_checkable
class MergedWrites(Protocol):
    """Optional, beside Backend: puts, publishes and appends merged with the others of
    the same turn of the event loop (the embedded engine: one write per queue,
    exchange or topic and one fsync wait for many small HTTP requests;
    `runner.engine.merged`)."""

    def put_merged(
        self, queue: str, messages: Sequence[OutMessage],
    ) -> Awaitable[tuple[tuple[str, ...], ...]]:
        """`put` then `durable`: each message's routes once all are durable; the errors
        of `put` (Refused with `accepted` counted in `messages`) and of `durable`."""
        ...

    def publish_merged(
        self, exchange: str, messages: Sequence[OutMessage], copies: int,
    ) -> Awaitable[tuple[tuple[str, ...], ...]]:
        """`publish` then `durable`, as `put_merged`; `copies`: how many copies the
        messages make (`FanoutCounter.fanout`), which bounds a merged batch."""
        ...

    def append_merged(
        self, topic: str, records: Sequence[OutRecord],
    ) -> Awaitable[tuple[tuple[int, int], ...]]:
        """`append` then `durable`: each record's (partition, offset) once all are
        durable; the errors of `append` and `durable`. Not for an idempotent
        producer's records (`producer_id`): its sequences are checked per batch.
        Placement may differ from `append`'s: a backend that merges several callers'
        records into one write may put that write's keyless records on one
        partition (the embedded engine does: Kafka's sticky partitioner)."""
        ...


class Flushable(Protocol):
    """Optional, beside Backend: make everything taken so far durable now (a
    stopping daemon, before `close`); StorageError / LogFailed when it cannot."""

    def flush(self) -> None: ...


class FanoutCounter(Protocol):
    """Optional, beside Backend: how many copies (queues and topics reached) each
    message published through `exchange` would make, storing nothing (the
    daemon's --max-fanout check of a publish request). NotFound / Forbidden as
    `Producer.publish`."""

    def fanout(self, exchange: str, messages: Sequence[OutMessage]) -> list[int]: ...


class RouteExplainer(Protocol):
    """Optional, beside Backend: a backend whose routing rules can be shown (the
    embedded engine) explains a publish without making it; `runner route` runs on one."""

    def explain(
        self, exchange: str, routing_key: str, headers: Mapping[str, Any] | None = None,
    ) -> tuple[RouteHop, ...]:
        """Every exchange a message published to `exchange` would pass, in order,
        and what each matched; nothing is published or counted. NotFound for an
        unknown exchange and Forbidden for an internal one, as `Producer.publish`."""
        ...


class KeyWindow(Protocol):
    """The idempotency window of one consumer kept by its backend for every process
    of the broker (`SharedKeys`): keys any of them recorded are seen by all."""

    def seen(self, key: str) -> bool:
        """True when `key` was recorded within the window (as far as this process has
        read the others' keys: `catch_up` makes that "up to now")."""
        ...

    def record(self, key: str) -> Ticket:
        """Remember `key` as processed; seen here at once, by every process once the
        ticket is durable. Ack the message only after that."""
        ...

    async def catch_up(self) -> None:
        """Return once every key recorded durably (by any process) before the call is
        seen here (at start, and before trusting `seen` for a redelivery)."""
        ...


@runtime_checkable
class SharedKeys(Protocol):
    """Optional, beside Backend: a backend whose processes share idempotency windows
    (RabbitMQ: a stream of keys per consumer). Without it the pipeline keeps each
    window in files of its own data directory."""

    def key_window(self, consumer: str, window_s: float) -> KeyWindow: ...


@runtime_checkable
class Backend(Producer, QueueConsumer, TopicReader, Coordinator, Admin, Steps, Protocol):
    """Everything the pipeline and the daemon use."""

    @property
    def capabilities(self) -> frozenset[Capability]: ...

    def open_member(self, group: str, member_id: str) -> GroupMember:
        """Join `group` as `member_id` (see GroupMember)."""
        ...

    def subscribe(
        self, events: Iterable[Event], callback: Callable[[Event], None],
    ) -> Subscription: ...

    async def durable(self, ticket: Ticket) -> None:
        """Return when `ticket`'s write is durable (see the module docstring)."""
        ...

    def taken(self) -> Ticket:
        """A ticket covering every write this backend has taken so far: what to await
        after a write that failed part-way and so returned no ticket (a publish
        refused with Refused after its first `accepted` messages were taken)."""
        ...

    def next_due(self) -> float | None:
        """Clock time (`clock.time()`) of the next timed work; None: none."""
        ...

    def tick(self) -> None:
        """Do the timed work that is due (fires the events it causes)."""
        ...

    def close(self) -> None:
        """Flush and release everything (idempotent)."""
        ...


def settled_ids(outcomes: Iterable[Outcome]) -> list[int]:
    """The delivery ids of some outcomes (in order)."""
    return [o.delivery_id for o in outcomes]

