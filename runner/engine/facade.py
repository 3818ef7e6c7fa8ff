"""The Engine facade: one object that opens `log/` and `broker/` for a Topology.

The contract and its values are described in `runner.engine`; the parts live
beside this module: `steps` (exactly-once steps), `deadletters` (topic dead
letters and replay), `changes` (reload checks), `records` (record encoding),
`snapshots` (group info, metrics counters), `datadir` (the data directory lock).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from runner.broker.broker import Broker, PublishRefused
from runner.broker.changes import exchange_unsafe, held_queue_removal, queue_unsafe
from runner.broker.message import Message
from runner.broker.routing import Route
from runner.clock import Clock, SystemClock
from runner.engine.changes import broker_queues, topic_problems, topic_reach
from runner.engine.contract import Event, EventKind
from runner.engine.datadir import lock_data_dir
from runner.engine.deadletters import (
    dead_letter_step,
    dlq_position_group,
    dlq_position_groups,
    dlq_settled_queue,
    marker_of,
    replay,
    replay_queue_name,
    replayed_record,
)
from runner.engine.events import TIMERS, Hub
from runner.engine.records import decode_headers, record_of_message, to_append
from runner.engine.snapshots import engine_stats, group_info
from runner.engine.steps import STEP_PRODUCER, StepLog, replay_legacy
from runner.engine.values import (
    EngineStats,
    FsyncPolicy,
    GroupInfo,
    OutMessage,
    OutRecord,
    PartitionInfo,
    QueueDelivery,
    QueueInfo,
    Record,
    ReplayOutcome,
    Step,
    TopicPartition,
)
from runner.errors import Conflict, EngineError, LogFailed, StorageError, UnsafeChange
from runner.fs import LOCAL, FileSystem, Syncer, async_syncer, make_dirs
from runner.log.commits import GroupCommit, TicketBox
from runner.log.journal import StepJournal
from runner.log.partition import TopicPartition as LogTopicPartition
from runner.log.record import Fsync
from runner.log.store import Store
from runner.topology.model import Topology

log = logging.getLogger(__name__)

DEDUP_WINDOW_S = 3600.0
# timers (next_due): after a write, the housekeeping in `tick` (delivery marks,
# interval fsync, queue compaction, retention by size) runs every BUSY_TICK_S
# until SETTLE_S passed without one; an idle engine holding records checks
# time retention every HOUSEKEEPING_S; nothing else wakes an idle engine
BUSY_TICK_S = 0.05
SETTLE_S = 6.0
HOUSEKEEPING_S = 30.0

QUEUE_READY = EventKind.QUEUE_READY
APPENDED = EventKind.RECORDS_APPENDED


class Engine:
    """The embedded engine for one Topology in one data directory.

    Storage under `data_dir`: `topics/`, `__consumer_offsets/` (runner.log.Store),
    `queues/`, `spill/`, `epoch` (runner.broker.Broker) and `engine_steps/` (the
    only step journal, see `commit_step`). One `GroupCommit` batches the fsyncs
    of every log in it.
    """

    topology: Topology
    fs: FileSystem
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
        fs: FileSystem = LOCAL,
    ) -> Engine:
        """Open (recovering) the data dir and declare everything in `topology`.
        `fs`: the file system every file call goes through (tests pass a
        simulated disk)."""
        clock = clock or SystemClock()
        data_dir = Path(data_dir)
        try:
            make_dirs(fs, data_dir)
        except OSError as exc:
            raise StorageError(f"cannot create data dir {data_dir}: {exc.strerror}") from exc
        policy = Fsync(FsyncPolicy(fsync).value)
        lock = lock_data_dir(data_dir, fs)
        engine = cls.__new__(cls)
        engine._lock_fd = lock
        engine.fs = fs
        try:
            engine._setup(topology, data_dir, policy, clock, memory_budget_bytes,
                          disk_budget_bytes)
        except BaseException:
            fs.close(lock)
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
        # (dead-letter topic, partition, offset) -> timestamp ms (see `stats`)
        self._dlq_ts: dict[tuple[str, int, int], int] = {}
        self._closed = False
        self._seek_versions: dict[str, int] = {}
        self.commits = GroupCommit()  # every log of the data dir syncs through it
        # topics appended in ticketed blocks whose records readers do not see until
        # synced (the high watermark), -> the ticket after which APPENDED fires again
        self._block_topics: list[str] | None = None
        self._hidden: dict[str, int] = {}
        # `durable` waiters on the owner's event loop, woken once per flusher round
        self._loop_waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._hooked: asyncio.AbstractEventLoop | None = None
        # the loop runs its tickets' fsync rounds itself, with asynchronous
        # fdatasyncs (`GroupCommit.run_on_loop`); False: the flusher thread does
        # (set before the engine is first used on a loop)
        self.sync_on_loop = True
        self._syncer: Syncer | None = None
        self.events = Hub()  # see runner.engine.events
        self.calls = 0  # calls of `tick` and `next_due` (the idle-cost tests read it)
        self._last_write = self._last_tick = clock.time()
        try:
            self.store = Store(data_dir, fsync=fsync, clock=clock,
                               dedup_window_s=DEDUP_WINDOW_S, fs=self.fs,
                               gapped_producers=(STEP_PRODUCER,), group=self.commits)
        except OSError as exc:
            raise StorageError(f"cannot open the topics in {data_dir}: {exc}") from exc
        self.store.groups.on_rebalance = self._rebalanced
        try:
            self.broker = Broker(
                data_dir, fsync=fsync, clock=clock, memory_budget_bytes=memory_budget_bytes,
                disk_budget_bytes=disk_budget_bytes, dedup_window_s=DEDUP_WINDOW_S,
                topic_sink=self._sink, fs=self.fs, group=self.commits,
            )
            self.store.count_ids_in(self.broker.memory)  # one budget for every message id
            self.journal = StepJournal(data_dir / "engine_steps", fsync=fsync, clock=clock,
                                       fs=self.fs)
            self.steps = StepLog(self.journal, self.store, self.broker, self.commits)
        except BaseException as exc:
            self.store.close()
            if isinstance(exc, OSError):
                raise StorageError(f"cannot open the queues in {data_dir}: {exc}") from exc
            raise
        try:
            self.apply(topology, force=True)
            replay_legacy(data_dir / "steps", self.broker, root=data_dir, clock=clock, fs=self.fs)
            self.steps.recover()
        except BaseException:
            self._close_parts()
            raise
        self._last_write = self.clock.time() - SETTLE_S  # opened: nothing to keep up yet

    # -------------------------------------------------------------- lifecycle
    def apply(self, new: Topology, *, force: bool = False) -> list[str]:
        """Apply a new topology as one step; returns a line per applied change.
        Raises UnsafeChange (nothing applied) for what TOPOLOGY.md calls unsafe."""
        queues = broker_queues(self.broker, new)
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
                problems.append(held_queue_removal(name))
        problems.extend(topic_problems(self.store, new))
        if problems:
            raise UnsafeChange("; ".join(problems))
        groups = dict(new.group_map())
        hidden = dlq_position_groups(new)
        groups.update(hidden)
        lines = [line for line in self.store.apply(new.topic_map(), groups)
                 if not any(line.endswith(f" group {g}") for g in hidden)]
        lines += self.broker.apply([e for _, e in new.exchanges], queues, new.bindings,
                                   force=force)
        self.topology = new
        self._topic_reach = topic_reach(new)
        self._wrote(QUEUE_READY, APPENDED)  # new names, new routes: everyone looks again
        return lines

    def tick(self) -> None:
        """Time-driven work; see the module docstring. Fires QUEUE_READY for every
        watched queue (leases, TTLs and retries that came due)."""
        self.calls += 1
        self._last_tick = self.clock.time()
        if self.steps.half_applied:
            try:
                self.steps.recover()
            except Exception as exc:
                log.error("engine steps still not applied: %s", exc)
        self.steps.mark_resolved()
        self.store.tick()
        self.broker.tick()
        self._reveal()
        if self.fsync is Fsync.INTERVAL:
            self.journal.maybe_sync()
        self.events.fire_all(QUEUE_READY)

    def next_due(self) -> float | None:
        """The earliest clock time (`clock.time()`) at which `tick` has time-driven
        queue work (TTL expiry, a retry coming due); None when nothing waits. A
        simulation on a manual clock advances straight to it."""
        return self.broker.next_due()

    def timer_due(self) -> float | None:
        """When the owner should call `tick` next (`clock.time()`), None: not
        until something happens (TIMERS fires when a call moves it earlier).

        Queue TTLs and delayed retries, leases running out, external group
        members' sessions, steps to recover; housekeeping every BUSY_TICK_S
        for SETTLE_S after the last write; HOUSEKEEPING_S while topics hold
        records (time retention). An idle engine with empty topics: None."""
        self.calls += 1
        now = self.clock.time()
        mono = self.clock.monotonic()
        due = [t for t in (self.broker.next_due(),) if t is not None]
        leases = [mq.leases[0][0] for mq in self.broker.queues.values() if mq.leases]
        expiry = self.store.groups.next_expiry()
        due += [now + (t - mono) for t in (*leases, *([expiry] if expiry else []))]
        if self.steps.half_applied:
            due.append(now)
        if now - self._last_write < SETTLE_S:
            due.append(self._last_tick + BUSY_TICK_S)
        elif any(p.log_end_offset > p.log_start_offset
                 for t in self.store.topic_names() for p in self.store.partitions(t)):
            due.append(self._last_tick + HOUSEKEEPING_S)
        return min(due) if due else None

    def _wrote(self, *kinds: EventKind) -> None:
        """After a write: its timers start (TIMERS when they were asleep) and every
        watched event of `kinds` fires."""
        if self.clock.time() - self._last_write >= SETTLE_S:
            self.events.fire(TIMERS)  # the owner's timer slept until the next due
        self._last_write = self.clock.time()
        for kind in kinds:
            self.events.fire_all(kind)

    def _rebalanced(self, group: str) -> None:
        self.events.fire(Event(EventKind.ASSIGNMENT_CHANGED, group))

    def flush(self) -> None:
        """fsync everything written so far (used at shutdown and by `interval`)."""
        self.store.flush()
        self.broker.flush()
        self.steps.mark_resolved(everything=True)  # every log they wrote is synced
        if self.journal.failed is None:
            self.journal.sync()

    def close(self) -> None:
        """Sync and close every part, then release the data dir lock. A part that
        fails to close (its last fsync failed) does not stop the others; afterwards
        StorageError names every failure: what was written since the last fsync of
        that part may not be on disk, and the caller must not report a clean stop."""
        if self._closed:
            return
        self._closed = True
        try:
            self.commits.close()  # the flusher's last rounds, then it stops
            if self._syncer is not None:
                self._syncer.close()
            failures = self._close_parts()
        finally:
            self.fs.close(self._lock_fd)  # releases the data dir lock
        if failures:
            raise StorageError(
                "closing the engine failed: " + "; ".join(failures)
                + " (what was written since the last successful fsync may be lost)")

    def _close_parts(self) -> list[str]:
        failures: list[str] = []
        for part in (self.journal, self.broker, self.store):
            try:
                part.close()
            except Exception as exc:  # close the others anyway
                log.exception("closing %s failed", type(part).__name__)
                failures.append(str(exc) if isinstance(exc, StorageError)
                                else f"{type(part).__name__}: {type(exc).__name__}: {exc}")
        return failures

    # -------------------------------------------------------------- producing
    def _sink(self, topic: str, message: Message) -> None:
        """Dead letters reaching a topic (a DLX bound to a topic, or to_topic)."""
        rec = record_of_message(
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
                # a check: the append after it chooses the partition (a resolve that
                # moved the round robin on made keyless records skip every other one)
                self.store.resolve(topic, [record_of_message(m, exchange)], advance=False)

    def _append_routed(self, exchange: str, messages: Sequence[OutMessage],
                       routes: Sequence[Route]) -> None:
        for m, route in zip(messages, routes, strict=False):
            for topic in route.topics:
                self.store.append(topic, [record_of_message(m, exchange)])
                self._appended_in_block(topic)

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
            self._wrote(QUEUE_READY, APPENDED)
            raise
        self._append_routed(exchange, messages, routes)
        out = [r.destinations for r in routes]
        self._wrote()
        self.events.fire_routes(out, self.store.topic_names())
        return out

    def _topic_map_names(self) -> set[str]:
        return set(self.store.topic_names())

    def fanout(self, exchange: str, messages: Sequence[OutMessage]) -> list[int]:
        """How many copies (queues and topics reached) publishing each message through
        `exchange` would store, without storing anything (a duplicate message id is
        counted too). NotFound / Forbidden as `publish`."""
        router = self.broker.router
        router.check_publish(exchange)
        by_key: dict[str, int] = {}  # without headers the route depends on the key only
        out: list[int] = []
        for m in messages:
            if m.headers:
                r = router.route(exchange, m.routing_key, m.headers, count=False)
                out.append(len(r.queues) + len(r.topics))
                continue
            n = by_key.get(m.routing_key)
            if n is None:
                r = router.route(exchange, m.routing_key, None, count=False)
                n = by_key[m.routing_key] = len(r.queues) + len(r.topics)
            out.append(n)
        return out

    def publish_to_queue(self, queue: str, messages: Sequence[OutMessage]) -> list[list[str]]:
        """AMQP's default exchange: straight into one queue."""
        out = [r.destinations for r in self.broker.publish_to_queue(queue, messages)]
        self._wrote()
        self.events.fire(Event(QUEUE_READY, queue))
        return out

    def append(self, topic: str, records: Sequence[OutRecord], *,
               sticky: bool = False) -> list[tuple[int, int]]:
        """Append records; returns (partition, offset) per record.
        InvalidRequest for a keyless record on a compacted topic, TooLarge over
        max_message_bytes, NotFound for an unknown topic or partition. `sticky`: the
        keyless records all go to one partition (`Store.append`)."""
        out = self.store.append(topic, [to_append(r) for r in records], sticky=sticky)
        self._appended_in_block(topic)
        self._wrote()
        self.events.fire(Event(APPENDED, topic))
        return out

    # -------------------------------------------------------------- durability
    @contextlib.contextmanager
    def ticketed(self, *, ordered: bool = True) -> Iterator[TicketBox]:
        """Writes inside return once written, without their fsync; at the end
        `box.seq` is the ticket to `await durable(...)` before answering (see
        `runner.log.commits`). Call it around synchronous engine calls only,
        never around an `await`. Without `--fsync always` the ticket is 0.
        `ordered=False`: the logs written need no sync order among them (records
        appended to several partitions), so a round syncs them all instead of the
        block's end (as `GroupCommit.ticketed`)."""
        if self.commits.deferring():
            with self.commits.ticketed(ordered=ordered) as box:
                yield box
            return
        if self.fsync is Fsync.ALWAYS:
            self._hook_loop()
        self._block_topics = []
        box = TicketBox()
        try:
            with self.commits.ticketed(ordered=ordered) as box:
                yield box
        finally:
            topics, self._block_topics = self._block_topics, None
            if box.seq and topics and self.fsync is Fsync.ALWAYS:
                for topic in topics:
                    self._hidden[topic] = max(self._hidden.get(topic, 0), box.seq)

    async def durable(self, seq: int, *, also: Iterable[int] = ()) -> None:
        """Return when ticket `seq` (a `ticketed()` block's) is synced; raise the
        LogFailed / StorageError that failed its round (`also`: the earlier tickets
        it covers, combined: raise that of any failed round that held one of them;
        a failed round between them that held none is not theirs)."""
        if not seq:
            return
        try:
            if seq > self.commits.done:
                loop = self._hook_loop()
                assert loop is not None
                fut: asyncio.Future[None] = loop.create_future()
                heapq.heappush(self._loop_waiters, (seq, id(fut), fut))
                if seq <= self.commits.done:  # its round ended before the hook was set
                    self._round_done()
                await fut
            error = self.commits.error_of(seq)
            for earlier in also:
                if error is not None:
                    break
                error = self.commits.error_of(earlier)
            if error is not None:
                raise error
        except LogFailed as exc:
            raise LogFailed(str(exc), path=exc.path) from exc
        except EngineError:
            raise
        except Exception as exc:
            raise StorageError(f"fsync failed: {exc}") from exc
        finally:
            self._reveal()

    def _hook_loop(self) -> asyncio.AbstractEventLoop | None:
        """The running event loop, once hooked to the group commit: every round
        wakes its `durable` waiters, and its tickets' rounds run on it with
        asynchronous fdatasyncs where the file system offers them
        (`GroupCommit.run_on_loop`, `runner.fs.async_syncer`; `sync_on_loop`).
        None outside a running loop."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return None
        if self._hooked is loop:
            return loop
        if self._hooked is not None:
            # another loop ran rounds: one it left in flight or scheduled (it closed
            # before it took the end) is synced here first
            self.commits.detach_loop()
        self._hooked = loop

        def on_loop() -> bool:
            try:
                return asyncio.get_running_loop() is loop
            except RuntimeError:
                return False

        def round_ended() -> None:
            if on_loop():
                self._round_done()
            else:
                loop.call_soon_threadsafe(self._round_done)

        self.commits.on_round = round_ended
        if self._syncer is not None:
            self._syncer.close()
        self._syncer = async_syncer(self.fs, loop) if self.sync_on_loop else None
        if self._syncer is not None:
            def runs_rounds() -> bool:
                return self.sync_on_loop and on_loop()

            def schedule() -> None:
                loop.call_soon(self.commits.run_round)

            self.commits.run_on_loop(runs_rounds, schedule, self._syncer)
        return loop

    def _round_done(self) -> None:
        """On the loop, after a flusher round: wake the `durable` waiters it resolved."""
        done = self.commits.done
        waiters = self._loop_waiters
        while waiters and waiters[0][0] <= done:
            fut = heapq.heappop(waiters)[2]
            if not fut.done():
                with contextlib.suppress(RuntimeError):  # a loop closed meanwhile
                    fut.set_result(None)
        self._reveal()
        if self.steps.inflight and not self.commits.deferring():
            self.steps.mark_resolved()

    def _appended_in_block(self, topic: str) -> None:
        if self._block_topics is not None:
            self._block_topics.append(topic)

    def _reveal(self) -> None:
        """Records of ticketed appends became readable (synced): wake their readers."""
        if not self._hidden:
            return
        done = self.commits.done
        for topic, seq in list(self._hidden.items()):
            if seq <= done:
                del self._hidden[topic]
                self.events.fire(Event(APPENDED, topic))

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
        return [PartitionInfo(p.partition, p.log_start_offset, p.log_end_offset, p.size_bytes,
                              p.oldest_timestamp_ms)
                for p in self.store.partitions(topic)]

    # -------------------------------------------------------------- groups
    def join(self, group: str, member_id: str, *, local: bool = False) -> None:
        """`local`: an in-process member (its session never times out)."""
        self.store.groups.join(group, member_id)
        if local:
            self.store.groups.local.add((group, member_id))

    def leave(self, group: str, member_id: str) -> None:
        self.store.groups.leave(group, member_id)

    def heartbeat(self, group: str, member_id: str) -> None:
        self.store.groups.heartbeat(group, member_id)

    def assignment(self, group: str, member_id: str) -> list[TopicPartition]:
        return [TopicPartition(*tp) for tp in self.store.groups.assignment(group, member_id)]

    def position(self, group: str, tp: TopicPartition) -> int:
        """The committed offset, else the group's reset position."""
        return self.store.groups.position(group, log_tp(tp))

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
        self.store.groups.commit(group, {log_tp(tp): off for tp, off in offsets.items()},
                                 member_id=member_id, generation=generation)
        self._wrote()

    def seek(
        self, group: str, tp: TopicPartition, *, offset: int | None = None,
        timestamp_ms: int | None = None,
    ) -> int:
        """Move the group's position (a commit); bumps `seek_version(group)` so the
        group's running members re-read their positions and do not commit
        records they read before the seek."""
        pos = self.store.groups.seek(group, log_tp(tp), offset=offset,
                                     timestamp_ms=timestamp_ms)
        self._seek_versions[group] = self._seek_versions.get(group, 0) + 1
        self._wrote()
        self.events.fire(Event(EventKind.SEEK, group))
        return pos

    def seek_version(self, group: str) -> int:
        """How many seeks `group` has had since the engine opened (members compare it
        on every poll: a change means their positions are stale)."""
        return self._seek_versions.get(group, 0)

    def group_info(self, group: str) -> GroupInfo:
        return group_info(self.store, group)

    # -------------------------------------------------------------- queues
    def pull(
        self, queue: str, max_messages: int, *, lease_s: float, consumer_id: str,
    ) -> list[QueueDelivery]:
        """Deliver up to `max_messages` ready messages under a lease; an expired
        lease redelivers. Expired (TTL) messages are dead-lettered, not delivered."""
        # the broker's deliveries are QueueDelivery already: no copy per message
        got = self.broker.pull(queue, max_messages, consumer_id=consumer_id, lease_s=lease_s)
        if got:
            self._wrote()  # delivery marks and leases: timers
        return got

    def ack(self, queue: str, delivery_ids: Sequence[int]) -> list[int]:
        """Ack; returns the ids that were unknown or expired (the known ones settle)."""
        out = self.broker.ack(queue, delivery_ids)
        self._wrote()
        return out

    def nack(self, queue: str, delivery_ids: Sequence[int], *, requeue: bool) -> list[int]:
        """Requeue in place (redelivered) or dead-letter with reason `rejected`."""
        out = self.broker.nack(queue, delivery_ids, requeue=requeue)
        self._wrote(QUEUE_READY)  # back in place, or dead-lettered somewhere
        return out

    def retry_later(self, queue: str, delivery_id: int, delay_s: float) -> None:
        """Settle now and make the message ready again after `delay_s` without
        blocking the messages behind it (delivery_count kept)."""
        self.broker.retry_later(queue, delivery_id, delay_s)
        self._wrote()
        self.events.fire(TIMERS)  # due earlier, maybe
        if delay_s <= 0:
            self.events.fire(Event(QUEUE_READY, queue))

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
        self._wrote(QUEUE_READY, APPENDED)

    def peek(self, queue: str, n: int) -> list[QueueDelivery]:
        return self.broker.peek(queue, n)

    def replay(self, queue: str, max_messages: int | None = None) -> int:
        """Dead letters in `queue` back to where they died; how many went back
        (`replay_detail` also says what was skipped and why)."""
        return self.replay_detail(queue, max_messages).replayed

    def peek_ids(self, queue: str, n: int) -> list[tuple[int, QueueDelivery]]:
        """Like `peek`, each message with its id in the queue (for `purge` and a
        replay of a selection)."""
        return self.broker.peek_ids(queue, n)

    def purge(
        self, queue: str, ids: Collection[int] | None = None, *, limit: int | None = None,
    ) -> int:
        """Delete the ready messages of `queue` for good (all, or those with these
        ids from `peek_ids`; at most `limit` a call, the first in delivery order);
        delivered ones stay. How many were deleted."""
        out = self.broker.purge(queue, ids, limit=limit)
        self._wrote()
        return out

    def replay_detail(
        self, queue: str, max_messages: int | None = None, *,
        only: Collection[int] | None = None,
    ) -> ReplayOutcome:
        """Dead letters in `queue` back to where they died (see TOPOLOGY.md).

        A queue message goes back into its original queue. A topic record
        goes to the replay queue of the group that failed it
        (`__replay.<group>`, read by the group's workers before its
        partitions), never to the topic again. What cannot go back stays in
        `queue` and is counted in `skipped`, by reason: a message that is no
        dead letter, an original queue or group that no longer exists, an
        original queue that is full (`refused`: it and the later dead letters for
        that queue stay, neither dead-lettered again nor dropped).
        `only`: replay just the messages with these ids (`peek_ids`)."""
        out = replay(self.broker, queue, max_messages, only=only)
        self._wrote(QUEUE_READY)
        return out

    def replayed_record(self, delivery: QueueDelivery) -> Record:
        """The topic record carried by a delivery from a replay queue."""
        return replayed_record(delivery)

    def replay_queue(self, group: str) -> str | None:
        """The replay queue of `group` (None when the group has none)."""
        name = replay_queue_name(group)
        return name if name in self.broker.queues else None

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
        `x-original-timestamp`; its message id is `<group>:` and the record's
        own (`x-message-id`), else `<group>:<topic>/<partition>/<offset>`, with
        `~<n>` added from the second death on (`death_count` n) so the dedup
        window never swallows another group's or a later death of the same
        record (`dead_letter_id`)."""
        return dead_letter_step(group, record, death, to_queue=to_queue,
                                to_topic=to_topic)

    def dead_letter_record(
        self, group: str, record: Record, death: Mapping[str, Any], *,
        to_queue: str | None = None, to_topic: str | None = None,
        with_step: Step | None = None,
    ) -> None:
        """Dead-letter a topic record that `group` failed (durably; together with
        `with_step`, e.g. the commit past it, as one step)."""
        step = self.dead_letter_step(group, record, death, to_queue=to_queue, to_topic=to_topic)
        if with_step is not None:
            step.extend(with_step)
        self.commit_step(step)

    def queue_info(self, queue: str) -> QueueInfo:
        return self.broker.queue_info(queue)

    # -------------------------------------------------------------- exactly-once
    def commit_step(self, step: Step) -> None:
        """Apply `step` as one durable unit (see `Step`).

        1. Everything is checked first (unknown names, stale delivery ids:
           Conflict, records a topic would refuse); nothing is written on error.
        2. The whole step is written to the engine's journal (the only one) as
           one record (fsynced per the policy). Outputs get message ids `__e<step>-<n>`
           when they have none; records (appended, or routed to a topic by a
           publish) get their partition fixed and the idempotent producer
           `__engine_step__` with sequence `step * 2^20 + n` per partition.
        3. It is applied: topic records (a re-append is dropped by the
           producer sequence), the broker's idempotent `apply_step` (acks +
           publishes; re-published ids are dropped by its dedup window; acks go
           by message, so a stale delivery id still settles), then the offsets;
           every log it touched is fsynced once, at the end (group commit).
        4. It is marked done (not synced on its own). At open, steps not marked
           done are applied again.
        """
        self.steps.commit(step)
        self._wrote(QUEUE_READY, APPENDED)

    def commit_step_ticketed(self, step: Step) -> int:
        """`commit_step` without waiting for the apply's fsyncs (`--fsync always`, not
        inside a block): the journal record is synced, the step applied, and the
        returned ticket (`await durable(...)`) resolves once every log it touched
        is synced (runner.engine.steps). Otherwise as `commit_step`, ticket 0."""
        if self.fsync is not Fsync.ALWAYS or self.commits.deferring():
            self.commit_step(step)
            return 0
        seq, topics = self.steps.commit(step, ticketed=True)
        for topic in topics:  # readable once synced: APPENDED fires again then
            self._hidden[topic] = max(self._hidden.get(topic, 0), seq)
        self._wrote(QUEUE_READY, APPENDED)
        return seq

    def journal_next_id(self) -> int:
        """The id the next journal record gets (its offset in the journal log)."""
        return self.journal.next_id

    # -------------------------------------------------------------- metrics
    def stats(self) -> EngineStats:
        """A snapshot for the metrics collector."""
        out = engine_stats(self.store, self.broker)
        out.failed_logs = self.failed_logs()
        out.dlq_oldest_pending_ms = self._dlq_oldest_pending(out)
        return out

    def dlq_settled(self, topic: str) -> dict[int, set[int]]:
        """Per partition of dead-letter topic `topic`, the offsets at or above its
        replay position that were replayed or purged on their own (markers in
        `dlq_settled_queue(topic)`; older markers are obsolete)."""
        queue = dlq_settled_queue(topic)
        if queue not in self.broker.queues:
            return {}
        group = dlq_position_group(topic)
        out: dict[int, set[int]] = {}
        positions: dict[int, int] = {}
        for d in self.broker.peek(queue, self.broker.queue_info(queue).ready):
            found = marker_of(d.routing_key)
            if found is None:
                continue
            p, off = found
            if p not in positions:
                try:
                    positions[p] = self.position(group, TopicPartition(topic, p))
                except EngineError:
                    positions[p] = off + 1  # the partition is gone: nothing to skip
            if off >= positions[p]:
                out.setdefault(p, set()).add(off)
        return out

    def _dlq_oldest_pending(self, stats: EngineStats) -> dict[TopicPartition, int]:
        """Per partition of each dead-letter topic with pending dead letters (not yet
        replayed or purged: from the replay position on), the timestamp of the
        first one. One read per partition whose position moved since the last
        call (a record's timestamp never changes: remembered by offset)."""
        seen = self._dlq_ts
        out: dict[TopicPartition, int] = {}
        keep: dict[tuple[str, int, int], int] = {}
        for topic in sorted(self.topology.dead_letter_topics()):
            group = dlq_position_group(topic)
            settled = self.dlq_settled(topic)
            for tp, info in stats.partitions.items():
                if tp.topic != topic:
                    continue
                try:
                    pos = max(self.position(group, tp), info.log_start_offset)
                except EngineError:
                    continue  # not applied yet
                skip = settled.get(tp.partition, set())
                stats.dlq_settled[tp] = sum(1 for o in skip if o >= pos)
                while pos in skip:
                    pos += 1
                if pos >= info.log_end_offset:
                    continue
                key = (topic, tp.partition, pos)
                ts = seen.get(key)
                if ts is None:
                    recs, _ = self.read(topic, tp.partition, pos, max_records=1,
                                        max_bytes=1 << 20)
                    if not recs:
                        continue
                    ts = recs[0].timestamp_ms
                keep[key] = ts
                out[tp] = ts
        self._dlq_ts = keep
        return out

    def failed_logs(self) -> dict[str, str]:
        """Logs whose fsync failed, path -> error: each refuses every read and write
        until the runner restarts and recovers it from disk (`LogFailed`, 503)."""
        failed = [*self.store.failed_logs(), *self.broker.failed_logs()]
        if self.journal.failed is not None:
            failed.append(self.journal.failed)
        return {f.path: str(f) for f in failed}


def log_tp(tp: tuple[str, int]) -> LogTopicPartition:
    return LogTopicPartition(tp[0], tp[1])
