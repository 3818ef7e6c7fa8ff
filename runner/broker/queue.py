"""A queue: FIFO or priority levels, TTL, length limits, leases, retries, consumers.

Ready messages live in one deque per priority level (RabbitMQ's layout; a
heap is ~10x slower), ordered by `uid`. A message that goes back to the queue
(nack with requeue, an expired lease) returns to its ORIGINAL place: every
delivered message has a smaller uid than every message still in the deque,
so returned messages wait in a small per-level heap that is served first.
Messages leaving from the middle (a TTL sweep) are marked GONE and skipped
lazily. Retries wait in a heap by due time, outside the ready order, so they
never block the messages behind them.

The queue does not route: what it dead-letters (expired, maxlen, rejected,
delivery_limit) is put in `dead` for the broker to republish.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from typing import Any, Protocol

from runner.broker.admission import (
    MemoryBudget,
    Room,
    full_sentence,
    over,
    room,
)
from runner.broker.admission import limit_text as limits_text
from runner.broker.admission import refuses_when_full as rejects_when_full
from runner.broker.admission import unlimited as no_length_limit
from runner.broker.message import (
    DELAYED,
    EMPTY_HEADERS,
    GONE,
    MESSAGE_OVERHEAD,
    READY,
    TAG_BITS,
    TAG_MASK,
    UNACKED,
    Delivery,
    Publishable,
    QueuedMessage,
    headers_memory,
)
from runner.errors import Conflict, Refused
from runner.topology.model import Overflow, Queue

REASONS = ("handler_error", "rejected", "expired", "maxlen", "delivery_limit")


class Journal(Protocol):
    """What a queue tells its storage (see runner.broker.journal)."""

    def reserve(self, msg: QueuedMessage) -> int: ...
    def reserve_run(self, msgs: list[QueuedMessage]) -> None: ...
    def settle(self, uid: int) -> None: ...
    def settle_many(self, uids: list[int]) -> None: ...
    def delivered(self, msg: QueuedMessage) -> None: ...
    def delivered_many(self, pairs: list[int]) -> None: ...
    def flush(self) -> None: ...
    def read_body(self, loc: int) -> bytes: ...


class Spill(Protocol):
    """Where bodies go past the memory budget (a durable queue's own journal)."""

    def spill(self, msg: QueuedMessage, body: bytes) -> int: ...
    def read_body(self, loc: int) -> bytes: ...


class MessageQueue:
    """One queue's messages and counters."""

    def __init__(
        self, spec: Queue, *, uid_start: int = 0, journal: Journal | None = None,
        spill: Spill | None = None, memory: MemoryBudget | None = None,
    ) -> None:
        self.spec = spec
        self.name = spec.name
        self.journal = journal
        self.spill = spill
        self.memory = memory or MemoryBudget(1 << 62)
        self.next_uid = uid_start
        nlevels = (spec.max_priority or 0) + 1
        self.max_level = nlevels - 1
        self.levels: list[deque[QueuedMessage]] = [deque() for _ in range(nlevels)]
        self.returned: list[list[tuple[int, QueuedMessage]]] = [[] for _ in range(nlevels)]
        self.ready = 0
        self.ready_bytes = 0
        self.unacked: dict[int, QueuedMessage] = {}
        # one entry per pull: (monotonic deadline, sequence, the tags it delivered)
        self.leases: list[tuple[float, int, list[int]]] = []
        self.lease_tags = 0  # tags held in `leases` (some may be settled already)
        self._lease_seq = 0
        self.delayed: list[tuple[float, int, QueuedMessage]] = []  # (wall due, uid, msg)
        self.expiries: list[tuple[float, int, QueuedMessage]] = []  # (wall, uid, msg)
        self.consumers: dict[str, int] = {}  # consumer id -> unacked count
        self.active: str | None = None  # single active consumer
        self.dead: list[tuple[QueuedMessage, str]] = []
        # counters
        self.published = 0
        self.delivered = 0
        self.acked = 0
        self.redelivered = 0
        self.rejected_publishes = 0
        self.dead_lettered = dict.fromkeys(REASONS, 0)
        self.dead_letter_loops = 0  # dead letters from here dropped by the hop guard

    # ------------------------------------------------------------ config
    def reconfigure(self, spec: Queue) -> None:
        """Take live changes (TTL, limits, overflow, DLX, delivery limit, SAC).

        A lower limit under `drop-head` drops the excess at once (into `dead`);
        a new TTL applies to messages published from now on."""
        self.spec = spec
        self._trim()

    def _trim(self) -> None:
        """Under `drop-head`, drop (dead-letter `maxlen`) heads while over a length limit."""
        spec = self.spec
        if spec.overflow is not Overflow.DROP_HEAD or no_length_limit(spec):
            return
        while over(spec, self.ready, self.ready_bytes, 0, 0):
            victim = self._pop_lowest()
            if victim is None:
                break
            self._count_dead(victim, "maxlen")

    def level_of(self, priority: int) -> int:
        if priority <= 0:
            return 0
        return priority if priority < self.max_level else self.max_level

    # ------------------------------------------------------------ publishing
    def admit(
        self, m: Publishable, *, exchange: str, routing_key: str, now: float, ts_ms: int,
        headers: Mapping[str, Any] | None = None, delivery_count: int = 0,
        death_queues: tuple[str, ...] = (),
    ) -> QueuedMessage:
        """Take one message, applying the length limits (`admission.room`). Refused
        when full under `reject-publish` / `reject-publish-dlx` (the latter also puts
        it in `dead`). `death_queues`: a dead letter's cycle watch (kept in `props`,
        never a header)."""
        spec = self.spec
        body = m.body
        size = len(body)
        verdict = Room.FITS if no_length_limit(spec) else room(
            spec, self.ready, self.ready_bytes, 1, size)
        if verdict is not Room.FITS and (verdict is Room.REFUSE or not self._make_room(size)):
            # what dies on arrival keeps its dead-letter path (`death_queues`): a cycle
            # through queues that drop or refuse is detected like any other
            if verdict is not Room.REFUSE:
                gone = self._build(m, exchange, routing_key, now, ts_ms, headers, 0, body,
                                   death_queues)
                gone.state = GONE  # dropped on arrival, as RabbitMQ does with max-length 0
                self.published += 1
                self.dead_lettered["maxlen"] += 1
                self.dead.append((gone, "maxlen"))
                return gone
            self.rejected_publishes += 1
            if spec.overflow is Overflow.REJECT_PUBLISH_DLX:
                dead = self._build(m, exchange, routing_key, now, ts_ms, headers, 0, body,
                                   death_queues)
                dead.state = GONE  # never stored: nothing to forget
                self.dead_lettered["maxlen"] += 1
                self.dead.append((dead, "maxlen"))
            raise Refused(f"{full_sentence(spec)}: publish refused")
        # the hot path: _build, _store and _push_ready inlined
        ttl = m.ttl_s
        qttl = spec.message_ttl_s
        if qttl is not None and (ttl is None or qttl < ttl):
            ttl = qttl
        mid = m.message_id
        ctype = m.content_type
        prio = m.priority or 0
        msg = QueuedMessage(
            -1, body, size, prio, routing_key, exchange,
            headers if headers is not None else (m.headers or EMPTY_HEADERS),
            (mid, ctype) if mid is not None or ctype is not None else None,
            ts_ms, None if ttl is None else now + ttl, delivery_count,
        )
        if death_queues:
            msg.props = (mid, ctype, death_queues)
        journal = self.journal
        if journal is not None:
            msg.uid = journal.reserve(msg)
        else:
            msg.uid = self.next_uid
            self.next_uid += 1
        spill = self.spill
        if not self.memory.admit(headers_memory(msg.headers) if msg.headers else 0, size,
                                 spill is not None):
            assert spill is not None
            msg.body = spill.spill(msg, body)
        self.published += 1
        top = self.max_level
        self.levels[0 if prio <= 0 else (prio if prio < top else top)].append(msg)
        self.ready += 1
        self.ready_bytes += size
        if ttl is not None:
            heapq.heappush(self.expiries, (now + ttl, msg.uid, msg))
        return msg

    @property
    def unlimited(self) -> bool:
        """No length limit: `admit` never refuses or drops (`admit_many` may be used)."""
        return no_length_limit(self.spec)

    def admit_many(
        self, msgs: Sequence[Publishable], routing_key: str, *, exchange: str, now: float,
        ts_ms: int,
    ) -> None:
        """`admit` for a run of messages without headers or message ids, under one
        routing key, into a queue without length limits (`unlimited`)."""
        qttl = self.spec.message_ttl_s
        new = QueuedMessage
        empty = EMPTY_HEADERS
        built: list[QueuedMessage] = []
        put = built.append
        nbytes = 0
        # one (None, content type) tuple for the run, not one per message (56 B each)
        last_ctype: str | None = None
        props: tuple[None, str] | None = None
        for m in msgs:
            body = m.body
            size = len(body)
            nbytes += size
            ttl = m.ttl_s
            if qttl is not None and (ttl is None or qttl < ttl):
                ttl = qttl
            ctype = m.content_type
            if ctype != last_ctype:
                last_ctype = ctype
                props = None if ctype is None else (None, ctype)
            put(new(-1, body, size, m.priority or 0, routing_key, exchange, empty,
                    props, ts_ms, None if ttl is None else now + ttl, 0))
        if self.journal is not None:
            self.journal.reserve_run(built)
        else:
            uid = self.next_uid
            for msg in built:
                msg.uid = uid
                uid += 1
            self.next_uid = uid
        mem = self.memory
        spill = self.spill
        top = self.max_level
        levels = self.levels
        expiries = self.expiries
        can_spill = spill is not None
        for msg in built:
            if not mem.admit(0, msg.size, can_spill):
                assert spill is not None
                msg.body = spill.spill(msg, msg.body)  # type: ignore[arg-type]
            prio = msg.priority
            levels[0 if prio <= 0 else (prio if prio < top else top)].append(msg)
            if msg.expires_at is not None:
                heapq.heappush(expiries, (msg.expires_at, msg.uid, msg))
        self.published += len(msgs)
        self.ready += len(msgs)
        self.ready_bytes += nbytes

    def _build(
        self, m: Publishable, exchange: str, routing_key: str, now: float, ts_ms: int,
        headers: Mapping[str, Any] | None, delivery_count: int, body: bytes,
        death_queues: tuple[str, ...] = (),
    ) -> QueuedMessage:
        ttl = m.ttl_s
        qttl = self.spec.message_ttl_s
        if qttl is not None and (ttl is None or qttl < ttl):
            ttl = qttl
        mid = m.message_id
        ctype = m.content_type
        hdrs = headers if headers is not None else (m.headers or EMPTY_HEADERS)
        msg = QueuedMessage(
            -1, body, len(body), m.priority or 0, routing_key, exchange,
            hdrs,
            (mid, ctype) if mid is not None or ctype is not None else None,
            ts_ms, None if ttl is None else now + ttl, delivery_count,
        )
        if death_queues:
            msg.props = (mid, ctype, death_queues)
        return msg

    def _push_ready(self, msg: QueuedMessage) -> None:
        msg.state = READY
        self.levels[self.level_of(msg.priority)].append(msg)
        self.ready += 1
        self.ready_bytes += msg.size
        if msg.expires_at is not None:
            heapq.heappush(self.expiries, (msg.expires_at, msg.uid, msg))

    @property
    def refuses_when_full(self) -> bool:
        """A length limit with `reject-publish` or `reject-publish-dlx` overflow."""
        return rejects_when_full(self.spec)

    def would_refuse(self, extra_msgs: int, extra_bytes: int) -> bool:
        """Would this queue refuse some of `extra_msgs` more messages of `extra_bytes`
        in all (published one after the other, nothing consumed in between)?"""
        return room(self.spec, self.ready, self.ready_bytes, extra_msgs,
                    extra_bytes) is Room.REFUSE

    def limit_text(self) -> str:
        return limits_text(self.spec)

    def refusal(self, size: int) -> str | None:
        """Why one more message of `size` bytes would not be kept, without trying:
        a full `reject-publish` / `reject-publish-dlx` queue, or a message over the
        limits on its own (`drop-head` would drop it on arrival); None when it
        would be stored (a full `drop-head` queue drops its head for it)."""
        verdict = room(self.spec, self.ready, self.ready_bytes, 1, size)
        if verdict is Room.FITS or verdict is Room.DROP_HEAD:
            return None
        return full_sentence(self.spec)

    def _make_room(self, size: int) -> bool:
        """Drop heads (`drop-head`, dead-lettered `maxlen`) until one more message of
        `size` bytes fits; False when it cannot fit even alone (every head is gone)."""
        spec = self.spec
        while over(spec, self.ready, self.ready_bytes, 1, size):
            victim = self._pop_lowest()
            if victim is None:
                return False  # the new message alone is over the limit: it goes itself
            self._count_dead(victim, "maxlen")
        return True

    def _pop_lowest(self) -> QueuedMessage | None:
        """The oldest ready message of the lowest non-empty level, removed."""
        for lvl in range(self.max_level + 1):
            msg = self._pop_level(lvl)
            if msg is not None:
                return msg
        return None

    def _pop_level(self, lvl: int) -> QueuedMessage | None:
        ret = self.returned[lvl]
        while ret:
            msg = heapq.heappop(ret)[1]
            if msg.state == READY:
                self._leave_ready(msg)
                return msg
        dq = self.levels[lvl]
        while dq:
            msg = dq.popleft()
            if msg.state == READY:
                self._leave_ready(msg)
                return msg
        return None

    def _leave_ready(self, msg: QueuedMessage) -> None:
        self.ready -= 1
        self.ready_bytes -= msg.size
        msg.state = UNACKED

    def _count_dead(self, msg: QueuedMessage, reason: str) -> None:
        """`msg` (already out of ready/unacked) leaves the queue dead-lettered."""
        msg.state = GONE
        self.dead_lettered[reason] = self.dead_lettered.get(reason, 0) + 1
        self.dead.append((msg, reason))
        self._forget(msg)

    def _forget(self, msg: QueuedMessage) -> None:
        msg.state = GONE
        self.memory.release(msg)
        if self.journal is not None:
            self.journal.settle(msg.uid)

    # ------------------------------------------------------------ delivering
    def take(
        self, n: int, *, consumer: str, now: float, lease_deadline: float | None = None,
        prefetch: int | None = None,
    ) -> list[Delivery]:
        """Up to `n` ready messages, highest priority first, for `consumer`."""
        if self.spec.single_active_consumer:
            if self.active is None or self.active not in self.consumers:
                self.active = consumer
            if self.active != consumer:
                self.consumers.setdefault(consumer, 0)
                return []
        held = self.consumers.get(consumer, 0)
        if prefetch is not None:
            n = min(n, prefetch - held)
        out: list[Delivery] = []
        if n <= 0 or not self.ready:
            self.consumers[consumer] = held
            return out
        limit = self.spec.delivery_limit
        journal = self.journal
        unacked = self.unacked
        name = self.name
        lvl = self.max_level
        levels = self.levels
        returned = self.returned
        heappop = heapq.heappop
        new = tuple.__new__  # NamedTuple without its Python-level __new__
        first = (now, now, consumer)  # one tuple shared by every first delivery of the batch
        pairs: list[int] = []
        tags: list[int] = []
        put = out.append
        put_tag = tags.append
        put_pair = pairs.append
        ready = self.ready
        rbytes = self.ready_bytes
        redelivered_n = 0
        bits = TAG_BITS
        mask = TAG_MASK
        want = n
        while want and ready:
            while lvl > 0 and not levels[lvl] and not returned[lvl]:
                lvl -= 1
            ret = returned[lvl]
            if ret:
                msg = heappop(ret)[1]
            elif levels[lvl]:
                msg = levels[lvl].popleft()
            else:
                break  # only GONE entries were left at level 0
            if msg.state != READY:
                continue
            ready -= 1
            rbytes -= msg.size
            exp = msg.expires_at
            if exp is not None and exp <= now:
                self._count_dead(msg, "expired")
                continue
            count = msg.delivery_count
            if limit is not None and count >= limit:
                self._count_dead(msg, "delivery_limit")
                continue
            if count:
                redelivered_n += 1
                att = msg.attempts
                msg.attempts = first if att is None else (att[0], now, consumer)
            else:
                msg.attempts = first
            count += 1
            msg.delivery_count = count
            msg.state = UNACKED
            uid = msg.uid
            tag = (uid << bits) | (count & mask)
            unacked[tag] = msg
            put_tag(tag)
            put_pair(uid)
            put_pair(count)
            body = msg.body
            props = msg.props
            if props is None:
                put(new(Delivery, (
                    name, tag, body if isinstance(body, bytes) else self._read(body),
                    msg.headers, msg.routing_key, msg.exchange, msg.priority, count > 1,
                    count, None, msg.timestamp_ms, None,
                )))
            else:
                put(new(Delivery, (
                    name, tag, body if isinstance(body, bytes) else self._read(body),
                    msg.headers, msg.routing_key, msg.exchange, msg.priority, count > 1,
                    count, props[0], msg.timestamp_ms, props[1],
                )))
            want -= 1
        self.ready = ready
        self.ready_bytes = rbytes
        self.redelivered += redelivered_n
        if lease_deadline is not None and tags:
            self._lease_seq += 1
            heapq.heappush(self.leases, (lease_deadline, self._lease_seq, tags))
            self.lease_tags += len(tags)
        if journal is not None and pairs:
            journal.delivered_many(pairs)
        self.delivered += len(out)
        self.consumers[consumer] = held + len(out)
        if len(self.expiries) > 2 * self.ready + 1024:
            self._prune()
        return out

    def _prune(self) -> None:
        """Drop heap entries of messages that left (they would pin their bodies)."""
        self.expiries = [e for e in self.expiries if e[2].state == READY]
        heapq.heapify(self.expiries)
        self._prune_leases()

    def _prune_leases(self) -> None:
        """Drop settled tags from the lease heap (they would pin memory until the deadline)."""
        unacked = self.unacked
        kept: list[tuple[float, int, list[int]]] = []
        n = 0
        for deadline, seq, tags in self.leases:
            live = [t for t in tags if t in unacked]
            if live:
                kept.append((deadline, seq, live))
                n += len(live)
        heapq.heapify(kept)
        self.leases = kept
        self.lease_tags = n

    def _read(self, loc: int) -> bytes:
        if self.spill is not None:
            return self.spill.read_body(loc)
        raise RuntimeError(f"queue '{self.name}': spilled body without a spill store")

    def body_of(self, msg: QueuedMessage) -> bytes:
        body = msg.body
        return body if isinstance(body, bytes) else self._read(body)

    def _release(self, tag: int) -> QueuedMessage | None:
        msg = self.unacked.pop(tag, None)
        if msg is not None and msg.owner is not None:
            left = self.consumers.get(msg.owner, 1) - 1
            self.consumers[msg.owner] = max(left, 0)
        return msg

    def ack(self, tags: Iterable[int]) -> list[int]:
        """Settle deliveries; returns the tags that were unknown (or expired)."""
        unknown: list[int] = []
        unacked = self.unacked
        pop = unacked.pop
        uids: list[int] = []
        owners: dict[str, int] = {}
        last: str | None = None
        run = 0  # acks of `last` not yet counted in `owners` (batches share one owner)
        freed = freed_headers = 0
        for tag in tags:
            msg = pop(tag, None)
            if msg is None:
                unknown.append(tag)
                continue
            msg.state = GONE
            uids.append(msg.uid)
            freed += MESSAGE_OVERHEAD
            if msg.headers:
                h = headers_memory(msg.headers)
                freed += h
                freed_headers += h
            if isinstance(msg.body, bytes):
                freed += msg.size
            att = msg.attempts
            owner = att[2] if att is not None else None
            if owner is not last:
                if last is not None:
                    owners[last] = owners.get(last, 0) + run
                last = owner
                run = 0
            run += 1
        if last is not None:
            owners[last] = owners.get(last, 0) + run
        consumers = self.consumers
        for owner, n in owners.items():
            held = consumers.get(owner, 0)
            if held > 0:
                consumers[owner] = held - n if held > n else 0
        if uids and self.journal is not None:
            self.journal.settle_many(uids)
        self.memory.used -= freed
        self.memory.count -= len(uids)
        self.memory.headers -= freed_headers
        self.acked += len(uids)
        if self.lease_tags > 2 * len(unacked) + 1024:
            self._prune_leases()
        return unknown

    def ack_uids(self, uids: Iterable[int]) -> int:
        """Settle messages by uid wherever they are (re-applied steps); returns how many."""
        wanted = set(uids)
        done = 0
        for tag in [t for t, m in self.unacked.items() if m.uid in wanted]:
            msg = self._release(tag)
            if msg is not None:
                wanted.discard(msg.uid)
                self._forget(msg)
                done += 1
        if wanted:
            for msg in self.iter_ready():
                if msg.uid in wanted:
                    self._leave_ready(msg)
                    self._forget(msg)
                    done += 1
        self.acked += done
        return done

    def nack(self, tags: Iterable[int], *, requeue: bool) -> list[int]:
        unknown: list[int] = []
        for tag in tags:
            msg = self._release(tag)
            if msg is None:
                unknown.append(tag)
            elif requeue:
                self._requeue(msg)
            else:
                self._count_dead(msg, "rejected")
        return unknown

    def _requeue(self, msg: QueuedMessage) -> None:
        limit = self.spec.delivery_limit
        if limit is not None and msg.delivery_count >= limit:
            self._count_dead(msg, "delivery_limit")
            return
        msg.state = READY
        heapq.heappush(self.returned[self.level_of(msg.priority)], (msg.uid, msg))
        self.ready += 1
        self.ready_bytes += msg.size
        if msg.expires_at is not None:  # its first entry may have been pruned
            heapq.heappush(self.expiries, (msg.expires_at, msg.uid, msg))
        # back at its place (the head when it was the oldest), it counts against the
        # length limit at once: a drop-head queue now over it drops its head (RabbitMQ)
        self._trim()

    def settle_one(self, tag: int) -> QueuedMessage:
        """Remove one unacked delivery (for dead-lettering by the caller)."""
        msg = self._release(tag)
        if msg is None:
            raise Conflict(
                f"queue '{self.name}': unknown or expired delivery id {tag}", unknown=(tag,)
            )
        return msg

    def retry_later(self, tag: int, due: float) -> QueuedMessage:
        """The delivery waits until wall time `due`, then is ready again at the tail."""
        msg = self.settle_one(tag)
        msg.state = DELAYED
        heapq.heappush(self.delayed, (due, msg.uid, msg))
        return msg

    def detach(self, consumer: str) -> int:
        """A consumer went away: its deliveries go back; SAC fails over. Returns how many."""
        tags = [t for t, m in self.unacked.items() if m.owner == consumer]
        for tag in tags:
            msg = self._release(tag)
            if msg is not None:
                self._requeue(msg)
        self.consumers.pop(consumer, None)
        if self.active == consumer:
            self.active = None
        return len(tags)

    # ------------------------------------------------------------ time
    def expire_leases(self, mono: float) -> list[QueuedMessage]:
        """Deliveries whose lease ran out go back to their place (redelivered)."""
        leases = self.leases
        back: list[QueuedMessage] = []
        while leases and leases[0][0] <= mono:
            tags = heapq.heappop(leases)[2]
            self.lease_tags -= len(tags)
            for tag in tags:
                msg = self._release(tag)
                if msg is not None:
                    owner = msg.owner
                    self._requeue(msg)
                    back.append(msg)
                    if owner is not None and owner == self.active:
                        self.active = None  # the active consumer is gone: fail over
                        self.consumers.pop(owner, None)
        return back

    def expire(self, now: float) -> int:
        """Dead-letter every ready message whose TTL has passed; returns how many."""
        exp = self.expiries
        n = 0
        while exp and exp[0][0] <= now:
            msg = heapq.heappop(exp)[2]
            if msg.state == READY and msg.expires_at is not None and msg.expires_at <= now:
                self.ready -= 1
                self.ready_bytes -= msg.size
                self._count_dead(msg, "expired")
                n += 1
        if n:
            for lvl in range(self.max_level + 1):
                dq = self.levels[lvl]
                while dq and dq[0].state != READY:
                    dq.popleft()  # let expired heads go now, not at the next delivery
        return n

    def next_due(self) -> float | None:
        """The earliest TTL expiry of a ready message or delayed retry coming due (None:
        nothing waits on time). Heap tops of messages that left (delivered, settled,
        purged) are dropped on the way -- a message that is ready or delayed again is
        pushed again -- so a call costs O(1) amortized, not a scan of every entry."""
        exp = self.expiries
        while exp and exp[0][2].state != READY:
            heapq.heappop(exp)
        delayed = self.delayed
        while delayed and delayed[0][2].state != DELAYED:
            heapq.heappop(delayed)
        if exp and delayed:
            return min(exp[0][0], delayed[0][0])
        if exp:
            return exp[0][0]
        return delayed[0][0] if delayed else None

    def due_retries(self, now: float) -> list[QueuedMessage]:
        """Delayed messages whose time has come, removed from the delay heap."""
        out: list[QueuedMessage] = []
        while self.delayed and self.delayed[0][0] <= now:
            out.append(heapq.heappop(self.delayed)[2])
        return out

    def requeue_delayed(self, msg: QueuedMessage) -> None:
        """A retry comes due: ready again at the tail (its uid was renewed at retry time);
        a drop-head queue then over its length limit drops its head, as for a publish."""
        self._push_ready(msg)
        self._trim()

    def remove_ready(self, msg: QueuedMessage) -> None:
        """Take a ready message out of the queue for good (replay moved it elsewhere)."""
        if msg.state == READY:
            self._leave_ready(msg)
            self._forget(msg)

    def drop_dead(self, msg: QueuedMessage, reason: str) -> None:
        """`msg` (already released) leaves dead-lettered by the caller, not via `dead`."""
        self.dead_lettered[reason] = self.dead_lettered.get(reason, 0) + 1
        self._forget(msg)

    # ------------------------------------------------------------ reading
    def iter_ready(self) -> Iterator[QueuedMessage]:
        """Ready messages in delivery order (highest level first, then uid).

        Lazy: do not add to this queue while iterating."""
        for lvl in range(self.max_level, -1, -1):
            for _, msg in sorted(self.returned[lvl], key=lambda p: p[0]):
                if msg.state == READY:
                    yield msg
            for msg in self.levels[lvl]:  # no copy: callers must not change this queue
                if msg.state == READY:
                    yield msg

    def peek(self, n: int) -> list[Delivery]:
        out: list[Delivery] = []
        if n <= 0:
            return out
        for msg in self.iter_ready():
            out.append(self.as_delivery(msg, 0))
            if len(out) >= n:
                break
        return out

    def peek_ids(self, n: int) -> list[tuple[int, Delivery]]:
        """Like `peek`, each with the message's uid (its identity for `purge_ready`
        and a selective replay)."""
        out: list[tuple[int, Delivery]] = []
        for msg in self.iter_ready():
            if len(out) >= n:
                break
            out.append((msg.uid, self.as_delivery(msg, 0)))
        return out

    def purge_ready(
        self, uids: Collection[int] | None = None, limit: int | None = None,
    ) -> int:
        """Drop ready messages for good (all, or those whose uid is in `uids`; at most
        `limit`, the first in delivery order); delivered and delayed ones stay, as with
        RabbitMQ's purge."""
        todo: list[QueuedMessage] = []
        for m in self.iter_ready():
            if limit is not None and len(todo) >= limit:
                break
            if uids is None or m.uid in uids:
                todo.append(m)
        for msg in todo:
            self.remove_ready(msg)
        for dq in self.levels:
            while dq and dq[0].state != READY:
                dq.popleft()  # a paged purge must not rescan what it removed
        return len(todo)

    def as_delivery(self, msg: QueuedMessage, tag: int) -> Delivery:
        return Delivery(
            self.name, tag, self.body_of(msg), msg.headers, msg.routing_key, msg.exchange,
            msg.priority, msg.delivery_count > 0, msg.delivery_count, msg.message_id,
            msg.timestamp_ms, msg.content_type,
        )

    def oldest_ready_age(self, now: float) -> float:
        oldest: int | None = None
        for lvl in range(self.max_level + 1):
            for msg in self._heads(lvl):
                if oldest is None or msg.timestamp_ms < oldest:
                    oldest = msg.timestamp_ms
        if oldest is None:
            return 0.0
        return max(0.0, now - oldest / 1000.0)

    def _heads(self, lvl: int) -> Iterator[QueuedMessage]:
        for _, msg in self.returned[lvl]:
            if msg.state == READY:
                yield msg
        dq = self.levels[lvl]
        while dq and dq[0].state != READY:
            dq.popleft()  # drop lazily deleted heads
        if dq:
            yield dq[0]

    def live(self) -> list[QueuedMessage]:
        """Every message still owned by the queue (ready, unacked, delayed), by uid."""
        out = list(self.iter_ready())
        out.extend(self.unacked.values())
        out.extend(m for _, _, m in self.delayed)
        out.sort(key=lambda m: m.uid)
        return out

    def __len__(self) -> int:
        return self.ready + len(self.unacked) + len(self.delayed)

    def purge_all(self) -> int:
        """Drop everything (the queue is being deleted)."""
        n = len(self)
        for msg in self.live():
            self._forget(msg)
        for lvl in range(self.max_level + 1):
            self.levels[lvl].clear()
            self.returned[lvl].clear()
        self.unacked.clear()
        self.delayed.clear()
        self.ready = self.ready_bytes = 0
        return n

    def restore(self, msgs: Sequence[QueuedMessage]) -> None:
        """Put recovered messages back as ready (in uid order; delivered ones redelivered)."""
        for msg in sorted(msgs, key=lambda m: m.uid):
            self.memory.take(msg)
            self._push_ready(msg)
