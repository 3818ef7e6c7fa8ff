"""The engine contract over a real RabbitMQ: `RabbitBackend`, the second Backend.

The librdkafka model (runner/engine/contract.py, "Threading"): the owner thread
(the daemon's loop, a test) never talks to the broker. Every write is queued,
with its `Ticket`, to one I/O thread that owns one pika `BlockingConnection`
and runs the writes in order; deliveries arrive on that thread into per-queue
buffers that `fetch` drains. Only the I/O thread touches pika.

    owner thread                           I/O thread (pika)
    publish/put -> Ticket(seq), queued --> basic_publish on the confirm channel,
                                           done when the broker confirms
    settle      -> Ticket(seq), queued --> basic_ack / nack / reject on the
                                           delivery's channel (after every
                                           earlier publish was confirmed:
                                           writes run in order)
    fetch       <- local buffer       <--- basic_consume, basic_qos(prefetch)
    subscribe   <- QUEUE_READY        <--- fired on the subscriber's loop
    durable(t)  awaits "every write up to t is done" (confirmed / sent)

Retries go through the per-delay queues of the mapping (`__runner.delay.<ms>ms`:
TTL, then dead-lettered back through the default exchange into the queue);
the copy carries `x-runner-*` headers (the delivery count so far, the first
attempt, the original exchange and routing key) that are taken off again when
it is delivered. A dead letter with a `death` gets the same `x-dead-letter`
header as on the embedded engine (built by `runner.broker.deadletter`).

Connection loss: the I/O thread reconnects with backoff (0.1 s doubling to
5 s), declares the topology again, reopens its consumers and resumes its
queue of writes where it stopped (a batch resumes after its last confirmed
message, so a publish is never lost; one in flight may be sent twice).
Deliveries of the lost connection are back in their queue on the broker: the
ones still buffered are dropped, settling the ones already fetched answers
them `unknown` (and their ticket raises StorageError), and they are delivered
again -- a duplicate, which at-least-once allows.

Topics: `append` writes each record into the stream of its partition (the
mapping's `T.p`, murmur2 of the key as Kafka); `read`, `partitions` and
`offset_for_time` read the streams back (runner.backends.rabbitmq.streams,
on connections of their own). Consumer groups: `open_member` is a
`runner.backends.rabbitmq.groups.RabbitMember` (a connection of its own, one
owner per partition by exclusive queues, committed offsets in a queue of one
message, written here as confirmed publishes). Not served (capabilities):
exactly-once steps, compaction, idempotent producers; groups of members
outside the process (the Coordinator: HTTP and Kafka consumers).

Idempotency (`SharedKeys.key_window`): the window of a consumer with
`idempotency:` is its keys stream, shared by every daemon of the vhost
(runner.backends.rabbitmq.keys): keys are appended as confirmed publishes
through the writes, and the I/O thread tails each stream on a channel of its
own, again from where it stopped after a reconnect.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import datetime
import decimal
import functools
import itertools
import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pika
import pika.data
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel

from runner.backends.rabbitmq import apply as apply_mod
from runner.backends.rabbitmq import groups as groups_mod
from runner.backends.rabbitmq import keys as keys_mod
from runner.backends.rabbitmq import live, moves, streams
from runner.backends.rabbitmq.mapping import (
    CAPABILITIES as MAPPING_CAPABILITIES,
)
from runner.backends.rabbitmq.mapping import (
    DELAY_PREFIX,
    RUNNER_PREFIX,
    ExchangeDef,
    QueueDef,
    arguments,
    definitions,
    delay_ms,
    delay_name,
    hidden_queues,
    keys_streams,
    member_queue,
    owner_queue,
    settled_queue,
    stream_name,
)
from runner.backends.rabbitmq.mapping import replay_queue as replay_queue_of
from runner.backends.rabbitmq.url import Target
from runner.broker.deadletter import build_death, replayed_headers, with_death
from runner.broker.message import QueuedMessage
from runner.broker.routing import Router, declare_all
from runner.clock import Clock, SystemClock
from runner.engine.contract import (
    Ack,
    Appended,
    Capability,
    DeadLetter,
    Event,
    EventKind,
    GroupInfo,
    GroupMember,
    GroupPartition,
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
    Settled,
    Step,
    Ticket,
    TopicPartition,
    dlq_position_group,
    dlq_settled_queue,
    marker_of,
)
from runner.engine.deadletters import dead_letter_step as engine_dead_letter_step
from runner.engine.deadletters import dlq_position_groups
from runner.engine.deadletters import replayed_record as engine_replayed_record
from runner.engine.records import EXCHANGE_HEADER as RECORD_EXCHANGE_HEADER
from runner.engine.records import ORIGINAL_KEY_HEADER
from runner.engine.records import ROUTING_KEY_HEADER as RECORD_ROUTING_KEY_HEADER
from runner.engine.values import EngineStats, QueueStats
from runner.errors import (
    Conflict,
    EngineError,
    InvalidRequest,
    NotFound,
    Refused,
    StorageError,
    TooLarge,
    UnsafeChange,
)
from runner.log.partitioner import Partitioner, key_from_json
from runner.topology.model import Delivery, Topology

log = logging.getLogger(__name__)

# What this runtime serves: the mapping's capabilities (topics with consumer groups
# run by the daemon's handlers; runner.backends.rabbitmq.groups).
CAPABILITIES = MAPPING_CAPABILITIES

DEFAULT_PREFETCH = 100  # a queue fetched without a consumer of the topology
RECONNECT_FIRST_S = 0.1
RECONNECT_MAX_S = 5.0
INFO_FRESH_S = 1.0  # queue_info answers from a queue_infos this young
WRITTEN_WAIT_S = 30.0  # a blocking commit_step waits this long for its writes' confirms
DRAIN_ROUND = 256  # writes between two looks at deliveries and heartbeats
SCANS_AT_ONCE = 8  # stream scans of one call running at once (partitions' bounds)
# failed writes remembered (the newest; callers ask right after theirs is done): a client
# publishing into a full reject-publish queue for days must not grow memory without end
FAILURES_KEPT = 100_000

# headers of a retried copy, taken off at delivery
COUNT_HEADER = "x-runner-delivery-count"  # deliveries before this copy
FIRST_HEADER = "x-runner-first-attempt"  # wall milliseconds of the first delivery
EXCHANGE_HEADER = "x-runner-exchange"
KEY_HEADER = "x-runner-routing-key"
RUNNER_HEADERS = (COUNT_HEADER, FIRST_HEADER, EXCHANGE_HEADER, KEY_HEADER)
# a topic record in its stream (read back by runner.backends.rabbitmq.streams)
RECORD_KEY_HEADER = streams.KEY_HEADER  # the record's key (bytes)
RECORD_NULL_HEADER = streams.NULL_HEADER  # a tombstone (no value)
RECORD_TIMESTAMP_HEADER = streams.TIMESTAMP_HEADER  # its milliseconds

Callback = Callable[[Event], None]


def _not_served(what: str) -> NotImplementedError:
    return NotImplementedError(f"the RabbitMQ backend does not serve {what} yet")


# ====================================================================== values


@dataclass(slots=True)
class _Held:
    """A delivery the owner may settle: where it came from on the broker."""

    gen: int  # the connection it arrived on
    queue: str
    tag: int  # its delivery tag on that connection's channel of `queue`
    delivery: QueueDelivery
    raw_headers: dict[str, Any]  # as delivered (runner headers included)
    received_s: float
    channel: Any = None  # the BlockingChannel it came on (its tag means nothing elsewhere)
    consumer_id: str = ""
    lease_until: float | None = None  # clock time; None while only buffered


@dataclass(slots=True)
class _Publish:
    """One message to send through the confirm channel."""

    exchange: str
    routing_key: str
    body: bytes
    properties: pika.BasicProperties
    # into one named queue or stream: routed nowhere (it was deleted on the broker) is
    # an error, not a positive confirm of nothing stored
    mandatory: bool = False


@dataclass(slots=True)
class _Command:
    """A queued write: publishes, or settlements (each a list of actions)."""

    seq: int
    publishes: list[_Publish] = field(default_factory=list)
    settles: list[tuple[Outcome, _Held]] = field(default_factory=list)
    next_index: int = 0  # publishes confirmed so far (a resumed batch starts here)
    topics: frozenset[str] = frozenset()  # topics it writes to: RECORDS_APPENDED when done
    # earlier writes that must have been confirmed positive: when one failed, this one
    # is not sent (its acks give the deliveries back instead) and fails with its error
    after: tuple[int, ...] = ()
    on_error: Callable[[_Command, EngineError], None] | None = None  # I/O thread, once failed


class _Sub:
    __slots__ = ("callback", "events", "loop", "owner", "closed")

    def __init__(self, owner: RabbitBackend, events: frozenset[Event], callback: Callback,
                 loop: asyncio.AbstractEventLoop | None) -> None:
        self.owner = owner
        self.events = events
        self.callback = callback
        self.loop = loop
        self.closed = False

    def fire(self, event: Event) -> None:
        if self.closed:
            return
        if self.loop is None:
            self.callback(event)
            return
        try:
            self.loop.call_soon_threadsafe(self._call, event)
        except RuntimeError:  # the subscriber's loop is closed
            self.closed = True

    def _call(self, event: Event) -> None:
        if not self.closed:
            self.callback(event)

    def close(self) -> None:
        self.closed = True
        self.owner._unsubscribe(self)


def _encoded(value: Any) -> Any:
    """A header value as pika can send it: floats as Decimal (AMQP tables have no
    float in pika), mappings and lists inside out."""
    if isinstance(value, float):
        return decimal.Decimal(repr(value))
    if isinstance(value, Mapping):
        return {str(k): _encoded(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_encoded(v) for v in value]
    return value


def _decoded(value: Any) -> Any:
    """A delivered header value as the runner wrote it (Decimal back to float); an
    AMQP timestamp (RabbitMQ's `x-death` times) as milliseconds since the epoch, as
    every time of the HTTP API."""
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, datetime.datetime):
        aware = value if value.tzinfo else value.replace(tzinfo=datetime.UTC)
        return round(aware.timestamp() * 1000)
    if isinstance(value, dict):
        return {k: _decoded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decoded(v) for v in value]
    return value


def encode_headers(headers: Mapping[str, Any]) -> dict[str, Any]:
    """`headers` for an AMQP table; InvalidRequest naming the header pika cannot send."""
    out = _encoded(headers)
    try:
        pika.data.encode_table([], out)
    except pika.exceptions.UnsupportedAMQPFieldException as exc:
        raise InvalidRequest(f"a header value RabbitMQ cannot carry: {exc}") from exc
    assert isinstance(out, dict)
    return out


def _properties(m: OutMessage, now_s: float) -> pika.BasicProperties:
    return pika.BasicProperties(
        headers=encode_headers(m.headers) if m.headers else None,
        priority=m.priority,
        expiration=None if m.ttl_s is None else str(max(0, round(m.ttl_s * 1000))),
        message_id=m.message_id,
        content_type=m.content_type,
        delivery_mode=2,
        timestamp=int(now_s),
    )


def head_age(row: Mapping[str, Any], now_s: float) -> float:
    """The age of a queue's head message from the management API's row: now minus its
    `head_message_timestamp`, the AMQP `timestamp` property (whole seconds) of the
    message at the head. RabbitMQ 3.10 reports it for classic queues only, and only
    while the head message is in memory (paged in) and carries a timestamp; 0 without
    it, as for an empty queue. Nothing is peeked."""
    stamp = row.get("head_message_timestamp")
    if isinstance(stamp, bool) or not isinstance(stamp, int | float) or stamp <= 0:
        return 0.0
    return max(0.0, now_s - float(stamp))


def router_of(topology: Topology) -> Router:
    router = Router()
    declare_all(router, [e for _, e in topology.exchanges], topology.bindings)
    return router


# ====================================================================== the backend


class RabbitBackend:
    """`runner.engine.contract.Backend` over one RabbitMQ vhost (see the module doc)."""

    def __init__(
        self, target: Target, topology: Topology, *, clock: Clock | None = None,
        connect_timeout_s: float = 10.0,
    ) -> None:
        self.target = target
        self._topology = topology
        self._router = router_of(topology)
        self._clock = clock or SystemClock()
        self._lock = threading.Lock()
        self._commands: deque[_Command] = deque()
        self._seq = 0  # the last ticket handed out
        self._done_upto = 0  # every write up to here is done (I/O thread writes)
        self._failures: dict[int, EngineError] = {}
        self._forgotten = 0  # the newest failed write no longer remembered (FAILURES_KEPT)
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._buffers: dict[str, deque[int]] = {}
        self._held: dict[int, _Held] = {}
        self._ids = itertools.count(1)
        self._partitioners: dict[str, Partitioner] = {}
        self._io_partitioners: dict[str, Partitioner] = {}  # the I/O thread's (dead letters)
        self._reader = streams.StreamReader(functools.partial(apply_mod.connect, target),
                                            str(target))
        # a topic's partitions are scanned at once (each scan: a connection and a
        # quiet period), not one after another
        self._scans = concurrent.futures.ThreadPoolExecutor(
            max_workers=SCANS_AT_ONCE, thread_name_prefix="stream-scan")
        self._infos: tuple[float, dict[str, QueueInfo]] | None = None  # (when, counts)
        self._consumed: set[str] = set()  # queues the owner wants deliveries of
        self._subs: list[_Sub] = []
        self._token = uuid.uuid4().hex  # tells this backend's own seeks from others'
        self._members: list[groups_mod.RabbitMember] = []
        # (dead-letter topic, partition, replay position) -> its record's timestamp
        self._dlq_ts: dict[tuple[str, int, int], int] = {}
        self._closed = False
        self._stop = threading.Event()
        self._connected = threading.Event()
        self._connect_error: str | None = None
        self.connections = 0  # how many times the I/O thread connected (tests)
        # I/O thread state
        self._conn: pika.BlockingConnection | None = None
        self._gen = 0
        self._pub: BlockingChannel | None = None
        self._channels: dict[str, BlockingChannel] = {}
        # the consumer on each channel of `_channels`: its tag and its basic.qos prefetch
        self._consumer_tags: dict[str, str] = {}
        self._prefetches: dict[str, int] = {}
        self._qos_topology: Topology | None = None  # the topology those prefetches follow
        self._declared_delays: set[int] = set()
        self._ready_queues: set[str] = set()
        self._windows: dict[str, keys_mod.SharedWindow] = {}  # consumer -> its shared keys
        self._key_channels: dict[str, BlockingChannel] = {}  # consumer -> its tail (I/O)
        self._key_retry: dict[str, float] = {}  # consumer -> monotonic time to attach again
        self._thread = threading.Thread(target=self._run, name=f"rabbitmq:{target}", daemon=True)
        self._thread.start()
        if not self._connected.wait(connect_timeout_s):
            self.close()
            raise StorageError(f"cannot connect to {target}: {self._connect_error or 'timed out'}")

    # ================================================================ basics
    @property
    def capabilities(self) -> frozenset[Capability]:
        return CAPABILITIES

    @property
    def topology(self) -> Topology:
        return self._topology

    def subscribe(self, events: Iterable[Event], callback: Callback) -> _Sub:
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None  # no loop: called on the I/O thread (tests without asyncio)
        wanted = frozenset(events)
        sub = _Sub(self, wanted, callback, loop)
        with self._lock:
            self._subs.append(sub)
        for e in wanted:
            if e.kind is EventKind.QUEUE_READY and (e.name in self._topology.queue_map()
                                                    or e.name in self._replay_queues()):
                self._consume(e.name)
        return sub

    def _unsubscribe(self, sub: _Sub) -> None:
        with self._lock:
            if sub in self._subs:
                self._subs.remove(sub)

    async def durable(self, ticket: Ticket) -> None:
        if ticket.seq == 0:
            return
        fut: asyncio.Future[None] | None = None
        with self._lock:
            if ticket.seq > self._done_upto:
                fut = asyncio.get_running_loop().create_future()
                self._waiters.append((ticket.seq, fut))
        if fut is not None:
            await fut
        failed = self._failure_of(ticket)
        if failed is not None:
            raise failed

    def _failure_of(self, ticket: Ticket) -> EngineError | None:
        """Why a write the ticket covers failed (a combined one: any of them), or None.
        Exactly the writes it covers: a publish nacked between two of them (another
        caller's, into a full reject-publish queue) is not theirs."""
        if not ticket.combined:
            return self._failure_at(ticket.seq)
        with self._lock:
            for seq in sorted(ticket.covers):
                if (failed := self._failure_at(seq)) is not None:
                    return failed
        return None

    def _failure_at(self, seq: int) -> EngineError | None:
        """Why write `seq` failed, or None; a write no newer than the newest failure
        forgotten (FAILURES_KEPT) may have failed: it counts as failed (its caller
        handles it again rather than going on past a loss)."""
        failed = self._failures.get(seq)
        if failed is None and 0 < seq <= self._forgotten:
            return StorageError(f"RabbitMQ {self.target}: the outcome of write {seq} is no "
                                f"longer known (more than {FAILURES_KEPT} writes failed "
                                "since); taken as failed")
        return failed

    def taken(self) -> Ticket:
        with self._lock:
            return Ticket(self._seq)  # the last ticket handed out (tickets are ordered)

    def next_due(self) -> float | None:
        return None  # the broker keeps its own time (TTLs, delays)

    def tick(self) -> None:
        return None

    def close(self) -> None:
        if self._closed:
            return
        for m in list(self._members):
            m.close()
        self._closed = True
        self._stop.set()
        self._wake()
        self._scans.shutdown(wait=False, cancel_futures=True)
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=10)

    # ================================================================ SharedKeys
    def key_window(self, consumer: str, window_s: float) -> keys_mod.SharedWindow:
        """The idempotency window of `consumer`, shared through its keys stream by every
        daemon of the vhost (one per consumer for the life of the backend: a reload
        keeps what was read, with the new window)."""
        with self._lock:
            window = self._windows.get(consumer)
            if window is None:
                window = keys_mod.SharedWindow(consumer, window_s, clock=self._clock,
                                               write=self._write_key, token=self._token)
                self._windows[consumer] = window
            window.window_s = window_s
        self._wake()  # the I/O thread starts its tail
        return window

    def _write_key(self, stream: str, body: bytes, props: pika.BasicProperties) -> Ticket:
        # mandatory: a keys stream deleted on the broker is an error, not a silent loss
        return self._submit(_Command(0, publishes=[_Publish("", stream, body, props,
                                                            mandatory=True)]))

    # ================================================================ Producer
    def publish(self, exchange: str, messages: Sequence[OutMessage]) -> Published:
        self._router.check_publish(exchange)
        now = self._clock.time()
        routes: list[tuple[str, ...]] = []
        publishes = []
        topics = set(self._topology.topic_map())
        for m in messages:
            route = self._router.route(exchange, m.routing_key, m.headers, count=False)
            routes.append(tuple(route.destinations))
            props = _properties(m, now)
            if m.headers and topics.intersection(route.destinations):
                # a stream is among the destinations: headers as a stream keeps them
                props.headers = streams.stream_headers(m.headers, encode_headers)
            publishes.append(_Publish(exchange, m.routing_key, m.body, props))
        reached = topics.intersection(d for r in routes for d in r)
        return Published(tuple(routes), self._submit(
            _Command(0, publishes=publishes, topics=frozenset(reached))))

    def put(self, queue: str, messages: Sequence[OutMessage]) -> Published:
        self._known_queue(queue)
        now = self._clock.time()
        real = self._broker_queue(queue)
        publishes = [_Publish("", real, m.body, _properties(m, now), mandatory=True)
                     for m in messages]
        return Published(tuple((queue,) for _ in messages),
                         self._submit(_Command(0, publishes=publishes)))

    def append(self, topic: str, records: Sequence[OutRecord]) -> Appended:
        """Each record into the stream of its partition (`T.p`): the explicit one, else
        murmur2 of its key (or of the topic's `key` field of a JSON value), else round
        robin. The key travels in `x-runner-key`, a tombstone as `x-runner-null`, the
        timestamp in `x-runner-timestamp-ms`. Positions carry offset -1: a publisher
        confirm does not say where the stream put the message, and learning it
        would cost a read of the stream's tail per append (docs/rabbitmq.md)."""
        positions: list[tuple[int, int]] = []
        publishes = []
        for p, publish in self._record_publishes(topic, records):
            publishes.append(publish)
            positions.append((p, -1))
        ticket = self._submit(_Command(0, publishes=publishes, topics=frozenset([topic])))
        return Appended(tuple(positions), ticket)

    def _record_publishes(
        self, topic: str, records: Sequence[OutRecord],
        partitioners: dict[str, Partitioner] | None = None,
    ) -> list[tuple[int, _Publish]]:
        """Each record as the publish into the stream of its partition (see `append`):
        (partition, publish). NotFound, TooLarge before anything is built. The I/O
        thread passes partitioners of its own (round robin state is per thread)."""
        spec = self._topology.topic_map().get(topic)
        if spec is None:
            raise NotFound(f"topic '{topic}' not found")
        own = self._partitioners if partitioners is None else partitioners
        partitioner = own.setdefault(topic, Partitioner())
        now = self._clock.time()
        out: list[tuple[int, _Publish]] = []
        for r in records:
            size = len(r.value or b"") + len(r.key or b"")
            if size > spec.max_message_bytes:
                raise TooLarge(f"a record of {size} bytes is over the max_message_bytes "
                               f"{spec.max_message_bytes} of topic '{topic}'")
            key = r.key
            if key is None and spec.key is not None:
                key = key_from_json(r.value, spec.key)
            if r.partition is not None:
                if not 0 <= r.partition < spec.partitions:
                    raise NotFound(f"topic '{topic}' has no partition {r.partition}")
                p = r.partition
            else:
                p = partitioner.partition(key, spec.partitions)
            headers = streams.stream_headers(r.headers, encode_headers) if r.headers else {}
            if key is not None:
                headers[RECORD_KEY_HEADER] = key
            if r.value is None:
                headers[RECORD_NULL_HEADER] = True
            stamp = r.timestamp_ms if r.timestamp_ms is not None else int(now * 1000)
            headers[RECORD_TIMESTAMP_HEADER] = stamp
            out.append((p, _Publish("", stream_name(topic, p), r.value or b"",
                                    pika.BasicProperties(headers=headers or None,
                                                         delivery_mode=2,
                                                         timestamp=stamp // 1000),
                                    mandatory=True)))
        return out

    # ================================================================ QueueConsumer
    def fetch(
        self, queue: str, max_messages: int, *, lease_s: float, consumer_id: str,
    ) -> list[QueueDelivery]:
        """Buffered deliveries, each leased for `lease_s`: unsettled by then, the I/O
        thread gives it back to the broker (basic.nack requeue) and it is delivered
        again (to any consumer); settling it afterwards answers `unknown`."""
        self._known_queue(queue)
        self._consume(queue)
        out: list[QueueDelivery] = []
        until = self._clock.time() + lease_s
        with self._lock:
            buf = self._buffers.get(queue)
            while buf and len(out) < max_messages:
                h = self._held.get(buf.popleft())
                if h is None:
                    continue
                h.consumer_id = consumer_id
                h.lease_until = until
                out.append(h.delivery)
        if out:
            self._wake()  # the I/O thread looks at leases between rounds
        return out

    def settle(self, queue: str, outcomes: Sequence[Outcome]) -> Settled:
        return self._settle(queue, outcomes)

    def _settle(self, queue: str, outcomes: Sequence[Outcome],
                after: tuple[int, ...] = ()) -> Settled:
        """`settle`, sent only when the writes `after` were confirmed positive (else
        the deliveries go back to their queue and the ticket fails)."""
        queues = self._topology.queue_map()
        for o in outcomes:
            if isinstance(o, DeadLetter):
                if o.to_queue is not None and o.to_queue not in queues:
                    raise NotFound(f"queue '{o.to_queue}' not found")
                if o.to_topic is not None and o.to_topic not in self._topology.topic_map():
                    raise NotFound(f"topic '{o.to_topic}' not found")
        unknown: list[int] = []
        actions: list[tuple[Outcome, _Held]] = []
        with self._lock:
            for o in outcomes:
                h = self._held.get(o.delivery_id)
                if h is None or h.queue != queue:
                    unknown.append(o.delivery_id)
                    continue
                del self._held[o.delivery_id]
                actions.append((o, h))
        ticket = (self._submit(_Command(0, settles=actions, after=after)) if actions
                  else Ticket.DONE)
        return Settled(tuple(unknown), ticket)

    # ================================================================ TopicReader / groups
    def read(
        self, topic: str, partition: int, offset: int, *, max_records: int = 500,
        max_bytes: int | None = None,
    ) -> Read:
        """Records of the partition's stream from `offset` (their stream offsets), on
        a connection of its own: blocking for at least streams.QUIET_S, run it off
        the owner's loop. OffsetOutOfRange below the log start or above the end."""
        stream = self._stream(topic, partition)
        return self._reader.read(topic, stream, partition, offset, max_records, max_bytes,
                                 _decoded)

    def partitions(self, topic: str) -> list[PartitionInfo]:
        """Log start and end of each partition's stream (blocking, as `read`);
        size_bytes is 0: 3.10 does not report a stream's size."""
        spec = self._topology.topic_map().get(topic)
        if spec is None:
            raise NotFound(f"unknown topic '{topic}'")
        if spec.partitions == 1:
            return [self._reader.partition(stream_name(topic, 0), 0)]
        return self._scan_all([TopicPartition(topic, p) for p in range(spec.partitions)])

    def _scan_all(self, tps: list[TopicPartition]) -> list[PartitionInfo]:
        """Each partition's bounds (`partitions`), up to SCANS_AT_ONCE scans at once; a
        backend closed meanwhile is a StorageError, as a lost connection."""
        try:
            return list(self._scans.map(
                lambda tp: self._reader.partition(stream_name(*tp), tp.partition), tps))
        except (RuntimeError, concurrent.futures.CancelledError) as exc:
            if not self._closed:
                raise
            raise StorageError(f"RabbitMQ {self.target}: the backend is closed") from exc

    def offset_for_time(self, topic: str, partition: int, timestamp_ms: int) -> int:
        """The first offset with a timestamp >= `timestamp_ms`, else the log end
        (blocking, as `read`; streams.offset_for_time says where the scan starts)."""
        return self._reader.offset_for_time(self._stream(topic, partition), timestamp_ms)

    def _stream(self, topic: str, partition: int) -> str:
        spec = self._topology.topic_map().get(topic)
        if spec is None:
            raise NotFound(f"unknown topic '{topic}'")  # the embedded engine's sentence
        if not 0 <= partition < spec.partitions:
            raise NotFound(f"topic '{topic}' has no partition {partition}")
        return stream_name(topic, partition)

    def open_member(self, group: str, member_id: str) -> GroupMember:
        """Join `group` as `member_id`: a member with a connection and thread of its own
        (runner.backends.rabbitmq.groups); its partitions are claimed in the background
        (ASSIGNMENT_CHANGED fires), so the assignment starts empty."""
        spec = self._group(group)
        member = groups_mod.RabbitMember(
            self.target, self._topology, spec, member_id, fire=self._fire_event,
            write_commit=self._write_commit, decode=_decoded, written=self._written,
            write_state=self._write_state,
            bounds=self._bounds, origin=self._token, on_close=self._left)
        self._members.append(member)
        return member

    def _left(self, member: groups_mod.RabbitMember) -> None:
        if member in self._members:
            self._members.remove(member)

    def _group(self, group: str) -> Any:
        spec = self._topology.group_map().get(group)
        if spec is None:
            raise NotFound(f"consumer group '{group}' not found")
        return spec

    def _fire_event(self, event: Event) -> None:
        with self._lock:
            subs = [s for s in self._subs if event in s.events]
        for s in subs:
            s.fire(event)

    def _written(self, ticket: Ticket) -> bool:
        """True once every write up to `ticket` is done (any thread)."""
        with self._lock:
            return ticket.seq <= self._done_upto

    def _write_state(self, seq: int) -> bool | None:
        """Write `seq`: None while not done, True once confirmed, False when it failed."""
        with self._lock:
            if seq > self._done_upto:
                return None
            return self._failure_at(seq) is None

    def _write_commit(self, queue: str, body: bytes, after: tuple[int, ...] = ()) -> Ticket:
        """A commit: one persistent message into the partition's offset queue, confirmed;
        not sent when one of the writes `after` failed (dead letters before it)."""
        props = pika.BasicProperties(delivery_mode=2, content_type="application/json")
        return self._submit(_Command(0, publishes=[_Publish("", queue, body, props)],
                                     after=after))

    def _outside(self) -> NotImplementedError:
        return _not_served("members joining a consumer group from outside the daemon "
                           "(Kafka clients); HTTP clients read a group's partitions and "
                           "commit its offsets (POST /v1/groups/{group}/commit)")

    def join(self, group: str, member_id: str) -> None:
        raise self._outside()

    def heartbeat(self, group: str, member_id: str) -> None:
        raise self._outside()

    def leave(self, group: str, member_id: str) -> None:
        raise self._outside()

    def assignment(self, group: str, member_id: str) -> list[TopicPartition]:
        raise self._outside()

    def position(self, group: str, tp: TopicPartition) -> int:
        """The committed offset, else the group's reset position (blocking: a
        connection to read the offset queue, and the stream's bounds for a reset).
        Also the replay position of a dead-letter topic (its hidden group
        `dlq_position_group(topic)`, reset earliest)."""
        spec = self._position_groups().get(group) or self._group(group)
        self._stream(tp.topic, tp.partition)
        return groups_mod.committed_or_reset(self.target, spec, tp, self._bounds)

    def _position_groups(self) -> dict[str, Any]:
        """The hidden groups whose offsets are the dead-letter topics' replay positions."""
        return dict(dlq_position_groups(self._topology))

    def _bounds(self, stream: str) -> tuple[int, int]:
        start, end, _ = self._reader.bounds(stream)
        return start, end

    def commit(
        self, group: str, offsets: Mapping[TopicPartition, int], *,
        member_id: str | None = None, generation: int | None = None,
    ) -> Ticket:
        """A commit of one of this backend's members (fenced by its ownership), else a
        commit from outside (HTTP clients of a group without a handler): each offset
        checked against its stream's bounds as on the embedded engine (0..log end),
        written into its offset queue and confirmed before this returns (blocking: a
        stream read a partition and a connection; run it off the loop). Conflict for
        a group run by handlers (seek it instead), as on the embedded engine."""
        spec = self._group(group)
        if member_id is not None or generation is not None:
            for m in self._members:
                if m.group == group and m.member_id == member_id:
                    if generation is not None and generation != m.generation:
                        raise Conflict(f"group {group!r} rebalanced: generation {generation} "
                                       f"is stale, current is {m.generation}")
                    return m.commit(offsets)
            raise Conflict(f"group {group!r} rebalanced: member {member_id!r} is not in the "
                           "group any more")
        if spec.handler is not None:
            raise Conflict(f"group {group} is run by this daemon's handler; use "
                           f"POST /v1/groups/{group}/offsets to seek it")
        for tp, off in offsets.items():
            stream = self._stream(tp.topic, tp.partition)
            if tp.topic not in spec.topics:
                raise NotFound(f"group {group!r} does not read topic {tp.topic!r}")
            end = self._bounds(stream)[1]
            if not 0 <= off <= end:
                raise InvalidRequest(
                    f"offset {off} for {tp.topic}/{tp.partition} is outside 0..{end}")
        self._write_offsets(group, offsets, "commit")
        return Ticket.DONE

    # ================================================================ Admin
    def apply(self, topology: Topology, *, force: bool = False) -> list[str]:
        """Declare `topology` (runner.backends.rabbitmq.apply; blocks for the
        management API and a pika connection). `force` cannot make RabbitMQ change
        a queue's arguments: an unsafe change is refused all the same."""
        previous = self._topology
        wanted = set(definitions(topology).bindings)
        gone = [b for b in definitions(previous).bindings if b not in wanted]
        try:
            applied = apply_mod.apply(self.target, topology)
            unbound = apply_mod.unbind(self.target, gone) if gone else []
        except apply_mod.Refused as exc:
            raise UnsafeChange(refused_text(self.target, exc)) from exc
        except live.Unreachable as exc:
            raise StorageError(str(exc)) from exc
        except pika.exceptions.AMQPError as exc:
            raise StorageError(f"{self.target}: declaring the topology failed: {exc!r}") from exc
        self._declare_hidden(topology)
        self._topology = topology
        self._router = router_of(topology)
        for m in list(self._members):
            m.retopology(topology)
        self._wake()  # the I/O thread gives the consumers a changed prefetch
        return [*applied.lines, *unbound]

    def _declare_hidden(self, topology: Topology) -> None:
        """The replay queues and settle-marker queues of `topology` (mapping.hidden_queues),
        on a connection of its own (blocking; the I/O thread declares them again at
        each connect)."""
        try:
            conn = apply_mod.connect(self.target)
        except live.Unreachable as exc:
            raise StorageError(str(exc)) from exc
        try:
            ch = conn.channel()
            for q in hidden_queues(topology):
                apply_mod._declare_queue(ch, q)
        except pika.exceptions.AMQPError as exc:
            raise StorageError(f"{self.target}: declaring the runner's queues failed: "
                               f"{exc!r}") from exc
        finally:
            if conn.is_open:
                conn.close()

    def stop_consuming(self, queues: Collection[str]) -> None:
        """Close the consumers of `queues` (a reload removed what read them): their
        prefetched deliveries go back to the broker; settling one fetched before
        answers `unknown`. A later fetch or subscription consumes again."""
        with self._lock:
            self._consumed.difference_update(queues)
        self._wake()

    def queue_info(self, queue: str) -> QueueInfo:
        """The broker's counts (management API; its statistics lag by up to 5 s).
        Answered from the last `queue_infos` of every queue when it is under
        INFO_FRESH_S old (a list of N queues costs one call, not N)."""
        self._known_queue(queue)
        if queue not in self._topology.queue_map():  # a hidden queue: exact, off the cache
            return QueueInfo(queue, self.ready(queue), 0, 0, 0.0)
        cached = self._infos
        if cached is not None and time.monotonic() - cached[0] < INFO_FRESH_S:
            info = cached[1].get(queue)
            if info is not None:
                return info
        return self.queue_infos([queue])[queue]

    def _queue_rows(self, columns: str) -> Any:
        """The vhost's queues as the management API lists them (these columns)."""
        vhost = live.vhost_path(self.target.vhost)
        try:
            return live.request(self.target, "GET", f"/api/queues/{vhost}?columns={columns}")
        except live.Unreachable as exc:
            raise StorageError(str(exc)) from exc

    def queue_infos(self, names: Collection[str] | None = None) -> dict[str, QueueInfo]:
        """Every queue's counts in one management API call (delay queues left out)."""
        rows = self._queue_rows("name,messages_ready,messages_unacknowledged,"
                                "head_message_timestamp")
        now = self._clock.time()
        every = {}
        for row in rows:
            name = str(row["name"])
            if not name.startswith(RUNNER_PREFIX):
                every[name] = QueueInfo(name, int(row.get("messages_ready") or 0),
                                        int(row.get("messages_unacknowledged") or 0), 0,
                                        head_age(row, now))
        self._infos = (time.monotonic(), every)
        out = every if names is None else {n: every[n] for n in names if n in every}
        for name in names or ():
            if name not in out:
                raise NotFound(f"queue '{name}' not found on {self.target}")
        return out

    def group_info(self, group: str) -> GroupInfo:
        """Members, owners and committed offsets from the broker (the group's queues:
        one management API call, one connection for the offsets) and each partition's
        log end from its stream (blocking: 0.2-0.5 s a partition; run it off the loop)."""
        spec = self._group(group)
        rows = groups_mod.group_queues(self.target, group)
        args = {str(r.get("name")): (r.get("arguments") or {}) for r in rows}
        presence = member_queue(group, "")
        members = sorted({str(a.get(groups_mod.MEMBER_ARG, "")) for n, a in args.items()
                          if n.startswith(presence)})
        tps = groups_mod.group_partitions(self._topology, spec)
        committed = groups_mod.committed(self.target, group, tps)
        parts = []
        for tp in tps:
            start, end, _ = self._reader.bounds(stream_name(tp.topic, tp.partition))
            done = committed[tp]
            position = done if done is not None else spec.offset_reset.out_of_range(start, end)
            owner = args.get(owner_queue(group, tp.topic, tp.partition))
            parts.append(GroupPartition(
                tp.topic, tp.partition, done, position, end, max(0, end - position),
                None if owner is None else str(owner.get(groups_mod.MEMBER_ARG, "")) or None))
        return GroupInfo(group, tuple(members), tuple(parts))

    def seek(
        self, group: str, tp: TopicPartition, *, offset: int | None = None,
        timestamp_ms: int | None = None,
    ) -> int:
        """Commit `offset` (or the first offset at `timestamp_ms`) for the group and tell
        its members on every daemon (their presence queues): the owner reads the
        partition again from there. Blocking (a connection of its own). SEEK fires here;
        the members' generation moves."""
        self._group(group)
        self._stream(tp.topic, tp.partition)
        if offset is None:
            if timestamp_ms is None:
                raise InvalidRequest("a seek needs an offset or a timestamp")
            offset = self.offset_for_time(tp.topic, tp.partition, timestamp_ms)
        if offset < 0:
            raise InvalidRequest(f"offset {offset} is negative")
        self._write_offsets(group, {tp: offset}, "seek")
        self._fire_event(Event(EventKind.SEEK, group))
        return offset

    def _write_offsets(self, group: str, offsets: Mapping[TopicPartition, int],
                       why: str) -> None:
        """Commit from outside a member (confirmed; blocking) and tell the group's members
        on every daemon: this daemon's at once, the others through their presence
        queues. The owner of a partition reads it again from its new offset."""
        groups_mod.write_offsets(self.target, group, offsets, why, origin=self._token)
        for m in self._members:
            if m.group == group:
                for tp, offset in offsets.items():
                    m.apply_seek(tp, offset)

    def peek_ids(self, queue: str, n: int) -> list[tuple[int, QueueDelivery]]:
        """The first `n` ready messages (basic.get, then all given back: blocking, run
        it off the owner's loop; runner.backends.rabbitmq.moves), each with its
        position from 1 as its id and delivery id 0 (as the embedded engine's
        peek). Conflict for a queue with a delivery_limit (quorum: a give-back
        counts as a delivery)."""
        self._known_queue(queue)
        moves.refuse_quorum_peek(self._topology, queue)
        return moves.peek(self._connect_tool, queue, n, self._decode_tool)

    def ready(self, queue: str) -> int:
        """The ready messages of `queue` right now (a passive declare; blocking)."""
        self._known_queue(queue)
        return moves.ready(self._connect_tool, self._broker_queue(queue))

    def _connect_tool(self) -> pika.BlockingConnection:
        return apply_mod.connect(self.target)

    def _decode_tool(self, queue: str, method: Any, props: Any, body: bytes) -> QueueDelivery:
        return decode_delivery(queue, 0, method, props, body, self._clock.time())[0]

    def purge(self, queue: str, ids: Collection[int] | None = None) -> int:
        """Every ready message of `queue` (queue.purge on a connection of its own:
        blocking, run it off the owner's loop); how many. Deliveries held by
        consumers (this daemon's buffers included) are not ready and stay."""
        self._known_queue(queue)
        if ids is not None:
            raise NotImplementedError("the RabbitMQ backend cannot purge chosen messages "
                                      "(RabbitMQ purges a whole queue); purge them all")
        try:
            conn = apply_mod.connect(self.target)
        except live.Unreachable as exc:
            raise StorageError(str(exc)) from exc
        try:
            return int(conn.channel().queue_purge(self._broker_queue(queue))
                       .method.message_count)
        except pika.exceptions.AMQPError as exc:
            raise StorageError(f"{self.target}: purge of queue '{queue}' failed: {exc!r}") from exc
        finally:
            if conn.is_open:
                conn.close()

    def replay(
        self, queue: str, max_messages: int | None = None, *,
        only: Collection[int] | None = None,
    ) -> ReplayOutcome:
        """Dead letters of `queue` back into the queue they died in, at least once
        (runner.backends.rabbitmq.moves: each copy confirmed before its original is
        acked); blocking, run it off the owner's loop. `only` (chosen messages) is
        not served: RabbitMQ has no message ids to choose by."""
        self._known_queue(queue)
        if only is not None:
            raise NotImplementedError("the RabbitMQ backend cannot replay chosen messages "
                                      "(RabbitMQ has no ids to choose them by); replay them all")
        n = max_messages if max_messages is not None else 2**31
        return moves.replay(self._connect_tool, self._topology, queue, n, self._decode_tool,
                            _copy_properties)

    def move(self, source: str, dest: str, n: int) -> int:
        """Up to `n` ready messages of queue `source` into queue or topic `dest`, without
        their `x-dead-letter` header and with `x-replay-count` + 1 (a `replay` with
        `to`); each copy confirmed before its original is acked. Blocking."""
        self._known_queue(source)
        topics = self._topology.topic_map()

        def place(d: QueueDelivery) -> list[moves.Publish]:
            headers = replayed_headers(d.headers)
            headers.pop("x-delivery-count", None)
            if dest not in topics:
                return [_Publish("", dest, d.body, _copy_properties(d, headers, "",
                                                                     d.routing_key))]
            key = headers.pop(ORIGINAL_KEY_HEADER, None)
            record = OutRecord(value=d.body, key=None if key is None else str(key).encode(),
                               headers=headers)
            return [p for _, p in self._record_publishes(dest, [record])]

        return moves.move(self._connect_tool, source, n, self._decode_tool, place)

    def replay_queue(self, group: str) -> str | None:
        """The durable queue `__runner.group.<group>.replay` (mapping.replay_queue): the
        group's members, on every daemon, consume it before their partitions."""
        if group not in self._topology.group_map():
            return None
        return replay_queue_of(group)

    def replayed_record(self, delivery: QueueDelivery) -> Record:
        return engine_replayed_record(delivery)  # type: ignore[arg-type]  # same fields

    # ================================================================ DeadLetterTopics
    def dlq_settled(self, topic: str) -> dict[int, set[int]]:
        """The markers of dead-letter topic `topic` at or above its replay positions:
        every message of its marker queue, peeked (basic.get, all given back; blocking).
        A marker's message id is `partition:offset`."""
        queue = settled_queue(topic)
        group = dlq_position_group(topic)
        try:
            peeked = moves.peek(self._connect_tool, queue, 2**31, self._decode_tool)
        except StorageError:
            if topic not in self._topology.dead_letter_topics():
                return {}
            raise
        out: dict[int, set[int]] = {}
        positions: dict[int, int] = {}
        for _, d in peeked:
            found = marker_of(d.message_id or "")
            if found is None:
                continue
            p, off = found
            if p not in positions:
                try:
                    positions[p] = self.position(group, TopicPartition(topic, p))
                except NotFound:
                    positions[p] = off + 1  # the partition is gone: nothing to skip
            if off >= positions[p]:
                out.setdefault(p, set()).add(off)
        return out

    def purge_page(self, queue: str, ids: Collection[int] | None, limit: int) -> int:
        """`purge`: RabbitMQ purges a whole queue in one operation (no pages)."""
        return self.purge(queue, ids)

    def stats(self) -> EngineStats:
        """The queues' counts and counters as the broker reports them (one management
        API call; blocking: run it off the owner's loop), and each topic's records
        appended: the publishes the broker counted into its partitions' streams
        (`topic_records`). Groups, exchanges and the partitions' offsets have no
        counts here (`stream_stats`)."""
        rows = self._queue_rows("name,messages_ready,messages_unacknowledged,message_stats,"
                                "head_message_timestamp")
        now = self._clock.time()
        stats = EngineStats()
        published: dict[str, int] = {}
        for row in rows:
            name = str(row["name"])
            if name.startswith(RUNNER_PREFIX):
                continue
            ms = row.get("message_stats") or {}
            published[name] = int(ms.get("publish") or 0)
            stats.queues[name] = QueueStats(
                ready=int(row.get("messages_ready") or 0),
                unacked=int(row.get("messages_unacknowledged") or 0),
                published=int(ms.get("publish") or 0),
                delivered=int(ms.get("deliver_get") or 0),
                acked=int(ms.get("ack") or 0),
                redelivered=int(ms.get("redeliver") or 0),
                oldest_ready_age_s=head_age(row, now),
            )
        for topic_name, topic in self._topology.topics:
            stats.topic_records[topic_name] = sum(
                published.get(stream_name(topic_name, p), 0) for p in range(topic.partitions))
        return stats

    def stream_stats(self) -> EngineStats:
        """What `stats` leaves out because it costs stream reads: every topic
        partition's bounds (`partitions`; size 0) and each consumer group's committed
        offsets, lag (log end - position, the committed offset else `offset_reset`'s)
        and live members (presence queues, all daemons); the lag of the dead-letter
        topics' hidden position groups too, with the dead letters replayed or purged
        on their own above the position (markers: `dlq_settled`) and the timestamp of
        the first pending one (`dlq_oldest_pending_ms`), so the pending series count
        what `GET /v1/topics/{name}/dead-letters` counts (runner.daemon.dlq_ops).
        Blocking: a read of each partition's stream (0.2-0.5 s each, up to
        SCANS_AT_ONCE of them at once), one management
        API call, one connection per group for its offsets, a peek of each
        dead-letter topic's markers and a read of each partition with dead letters
        pending whose position moved; the daemon runs it off its loop and caches it."""
        topology = self._topology
        stats = EngineStats()
        every_tp = [TopicPartition(name, p) for name, topic in topology.topics
                    for p in range(topic.partitions)]
        # every partition's stream scanned at once (SCANS_AT_ONCE), not one by one
        for tp, info in zip(every_tp, self._scan_all(every_tp), strict=True):
            stats.partitions[tp] = info
        hidden = self._position_groups()  # dead-letter topics' replay positions: lag only
        every = [*topology.consumer_groups, *hidden.items()]
        if not every:
            return stats
        rows = {str(r.get("name", "")): r for r in self._queue_rows("name,arguments") or ()}
        positions: dict[TopicPartition, int] = {}  # the dead-letter topics' replay positions
        for group, spec in every:
            if group not in hidden:
                presence = member_queue(group, "")
                stats.group_members[group] = len({
                    str((r.get("arguments") or {}).get(groups_mod.MEMBER_ARG, n))
                    for n, r in rows.items() if n.startswith(presence)})
            tps = groups_mod.group_partitions(topology, spec)
            done = groups_mod.committed(self.target, group, tps)
            for tp in tps:
                info = stats.partitions[tp]
                start, end = info.log_start_offset, info.log_end_offset
                committed = done[tp]
                if committed is not None:
                    stats.group_committed[(group, tp)] = committed
                position = (committed if committed is not None
                            else spec.offset_reset.out_of_range(start, end))
                stats.group_lag[(group, tp)] = max(0, end - position)
                if group in hidden:
                    positions[tp] = max(position, start)
        self._dlq_pending_stats(stats, positions)
        return stats

    def _dlq_pending_stats(self, stats: EngineStats,
                           positions: Mapping[TopicPartition, int]) -> None:
        """The markers above each dead-letter topic partition's replay position
        (`stats.dlq_settled`) and the timestamp of its first pending dead letter
        (`stats.dlq_oldest_pending_ms`), as runner.daemon.dlq_ops.topic_positions
        counts them. A record's timestamp never changes: remembered by offset, a
        partition is read again only when its position moved."""
        seen = self._dlq_ts
        keep: dict[tuple[str, int, int], int] = {}
        for topic in sorted(self._topology.dead_letter_topics()):
            settled = self.dlq_settled(topic)
            for tp, pos in positions.items():
                if tp.topic != topic:
                    continue
                skip = {o for o in settled.get(tp.partition, ()) if o >= pos}
                stats.dlq_settled[tp] = len(skip)
                end = stats.partitions[tp].log_end_offset
                if pos >= end:
                    continue
                key = (topic, tp.partition, pos)
                ts = seen.get(key)
                if ts is None:
                    recs = self.read(topic, tp.partition, pos, max_records=len(skip) + 1,
                                     max_bytes=1 << 20).records
                    first = next((r for r in recs if r.offset not in skip), None)
                    if first is None:
                        continue
                    ts = first.timestamp_ms
                keep[key] = ts
                stats.dlq_oldest_pending_ms[tp] = ts
        self._dlq_ts = keep

    @property
    def connected(self) -> bool:
        """True while the I/O thread holds an open connection."""
        conn = self._conn
        return conn is not None and conn.is_open

    # ================================================================ Steps
    def commit_step(self, step: Step) -> Ticket:
        """A step in order, not atomically (no `exactly-once`): its writes (outputs, a
        topic record's dead letter, replayed dead letters), then its commits, then its
        acks -- each sent only once every write before it was confirmed positive: when
        the broker refuses one (a nack, a queue or stream gone), the commits are not
        written, the acked deliveries go back to their queue (delivered again) and the
        step's ticket fails with the refusal. Commits are served for the dead-letter
        topics' replay positions only (the DLQ tools): they wait for the writes'
        confirms and are written on a connection of their own (blocking: run such a
        step off the owner's loop). Other commits or a fence need exactly-once:
        NotImplementedError.

        A step naming group records (`Step.dead_letter_of`, set by `dead_letter_step`
        for an at-least-once group) holds their members' commits past them until its
        writes are confirmed (the member commits later, `GroupMember.commit`):
        refused, those commits are not written and the member reads the partition
        again from the record (SEEK fires), so the record is handled and
        dead-lettered again rather than lost."""
        hidden = self._position_groups()
        if (step.fence is not None or step.fences
                or any(g not in hidden for g, _, _ in step.commits)):
            raise NotImplementedError("the RabbitMQ backend has no exactly-once steps "
                                      "(capability exactly-once)")
        for _g, tp, _ in step.commits:
            self._stream(tp.topic, tp.partition)
        for queue, _ in step.acks:
            self._known_queue(queue)
        tickets: list[Ticket] = []
        for exchange, messages in step.publishes:
            tickets.append(self.publish(exchange, messages).ticket)
        for queue, messages in step.puts:
            tickets.append(self.put(queue, messages).ticket)
        for topic, records in step.appends:
            tickets.append(self.append(topic, records).ticket)
        writes = tuple(t.seq for t in tickets if t.seq)
        ticket = Ticket.DONE
        for t in tickets:
            ticket = ticket.max(t)
        if step.commits:
            self._wait_written(ticket)
            for seq in writes:
                failed = self._failure_at(seq)
                if failed is not None:
                    raise failed
            for g, tp, offset in step.commits:
                groups_mod.write_offset(self.target, g, tp, offset, "dlq-tool",
                                        origin=self._token)
        if step.acks:
            by_queue: dict[str, list[Outcome]] = {}
            for queue, delivery_id in step.acks:
                by_queue.setdefault(queue, []).append(Ack(delivery_id))
            for queue, acks in by_queue.items():
                ticket = ticket.max(self._settle(queue, acks, after=writes).ticket)
        elif len(writes) > 1 or (writes and step.dead_letter_of):
            # one ticket for every write of the step: it fails when any of them did
            origins = step.dead_letter_of
            ticket = self._submit(_Command(0, after=writes, on_error=(
                None if not origins else functools.partial(self._dead_letter_failed,
                                                           origins))))
            for group, tp, offset in origins:
                for m in self._members:
                    if m.group == group and m.owns(tp):
                        m.hold(tp, offset, ticket.seq)
        return ticket

    def _dead_letter_failed(self, origins: tuple[tuple[str, TopicPartition, int], ...],
                            cmd: _Command, error: EngineError) -> None:
        """I/O thread: the dead letters of groups' records were refused: each member
        reads its partition again from the record (groups.RabbitMember.hold)."""
        for group, tp, offset in origins:
            log.warning("RabbitMQ %s: the dead letter of %s[%d]@%d (group %s) was refused "
                        "(%s); the group does not commit past it and handles it again",
                        self.target, tp.topic, tp.partition, offset, group, error)
            for m in list(self._members):
                if m.group == group:
                    m.dead_letter_refused(tp, cmd.seq)

    def _wait_written(self, ticket: Ticket) -> None:
        """Block until every write up to `ticket` is done; raise the error that failed
        it (StorageError after WRITTEN_WAIT_S). Not on the I/O thread."""
        if threading.current_thread() is self._thread:
            raise RuntimeError("the I/O thread cannot wait for its own writes")
        until = time.monotonic() + WRITTEN_WAIT_S
        while not self._written(ticket):
            if time.monotonic() > until:
                raise StorageError(f"{self.target}: writes not confirmed within "
                                   f"{WRITTEN_WAIT_S:.0f}s")
            time.sleep(0.005)
        failed = self._failure_of(ticket)
        if failed is not None:
            raise failed

    def dead_letter_step(
        self, group: str, record: Record, death: Mapping[str, Any], *,
        to_queue: str | None = None, to_topic: str | None = None,
    ) -> Step:
        """The embedded engine's dead letter of a topic record (the same message: body,
        headers, message id; into a topic the same record: value, key, headers) as a
        step of writes. For an at-least-once group it names the record
        (`Step.dead_letter_of`): committed, it holds the member's commits past the
        record until its writes are confirmed (commit_step)."""
        if to_topic is not None:
            if to_topic not in self._topology.topic_map():
                raise NotFound(f"topic '{to_topic}' not found")
            s = engine_dead_letter_step(group, record, death, to_topic=to_topic)
            step = Step(appends=tuple(
                (t, tuple(OutRecord(value=r.value, key=r.key, headers=r.headers)
                          for r in rs)) for t, rs in s.appends))
        else:
            s = engine_dead_letter_step(group, record, death, to_queue=to_queue)
            step = Step(puts=tuple(
                (q, tuple(OutMessage(m.body, m.routing_key, m.headers, m.priority, m.ttl_s,
                                     m.message_id, m.content_type) for m in ms))
                for q, ms in s.queue_puts))
        spec = self._topology.group_map().get(group)
        if spec is not None and spec.delivery is Delivery.AT_LEAST_ONCE:
            step = dataclasses.replace(step, dead_letter_of=(
                (group, TopicPartition(record.topic, record.partition), record.offset),))
        return step

    # ================================================================ owner side helpers
    def _known_queue(self, queue: str) -> None:
        if (queue not in self._topology.queue_map() and queue not in self._replay_queues()
                and queue not in self._settled_queues()):
            raise NotFound(f"queue '{queue}' not found")

    def _replay_queues(self) -> set[str]:
        return {replay_queue_of(g) for g, _ in self._topology.consumer_groups}

    def _settled_queues(self) -> dict[str, str]:
        """The contract's marker queue of each dead-letter topic -> its broker queue."""
        return {dlq_settled_queue(t): settled_queue(t)
                for t in self._topology.dead_letter_topics()}

    def _broker_queue(self, queue: str) -> str:
        """The broker's name of a queue the contract names (a marker queue differs)."""
        return self._settled_queues().get(queue, queue)

    def _consume(self, queue: str) -> None:
        with self._lock:
            if queue in self._consumed:
                return
            self._consumed.add(queue)
        self._wake()

    def _submit(self, command: _Command) -> Ticket:
        if self._closed:
            raise StorageError(f"the RabbitMQ backend for {self.target} is closed")
        with self._lock:
            self._seq += 1
            command.seq = self._seq
            self._commands.append(command)
        self._wake()
        return Ticket(command.seq)

    def _wake(self) -> None:
        conn = self._conn
        if conn is None:
            return
        # closing or reconnecting: the I/O thread drains after it connects
        with contextlib.suppress(Exception):
            conn.add_callback_threadsafe(lambda: None)

    def _resolve_waiters(self) -> None:
        """On a waiter's loop: finish the futures whose ticket is done."""
        with self._lock:
            done = self._done_upto
            due = [(s, f) for s, f in self._waiters if s <= done]
            self._waiters = [(s, f) for s, f in self._waiters if s > done]
        for _, fut in due:
            if not fut.done():
                fut.set_result(None)

    def prefetch_of(self, queue: str) -> int:
        counts = [c.prefetch for _, c in self._topology.consumers if c.queue == queue]
        return max(counts) if counts else DEFAULT_PREFETCH

    # ================================================================ I/O thread
    def _run(self) -> None:
        delay = RECONNECT_FIRST_S
        while True:
            try:
                self._connect()
                delay = RECONNECT_FIRST_S
                self._connected.set()
                while True:
                    more = self._drain()
                    if self._stop.is_set() and not more:
                        break
                    conn = self._conn
                    assert conn is not None
                    # deliveries and heartbeats between rounds of writes; a lease
                    # running out before the next second wakes it in time
                    conn.process_data_events(time_limit=0 if more else self._idle_wait())
                    self._expire_leases()
                    self._fire_ready()
                self._disconnect()
                return
            except (pika.exceptions.AMQPError, OSError, AssertionError) as exc:
                self._connect_error = repr(exc)
                log.warning("RabbitMQ %s: connection lost (%r); reconnecting in %.1f s",
                            self.target, exc, delay)
                self._lost()
                if self._stop.wait(delay):
                    self._fail_pending("the backend was closed before the write reached "
                                       "the broker")
                    return
                delay = min(delay * 2, RECONNECT_MAX_S)

    def _connect(self) -> None:
        t = self.target
        params = pika.ConnectionParameters(
            host=t.host, port=t.port, virtual_host=t.vhost,
            credentials=pika.PlainCredentials(t.user, t.password),
            connection_attempts=1, heartbeat=10, blocked_connection_timeout=60,
            socket_timeout=5,
        )
        conn = pika.BlockingConnection(params)
        self._gen += 1
        self.connections += 1
        self._channels = {}
        self._key_channels = {}
        self._key_retry = {}
        self._declared_delays = set()
        self._conn = conn
        self._redeclare(conn)
        self._pub = conn.channel()
        self._pub.confirm_delivery()
        log.info("RabbitMQ %s: connected (connection %d)", t, self._gen)

    def _redeclare(self, conn: pika.BlockingConnection) -> None:
        """Declare the topology again (idempotent); a refusal is logged, not fatal."""
        defs = definitions(self._topology)
        ch = conn.channel()
        trials: list[tuple[str, str, Callable[[BlockingChannel], None]]] = []
        for e in defs.exchanges:
            trials.append(("exchange", e.name, functools.partial(apply_mod._declare_exchange, e=e)))
        for q in [*defs.queues, *hidden_queues(self._topology)]:
            trials.append(("queue", q.name, functools.partial(apply_mod._declare_queue, q=q)))
        for b in defs.bindings:
            trials.append(("binding", b.source, functools.partial(apply_mod._bind, b=b)))
        for kind, name, declare in trials:
            try:
                declare(ch)
            except pika.exceptions.ChannelClosedByBroker as exc:
                log.error("RabbitMQ %s: %s %r refused at redeclare: %s %s", self.target,
                          kind, name, exc.reply_code, exc.reply_text)
                ch = conn.channel()
        if ch.is_open:
            ch.close()
        try:
            apply_mod.declare_missing(conn, keys_streams(self._topology))
        except pika.exceptions.ChannelClosedByBroker as exc:
            log.error("RabbitMQ %s: an idempotency keys stream refused at redeclare: %s %s",
                      self.target, exc.reply_code, exc.reply_text)

    def _disconnect(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and conn.is_open:
            with contextlib.suppress(Exception):  # closing anyway
                conn.close()

    def _lost(self) -> None:
        """The connection is gone: its deliveries are back on the broker."""
        self._disconnect()
        gen = self._gen
        with self._lock:
            for buf in self._buffers.values():
                buf.clear()
            stale = [i for i, h in self._held.items() if h.gen == gen]
            for i in stale:
                del self._held[i]
        self._channels = {}
        self._pub = None

    def _fail_pending(self, why: str) -> None:
        with self._lock:
            left = list(self._commands)
            self._commands.clear()
        for cmd in left:
            self._complete(cmd, StorageError(why))

    def _drain(self) -> bool:
        """Open consumers the owner asked for, then run the queued writes in order, at
        most DRAIN_ROUND of them; True when more are waiting."""
        self._drop_closed_channels()
        with self._lock:
            want = [q for q in self._consumed if q not in self._channels]
            unwanted = [q for q in self._channels if q not in self._consumed]
        for queue in unwanted:  # stop_consuming: close it, its deliveries go back
            ch = self._channels[queue]
            if ch.is_open:
                ch.close()
            self._forget_channel(queue)
            log.info("RabbitMQ %s: stopped consuming '%s'", self.target, queue)
        for queue in want:
            self._open_consumer(queue)
        self._tail_keys()
        if self._qos_topology is not self._topology:  # a reload: a prefetch may change
            self._qos_topology = self._topology
            for queue, ch in list(self._channels.items()):
                prefetch = self.prefetch_of(queue)
                if ch.is_open and self._prefetches.get(queue) != prefetch:
                    self._change_prefetch(queue, ch, prefetch)
        for _ in range(DRAIN_ROUND):
            with self._lock:
                if not self._commands:
                    return False
                cmd = self._commands[0]
            try:
                error = self._execute(cmd)
            except (pika.exceptions.ChannelClosedByBroker,
                    pika.exceptions.ChannelWrongStateError) as exc:
                # a consumer channel refused a settlement or was closed: its deliveries
                # went back to the queue; it is opened again (nothing else is lost)
                with self._lock:
                    self._commands.popleft()
                self._complete(cmd, StorageError(
                    f"a channel of {self.target} was closed ({exc!r}); its deliveries "
                    "are delivered again"))
                self._drop_closed_channels()
                continue
            # a lost connection raises out of here: the command stays first and is
            # resumed after the reconnect
            with self._lock:
                self._commands.popleft()
            self._complete(cmd, error)
        with self._lock:
            return bool(self._commands)

    def _tail_keys(self) -> None:
        """Consume each shared window's keys stream (again after its channel closed)."""
        with self._lock:
            windows = list(self._windows.values())
        now = time.monotonic()
        for w in windows:
            ch = self._key_channels.get(w.consumer)
            if ch is not None and ch.is_open:
                continue
            if self._key_retry.get(w.consumer, 0.0) > now:
                continue
            self._key_channels.pop(w.consumer, None)
            self._attach_keys(w)

    def _attach_keys(self, w: keys_mod.SharedWindow) -> None:
        assert self._conn is not None
        ch = self._conn.channel()
        ch.basic_qos(prefetch_count=streams.PREFETCH)

        def on(channel: BlockingChannel, method: Any, props: Any, body: bytes) -> None:
            w.delivered(props, body)
            channel.basic_ack(method.delivery_tag)  # a stream's ack is only credit

        try:
            ch.basic_consume(w.stream, on, arguments={streams.OFFSET_HEADER: w.attach_offset()})
        except pika.exceptions.ChannelClosedByBroker as exc:
            log.warning("RabbitMQ %s: cannot read the idempotency keys stream '%s' (%s %s); "
                        "trying again in %.0f s", self.target, w.stream, exc.reply_code,
                        exc.reply_text, RECONNECT_MAX_S)
            self._key_retry[w.consumer] = time.monotonic() + RECONNECT_MAX_S
            return
        self._key_channels[w.consumer] = ch

    def _idle_wait(self) -> float:
        """How long the I/O thread may wait for the broker: 1 s, or until the next
        lease runs out."""
        with self._lock:
            leases = [h.lease_until for h in self._held.values() if h.lease_until is not None]
        if not leases:
            return 1.0
        return min(1.0, max(0.0, min(leases) - self._clock.time()))

    def _expire_leases(self) -> None:
        """Give back every fetched delivery whose lease ran out (basic.nack requeue)."""
        now = self._clock.time()
        with self._lock:
            expired = [(i, h) for i, h in self._held.items()
                       if h.lease_until is not None and h.lease_until <= now]
            for i, _ in expired:
                del self._held[i]
        for _, h in expired:
            ch = self._channels.get(h.queue)
            if ch is not None and h.channel is ch and ch.is_open:
                ch.basic_nack(h.tag, requeue=True)
        if expired:
            log.info("RabbitMQ %s: %d lease(s) ran out; delivered again", self.target,
                     len(expired))

    def _drop_closed_channels(self) -> None:
        """A consumer channel the broker closed (consumer_timeout, a refused ack):
        its deliveries are back in the queue; forget them and consume again."""
        closed = [q for q, ch in self._channels.items() if not ch.is_open]
        if not closed:
            return
        for queue in closed:
            log.warning("RabbitMQ %s: the channel consuming '%s' was closed; consuming again",
                        self.target, queue)
            self._forget_channel(queue)

    def _forget_channel(self, queue: str) -> None:
        """The consumer channel of `queue` is closed: its deliveries are back in the
        queue; forget the ones held here."""
        ch = self._channels.pop(queue)
        with self._lock:
            stale = [i for i, h in self._held.items() if h.channel is ch]
            for i in stale:
                del self._held[i]
            buf = self._buffers.get(queue)
            if buf:
                self._buffers[queue] = deque(i for i in buf if i in self._held)

    def _complete(self, cmd: _Command, error: EngineError | None) -> None:
        loops: set[asyncio.AbstractEventLoop] = set()
        with self._lock:
            if error is not None:
                self._failures[cmd.seq] = error  # in seq order: the oldest is first
                if len(self._failures) > FAILURES_KEPT:
                    self._forgotten = next(iter(self._failures))
                    del self._failures[self._forgotten]
            self._done_upto = max(self._done_upto, cmd.seq)
            for seq, fut in self._waiters:
                if seq <= self._done_upto and not fut.done():
                    loops.add(fut.get_loop())
        for loop in loops:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._resolve_waiters)
        if error is None:
            for topic in cmd.topics:  # a hint for this process (others see their streams)
                self._fire_event(Event(EventKind.RECORDS_APPENDED, topic))
        elif cmd.on_error is not None:
            cmd.on_error(cmd, error)

    def _open_consumer(self, queue: str) -> None:
        assert self._conn is not None
        ch = self._conn.channel()
        self._channels[queue] = ch
        self._start_consumer(queue, ch, self.prefetch_of(queue))

    def _start_consumer(self, queue: str, ch: BlockingChannel, prefetch: int) -> None:
        """basic.qos then basic.consume of `queue` on `ch` (the qos counts for the
        consumers started after it)."""
        ch.basic_qos(prefetch_count=prefetch)
        gen = self._gen

        def on_message(channel: BlockingChannel, method: Any, props: Any, body: bytes) -> None:
            self._delivered(gen, queue, method, props, body)

        self._consumer_tags[queue] = ch.basic_consume(queue, on_message, auto_ack=False)
        self._prefetches[queue] = prefetch

    def _change_prefetch(self, queue: str, ch: BlockingChannel, prefetch: int) -> None:
        """A reload changed the prefetch of `queue`'s consumers. A consumer keeps the
        basic.qos it started under, so a new consumer starts on the same channel under
        the new one, then the old one is cancelled: what it delivered and the owner
        holds stays unacked on the channel and is settled as before (delivery tags
        are the channel's); what pika received but had not handed over yet goes back
        to the queue (pika's basic_cancel rejects it, requeued)."""
        old = self._consumer_tags.get(queue)
        before = self._prefetches.get(queue)
        self._start_consumer(queue, ch, prefetch)
        if old is not None:
            ch.basic_cancel(old)
        log.info("RabbitMQ %s: prefetch of '%s' changed from %s to %d", self.target, queue,
                 before, prefetch)

    def _delivered(self, gen: int, queue: str, method: Any, props: Any, body: bytes) -> None:
        now = self._clock.time()
        delivery_id = next(self._ids)
        d, raw = decode_delivery(queue, delivery_id, method, props, body, now)
        with self._lock:
            self._held[delivery_id] = _Held(gen, queue, method.delivery_tag, d, raw, now,
                                            self._channels.get(queue))
            self._buffers.setdefault(queue, deque()).append(delivery_id)
        self._ready_queues.add(queue)

    def _fire_ready(self) -> None:
        if not self._ready_queues:
            return
        events = [Event(EventKind.QUEUE_READY, q) for q in self._ready_queues]
        self._ready_queues = set()
        with self._lock:
            subs = list(self._subs)
        for e in events:
            for s in subs:
                if e in s.events:
                    s.fire(e)

    # ---------------------------------------------------------------- writes
    def _execute(self, cmd: _Command) -> EngineError | None:
        """Run one write on the broker; the error that failed it durably, if any."""
        refused = self._failed_before(cmd)
        if refused is not None:
            return self._withhold(cmd, refused)
        if cmd.publishes:
            return self._publish_all(cmd)
        error: EngineError | None = None
        for outcome, held in cmd.settles:
            if held.gen != self._gen:
                error = StorageError(
                    f"the connection to {self.target} was lost before delivery "
                    f"{held.delivery.delivery_id} of queue '{held.queue}' was settled; "
                    "the broker delivers it again")
                continue
            error = self._settle_one(outcome, held) or error
        return error

    def _failed_before(self, cmd: _Command) -> EngineError | None:
        """The error of the first write `cmd` comes after that failed (they ran before
        it: writes run in order), else None."""
        if not cmd.after:
            return None
        with self._lock:
            for seq in cmd.after:
                failed = self._failure_at(seq)
                if failed is not None:
                    return failed
        return None

    def _withhold(self, cmd: _Command, refused: EngineError) -> EngineError:
        """`cmd` comes after a write the broker refused: nothing of it is sent (a commit
        past a dead letter that is not stored would lose the record); the deliveries
        it would have acked go back to their queue and are delivered again."""
        for _outcome, held in cmd.settles:
            ch = self._channels.get(held.queue)
            if (held.gen == self._gen and ch is not None and held.channel is ch
                    and ch.is_open):
                ch.basic_nack(held.tag, requeue=True)
        return refused

    def _publish_all(self, cmd: _Command) -> EngineError | None:
        pub = self._pub
        assert pub is not None
        while cmd.next_index < len(cmd.publishes):
            p = cmd.publishes[cmd.next_index]
            try:
                pub.basic_publish(p.exchange, p.routing_key, p.body, p.properties,
                                  mandatory=p.mandatory)
            except pika.exceptions.ProtocolSyntaxError as exc:  # a header pika cannot send
                cmd.next_index += 1
                return InvalidRequest(f"a message to exchange '{p.exchange}' cannot be sent: "
                                      f"{exc}")
            except pika.exceptions.NackError:
                # as the embedded engine's full reject-publish queue: Refused (HTTP 429),
                # with how many of the batch the broker took before it
                accepted = cmd.next_index
                cmd.next_index += 1
                where = (f"queue '{p.routing_key}'" if p.exchange == "" else
                         f"exchange '{p.exchange}' key '{p.routing_key}'")
                return Refused(f"the broker refused a message to {where} (nack: a queue it "
                               "routes to is full with overflow reject-publish); the "
                               f"{accepted} message(s) before it were stored, it and the "
                               "rest were not", accepted=accepted)
            except pika.exceptions.UnroutableError:
                # a positive confirm of a message routed nowhere: its queue or stream is
                # gone from the broker (deleted behind the runner's back)
                accepted = cmd.next_index
                cmd.next_index += 1
                return StorageError(f"the broker routed a message to queue '{p.routing_key}' "
                                    "nowhere (it does not exist on the broker); the "
                                    f"{accepted} message(s) before it were stored, it and "
                                    "the rest were not")
            except pika.exceptions.ChannelClosedByBroker as exc:
                assert self._conn is not None
                self._pub = self._conn.channel()
                self._pub.confirm_delivery()
                cmd.next_index += 1
                return StorageError(f"the broker refused a publish to exchange "
                                    f"'{p.exchange}': {exc.reply_code} {exc.reply_text}")
            cmd.next_index += 1
        return None

    def _settle_one(self, outcome: Outcome, held: _Held) -> EngineError | None:
        ch = self._channels.get(held.queue)
        if ch is None or held.channel is not ch or not ch.is_open:
            return StorageError(
                f"the channel delivery {held.delivery.delivery_id} of queue '{held.queue}' "
                "came on was closed before it was settled; the broker delivers it again")
        tag = held.tag
        if isinstance(outcome, Ack):
            ch.basic_ack(tag)
            return None
        if isinstance(outcome, Requeue):
            ch.basic_nack(tag, requeue=True)
            return None
        if isinstance(outcome, Retry):
            error = self._send_copy(self._retry_copy(outcome, held))
        else:
            if outcome.death is None:
                ch.basic_reject(tag, requeue=False)
                return None
            try:
                copy = self._dead_letter_copy(outcome, held)
            except EngineError as exc:  # a record its topic refuses (TooLarge)
                log.warning("dead letter to topic %s dropped: %s", outcome.to_topic, exc)
                copy = None  # dropped, as the embedded engine's sink does
            if copy is None:  # nowhere to go: dropped, as the embedded engine does
                ch.basic_ack(tag)
                return None
            error = self._send_copy(copy)
        if error is not None:  # the copy is not on the broker: keep the original
            ch.basic_nack(tag, requeue=True)
            return error
        ch.basic_ack(tag)
        return None

    def _send_copy(self, p: _Publish) -> EngineError | None:
        cmd = _Command(0, publishes=[p])
        return self._publish_all(cmd)

    def _retry_copy(self, outcome: Retry, held: _Held) -> _Publish:
        d = held.delivery
        headers = dict(d.headers)
        headers[COUNT_HEADER] = d.delivery_count
        first = held.raw_headers.get(FIRST_HEADER)
        headers[FIRST_HEADER] = first if isinstance(first, int) else int(held.received_s * 1000)
        headers[EXCHANGE_HEADER] = d.exchange
        headers[KEY_HEADER] = d.routing_key
        headers.pop("x-delivery-count", None)
        props = pika.BasicProperties(
            headers=_encoded(headers), priority=d.priority or None, message_id=d.message_id,
            content_type=d.content_type, delivery_mode=2,
            timestamp=d.timestamp_ms // 1000,
        )
        if outcome.delay_s <= 0:
            return _Publish("", held.queue, d.body, props, mandatory=True)
        self._declare_delay(outcome.delay_s)
        return _Publish(delay_name(outcome.delay_s), held.queue, d.body, props, mandatory=True)

    def _declare_delay(self, delay_s: float) -> None:
        """The delay exchange and queue of `delay_s` (declared by apply for the
        topology's policies; declared here too for a delay no policy names)."""
        ms = delay_ms(delay_s)
        if ms in self._declared_delays:
            return
        assert self._conn is not None
        name = delay_name(delay_s)
        ch = self._conn.channel()
        apply_mod._declare_exchange(ch, ExchangeDef(name, "fanout"))
        apply_mod._declare_queue(ch, QueueDef(name, True, arguments(**{
            "x-queue-type": "classic", "x-message-ttl": ms, "x-dead-letter-exchange": "",
        })))
        ch.queue_bind(name, name, "")
        ch.close()
        self._declared_delays.add(ms)

    def _dead_letter_copy(self, outcome: DeadLetter, held: _Held) -> _Publish | None:
        d = held.delivery
        first = held.raw_headers.get(FIRST_HEADER)
        msg = QueuedMessage(
            0, d.body, len(d.body), d.priority, d.routing_key, d.exchange, d.headers,
            (d.message_id, d.content_type), d.timestamp_ms, None, d.delivery_count,
        )
        msg.attempts = (first / 1000 if isinstance(first, int) else held.received_s,
                        held.received_s, held.consumer_id)
        death = build_death(msg, queue=held.queue, reason=outcome.reason, given=outcome.death)
        headers = with_death(d.headers, death)
        headers.pop("x-delivery-count", None)
        props = pika.BasicProperties(
            headers=_encoded(headers), priority=d.priority or None, message_id=d.message_id,
            content_type=d.content_type, delivery_mode=2, timestamp=d.timestamp_ms // 1000,
        )
        if outcome.to_queue is not None:
            return _Publish("", outcome.to_queue, d.body, props, mandatory=True)
        if outcome.to_topic is not None:
            # as the embedded engine's record of a message routed to a topic: the body
            # as value, the routing facts in headers; partitioned as `append` does
            headers[RECORD_ROUTING_KEY_HEADER] = d.routing_key
            headers[RECORD_EXCHANGE_HEADER] = ""
            record = OutRecord(value=d.body, headers=headers)
            ((_, publish),) = self._record_publishes(outcome.to_topic, [record],
                                                     self._io_partitioners)
            return publish
        queue = self._topology.queue_map().get(held.queue)
        dlx = queue.dead_letter if queue is not None else None
        if dlx is None:
            return None
        key = dlx.routing_key if dlx.routing_key is not None else d.routing_key
        return _Publish(dlx.exchange, key, d.body, props)


def _copy_properties(d: QueueDelivery, headers: dict[str, Any], exchange: str,
                     routing_key: str) -> pika.BasicProperties:
    """The properties of a copy of `d` put straight into a queue: delivered, it shows
    `exchange` and `routing_key` (the runner's headers, taken off at delivery)."""
    out = dict(headers)
    out[EXCHANGE_HEADER] = exchange
    out[KEY_HEADER] = routing_key
    return pika.BasicProperties(
        headers=encode_headers(out), priority=d.priority or None, message_id=d.message_id,
        content_type=d.content_type, delivery_mode=2, timestamp=d.timestamp_ms // 1000)


def decode_delivery(queue: str, delivery_id: int, method: Any, props: Any, body: bytes,
                    now: float) -> tuple[QueueDelivery, dict[str, Any]]:
    """A broker delivery as the contract's QueueDelivery (the runner's retry headers
    taken off, the original exchange and routing key put back, `delivery_count`
    counted) and its headers as delivered."""
    raw = dict(props.headers or {})
    headers = {k: _decoded(v) for k, v in raw.items()}
    streams.unpack_json_headers(headers)  # a copy of a message that also went to a stream
    before = headers.pop(COUNT_HEADER, None)
    headers.pop(FIRST_HEADER, None)
    exchange = headers.pop(EXCHANGE_HEADER, None)
    key = headers.pop(KEY_HEADER, None)
    retried = before is not None
    if retried:
        _drop_delay_deaths(headers)
    redeliveries = headers.get("x-delivery-count")  # quorum queues count them
    again = redeliveries if isinstance(redeliveries, int) else 1 if method.redelivered else 0
    count = (int(before) if isinstance(before, int) else 0) + again + 1
    d = QueueDelivery(
        queue=queue, delivery_id=delivery_id, body=body, headers=headers,
        routing_key=str(key) if key is not None else method.routing_key,
        exchange=str(exchange) if exchange is not None else method.exchange,
        priority=props.priority or 0, redelivered=bool(method.redelivered or retried),
        delivery_count=count, message_id=props.message_id,
        timestamp_ms=(props.timestamp * 1000) if props.timestamp else int(now * 1000),
        content_type=props.content_type,
    )
    return d, raw


def _drop_delay_deaths(headers: dict[str, Any]) -> None:
    """Take the delay queues' own deaths out of RabbitMQ's `x-death` (a retried copy
    died there on purpose)."""
    deaths = headers.get("x-death")
    if isinstance(deaths, list):
        kept = [x for x in deaths
                if not (isinstance(x, Mapping) and str(x.get("queue", "")).startswith(
                    DELAY_PREFIX))]
        if kept:
            headers["x-death"] = kept
        else:
            headers.pop("x-death", None)
    first = headers.get("x-first-death-queue")
    if isinstance(first, str) and first.startswith(DELAY_PREFIX):
        for name in ("x-first-death-queue", "x-first-death-reason", "x-first-death-exchange"):
            headers.pop(name, None)


def refused_text(target: Target, exc: apply_mod.Refused) -> str:
    """A refused apply as one message: each unsafe change and broker refusal, named."""
    parts = []
    for c in exc.changes:
        where = f"{c.entity} '{c.name}'" + (f" {c.field}" if c.field else "")
        parts.append(f"{c.kind} {where}: {c.reason}")
    parts.extend(exc.reasons)
    return f"the topology cannot be declared on {target}: " + "; ".join(parts)


def open_rabbitmq(
    topology: Topology, target: Target, *, clock: Clock | None = None,
    declare: bool = True,
) -> RabbitBackend:
    """Declare `topology` on `target` (refusing unsafe changes: UnsafeChange), then
    connect: the RabbitMQ backend. StorageError when the broker cannot be reached."""
    if declare:
        try:
            apply_mod.apply(target, topology)
        except apply_mod.Refused as exc:
            raise UnsafeChange(refused_text(target, exc)) from exc
        except live.Unreachable as exc:
            raise StorageError(str(exc)) from exc
    return RabbitBackend(target, topology, clock=clock)
