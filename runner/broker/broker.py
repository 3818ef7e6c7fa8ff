"""The broker: exchanges, queues and bindings of one data directory, driven in batches.

Single owner, synchronous, batch in / batch out (see runner/engine/). Every
public operation ends in `_finish`: dead letters it caused are republished,
then each queue it touched writes its journal in ONE append (group commit),
dead-letter targets before their sources so a crash never loses a dead letter.

Topics are not the broker's: `publish` returns the topic names a message
reached and the caller appends the records; dead letters that reach a topic
(through a dead-letter exchange, or `dead_letter(..., to_topic=...)`) are
handed to `topic_sink`.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from runner.broker.admission import Budgets, MemoryBudget
from runner.broker.changes import (
    describe_changes,
    exchange_unsafe,
    held_queue_removal,
    queue_unsafe,
)
from runner.broker.deadletter import (
    DEATH_HEADER,
)
from runner.broker.dlx import Cascade, DeadLetterPublisher, TopicSink
from runner.broker.epoch import next_epoch
from runner.broker.headers import check_headers
from runner.broker.journal import LazySpill, QueueLog
from runner.broker.message import (
    DELAYED,
    Delivery,
    Publishable,
    QueuedMessage,
    tag_uid,
)
from runner.broker.queue import REASONS, MessageQueue
from runner.broker.results import (
    BrokerStats,
    PublishRefused,
    QueueCounters,
    QueueInfo,
    ReplayResult,
    TopicLetter,
)
from runner.broker.routing import Route, Router
from runner.clock import Clock
from runner.datapath import entity_path, remove_tree
from runner.errors import (
    Conflict,
    InvalidRequest,
    LogFailed,
    NotFound,
    Refused,
    StorageError,
    UnsafeChange,
)
from runner.fs import LOCAL, FileSystem, make_dirs
from runner.log.commits import GroupCommit
from runner.log.flusher import Flusher
from runner.log.record import Fsync
from runner.log.store import id_memory
from runner.topology.model import Binding, Exchange, Queue

log = logging.getLogger(__name__)

MiB = 1024 * 1024
MARKS_DELAY_S = 1.0  # fsync=always: delivery marks alone are written by `tick` after this

__all__ = ["Broker", "BrokerStats", "PublishRefused", "QueueCounters", "QueueInfo",
           "ReplayResult", "TopicLetter", "TopicSink"]


def _check_batch_headers(messages: Sequence[Publishable], start: int = 0) -> None:
    """InvalidRequest naming the message and header that could not be stored exactly
    (messages from `start` on)."""
    for i in range(start, len(messages)):
        m = messages[i]
        if m.headers:
            try:
                check_headers(m.headers)
            except InvalidRequest as exc:
                raise InvalidRequest(f"message {i}: {exc}") from None


class Broker:
    """Exchanges, queues and bindings, durable in `data_dir`."""

    def __init__(
        self, data_dir: Path, *, fsync: Fsync | str = Fsync.ALWAYS, clock: Clock,
        memory_budget_bytes: int = 256 * MiB, disk_budget_bytes: int | None = None,
        segment_bytes: int = 16 * MiB, dedup_window_s: float = 600.0,
        dedup_max_ids: int = 1_000_000,
        topic_sink: TopicSink | None = None, compact_interval_s: float = 5.0,
        fs: FileSystem = LOCAL, group: GroupCommit | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.fs = fs
        self.fsync = Fsync(fsync)
        self.clock = clock
        self.memory = MemoryBudget(memory_budget_bytes)
        # admission's broker-wide checks (runner.broker.admission)
        self.budgets = Budgets(self.memory, disk_budget_bytes, self.disk_used_bytes)
        self.segment_bytes = segment_bytes
        self.dedup_window_s = dedup_window_s
        self.dedup_max_ids = dedup_max_ids
        self.compact_interval_s = compact_interval_s
        self.router = Router()
        self.queues: dict[str, MessageQueue] = {}
        self.dlx = DeadLetterPublisher(self.router, self.queues, clock=clock,
                                       topic_sink=topic_sink)
        self.journals: dict[str, QueueLog] = {}
        self.spills: dict[str, LazySpill] = {}
        self._dirty: dict[str, MessageQueue] = {}
        self._dedup: dict[tuple[str, str, str], tuple[float, Route]] = {}
        # queues with a length limit that refuse when full (see `check_publish`)
        self._rejecting: frozenset[str] = frozenset()
        self._last_compact = clock.monotonic()
        make_dirs(fs, self.data_dir / "queues")
        self._epoch = next_epoch(fs, self.data_dir / "epoch")
        self.group = group  # fsync=always: the data dir's group commit (runner.log.commits)
        # fsync=interval: a background thread syncs, so the caller's thread (the daemon's
        # event loop) never waits for the disk
        self.flusher = Flusher() if self.fsync is Fsync.INTERVAL else None

    # ================================================================ topology
    def declare(
        self, exchanges: Iterable[Exchange] = (), queues: Iterable[Queue] = (),
        bindings: Iterable[Binding] = (),
    ) -> list[str]:
        """Add (or update) entities, keeping everything else; UnsafeChange if inequivalent."""
        ex = {e.name: e for e in self.router.exchanges()}
        ex.update((e.name, e) for e in exchanges)
        qs = {name: q.spec for name, q in self.queues.items()}
        qs.update((q.name, q) for q in queues)
        bs = list(self.router.bindings())
        bs.extend(b for b in bindings if b not in bs)
        return self.apply(ex.values(), qs.values(), bs)

    def apply(
        self, exchanges: Iterable[Exchange], queues: Iterable[Queue],
        bindings: Iterable[Binding], *, force: bool = False,
    ) -> list[str]:
        """Make the broker hold exactly these entities; a line per change.

        UnsafeChange (nothing applied) for a changed queue `max_priority` or
        `durable`, a changed exchange `type` or `durable`, or removing a
        queue that holds messages without `force`.
        """
        new_ex = {e.name: e for e in exchanges}
        new_q = {q.name: q for q in queues}
        new_b = list(dict.fromkeys(bindings))
        problems: list[str] = []
        for name, e in new_ex.items():
            if self.router.has_exchange(name):
                problems.extend(exchange_unsafe(self.router.exchange(name), e))
        for name, q in new_q.items():
            if name in self.queues:
                problems.extend(queue_unsafe(self.queues[name].spec, q))
        for name, mq in self.queues.items():
            if name not in new_q and len(mq) and not force:
                problems.append(held_queue_removal(name))
        if problems:
            raise UnsafeChange("; ".join(problems))
        lines: list[str] = []
        old_b = self.router.bindings()
        for b in old_b:
            if b not in new_b:
                self.router.unbind(b)
                lines.append(f"- binding {b.exchange} -> {b.destination}")
        for e in self.router.exchanges():
            if e.name not in new_ex:
                self.router.delete_exchange(e.name)
                lines.append(f"- exchange {e.name}")
        for name, e in new_ex.items():
            if not self.router.has_exchange(name):
                lines.append(f"+ exchange {name}")
            elif self.router.exchange(name) != e:
                lines.append(f"~ exchange {name}: "
                             + ", ".join(describe_changes(self.router.exchange(name), e)))
            self.router.declare_exchange(e)
        for name in [n for n in self.queues if n not in new_q]:
            self._delete_queue(name)
            lines.append(f"- queue {name}")
        for name, q in new_q.items():
            if name not in self.queues:
                self._create_queue(q)
                lines.append(f"+ queue {name}")
            elif self.queues[name].spec != q:
                lines.append(f"~ queue {name}: "
                             + ", ".join(describe_changes(self.queues[name].spec, q)))
                self.queues[name].reconfigure(q)
                self._dirty[name] = self.queues[name]
        for b in new_b:
            if b not in old_b:
                self.router.bind(b)
                lines.append(f"+ binding {b.exchange} -> {b.destination}")
        self._rejecting = frozenset(
            name for name, mq in self.queues.items() if mq.refuses_when_full)
        self._finish()  # what a lower limit dropped is dead-lettered now
        return lines

    def _create_queue(self, spec: Queue) -> None:
        qdir = entity_path(self.data_dir / "queues", spec.name, fs=self.fs)
        if spec.durable:
            journal = QueueLog(qdir, fsync=self.fsync, clock=self.clock,
                               segment_bytes=self.segment_bytes, fs=self.fs, group=self.group)
            mq = self._restore_queue(spec, journal)
            self.journals[spec.name] = journal
            if self.flusher is not None:
                self.flusher.add(journal.log)
        else:
            remove_tree(qdir, root=self.data_dir, fs=self.fs)
            spill = LazySpill(entity_path(self.data_dir / "spill", spec.name, fs=self.fs),
                              self.clock, self.segment_bytes, root=self.data_dir, fs=self.fs)
            spill.close(remove=True)
            mq = MessageQueue(spec, uid_start=self._epoch << 36, spill=spill,
                              memory=self.memory)
            self.spills[spec.name] = spill
        self.queues[spec.name] = mq

    def _restore_queue(self, spec: Queue, journal: QueueLog) -> MessageQueue:
        """A durable queue as its journal has it on disk."""
        mq = MessageQueue(spec, journal=journal, spill=journal, memory=self.memory)
        ready, delayed = journal.recover(memory_left=self.memory.limit - self.memory.used)
        mq.restore(ready)
        for due, msg in delayed:
            msg.state = DELAYED
            mq.delayed.append((due, msg.uid, msg))
            self.memory.take(msg)
        mq.delayed.sort(key=lambda t: (t[0], t[1]))
        self._seed_dedup(spec.name, ready)
        return mq

    def _reload_queue(self, name: str) -> None:
        """After a refused journal write (e.g. a full disk): the queue again as it is
        on disk, so nothing the refused operation did stays in memory (its uids are
        not reused for other messages). Unsettled deliveries become redeliveries, as
        after a restart. A log whose fsync failed cannot be read: it stays refused
        until the restart (see `_queue`)."""
        journal = self.journals[name]
        journal.discard()
        if journal.log.failed is not None:
            return
        old = self.queues[name]
        old.journal = None
        old.purge_all()
        self.queues[name] = self._restore_queue(old.spec, journal)

    def _delete_queue(self, name: str) -> None:
        mq = self.queues.pop(name)
        mq.journal = None  # nothing to journal: the whole log goes
        mq.purge_all()
        self._dirty.pop(name, None)
        journal = self.journals.pop(name, None)
        if journal is not None:
            if self.flusher is not None:
                self.flusher.remove(journal.log)
            journal.log.close()
            remove_tree(journal.log.directory, root=self.data_dir, fs=self.fs)
        spill = self.spills.pop(name, None)
        if spill is not None:
            spill.close(remove=True)

    def _seed_dedup(self, queue: str, msgs: Sequence[QueuedMessage]) -> None:
        horizon = self.clock.time() - self.dedup_window_s
        for msg in msgs:
            mid = msg.message_id
            if mid is None or DEATH_HEADER in msg.headers or msg.timestamp_ms / 1000 < horizon:
                continue
            key = ("x", msg.exchange, mid) if msg.exchange else ("q", queue, mid)
            found = self._dedup.get(key)
            queues = found[1].queues if found else ()
            if queue not in queues:
                queues = (*queues, queue)
            self._set_id(key, (msg.timestamp_ms / 1000, Route(queues, ())))

    # ================================================================ producing
    def publish(self, exchange: str, messages: Sequence[Publishable]) -> list[Route]:
        """Route each message through `exchange`; per message where it went.

        NotFound (unknown exchange), Forbidden (internal), PublishRefused at the
        first message a destination refuses (earlier ones are stored). A message
        whose id was published here within the dedup window is not stored again:
        its route has `duplicate=True` (and the first publish's destinations)."""
        self.router.check_publish(exchange)
        return self._publish(exchange, None, messages)

    def publish_to_queue(self, queue: str, messages: Sequence[Publishable]) -> list[Route]:
        """AMQP's default exchange: straight into `queue` (routing key: the queue's name
        unless the message has one)."""
        self._queue(queue)
        return self._publish("", queue, messages)

    def _publish(
        self, exchange: str, to_queue: str | None, messages: Sequence[Publishable],
    ) -> list[Route]:
        self.budgets.check_publish()
        now = self.clock.time()
        ts = int(now * 1000)
        routes: list[Route] = []
        direct = Route((to_queue,), ()) if to_queue is not None else None
        kind, target = ("q", to_queue) if to_queue is not None else ("x", exchange)
        queues = self.queues
        dirty = self._dirty
        route_fn = self.router.route
        same_key: dict[str, tuple[Route, bool]] = {}
        direct_fast = direct is not None and self._fast_route(direct)
        reused = reused_unroutable = 0
        # a run of messages without id or headers, one key, into queues without length
        # limits: admitted together (`MessageQueue.admit_many`)
        run: list[Publishable] = []
        run_key = ""
        run_route = direct
        # headers are checked (`_check_batch_headers`) before the first message of the
        # batch is stored, from the first one that is not in the pending run on: a bad
        # header refuses the whole batch, and a batch that is one run costs no pass
        unchecked = True
        remembered: list[tuple[str, str, str]] = []
        try:
            for i, m in enumerate(messages):
                mid = m.message_id
                if mid is None and not m.headers:
                    rk = m.routing_key
                    if direct is not None:
                        route = direct
                        rk = rk or target
                        fast = direct_fast
                    else:
                        # without headers the route depends on the key only: reuse it
                        hit_rk = same_key.get(rk)
                        if hit_rk is None:
                            r = route_fn(exchange, rk, None, count=False)
                            hit_rk = same_key[rk] = (r, self._fast_route(r))
                        route, fast = hit_rk
                        reused += 1
                        if not route.queues and not route.topics:
                            reused_unroutable += 1
                    if fast:
                        if run and (rk != run_key or route is not run_route):
                            if unchecked:
                                unchecked = False
                                _check_batch_headers(messages, i)
                            self._admit_run(run, run_key, run_route, exchange, now, ts)
                            run = []
                        run_key = rk
                        run_route = route
                        run.append(m)
                        routes.append(route)
                        continue
                else:
                    if unchecked:
                        unchecked = False
                        _check_batch_headers(messages, i)
                    if mid is not None:
                        hit = self._dedup_hit((kind, target, mid), now)
                        if hit is not None:
                            if run:
                                self._admit_run(run, run_key, run_route, exchange, now, ts)
                                run = []
                            routes.append(hit._replace(duplicate=True))  # stored nothing
                            continue
                    rk = m.routing_key
                    if direct is not None:
                        route = direct
                        rk = rk or target
                    elif m.headers:
                        route = route_fn(exchange, rk, m.headers)
                    else:
                        found = same_key.get(rk)
                        if found is None:
                            found = same_key[rk] = (route_fn(exchange, rk, None, count=False),
                                                    False)
                        route = found[0]
                        reused += 1
                        if not route.queues and not route.topics:
                            reused_unroutable += 1
                if run:
                    self._admit_run(run, run_key, run_route, exchange, now, ts)
                    run = []
                refused: Refused | None = None
                stored: list[str] = []
                cascade: Cascade | None = None  # the dead letters this message causes
                for qname in route.queues:
                    mq = queues.get(qname)
                    if mq is None:
                        continue
                    dirty[qname] = mq
                    start = len(mq.dead)
                    try:
                        mq.admit(m, exchange=exchange, routing_key=rk, now=now, ts_ms=ts)
                    except Refused as exc:
                        refused = exc
                    else:
                        stored.append(qname)
                    if len(mq.dead) > start:
                        cascade = self.dlx.adopt(mq, start, cascade)
                if refused is not None:
                    raise PublishRefused(
                        str(refused), accepted=i, routed=(*stored, *route.topics), routes=routes,
                    )
                if len(stored) != len(route.queues):  # a binding to a queue that is gone
                    route = Route(tuple(stored), route.topics)
                routes.append(route)
                if mid is not None:
                    self._remember(kind, target, mid, now, route)
                    remembered.append((kind, target, mid))
            if run:
                self._admit_run(run, run_key, run_route, exchange, now, ts)
        finally:
            if reused:
                self.router.count(exchange, reused, reused_unroutable)
            try:
                self._finish()
            except StorageError:
                for key in remembered:  # not stored: a retry must not count as a duplicate
                    self._drop_id(key)
                raise
        return routes

    def _fast_route(self, route: Route) -> bool:
        """Every queue of `route` exists and has no length limit (runs may be admitted)."""
        queues = self.queues
        return all(q in queues and queues[q].unlimited for q in route.queues)

    def _admit_run(
        self, run: list[Publishable], rk: str, route: Route | None, exchange: str, now: float,
        ts: int,
    ) -> None:
        assert route is not None
        for qname in route.queues:
            mq = self.queues[qname]
            self._dirty[qname] = mq
            mq.admit_many(run, rk, exchange=exchange, now=now, ts_ms=ts)

    def _remember(self, kind: str, target: str, mid: str, now: float, route: Route) -> None:
        self._set_id((kind, target, mid), (now, route))
        if len(self._dedup) > self.dedup_max_ids:
            self._drop_id(next(iter(self._dedup)))  # the oldest id goes first

    def _set_id(self, key: tuple[str, str, str], value: tuple[float, Route]) -> None:
        """Remember a message id; a new one counts against the memory budget."""
        dedup = self._dedup
        if key not in dedup:
            self.memory.hold(id_memory(key[2]), 1)
        dedup[key] = value

    def _drop_id(self, key: tuple[str, str, str]) -> None:
        """Forget a message id (if remembered), giving its memory back."""
        if self._dedup.pop(key, None) is not None:
            self.memory.hold(-id_memory(key[2]), -1)

    def _prune_dedup(self, now: float) -> None:
        """Forget ids older than the window (ids are kept in arrival order)."""
        dedup = self._dedup
        horizon = now - self.dedup_window_s
        while dedup:
            key = next(iter(dedup))
            if dedup[key][0] > horizon:
                break
            self._drop_id(key)

    def _dedup_hit(self, key: tuple[str, str, str], now: float) -> Route | None:
        found = self._dedup.get(key)
        if found is None:
            return None
        if found[0] + self.dedup_window_s <= now:
            self._drop_id(key)
            return None
        return found[1]

    def disk_used_bytes(self) -> int:
        return (sum(j.log.size_bytes for j in self.journals.values())
                + sum(s.size() for s in self.spills.values()))

    # ================================================================ consuming
    def _queue(self, name: str) -> MessageQueue:
        mq = self.queues.get(name)
        if mq is None:
            raise NotFound(f"queue '{name}' not found")
        journal = self.journals.get(name)
        if journal is not None and journal.log.failed is not None:
            raise journal.log.failed
        return mq

    def pull(
        self, queue: str, max_messages: int, *, consumer_id: str, lease_s: float | None = None,
        prefetch: int | None = None,
    ) -> list[Delivery]:
        """Up to `max_messages` deliveries; with `lease_s` unacked ones come back
        when the lease runs out; with `prefetch` at most that many unacked per consumer."""
        deadline = None if lease_s is None else self.clock.monotonic() + lease_s
        with self._touching(queue) as mq:
            return mq.take(max_messages, consumer=consumer_id, now=self.clock.time(),
                           lease_deadline=deadline, prefetch=prefetch)

    def ack(self, queue: str, delivery_ids: Sequence[int]) -> list[int]:
        """Settle; returns the ids that were unknown or expired."""
        with self._touching(queue) as mq:
            return mq.ack(delivery_ids)

    def nack(self, queue: str, delivery_ids: Sequence[int], *, requeue: bool) -> list[int]:
        """Back to their original place (redelivered) or dead-lettered `rejected`."""
        with self._touching(queue) as mq:
            return mq.nack(delivery_ids, requeue=requeue)

    def retry_later(self, queue: str, delivery_id: int, delay_s: float) -> None:
        """Settle now; ready again at the tail after `delay_s` (delivery count kept)."""
        with self._touching(queue) as mq:
            due = self.clock.time() + max(0.0, delay_s)
            msg = mq.retry_later(delivery_id, due)
            journal = mq.journal
            if isinstance(journal, QueueLog):
                old = msg.uid
                body = mq.body_of(msg)
                msg.uid = journal.reserve(msg, not_before=due, body=body)
                journal.settle(old)
                if not isinstance(msg.body, bytes):
                    msg.body = msg.uid
            else:
                msg.uid = mq.next_uid
                mq.next_uid += 1

    def dead_letter(
        self, queue: str, delivery_id: int, *, reason: str,
        death: Mapping[str, Any] | None = None, to_queue: str | None = None,
        to_topic: str | None = None,
    ) -> Route:
        """Settle and dead-letter one delivery: through the queue's dead-letter
        exchange, or into `to_queue` / `to_topic` (handed to `topic_sink`)."""
        self._queue(queue)  # an unknown source is named before an unknown target
        if to_queue is not None:
            self._queue(to_queue)
        if death:
            check_headers({DEATH_HEADER: death})
        with self._touching(queue) as mq:
            msg = mq.settle_one(delivery_id)
            body = mq.body_of(msg)
            mq.drop_dead(msg, reason)
            return self.dlx.send(mq, msg, reason, body=body, given=death, to_queue=to_queue,
                                 to_topic=to_topic)

    def detach(self, queue: str, consumer_id: str) -> int:
        """A consumer is gone: its unacked deliveries return; single-active fails over."""
        with self._touching(queue) as mq:
            return mq.detach(consumer_id)

    def peek(self, queue: str, n: int) -> list[Delivery]:
        """The next `n` ready messages, left in place (delivery_id 0)."""
        return self._queue(queue).peek(n)

    def peek_ids(self, queue: str, n: int) -> list[tuple[int, Delivery]]:
        """The next `n` ready messages with their uids, left in place."""
        return self._queue(queue).peek_ids(n)

    def purge(
        self, queue: str, uids: Collection[int] | None = None, *, limit: int | None = None,
    ) -> int:
        """Delete the ready messages of `queue` (all, or those with these uids; at most
        `limit` a call); how many."""
        with self._touching(queue) as mq:
            return mq.purge_ready(uids, limit)

    def _touching(self, queue: str) -> _Touching:
        """`with self._touching(name) as mq:` -- the one way an operation on one queue
        runs: the queue (NotFound before anything changes) is marked dirty, and on the
        way out, also when the body raises, `_finish` dead-letters what it dropped and
        journals it."""
        mq = self._queue(queue)
        self._dirty[queue] = mq
        return _Touching(self, mq)

    # ================================================================ dead letters
    def _finish(self) -> None:
        """Republish what the touched queues dead-lettered, then journal (one append each):
        dead-letter targets first, so a crash in between never loses a dead letter."""
        dirty = self._dirty
        dlx = self.dlx
        while True:
            # queues a replay wrote to are dlx.touched: a drop-head queue there
            # dead-lettered its head for room, and that letter goes now, not later
            dirty.update(dlx.touched)
            batch = [mq for mq in dirty.values() if mq.dead]
            if not batch:
                break
            for mq in batch:
                dead, mq.dead = mq.dead, []
                for msg, reason in dead:
                    dlx.send(mq, msg, reason, body=mq.body_of(msg))
            dirty.update(dlx.touched)
        order: dict[str, MessageQueue] = {}
        for name, mq in dlx.take_touched().items():
            dirty[name] = mq
            if self.queues.get(name) is mq:
                order[name] = mq
        for name, mq in dirty.items():
            order.setdefault(name, mq)
        dirty.clear()
        failed: list[tuple[str, StorageError]] = []
        try:
            for name, mq in order.items():
                if mq.journal is not None:
                    try:
                        mq.journal.flush()
                    except StorageError as exc:
                        failed.append((name, exc))
        finally:
            dlx.end_operation()
        if failed:
            for name, _exc in failed:
                if name in self.journals:
                    self._reload_queue(name)
            raise failed[0][1]

    def replay(
        self, queue: str, max_messages: int | None = None, *,
        only: Collection[int] | None = None,
    ) -> ReplayResult:
        """Dead letters in `queue` back where they died: into their original queue
        (no death header, `x-replay-count` + 1), or, for topic records, returned.
        `only`: just the messages with these uids (`peek_ids`)."""
        with self._touching(queue) as mq:
            return self.dlx.replay(mq, max_messages, only)

    # ================================================================ steps
    def check_publish(
        self, publishes: Sequence[tuple[str, Sequence[Publishable]]],
        queue_puts: Sequence[tuple[str, Sequence[Publishable]]] = (),
    ) -> None:
        """Dry run of storing ALL of these messages: nothing is written or counted.

        Refused (naming the queue) when a `reject-publish` / `reject-publish-dlx`
        queue would refuse one of them: the messages and bytes each queue would
        get are added up over every publish and put (a queue reached by several
        routes counts each; an id the dedup window would drop counts nothing)
        and compared with `max_length` / `max_length_bytes`. Refused when the
        disk budget is exhausted. NotFound / Forbidden for an unknown queue or
        exchange, or an internal exchange; InvalidRequest for a header value
        that cannot be stored (`headers.check_headers`). Drop-head queues
        never refuse.
        """
        for ex, msgs in publishes:
            self.router.check_publish(ex)
            _check_batch_headers(msgs)
        for q, msgs in queue_puts:
            self._queue(q)
            _check_batch_headers(msgs)
        if not publishes and not queue_puts:
            return
        self.budgets.check_disk()
        rejecting = self._rejecting
        if not rejecting:
            return
        now = self.clock.time()
        want: dict[str, list[int]] = {}
        seen: set[tuple[str, str, str]] = set()

        def new_id(kind: str, target: str, mid: str | None) -> bool:
            if mid is None:
                return True
            key = (kind, target, mid)
            if key in seen or self._dedup_hit(key, now) is not None:
                return False
            seen.add(key)
            return True

        def add(queue: str, m: Publishable) -> None:
            got = want.get(queue)
            if got is None:
                got = want[queue] = [0, 0]
            got[0] += 1
            got[1] += len(m.body)

        route = self.router.route
        for ex, msgs in publishes:
            for m in msgs:
                if not new_id("x", ex, m.message_id):
                    continue
                for queue in route(ex, m.routing_key, m.headers or None, count=False).queues:
                    if queue in rejecting:
                        add(queue, m)
        for queue, msgs in queue_puts:
            if queue not in rejecting:
                continue
            for m in msgs:
                if new_id("q", queue, m.message_id):
                    add(queue, m)
        for queue, (n, size) in want.items():
            mq = self.queues[queue]
            if mq.would_refuse(n, size):
                spec = mq.spec
                raise Refused(
                    f"queue '{queue}' has no room for this step's {n} message(s) "
                    f"({mq.limit_text()}, overflow {spec.overflow.value}): "
                    "step refused, nothing stored"
                )

    def apply_step(
        self, *, acks: Sequence[tuple[str, int]] = (),
        publishes: Sequence[tuple[str, Sequence[Publishable]]] = (),
        queue_puts: Sequence[tuple[str, Sequence[Publishable]]] = (),
    ) -> list[list[Route]]:
        """Publish outputs and ack inputs: the broker's part of an exactly-once step.

        Idempotent, so the engine's step journal (`runner.engine.steps`) can apply
        a journaled step again after a crash: outputs carry message ids (the
        dedup window drops one already stored), acks go by message (the uid in
        the delivery id), so an ack re-applied after a restart still settles its
        message and one already settled is a no-op. Unknown exchanges and queues
        (gone since the step was journaled) are skipped. No journal of its own:
        atomicity is the caller's. Call `check_publish` first to refuse a step
        a full `reject-publish` queue would refuse. Returns the routes of
        `publishes` then `queue_puts`, one list per entry."""
        out: list[list[Route]] = []
        for ex, msgs in publishes:
            out.append(self._publish(ex, None, msgs) if self.router.has_exchange(ex) else [])
        for q, msgs in queue_puts:
            out.append(self._publish("", q, msgs) if q in self.queues else [])
        try:
            for q, tag in acks:
                mq = self.queues.get(q)
                if mq is None:
                    continue
                self._dirty[q] = mq
                if mq.ack([tag]):
                    mq.ack_uids([tag_uid(tag)])
        finally:
            self._finish()
        return out

    # ================================================================ time
    def tick(self) -> None:
        """TTL expiry, lease expiry, retries coming due, compaction, interval fsync."""
        now = self.clock.time()
        mono = self.clock.monotonic()
        try:
            for name, mq in self.queues.items():
                if mq.expiries and mq.expiries[0][0] <= now and mq.expire(now):
                    self._dirty[name] = mq
                if mq.leases and mq.leases[0][0] <= mono and mq.expire_leases(mono):
                    self._dirty[name] = mq
                if mq.delayed and mq.delayed[0][0] <= now:
                    for msg in mq.due_retries(now):
                        mq.requeue_delayed(msg)
                if mq.dead:
                    self._dirty[name] = mq
        finally:
            self._finish()
        self._prune_dedup(now)
        if mono - self._last_compact >= self.compact_interval_s:
            self._last_compact = mono
            self.compact()
        # delivery marks wait for the next append; a quiet queue writes them here (with
        # fsync=always at most one extra fsync a second per queue)
        marks_age = MARKS_DELAY_S if self.fsync is Fsync.ALWAYS else 0.0
        for journal in self.journals.values():
            journal.flush_marks(older_than_s=marks_age)
        if self.fsync is Fsync.INTERVAL and self.flusher is None:
            for journal in self.journals.values():
                journal.log.maybe_sync()

    def next_due(self) -> float | None:
        """The earliest wall-clock time at which `tick` may have queue work: a TTL
        expiry or a delayed retry coming due (None when nothing waits on time). The
        daemon asks after every tick: each queue answers from its heaps' tops
        (`MessageQueue.next_due`), without scanning its waiting messages."""
        due: float | None = None
        for mq in self.queues.values():
            t = mq.next_due()
            if t is not None and (due is None or t < due):
                due = t
        return due

    def compact(self, *, force: bool = False) -> None:
        """Drop settled history from the queue logs (and spilled bodies no longer used)."""
        for name, journal in self.journals.items():
            mq = self.queues[name]
            journal.compact(lambda mq=mq: {m.uid: m for m in mq.live()},  # type: ignore[misc]
                            force=force)
        for name, spill in self.spills.items():
            if spill.log is not None:
                locs = [m.body for m in self.queues[name].live() if isinstance(m.body, int)]
                spill.log.trim(min(locs) if locs else None)

    # ================================================================ reading
    def queue_info(self, queue: str) -> QueueInfo:
        mq = self._queue(queue)
        return QueueInfo(queue, mq.ready, len(mq.unacked), len(mq.delayed),
                         mq.oldest_ready_age(self.clock.time()))

    def failed_logs(self) -> list[LogFailed]:
        """Queue and step logs refusing everything after a failed fsync (until restart)."""
        logs = [j.log for j in self.journals.values()]
        return [wal.failed for wal in logs if wal.failed is not None]

    def stats(self) -> BrokerStats:
        now = self.clock.time()
        out = BrokerStats(dead_letters_dropped=self.dlx.dropped,
                          dead_letter_cycles=self.dlx.cycles,
                          dead_letter_loops=self.dlx.loops)
        for name, (pub, unr) in self.router.counters().items():
            out.exchange_published[name] = pub
            out.exchange_unroutable[name] = unr
        for name, mq in self.queues.items():
            dead = dict.fromkeys(REASONS, 0)
            dead.update(mq.dead_lettered)
            out.queues[name] = QueueCounters(
                mq.ready, len(mq.unacked), len(mq.delayed), mq.published, mq.delivered,
                mq.acked, mq.redelivered, mq.rejected_publishes, dead,
                mq.oldest_ready_age(now), mq.dead_letter_loops,
            )
        return out

    # ================================================================ lifecycle
    def flush(self) -> None:
        """fsync everything written so far (logs failed by an fsync are skipped: they
        are reported by `failed_logs` and recovered at the next start)."""
        for journal in self.journals.values():
            if journal.log.failed is None:
                journal.sync()

    def close(self) -> None:
        if self.flusher is not None:
            self.flusher.close()
            self.flusher = None
        for journal in self.journals.values():
            journal.close()
        for spill in self.spills.values():
            spill.close(remove=True)

    def check_ids(self, queue: str, delivery_ids: Sequence[int]) -> None:
        """Conflict listing the ids `queue` does not hold unacked (nothing settled)."""
        mq = self._queue(queue)
        unknown = tuple(i for i in delivery_ids if i not in mq.unacked)
        if unknown:
            raise Conflict(f"queue '{queue}': unknown or expired delivery ids {list(unknown)}",
                           unknown=unknown)


class _Touching:
    """The context of `Broker._touching` (a class: it is on the pull/ack hot path)."""

    __slots__ = ("_broker", "_mq")

    def __init__(self, broker: Broker, mq: MessageQueue) -> None:
        self._broker = broker
        self._mq = mq

    def __enter__(self) -> MessageQueue:
        return self._mq

    def __exit__(self, *exc: object) -> None:
        self._broker._finish()  # never swallows the body's exception
