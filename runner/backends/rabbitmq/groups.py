"""Consumer groups over RabbitMQ: one owner per partition, committed offsets, reading.

RabbitMQ 3.10 has no consumer groups on streams, so a group is built from the
broker's own objects, never from a coordinator of our own:

- **Presence**: each member (one `GroupMember`, one connection of its own)
  declares an exclusive queue `__runner.group.<g>.member.<token>` (argument
  `x-runner-member`: its member id). It exists while the member's connection
  lives: the broker deletes it when the connection closes or dies.
- **Ownership**: partition P of topic T is owned by the connection that declared
  the exclusive queue `__runner.group.<g>.owner.T.P` (argument
  `x-runner-member`). Only one connection can: another one's declare is refused
  with 405 RESOURCE_LOCKED. The broker deletes it when the owner's connection
  closes or dies (kill -9: at once, the socket closes; a silent network loss:
  after the missed heartbeats, `HEARTBEAT_S` x 2), so the partition is free.
- **Spread**: every `REBALANCE_S` a member lists the group's queues (one
  management API call, `/api/queues/{vhost}`: queue records, not statistics,
  so it is current) and computes the same fair share as every other member:
  the group's partitions in order, dealt round robin over the live members'
  tokens in order. It claims its share when free, releases what it owns
  beyond its share once the member whose share it is is alive, and claims any
  partition left free for `ORPHAN_S` (its member is slow or gone).
- **Committed offsets**: a durable classic queue `__runner.group.<g>.offset.T.P`
  with `x-max-length: 1` (drop-head) holds the last commit as one persistent
  message (JSON `{"offset": N, "member": ..., "at_ms": ...}`), published with
  publisher confirms through the backend's writes (a commit's Ticket); read
  with basic.get and given back (basic.nack requeue). A new owner resumes from
  it, else from the group's `offset_reset` (the stream's first record or its
  end).
- **Reading**: the owner consumes the partition's stream `T.P` on its own
  connection from the position (`x-stream-offset`, basic.qos `PREFETCH`,
  acked as the worker takes records: only flow control) into a buffer the
  pipeline reads without waiting (`RabbitMember.read`), and fires
  RECORDS_APPENDED when records arrive. A stream consumer is stopped by closing
  its channel without basic.cancel: pika's cancel rejects what is in flight,
  and a stream answers a reject by closing the whole connection (540), which
  would drop every partition the member owns.

Fencing is the member's own state: a commit for a partition it no longer owns
is refused with Conflict. A commit sent just before its owner's connection died
can land after the new owner read the offset: the new owner then handles the
records since the offset it read again (at-least-once allows it; a commit only
ever names records that were handled, so nothing is skipped).

**Dead letters before a commit** (at-least-once): the backend `hold`s the
partition at a record whose dead letter is not confirmed yet; a commit past it
is sent only after that write's confirm, and not at all when the broker refused
it. Refused, the member reads the partition again from the record (its position
moves back, the generation moves, SEEK fires): the record is handled and
dead-lettered again, never committed past without its dead letter. The hold
ends when its write is confirmed or when the owner reads from the record again.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel

from runner.backends.rabbitmq import live, streams
from runner.backends.rabbitmq.mapping import (
    GROUP_PREFIX,
    member_queue,
    offset_queue,
    owner_queue,
    stream_name,
)
from runner.backends.rabbitmq.url import Target
from runner.engine.contract import Event, EventKind, Read, Record, Ticket, TopicPartition
from runner.errors import Conflict, StorageError
from runner.topology.model import ConsumerGroup, Topology

log = logging.getLogger(__name__)

REBALANCE_S = 1.0  # how often a member looks at the group's members and owners
ORPHAN_S = 2.0  # a partition free this long is claimed by whoever sees it
HEARTBEAT_S = 5  # AMQP heartbeat of a member's connection
PREFETCH = streams.PREFETCH  # stream deliveries in flight per owned partition
MEMBER_ARG = "x-runner-member"
LEAVE_WAIT_S = 5.0  # a leaving member waits this long for its last commit
RECONNECT_FIRST_S = 0.1
RECONNECT_MAX_S = 5.0

Fire = Callable[[Event], None]
Decode = Callable[[Any], Any]
# (offset queue, body, writes it must come after) -> the publish's ticket
CommitWrite = Callable[[str, bytes, tuple[int, ...]], Ticket]
WriteState = Callable[[int], "bool | None"]  # a write: None pending, True confirmed, False failed


def group_partitions(topology: Topology, group: ConsumerGroup) -> list[TopicPartition]:
    """Every partition of the group's topics, in order."""
    topics = topology.topic_map()
    return [TopicPartition(t, p) for t in group.topics if t in topics
            for p in range(topics[t].partitions)]


def fair_share(partitions: list[TopicPartition], tokens: Iterable[str],
               token: str) -> set[TopicPartition]:
    """The partitions member `token` should own: dealt round robin over the
    members' tokens in order (every member computes the same deal)."""
    order = sorted(set(tokens) | {token})
    return {tp for i, tp in enumerate(partitions) if order[i % len(order)] == token}


def offset_body(offset: int, member: str) -> bytes:
    return json.dumps({"offset": offset, "member": member,
                       "at_ms": int(time.time() * 1000)}).encode()


def offset_of(body: bytes) -> int | None:
    try:
        value = json.loads(body).get("offset")
    except (ValueError, AttributeError):
        return None
    return value if isinstance(value, int) else None


def read_committed(ch: BlockingChannel, queue: str) -> int | None:
    """The offset committed in `queue` (basic.get, given back at once); None: none."""
    method, _props, body = ch.basic_get(queue, auto_ack=False)
    if method is None:
        return None
    ch.basic_nack(method.delivery_tag, requeue=True)
    return offset_of(body)


def close_stream_channel(ch: BlockingChannel) -> None:
    """Close a channel that consumes a stream without basic.cancel: pika's cancel
    rejects the deliveries still in flight, and a stream answers a reject by closing
    the connection (540). channel.close makes the broker forget them instead."""
    impl: Any = getattr(ch, "_impl")  # noqa: B009 - pika's channel under the blocking one
    if ch.is_open:
        impl.close()


@dataclass(slots=True)
class _Part:
    """A partition this member owns, and what its stream consumer delivered."""

    position: int  # committed at claim time (then by this member), else the reset position
    low: int  # the buffer serves reads from this offset on
    channel: BlockingChannel | None = None
    chan: int = 0  # which consumer the deliveries in `buffer` came from
    buffer: deque[tuple[Record, int]] = field(default_factory=deque)  # (record, tag)
    taken_tag: int = 0  # deliveries up to this tag were taken (or skipped): ack them
    acked_tag: int = 0
    reattach: int | None = None  # the owner asked to read from here (below `low`)


@dataclass(slots=True)
class _Hold:
    """A record of an owned partition whose dead letter is write `seq` (see `hold`)."""

    offset: int
    seq: int
    refused: bool = False  # the member went back to it already


class RabbitMember:
    """One member of one consumer group over RabbitMQ (runner.engine.contract.GroupMember
    and MemberReader): a thread and a connection of its own (see the module doc)."""

    def __init__(
        self, target: Target, topology: Topology, group: ConsumerGroup, member_id: str, *,
        fire: Fire, write_commit: CommitWrite, decode: Decode,
        bounds: Callable[[str], tuple[int, int]], origin: str,
        on_close: Callable[[RabbitMember], None] | None = None,
        written: Callable[[Ticket], bool] | None = None,
        write_state: WriteState | None = None,
    ) -> None:
        self._on_close = on_close
        self._written = written  # has the backend finished this write (a commit)?
        self._last_commit = Ticket.DONE
        self._write_state = write_state
        # partition -> [(offset of a record, the write of its dead letter)]: no commit
        # past the record before that write is confirmed (see the module doc)
        self._holds: dict[TopicPartition, list[_Hold]] = {}
        self._target = target
        self._origin = origin  # the backend's token: its own seeks are applied in place
        self._group = group
        self._member_id = member_id
        self._partitions = group_partitions(topology, group)
        self._fire = fire
        self._write_commit = write_commit
        self._decode = decode
        self._bounds = bounds
        self.token = uuid.uuid4().hex
        self._lock = threading.Lock()
        self._parts: dict[TopicPartition, _Part] = {}
        self._last: dict[TopicPartition, int] = {}  # positions of partitions owned before
        self._generation = 0
        self._stop = threading.Event()
        self._closed = False
        self._conn: pika.BlockingConnection | None = None
        self._ctl: BlockingChannel | None = None
        self._free_since: dict[TopicPartition, float] = {}
        self._chans = 0
        self._appended: set[str] = set()
        self._thread = threading.Thread(target=self._run, daemon=True,
                                        name=f"rabbitmq-member:{group.name}:{member_id}")
        self._thread.start()

    # ================================================================ GroupMember
    @property
    def group(self) -> str:
        return self._group.name

    @property
    def member_id(self) -> str:
        return self._member_id

    @property
    def generation(self) -> int:
        return self._generation

    def assignment(self) -> tuple[TopicPartition, ...]:
        with self._lock:
            return tuple(tp for tp in self._partitions if tp in self._parts)

    def retopology(self, topology: Topology) -> None:
        """A reload applied `topology`: the group's partitions as it has them (a topic
        grown by a reload has more; the next rebalance claims them)."""
        spec = topology.group_map().get(self.group)
        if spec is None:
            return  # the group is gone: its worker closes this member
        with self._lock:
            self._group = spec
            self._partitions = group_partitions(topology, spec)

    def owns(self, tp: TopicPartition) -> bool:
        return tp in self._parts

    def position(self, tp: TopicPartition) -> int:
        """The committed offset (or the reset position) of an owned partition; of one
        it owned before, the last it knew (no broker call: the worker asks on its
        loop); of another one, read from the broker (blocking)."""
        with self._lock:
            part = self._parts.get(tp)
            if part is not None:
                return part.position
            if tp in self._last:
                return self._last[tp]
        return committed_or_reset(self._target, self._group, tp, self._bounds)

    def _forget(self, tp: TopicPartition, part: _Part) -> None:
        """Under the lock: `tp` is no longer owned; keep its last position."""
        self._last[tp] = part.position

    def commit(self, offsets: Mapping[TopicPartition, int]) -> Ticket:
        """Commit `offsets` (fenced: Conflict for a partition not owned). A commit past a
        record whose dead letter is not confirmed yet is sent after it, and not at all
        when it failed (the ticket fails; the member reads again from the record)."""
        writes: list[tuple[TopicPartition, int, tuple[int, ...]]] = []
        with self._lock:
            for tp in offsets:
                if tp not in self._parts:
                    raise Conflict(
                        f"group {self.group!r} rebalanced: {tp.topic}/{tp.partition} is not "
                        f"owned by {self._member_id!r} (generation {self._generation})")
            for tp, offset in offsets.items():
                after, refused = self._held_back(tp, offset)
                if not refused:  # refused: the position went back to the record
                    self._parts[tp].position = offset
                writes.append((tp, offset, after))
        ticket = Ticket.DONE
        for tp, offset, after in writes:
            ticket = ticket.max(self._write_commit(
                offset_queue(self.group, tp.topic, tp.partition),
                offset_body(offset, self._member_id), after))
        # only its place in the order is asked (by close): combining every commit of
        # the member's life would keep each one's seq (`Ticket.others`)
        self._last_commit = Ticket(max(ticket.seq, self._last_commit.seq))
        return ticket

    def _held_back(self, tp: TopicPartition, offset: int) -> tuple[tuple[int, ...], bool]:
        """Under the lock: the dead-letter writes a commit of `offset` must come after,
        and whether one of them already failed. Confirmed holds are dropped."""
        holds = self._holds.get(tp)
        if not holds or self._write_state is None:
            return (), False
        state = self._write_state
        keep = [h for h in holds if state(h.seq) is not True]
        if keep:
            self._holds[tp] = keep
        else:
            del self._holds[tp]
        before = [h.seq for h in keep if h.offset < offset]
        return tuple(before), any(state(seq) is False for seq in before)

    def hold(self, tp: TopicPartition, offset: int, seq: int) -> None:
        """The dead letter of record `offset` of `tp` is write `seq`: no commit past the
        record before it is confirmed. Already refused: read again from the record."""
        with self._lock:
            self._holds.setdefault(tp, []).append(_Hold(offset, seq))
        if self._write_state is not None and self._write_state(seq) is False:
            self.dead_letter_refused(tp, seq)

    def dead_letter_refused(self, tp: TopicPartition, seq: int) -> None:
        """The broker refused write `seq`, the dead letter of a record of `tp` this
        member holds (any thread): its position goes back to the record, the stream
        is read again from there and SEEK fires (the worker reads its positions
        again), so the record is handled again."""
        with self._lock:
            found = [h for h in self._holds.get(tp, ()) if h.seq == seq and not h.refused]
            if not found:
                return  # read again from before it already, gone back already, or not ours
            found[0].refused = True  # kept: commits past it stay refused until read again
            # the member handled the records before it (in order), up to an earlier
            # record whose dead letter was refused too
            offset = min(h.offset for h in self._holds[tp] if h.refused)
            part = self._parts.get(tp)
            if part is not None:
                part.position = offset
                part.reattach = offset
            elif tp in self._last:
                self._last[tp] = offset
            self._generation += 1
        log.warning("group %s: member %s reads %s[%d] again from %d: the dead letter of that "
                    "record was refused by the broker", self.group, self._member_id,
                    tp.topic, tp.partition, offset)
        self._wake()
        self._fire(Event(EventKind.SEEK, self.group))

    def close(self) -> None:
        """Leave: the connection closes, so the broker deletes the member's presence and
        ownership queues and the other members claim its partitions."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        self._wake()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=10)
        changed = False
        with self._lock:
            if self._parts:
                for tp, part in self._parts.items():
                    self._forget(tp, part)
                self._parts.clear()
                self._generation += 1
                changed = True
        if changed:
            self._fire(Event(EventKind.ASSIGNMENT_CHANGED, self.group))
        if self._on_close is not None:
            self._on_close(self)

    # ================================================================ MemberReader
    def read(self, tp: TopicPartition, offset: int, *, max_records: int = 500) -> Read:
        """Records of an owned partition from `offset` that its stream consumer
        delivered, without waiting (RECORDS_APPENDED fires when more arrive). An
        offset below what was already taken makes the consumer attach there again
        (nothing is returned until it delivers)."""
        out: list[Record] = []
        wake = False
        with self._lock:
            part = self._parts.get(tp)
            if part is None:
                return Read((), offset)
            holds = self._holds.get(tp)
            if holds:  # read again from a held record: it is handled again
                kept = [h for h in holds if h.offset < offset]
                if kept:
                    self._holds[tp] = kept
                else:
                    del self._holds[tp]
            if offset < part.low:
                if part.reattach != offset:
                    part.reattach = offset
                    wake = True
            else:
                buf = part.buffer
                while buf and buf[0][0].offset < offset:
                    part.taken_tag = buf.popleft()[1]
                while buf and len(out) < max_records:
                    record, tag = buf.popleft()
                    out.append(record)
                    part.taken_tag = tag
                part.low = max(part.low, out[-1].offset + 1 if out else offset)
                wake = part.taken_tag > part.acked_tag
        if wake:
            self._wake()
        return Read(tuple(out), out[-1].offset + 1 if out else offset)

    # ================================================================ the member's thread
    def _wake(self) -> None:
        conn = self._conn
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.add_callback_threadsafe(lambda: None)

    def _run(self) -> None:
        delay = RECONNECT_FIRST_S
        while not self._stop.is_set():
            try:
                self._connect()
                delay = RECONNECT_FIRST_S
                due = 0.0
                while not self._stop.is_set():
                    now = time.monotonic()
                    if now >= due:
                        self._rebalance()
                        due = time.monotonic() + REBALANCE_S
                    self._service()
                    conn = self._conn
                    assert conn is not None
                    conn.process_data_events(time_limit=max(0.0, min(0.2, due - now)))
                    self._fire_appended()
                self._await_commits()
                self._disconnect()
            except (pika.exceptions.AMQPError, OSError, AssertionError) as exc:
                log.warning("group %s: member %s lost its connection to %s (%r); "
                            "reconnecting in %.1f s", self.group, self._member_id,
                            self._target, exc, delay)
                self._lost()
                if self._stop.wait(delay):
                    return
                delay = min(delay * 2, RECONNECT_MAX_S)

    def _connect(self) -> None:
        t = self._target
        conn = pika.BlockingConnection(pika.ConnectionParameters(
            host=t.host, port=t.port, virtual_host=t.vhost,
            credentials=pika.PlainCredentials(t.user, t.password),
            connection_attempts=1, heartbeat=HEARTBEAT_S, socket_timeout=5,
            blocked_connection_timeout=60,
            client_properties={"connection_name":
                               f"runner group {self.group} member {self._member_id}"},
        ))
        self._conn = conn
        self._ctl = conn.channel()
        # a token per connection: the last connection's presence queue may outlive it
        # for a while (a silent network loss: until the broker misses its heartbeats)
        self.token = uuid.uuid4().hex
        presence = member_queue(self.group, self.token)
        self._ctl.queue_declare(presence, exclusive=True, arguments={MEMBER_ARG: self._member_id})
        # seeks of the group made by other daemons arrive in the presence queue
        notices = conn.channel()
        notices.basic_consume(presence, self._on_notice, auto_ack=True)
        self._free_since = {}

    def _on_notice(self, channel: BlockingChannel, method: Any, props: Any,
                   body: bytes) -> None:
        try:
            notice = json.loads(body)
            if notice.get("origin") == self._origin:
                return  # applied in place by the backend that sought
            tp = TopicPartition(str(notice["topic"]), int(notice["partition"]))
            offset = int(notice["offset"])
        except (ValueError, KeyError, TypeError, AttributeError):
            log.warning("group %s: member %s ignored a notice it cannot read: %r", self.group,
                        self._member_id, body[:200])
            return
        self.apply_seek(tp, offset)
        self._fire(Event(EventKind.SEEK, self.group))

    def apply_seek(self, tp: TopicPartition, offset: int) -> None:
        """The group was sought: an owned partition is read again from `offset` (the
        generation moves; the caller fires SEEK)."""
        with self._lock:
            self._holds.pop(tp, None)  # read from `offset` now, whatever was held
            part = self._parts.get(tp)
            if part is not None:
                part.position = offset
                part.reattach = offset
            self._generation += 1
        self._wake()

    def _await_commits(self) -> None:
        """Leaving: hold the partitions until the last commit is on the broker (up to
        LEAVE_WAIT_S), so the next owner starts from it rather than from the one
        before (which would handle the records between them again)."""
        if self._written is None:
            return
        deadline = time.monotonic() + LEAVE_WAIT_S
        while not self._written(self._last_commit) and time.monotonic() < deadline:
            time.sleep(0.01)

    def _disconnect(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and conn.is_open:
            with contextlib.suppress(Exception):  # leaving anyway
                conn.close()

    def _lost(self) -> None:
        """The connection is gone, and with it every partition this member owned."""
        self._disconnect()
        self._ctl = None
        with self._lock:
            had = bool(self._parts)
            for tp, part in self._parts.items():
                self._forget(tp, part)
            self._parts.clear()
            if had:
                self._generation += 1
        if had:
            self._fire(Event(EventKind.ASSIGNMENT_CHANGED, self.group))

    def _control(self) -> BlockingChannel:
        if self._ctl is None or not self._ctl.is_open:
            assert self._conn is not None
            self._ctl = self._conn.channel()
        return self._ctl

    def _rebalance(self) -> None:
        """Claim this member's fair share (and partitions left free for ORPHAN_S);
        release what it owns beyond its share once that share's member is alive."""
        try:
            listed = group_queues(self._target, self.group)
        except StorageError as exc:
            log.warning("group %s: member %s cannot list the group's members: %s",
                        self.group, self._member_id, exc)
            return
        names = {str(row.get("name")) for row in listed}
        prefix = member_queue(self.group, "")
        tokens = {n[len(prefix):] for n in names if n.startswith(prefix)}
        tokens.add(self.token)
        share = fair_share(self._partitions, tokens, self.token)
        now = time.monotonic()
        for tp in self._partitions:
            if self._stop.is_set():
                return
            owned = tp in self._parts
            if owned:
                if tp not in share:
                    self._release(tp)
                continue
            taken = owner_queue(self.group, tp.topic, tp.partition) in names
            if taken:
                self._free_since.pop(tp, None)
                continue
            since = self._free_since.setdefault(tp, now)
            if tp in share or now - since >= ORPHAN_S:
                self._claim(tp)

    def _claim(self, tp: TopicPartition) -> None:
        ch = self._control()
        try:
            ch.queue_declare(owner_queue(self.group, tp.topic, tp.partition), exclusive=True,
                             arguments={MEMBER_ARG: self._member_id})
        except pika.exceptions.ChannelClosedByBroker as exc:
            self._ctl = None
            if exc.reply_code != 405:  # 405 RESOURCE_LOCKED: another member got it first
                log.warning("group %s: claiming %s/%d failed: %s %s", self.group, tp.topic,
                            tp.partition, exc.reply_code, exc.reply_text)
            return
        self._free_since.pop(tp, None)
        ch.queue_declare(offset_queue(self.group, tp.topic, tp.partition), durable=True,
                         arguments=OFFSET_ARGUMENTS)
        committed = read_committed(ch, offset_queue(self.group, tp.topic, tp.partition))
        position = committed if committed is not None else reset_position(
            self._group, tp, self._bounds)
        part = _Part(position=position, low=position)
        self._attach(tp, part, position)
        with self._lock:
            self._parts[tp] = part
            self._generation += 1
        log.info("group %s: member %s owns %s/%d from offset %d%s", self.group,
                 self._member_id, tp.topic, tp.partition, position,
                 "" if committed is not None else f" ({self._group.offset_reset.value})")
        self._fire(Event(EventKind.ASSIGNMENT_CHANGED, self.group))

    def _release(self, tp: TopicPartition) -> None:
        with self._lock:
            part = self._parts.pop(tp, None)
            if part is not None:
                self._forget(tp, part)
            self._generation += 1
        if part is not None and part.channel is not None:
            close_stream_channel(part.channel)
        with contextlib.suppress(pika.exceptions.ChannelClosedByBroker):
            self._control().queue_delete(owner_queue(self.group, tp.topic, tp.partition))
        log.info("group %s: member %s gave %s/%d to its share's member", self.group,
                 self._member_id, tp.topic, tp.partition)
        self._fire(Event(EventKind.ASSIGNMENT_CHANGED, self.group))

    def _attach(self, tp: TopicPartition, part: _Part, offset: int) -> None:
        """Consume the partition's stream from `offset` on a channel of its own."""
        assert self._conn is not None
        if part.channel is not None:
            close_stream_channel(part.channel)
        self._chans += 1
        chan = self._chans
        ch = self._conn.channel()
        ch.basic_qos(prefetch_count=PREFETCH)
        with self._lock:
            part.channel, part.chan = ch, chan
            part.buffer.clear()
            part.low = offset
            part.taken_tag = part.acked_tag = 0
            part.reattach = None

        def on(channel: BlockingChannel, method: Any, props: Any, body: bytes) -> None:
            self._delivered(tp, chan, offset, method.delivery_tag, props, body)

        ch.basic_consume(stream_name(tp.topic, tp.partition), on,
                         arguments={streams.OFFSET_HEADER: offset})

    def _delivered(self, tp: TopicPartition, chan: int, start: int, tag: int, props: Any,
                   body: bytes) -> None:
        at = (props.headers or {}).get(streams.OFFSET_HEADER)
        with self._lock:
            part = self._parts.get(tp)
            if part is None or part.chan != chan:
                return  # a consumer being closed: nothing to ack
            if not isinstance(at, int) or at < start:
                # the broker starts at the chunk holding `start`: skip the records before it
                if not part.buffer:
                    part.taken_tag = tag
                return
            record = streams.record_of(tp.topic, tp.partition,
                                       streams.Entry(at, props, body), self._decode)
            part.buffer.append((record, tag))
        self._appended.add(tp.topic)

    def _service(self) -> None:
        """Re-attach where the owner asked, ack what it took (stream flow control)."""
        with self._lock:
            for p in self._parts.values():
                if p.reattach is None and p.channel is not None and not p.channel.is_open:
                    # the broker closed the stream consumer's channel: consume again
                    # from what the owner has not taken yet
                    p.reattach = p.low
            work = [(tp, p) for tp, p in self._parts.items()
                    if p.reattach is not None or p.taken_tag > p.acked_tag]
        for tp, part in work:
            if part.reattach is not None:
                self._attach(tp, part, part.reattach)
                continue
            ch = part.channel
            with self._lock:
                tag = part.taken_tag
            if ch is not None and ch.is_open and tag > part.acked_tag:
                ch.basic_ack(tag, multiple=True)
                part.acked_tag = tag

    def _fire_appended(self) -> None:
        if not self._appended:
            return
        topics, self._appended = self._appended, set()
        for topic in topics:
            self._fire(Event(EventKind.RECORDS_APPENDED, topic))


OFFSET_ARGUMENTS: dict[str, Any] = {"x-queue-type": "classic", "x-max-length": 1}


def group_queues(target: Target, group: str) -> list[dict[str, Any]]:
    """The queues of `group` (presence, ownership, offsets) with their arguments: one
    management API call (queue records, current; not the lagging statistics)."""
    vhost = live.vhost_path(target.vhost)
    try:
        rows = live.request(target, "GET", f"/api/queues/{vhost}?columns=name,arguments")
    except live.Unreachable as exc:
        raise StorageError(str(exc)) from exc
    prefix = f"{GROUP_PREFIX}{group}."
    return [r for r in rows or () if str(r.get("name", "")).startswith(prefix)]


def reset_position(group: ConsumerGroup, tp: TopicPartition,
                   bounds: Callable[[str], tuple[int, int]]) -> int:
    """Where a partition without a committed offset starts (`offset_reset`)."""
    start, end = bounds(stream_name(tp.topic, tp.partition))
    return group.offset_reset.out_of_range(start, end)


def committed(target: Target, group: str,
              tps: Iterable[TopicPartition]) -> dict[TopicPartition, int | None]:
    """The committed offset of each partition (one connection; blocking)."""
    from runner.backends.rabbitmq import apply as apply_mod

    try:
        conn = apply_mod.connect(target)
    except live.Unreachable as exc:
        raise StorageError(str(exc)) from exc
    out: dict[TopicPartition, int | None] = {}
    try:
        for tp in tps:
            ch = conn.channel()
            name = offset_queue(group, tp.topic, tp.partition)
            try:
                ch.queue_declare(name, passive=True)
            except pika.exceptions.ChannelClosedByBroker:
                out[tp] = None  # never committed (404)
                continue
            out[tp] = read_committed(ch, name)
            ch.close()
    except pika.exceptions.AMQPError as exc:
        raise StorageError(f"{target}: reading the offsets of group '{group}' failed: "
                           f"{exc!r}") from exc
    finally:
        if conn.is_open:
            with contextlib.suppress(pika.exceptions.AMQPError):
                conn.close()
    return out


def committed_or_reset(target: Target, group: ConsumerGroup, tp: TopicPartition,
                       bounds: Callable[[str], tuple[int, int]]) -> int:
    got = committed(target, group.name, [tp])[tp]
    return got if got is not None else reset_position(group, tp, bounds)


def write_offset(target: Target, group: str, tp: TopicPartition, offset: int,
                 member: str, *, origin: str) -> None:
    """`write_offsets` of one partition."""
    write_offsets(target, group, {tp: offset}, member, origin=origin)


def write_offsets(target: Target, group: str, offsets: Mapping[TopicPartition, int],
                  member: str, *, origin: str) -> None:
    """Commit `offsets` from outside a member (a seek, a reset, a commit over HTTP), each
    published with a confirm into its partition's offset queue, then tell every member of
    the group (its presence queue) so the owners read from there. One connection."""
    from runner.backends.rabbitmq import apply as apply_mod

    if not offsets:
        return
    try:
        conn = apply_mod.connect(target)
    except live.Unreachable as exc:
        raise StorageError(str(exc)) from exc
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        for tp, offset in offsets.items():
            name = offset_queue(group, tp.topic, tp.partition)
            ch.queue_declare(name, durable=True, arguments=OFFSET_ARGUMENTS)
            ch.basic_publish("", name, offset_body(offset, member),
                             pika.BasicProperties(delivery_mode=2), mandatory=True)
        prefix = member_queue(group, "")
        presences = [str(r.get("name")) for r in group_queues(target, group)
                     if str(r.get("name")).startswith(prefix)]
        for tp, offset in offsets.items():
            notice = json.dumps({"origin": origin, "topic": tp.topic,
                                 "partition": tp.partition, "offset": offset}).encode()
            for name in presences:
                # a member gone meanwhile: unroutable, dropped (its partitions' new
                # owners read the committed offset)
                ch.basic_publish("", name, notice)
    except pika.exceptions.AMQPError as exc:
        raise StorageError(f"{target}: committing group '{group}' failed: {exc!r}") from exc
    finally:
        if conn.is_open:
            with contextlib.suppress(pika.exceptions.AMQPError):
                conn.close()
