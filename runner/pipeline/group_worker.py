"""A consumer group run by this daemon: `instances` members reading their partitions.

Each member is a `GroupMember` opened on the backend: it owns the membership
(join, session, leave), its assignment and generation, and its fenced
commits; the worker never heartbeats or polls the assignment. A member task
reads the partitions assigned to it in order and, when none has more, awaits
its events: records appended to its topics, an assignment change or a seek
of its group, dead letters replayed back to it. Before its partitions it
reads the group's replay queue (dead letters replayed back to this group, see
docs/handlers.md). A failing
record is retried in place after the policy's delay — the partition waits
for it, as in Kafka — and after the last retry it is dead-lettered and the
member moves on (commits past it).

Offsets: at-most-once commits before the handler runs; at-least-once commits
after success (batched per read); exactly-once commits each record in one step
with its outputs, fenced: the step is only taken while the partition is still
assigned to this member and the group's committed position is still that
record (checked when it is committed), and it carries the member's `Fence`
(member, generation, partition), so a rebalance can never commit a record
twice. The steps of records whose members finished in the same turn of the
event loop are committed as one merged step (`Worker.commit_steps`: one
journal record and one fsync of each touched log for all of them; each part
keeps its own fence); when the merged step is refused, each is committed
alone, and only the refused ones fail (a fenced one is stale: its outputs are
discarded and its member reads its position again). A member does not wait for
its step to be written: while IN_FLIGHT commits of it are being written and
synced, the steps of its next records queue (`_release`) and go together in
the next commit, so a partition's consecutive records share a journal record
and the fsyncs of the logs they touch (as a Kafka transaction spans many
records). The queue is checked as a run: its first record against the group's
position, each next against the one before; a queued step found stale or
refused is reported back to the member (`_rewind`), which reads the partition
again from the group's position, deciding on a refused record as on a failed
call (`_Retry`: retried after the policy's delay or dead-lettered); nothing
after it is committed past it.

Durability: every write, commit and step returns a ticket, written at once and
synced by the backend (the embedded flusher, RabbitMQ's confirms) while the
loop goes on; the member awaits it before the handler runs (at-most-once),
before it reads on (at-least-once's batched commit, after the combined ticket
of every output it passes: the member does not wait for each record's) and a
task of the group's awaits it before a record counts as done and its replies
are handed over (its outputs, dead letter or step).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from runner.engine.contract import (
    Ack,
    Event,
    EventKind,
    Fence,
    GroupMember,
    MemberReader,
    Record,
    Requeue,
    Step,
    Ticket,
    TopicPartition,
    Waiter,
)
from runner.errors import Conflict, EngineError, LogFailed, OffsetOutOfRange
from runner.pipeline.deadletter import build_death, error_type
from runner.pipeline.handler import Handler
from runner.pipeline.message import Outputs, TopicMessage
from runner.pipeline.spans import dead_letter_event, retry_event
from runner.pipeline.stats import HandlerCounters
from runner.pipeline.worker import Worker, WorkerEnv
from runner.topology.model import ConsumerGroup, Delivery, Topology

log = logging.getLogger(__name__)

READ_BATCH = 100
DEAD_LETTER_AGAIN_S = 1.0  # a dead letter the backend refused: the record again after this


class _Stale(Exception):
    """The member no longer owns the record it processed (rebalanced away)."""


# how a record is settled, given the rest of its step: the ticket still to await
# (an exactly-once step, written; Ticket.DONE when settled durably already)
Settle = Callable[[Step], Awaitable[Ticket]]
IN_FLIGHT = 2  # commits of one member's exactly-once steps written and not yet durable
QUEUED_MAX = READ_BATCH  # a member's steps queued behind them, at most


@dataclass(slots=True)
class _Waiting:
    """An exactly-once record step waiting for the next merged commit."""

    step: Step
    # checked when committed (True -> _Stale, nothing committed); `follows`: the
    # member's step for the record before it is committed in the same merged step
    # (so the group's position is not that record's yet)
    stale: Callable[[bool], bool]
    future: asyncio.Future[Ticket]
    member: str
    tp: TopicPartition  # the record's partition and offset
    offset: int
    # the group's position the record follows: the offset after the record read
    # before it (a compacted topic has gaps), or where the read started
    after: int


class _Settle:
    """How a record from a partition is settled (`Settle`); exactly-once, `queue` also
    queues its step behind the member's steps still being written and synced, and
    returns at once (the future of its ticket, once written)."""

    def __init__(self, member: str, now: Settle,
                 queue: Callable[[Step], Awaitable[asyncio.Future[Ticket]]] | None) -> None:
        self.member = member
        self.now = now
        self.queue = queue

    def __call__(self, step: Step) -> Awaitable[Ticket]:
        return self.now(step)


@dataclass(slots=True)
class _Retry:
    """A record whose queued exactly-once step the backend refused after its member
    had moved on: the member reads the partition again from it and decides on it as
    on a failed call (retry after the policy's delay, or dead letter)."""

    offset: int
    error: EngineError
    msg: TopicMessage
    outputs: Outputs
    failures: int  # the record's failed calls before the one whose step was refused
    first: float  # when it was first called (the dead letter's first attempt)


def _retrieved(future: asyncio.Future[Ticket]) -> None:
    """Mark an outcome as seen: a member cancelled while waiting leaves no
    'exception was never retrieved' behind."""
    if not future.cancelled():
        future.exception()


class GroupWorker(Worker):
    """Runs one `consumer_groups:` entry that has a handler."""

    def __init__(
        self, env: WorkerEnv, topology: Topology, group: ConsumerGroup, counters: HandlerCounters,
        *, handler: Handler | None = None,
    ) -> None:
        assert group.handler is not None
        super().__init__(
            env, topology, name=group.name, handler_ref=group.handler, delivery=group.delivery,
            timeout_s=group.timeout_s, policy_name=group.dlq_policy, idempotency=None,
            counters=counters, handler=handler, rate_limit=group.rate_limit,
        )
        self.group = group
        self.replay_queue = env.backend.replay_queue(group.name)
        self.seeks = 0  # SEEK events of the group seen: a member's reads before one are stale
        self._steps_waiting: list[_Waiting] = []  # exactly-once steps of this turn
        self._commit_scheduled = False
        self._durable_tasks: set[asyncio.Task[None]] = set()  # steps awaiting durability
        # of those, leaving members' last commits waiting for their outputs
        self._leaving: set[asyncio.Task[None]] = set()
        # by member: its exactly-once steps queued while IN_FLIGHT commits of it are
        # being written and synced; how many are; what its queued steps' outcomes
        # tell it (partitions to read again, records to retry, a failed log)
        self._queued: dict[str, list[_Waiting]] = {}
        self._in_flight: dict[str, int] = {}
        self._rewinds: dict[str, dict[TopicPartition, _Retry | None]] = {}
        self._rewind_from: dict[str, dict[TopicPartition, int]] = {}  # earliest such record
        # how many times the member read a partition again for its queued steps: an
        # outcome of a step queued before the last such re-read is already accounted
        # for (the partition was read again from the group's position since)
        self._epochs: dict[str, dict[TopicPartition, int]] = {}
        self._retries: dict[str, dict[TopicPartition, _Retry]] = {}
        self._failed: dict[str, LogFailed] = {}
        self._gone: set[str] = set()  # members that left: their steps are stale
        # by member, at-least-once: the ticket of its outputs sent and not yet known
        # durable (all of them combined: awaited before its next commit)
        self._sent: dict[str, Ticket] = {}
        self._seek_sub = env.backend.subscribe([Event(EventKind.SEEK, group.name)],
                                               self._on_seek)

    def _on_seek(self, event: Event) -> None:
        self.seeks += 1

    def events(self) -> list[Event]:
        """What a member waits for when it has nothing to read."""
        evs = [Event(EventKind.RECORDS_APPENDED, t) for t in self.group.topics]
        evs += [Event(EventKind.ASSIGNMENT_CHANGED, self.name), Event(EventKind.SEEK, self.name)]
        if self.replay_queue is not None:
            evs.append(Event(EventKind.QUEUE_READY, self.replay_queue))
        return evs

    def start(self) -> None:
        for n in range(1, self.group.instances + 1):
            member_id = f"{self.name}-{n}@{self.env.hostname}"
            waiter = self.waiter(self.events())  # before the first read: no event is missed
            self.tasks.append(asyncio.create_task(self._member(member_id, waiter),
                                                  name=f"member:{member_id}"))

    async def drain(self, grace_s: float) -> None:
        await self.stop_tasks(grace_s)
        # steps written by the members (their waiters are gone), and the commits
        # those release in turn; a seek meanwhile still makes a leaving member's
        # last commit stale (it must not move the group back over the seek)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace_s
        while self._durable_tasks and (left := deadline - loop.time()) > 0:
            await asyncio.wait(set(self._durable_tasks), timeout=left)
        # a member still waiting for its outputs leaves now, committing nothing (its
        # records are handled again): never after the drain, when a new worker's
        # member may have joined under the same id
        leaving = set(self._leaving)
        for task in leaving:
            task.cancel()
        if leaving:
            await asyncio.wait(leaving)
        self._seek_sub.close()

    # ---------------------------------------------------------------- member loop
    async def _member(self, member_id: str, waiter: Waiter) -> None:
        member = self.env.backend.open_member(self.name, member_id)
        positions: dict[TopicPartition, int] = {}
        # by partition: the group's position the next record read follows (the offset
        # after the last one handled; a read may start past it, over offsets that
        # compaction removed)
        follows: dict[TopicPartition, int] = {}
        pending: dict[TopicPartition, int] = {}
        version = self.seeks
        left = False
        try:
            while not self.stopping:
                self._rewound(member_id, positions)
                busy = await self._replays(member)
                assigned = member.assignment()
                for tp in list(positions):
                    if tp not in assigned:
                        del positions[tp]
                for tp in assigned:
                    if self.stopping:
                        break
                    if self.seeks != version:
                        # sought from outside: what was read before is stale
                        version = self.seeks
                        positions.clear()
                        pending.clear()
                        log.info("group %s: member %s re-reads its positions after a seek",
                                 self.name, member_id)
                    if tp not in positions:
                        positions[tp] = follows[tp] = member.position(tp)
                    busy |= await self._partition(member, tp, positions, follows, pending,
                                                  version)
                    await self._flush(member, pending, positions, version)
                if not busy:
                    await waiter.wait()
        except LogFailed as exc:
            self._stop_member(member_id, exc)
            if self.delivery is not Delivery.EXACTLY_ONCE:
                left = self._leave(member, pending, version)  # partitions to the others
            await self._stopped.wait()  # parked until the pipeline drains
        finally:
            if not left:
                self._leave(member, pending, version)

    def _leave(self, member: GroupMember, pending: dict[TopicPartition, int],
               version: int) -> bool:
        """Commit what the member finished (the flusher syncs it; exactly-once: its
        queued steps, now) and leave the group; True (it is left, even when either
        failed). At-least-once outputs not known durable yet are awaited first (by
        a task the drain waits for): a commit must never be durable before the
        outputs of the records it passes."""
        queued = self._queued.pop(member.member_id, None)
        if queued:
            self._steps_waiting.extend(queued)
            self._commit_waiting_steps()
        self._gone.add(member.member_id)
        sent = self._sent.pop(member.member_id, Ticket.DONE)
        if sent != Ticket.DONE:
            task = asyncio.get_running_loop().create_task(
                self._leave_when_durable(member, dict(pending), version, sent))
            pending.clear()
            self._durable_tasks.add(task)
            task.add_done_callback(self._durable_tasks.discard)
            self._leaving.add(task)
            task.add_done_callback(self._leaving.discard)
            return True
        self._commit_and_close(member, pending, version)
        return True

    async def _leave_when_durable(self, member: GroupMember, pending: dict[TopicPartition, int],
                                  version: int, sent: Ticket) -> None:
        try:
            await self.env.backend.durable(sent)
        except EngineError as exc:
            log.warning("group %s: member %s leaves without committing: its outputs are "
                        "not durable (%s); records past its last commit are handled again",
                        self.name, member.member_id, exc)
            pending.clear()
        except asyncio.CancelledError:
            log.warning("group %s: member %s leaves without committing: its outputs were "
                        "not durable within the drain's grace; records past its last "
                        "commit are handled again", self.name, member.member_id)
            self._commit_and_close(member, {}, version)
            raise
        self._commit_and_close(member, pending, version)

    def _commit_and_close(self, member: GroupMember, pending: dict[TopicPartition, int],
                          version: int) -> None:
        try:
            self._commit_pending(member, pending, version)
        except EngineError as exc:
            log.warning("group %s: member %s could not commit before leaving: %s",
                        self.name, member.member_id, exc)
        try:
            member.close()
        except EngineError as exc:
            log.warning("group %s: member %s could not leave cleanly: %s",
                        self.name, member.member_id, exc)

    def _stop_member(self, member_id: str, exc: LogFailed) -> None:
        """A log the member writes (its group's offsets, an output, the step journal)
        failed an fsync: it refuses everything until the runner restarts, so the member
        stops taking records instead of retrying them or its task dying silently. The
        log is reported by `failed_logs` (/readyz: 503); what was committed durably
        stays committed, and the records past it are handled again after a restart.

        An at-least-once or at-most-once member then leaves the group: its partitions
        go to the other members (in this daemon or Kafka clients), which handle them
        unless they write to the failed log too (then they stop the same way). An
        exactly-once member keeps its partitions until the restart: a step of it may
        be journaled and not yet applied durably, which the next open completes,
        commit included; a new owner's later commits would be moved back by it."""
        if self.delivery is Delivery.EXACTLY_ONCE:
            fate = "its partitions stay with it until a restart completes its steps"
        else:
            fate = "it leaves the group, its partitions go to the other members"
        log.error("group %s: member %s stops taking records: %s; %s; records past its last "
                  "durable commit are handled again after a restart", self.name, member_id,
                  exc, fate, extra={"event": "member_stopped", "group": self.name,
                                    "member": member_id, "log": exc.path})

    def _sought(self, version: int) -> bool:
        """True when the group was sought since `version` (a read before is stale)."""
        return self.seeks != version

    async def _flush(
        self, member: GroupMember, pending: dict[TopicPartition, int],
        positions: dict[TopicPartition, int], version: int,
    ) -> None:
        """Commit what the member finished (`_commit_pending`) and wait until the commit
        is durable, the loop serving meanwhile. A commit that failed to become durable
        (a failed fsync) is logged and its partitions' positions are asked for again
        (the backend's: the embedded engine keeps the commit in memory, and the log
        refuses writes from then on; after a restart the records past the last
        durable commit are handled again: at-least-once). At-least-once, the
        outputs of the records it passes are awaited first (the member does not
        wait for them record by record): outputs that failed to become durable
        commit nothing, and the member reads those partitions again."""
        member_id = member.member_id
        sent = self._sent.get(member_id, Ticket.DONE)
        if sent != Ticket.DONE:
            try:
                await self.env.backend.durable(sent)  # the member sends nothing meanwhile
            except LogFailed:
                raise  # the member stops (`_stop_member`)
            except EngineError as exc:
                log.warning("group %s: outputs of %s by %s are not durable: %s; those "
                            "records are handled again", self.name, dict(pending),
                            member_id, exc)
                self._sent.pop(member_id, None)
                for tp in pending:
                    positions.pop(tp, None)
                pending.clear()
                return
            del self._sent[member_id]
        committed = dict(pending)
        ticket = self._commit_pending(member, pending, version)
        if ticket == Ticket.DONE:
            return
        try:
            await self.env.backend.durable(ticket)
        except LogFailed:
            raise  # the member stops (`_stop_member`)
        except EngineError as exc:
            log.warning("group %s: commit of %s by %s is not durable: %s", self.name,
                        committed, member.member_id, exc)
            for tp in committed:
                positions.pop(tp, None)

    def _commit_pending(
        self, member: GroupMember, pending: dict[TopicPartition, int], version: int,
    ) -> Ticket:
        """Commit what the member finished, for partitions it still owns (a new
        owner's commits must never be moved back), unless the group was sought
        meanwhile (a seek is never overwritten by records read before it); the
        commit's ticket (written, not yet durable)."""
        if not pending:
            return Ticket.DONE
        if self._sought(version):
            pending.clear()
            return Ticket.DONE
        owned = set(member.assignment())
        offsets = {tp: off for tp, off in pending.items() if tp in owned}
        pending.clear()
        if offsets:
            try:
                return member.commit(offsets)
            except Conflict as exc:
                log.info("group %s: commit of %s dropped: %s", self.name, member, exc)
        return Ticket.DONE

    async def _partition(
        self, member: GroupMember, tp: TopicPartition, positions: dict[TopicPartition, int],
        follows: dict[TopicPartition, int], pending: dict[TopicPartition, int], version: int,
    ) -> bool:
        try:
            if isinstance(member, MemberReader):  # it consumes its partitions itself
                got = member.read(tp, positions[tp], max_records=READ_BATCH)
            else:
                got = self.env.backend.read(tp.topic, tp.partition, positions[tp],
                                            max_records=READ_BATCH)
        except OffsetOutOfRange as exc:
            # retention removed the position: reset by the group's offset_reset, as
            # for a committed offset (earliest -> log start, latest -> log end)
            to = self.group.offset_reset.out_of_range(exc.log_start, exc.log_end)
            log.warning("group %s: %s[%d] offset %d is gone, skipping to %d (offset_reset "
                        "%s)", self.name, tp.topic, tp.partition, positions[tp], to,
                        self.group.offset_reset.value)
            positions[tp] = follows[tp] = to
            return True
        records, next_offset = got.records, got.next_offset
        if not records:
            # compaction may have removed offsets at the tail: read on from there
            moved = next_offset != positions[tp]
            positions[tp] = next_offset
            return moved
        for record in records:
            if self.stopping or self._sought(version):
                break
            if self._rewound(member.member_id, positions):
                break
            if tp not in member.assignment():
                positions.pop(tp, None)
                break
            commit_step = self._commit_step(member, tp, record, version, follows[tp])
            try:
                done = await self._handle(record, member.member_id, commit_step,
                                          stale=functools.partial(
                                              self._stale_retry, member, tp, record.offset,
                                              version),
                                          retry=self._retry_of(member.member_id, tp,
                                                               record.offset))
            except _Stale:
                log.info("group %s: %s[%d]@%d was committed or sought elsewhere meanwhile; "
                         "its outputs are discarded", self.name, tp.topic, tp.partition,
                         record.offset)
                positions.pop(tp, None)
                break
            if not done:
                break
            if self._sought(version):
                break
            positions[tp] = follows[tp] = record.offset + 1
            if self.delivery is Delivery.AT_LEAST_ONCE:
                pending[tp] = record.offset + 1
        else:
            if positions.get(tp) == records[-1].offset + 1:
                positions[tp] = next_offset
        return True

    def _commit_step(
        self, member: GroupMember, tp: TopicPartition, record: Record, version: int,
        after: int,
    ) -> _Settle:
        """How a record from the partition is settled, given the rest of its step
        (`after`: the group's position it follows; records of a compacted topic may
        have gaps between their offsets)."""
        backend = self.env.backend
        member_id = member.member_id

        def stale(follows: bool = False) -> bool:
            return (member_id in self._gone or self._sought(version)
                    or tp not in member.assignment()
                    or (not follows and member.position(tp) != after))

        async def queue(step: Step) -> asyncio.Future[Ticket]:
            if self._sought(version) or member_id in self._gone:
                raise _Stale()
            if tp not in member.assignment() or not self._next_of(member, tp, after):
                raise _Stale()
            queued = self._queued.get(member_id)
            while queued and len(queued) >= QUEUED_MAX:
                await asyncio.wait({queued[0].future})
                queued = self._queued.get(member_id)
            fence = Fence(self.name, member_id, member.generation, (tp,))
            future: asyncio.Future[Ticket] = asyncio.get_running_loop().create_future()
            future.add_done_callback(_retrieved)
            self._queued.setdefault(member_id, []).append(_Waiting(
                step + Step(commits=((self.name, tp, record.offset + 1),), fences=(fence,)),
                stale, future, member_id, tp, record.offset, after))
            self._release(member_id)
            return future

        async def settle(step: Step) -> Ticket:
            if self._sought(version):
                raise _Stale()
            if self.delivery is Delivery.EXACTLY_ONCE:
                return await asyncio.shield(await queue(step))
            if self.delivery is Delivery.AT_MOST_ONCE:
                # before the handler runs, and durable before it does (a commit lost
                # to a power cut would run it again)
                try:
                    ticket = member.commit({tp: record.offset + 1})
                except Conflict:
                    raise _Stale() from None
                try:
                    await backend.durable(ticket)
                except LogFailed:
                    raise  # not called; the member stops (`_stop_member`)
                except EngineError as exc:
                    log.warning("group %s: the commit of %s[%d]@%d before the call failed "
                                "(%s); not calling the handler", self.name, tp.topic,
                                tp.partition, record.offset, exc)
                    raise _Stale() from None
            if step.writes:
                await backend.durable(backend.commit_step(step))
            return Ticket.DONE

        return _Settle(member_id, settle,
                       queue if self.delivery is Delivery.EXACTLY_ONCE else None)

    # ------------------------------------------------ exactly-once steps of a member
    def _release(self, member_id: str) -> None:
        """Hand the member's queued steps to the next merged commit when fewer than
        IN_FLIGHT commits of it are being written and synced (all of them together:
        consecutive records of a partition then cost one journal record and one
        fsync of each log they touch; each keeps its own fence and commit)."""
        if self._in_flight.get(member_id, 0) >= IN_FLIGHT:
            return
        queued = self._queued.pop(member_id, None)
        if not queued:
            return
        self._in_flight[member_id] = self._in_flight.get(member_id, 0) + 1
        self._steps_waiting.extend(queued)
        if not self._commit_scheduled:
            self._commit_scheduled = True
            asyncio.get_running_loop().call_soon(self._commit_waiting_steps)
        task = asyncio.get_running_loop().create_task(
            self._in_flight_until_durable(member_id, [w.future for w in queued]))
        self._durable_tasks.add(task)
        task.add_done_callback(self._durable_tasks.discard)

    async def _in_flight_until_durable(
        self, member_id: str, futures: list[asyncio.Future[Ticket]],
    ) -> None:
        """One commit of the member's steps: in flight until written and synced (or
        refused); then its next queued steps go."""
        try:
            last = Ticket.DONE
            for future in futures:
                with contextlib.suppress(Exception):  # refused: its tail reports it
                    last = last.max(await future)
            if last != Ticket.DONE:
                with contextlib.suppress(EngineError):  # failed: its tails report it
                    await self.env.backend.durable(last)
        finally:
            self._in_flight[member_id] -= 1
            self._release(member_id)

    def _next_of(self, member: GroupMember, tp: TopicPartition, after: int) -> bool:
        """True when a record following position `after` is the next to commit in
        `tp`: `after` is the group's position, or what a step of the member's not
        yet written commits."""
        if member.position(tp) == after:
            return True
        member_id = member.member_id
        return any(w.member == member_id and w.tp == tp and w.offset + 1 == after
                   for w in (*self._queued.get(member_id, ()), *self._steps_waiting))

    def _rewind(self, member_id: str, tp: TopicPartition, offset: int,
                retry: _Retry | None) -> None:
        """The queued step of the member's record at `offset` was not committed: it
        reads `tp` again from the group's position (`retry`: the refused record,
        decided on as a failure)."""
        earliest = self._rewind_from.setdefault(member_id, {})
        earliest[tp] = min(offset, earliest.get(tp, offset))
        rewinds = self._rewinds.setdefault(member_id, {})
        known = rewinds.get(tp)
        if retry is not None and (known is None or retry.offset < known.offset):
            rewinds[tp] = retry
        elif tp not in rewinds:
            rewinds[tp] = None
        self.notify()

    def _rewound(self, member_id: str, positions: dict[TopicPartition, int]) -> bool:
        """Apply what the member's queued steps told it: raise the LogFailed of a log
        one needed; forget the positions of partitions to read again (True if any)."""
        failed = self._failed.pop(member_id, None)
        if failed is not None:
            raise failed
        rewinds = self._rewinds.pop(member_id, None)
        self._rewind_from.pop(member_id, None)
        if not rewinds:
            return False
        epochs = self._epochs.setdefault(member_id, {})
        for tp, retry in rewinds.items():
            positions.pop(tp, None)
            epochs[tp] = epochs.get(tp, 0) + 1
            if retry is not None:
                self._retries.setdefault(member_id, {})[tp] = retry
        return True

    def _stale_retry(self, member: GroupMember, tp: TopicPartition, offset: int,
                     version: int) -> bool:
        """A retry in place of the record at `offset` stops waiting: sought, or past a
        refused step."""
        return self._sought(version) or self._rewinding(member, tp, offset)

    def _rewinding(self, member: GroupMember, tp: TopicPartition, offset: int) -> bool:
        """A queued step of the member's for a record before `offset` in `tp` was not
        committed: the record at `offset` is past it (a retry in place of it stops
        waiting: stale). Steps of records after it that were dropped (stale: read
        before this record's retry) do not stop it."""
        earliest = self._rewind_from.get(member.member_id, {}).get(tp)
        return earliest is not None and earliest < offset

    def _retry_of(self, member_id: str, tp: TopicPartition, offset: int) -> _Retry | None:
        """The refused step of the record at `offset`, when the member reads it again."""
        retries = self._retries.get(member_id)
        if not retries or tp not in retries:
            return None
        retry = retries.pop(tp)
        return retry if retry.offset == offset else None

    def _when_durable(self, member_id: str, ticket: Ticket | asyncio.Future[Ticket],
                      outputs: Outputs, msg: TopicMessage, failures: int,
                      first: float) -> None:
        """An exactly-once record's step is written (or queued: `ticket` is its future):
        it counts as done, and its replies are handed over, once the step is durable
        (a task of the group's)."""
        epoch = self._epoch(member_id, TopicPartition(msg.topic, msg.partition))
        task = asyncio.get_running_loop().create_task(
            self._tail(member_id, ticket, outputs, msg, failures, first, epoch))
        self._durable_tasks.add(task)
        task.add_done_callback(self._durable_tasks.discard)

    def _epoch(self, member_id: str, tp: TopicPartition) -> int:
        return self._epochs.get(member_id, {}).get(tp, 0)

    async def _tail(self, member_id: str, ticket: Ticket | asyncio.Future[Ticket],
                    outputs: Outputs, msg: TopicMessage, failures: int,
                    first: float, epoch: int) -> None:
        if isinstance(ticket, asyncio.Future):
            tp = TopicPartition(msg.topic, msg.partition)
            try:
                ticket = await ticket
            except _Stale:
                if epoch != self._epoch(member_id, tp):
                    return  # queued before the partition was read again: that covers it
                log.info("group %s: %s[%d]@%d was committed or sought elsewhere meanwhile; "
                         "its outputs are discarded", self.name, msg.topic, msg.partition,
                         msg.offset)
                self._rewind(member_id, tp, msg.offset, None)
                return
            except LogFailed as exc:
                self._failed.setdefault(member_id, exc)  # the member stops
                self._rewind(member_id, tp, msg.offset, None)
                return
            except EngineError as exc:
                if epoch != self._epoch(member_id, tp):
                    return  # as above: the record is handled again since
                self.counters.error(error_type(exc))
                self.failures.report("outputs", exc, msg)
                self._rewind(member_id, tp, msg.offset,
                             _Retry(msg.offset, exc, msg, outputs, failures, first))
                return
        try:
            await self.env.backend.durable(ticket)
        except EngineError as exc:
            self.counters.error(error_type(exc))
            if self.delivery is Delivery.EXACTLY_ONCE:
                # journaled before it was applied: the next open completes it; here the
                # member moved past it (a retry would be stale), so it only counts
                log.error("group %s: an exactly-once step is not durable yet (%s); it is "
                          "completed when the runner opens its data again", self.name, exc)
            else:
                # nothing is committed past it (`_flush`): handled again, here or after
                # a restart
                log.warning("group %s: the outputs of %s[%d]@%d are not durable (%s); it "
                            "is handled again", self.name, msg.topic, msg.partition,
                            msg.offset, exc)
            self.traced_settle(outputs, "commit", exc)
            return
        self.hand_over(outputs)
        self.counters.succeeded += 1
        self.traced_settle(outputs, "commit")

    def _commit_waiting_steps(self) -> None:
        """Commit the steps waiting (one merged step when it can); each waiter gets its
        step's ticket once written, the loop serving while it is synced. A member's
        consecutive records of a partition are checked as a run: the first against
        the group's position, each next one against the one before; after a stale
        or refused one, the rest of its run is stale (never committed past it)."""
        self._commit_scheduled = False
        batch, self._steps_waiting = self._steps_waiting, []
        try:
            self._commit_batch(batch)
        except Exception:
            # not the engine's refusal (that is each step's result): a bug or a closed
            # backend. No waiter may hang on it (its member would block, the drain
            # wait out its grace): each reads its partition again from the group's
            # position, which holds whatever was committed
            log.exception("group %s: committing %d queued step(s) failed", self.name,
                          len(batch))
            for w in batch:
                if not w.future.done():
                    w.future.set_exception(_Stale())

    def _commit_batch(self, batch: list[_Waiting]) -> None:
        live: list[_Waiting] = []
        expect: dict[tuple[str, TopicPartition], int | None] = {}
        for w in batch:
            if w.future.done():
                continue
            key = (w.member, w.tp)
            follows = expect.get(key) is not None
            if (follows and w.after != expect[key]) or w.stale(follows):
                # rebalanced or sought since the handler ran: commit nothing
                w.future.set_exception(_Stale())
                expect[key] = None
                continue
            live.append(w)
            expect[key] = w.offset + 1
        results = self.commit_steps([w.step for w in live],
                                    runs=[(w.member, w.tp) for w in live])
        for w, result in zip(live, results, strict=True):
            if w.future.done():
                continue
            if isinstance(result, Ticket):
                w.future.set_result(result)
            elif isinstance(result, Conflict):  # its member's fence: no longer its record
                w.future.set_exception(_Stale())
            else:
                w.future.set_exception(result)

    async def _replays(self, member: GroupMember) -> bool:
        """Process what was replayed back to this group; True when there was any."""
        if self.replay_queue is None:
            return False
        backend = self.env.backend
        try:
            deliveries = backend.fetch(self.replay_queue, READ_BATCH,
                                       lease_s=self.timeout_s * 2 + 30.0,
                                       consumer_id=member.member_id)
        except EngineError as exc:
            log.warning("group %s: replay queue: %s", self.name, exc)
            return False
        for i, d in enumerate(deliveries):
            if self.stopping:
                backend.settle(self.replay_queue,
                               [Requeue(x.delivery_id) for x in deliveries[i:]])
                break
            record = backend.replayed_record(d)
            queue = self.replay_queue

            async def settle(step: Step, did: int = d.delivery_id, queue: str = queue) -> Ticket:
                if self.delivery is Delivery.AT_MOST_ONCE:
                    await backend.durable(backend.settle(queue, [Ack(did)]).ticket)
                    if step.writes:
                        await backend.durable(backend.commit_step(step))
                    return Ticket.DONE
                await backend.durable(backend.commit_step(step + Step(acks=((queue, did),))))
                return Ticket.DONE

            await self._handle(record, member.member_id, settle,
                               delivery_count=d.delivery_count)
        return bool(deliveries)

    # ---------------------------------------------------------------- one record
    async def _handle(
        self, record: Record, member: str, settle: Settle, *,
        delivery_count: int = 1, stale: Callable[[], bool] | None = None,
        retry: _Retry | None = None,
    ) -> bool:
        """Run, retry in place, dead-letter; True when the record is settled (`retry`:
        its last call succeeded but its queued step was refused: decide on that
        first, as on a failed call)."""
        if self.delivery is Delivery.AT_MOST_ONCE:
            await settle(Step())
        first = self.env.clock.time()
        failures = 0
        while True:
            exc: Exception | None
            if retry is not None:
                # the refusal counts as this call's failure, after the ones before it
                msg, exc, outputs = retry.msg, retry.error, retry.outputs
                failures, first = retry.failures, retry.first
                delivery_count, retry = retry.msg.delivery_count - failures, None
            else:
                msg = TopicMessage.from_record(
                    record, delivery_count=delivery_count + failures,
                    redelivered=delivery_count + failures > 1,
                )
                exc, outputs = await self.run_handler(msg)
            if exc is None:
                try:
                    ticket = await self._succeed(outputs, settle)
                except (_Stale, LogFailed):
                    raise
                except EngineError as send_exc:
                    exc = send_exc
                    self.counters.error(error_type(send_exc))
                    self.failures.report("outputs", send_exc, msg)
                else:
                    if ticket != Ticket.DONE:  # done (and replies handed over) once durable
                        self._when_durable(member, ticket, outputs, msg, failures, first)
                        return True
                    self.hand_over(outputs)
                    self.counters.succeeded += 1
                    self.traced_settle(outputs, "commit")
                    return True
            failures += 1
            decision = self.retrier.decide(exc, failures)
            if decision.retry:
                self.traced_settle(outputs, "retry", exc,
                                   retry_event(msg.delivery_count, decision.delay_s))
            else:
                to_queue, to_topic = self.dlq_target()
                target = (f"queue {to_queue}" if to_queue is not None else
                          f"topic {to_topic}" if to_topic is not None else None)
                self.traced_settle(outputs, "dead_letter" if target else "drop", exc,
                                   dead_letter_event(msg.delivery_count, "handler_error",
                                                     decision.reason, target))
            if decision.retry:
                self.counters.retries += 1
                self.counters.retry_waiting += 1
                try:
                    resumed = await self.pause(decision.delay_s)
                finally:
                    self.counters.retry_waiting -= 1
                if not resumed:
                    return False
                if stale is not None and stale():
                    raise _Stale()  # sought meanwhile: this record is not the next one
                continue
            now = self.env.clock.time()
            death = build_death(
                msg, exc, retry_count=failures - 1, first_attempt=first, last_attempt=now,
                consumer_id=member, group=self.name,
            )
            try:
                await self._dead_letter(record, death, settle)
            except LogFailed:
                raise
            except EngineError as dl_exc:
                return await self._dead_letter_failed(record, dl_exc)
            self.send_error_reply(msg, exc)
            return True

    async def _dead_letter_failed(self, record: Record, exc: EngineError) -> bool:
        """The backend refused the record's dead letter (a full dead-letter queue, a
        destination gone): at-least-once, nothing was committed past it, so it is
        handled again after DEAD_LETTER_AGAIN_S (False: not settled); at-most-once it
        was committed before the call: it is lost, as at-most-once allows (True)."""
        self.counters.error(error_type(exc))
        if self.delivery is Delivery.AT_MOST_ONCE:
            log.warning("group %s: the dead letter of %s[%d]@%d failed (%s); dropped "
                        "(at-most-once)", self.name, record.topic, record.partition,
                        record.offset, exc)
            return True
        log.warning("group %s: the dead letter of %s[%d]@%d failed (%s); handling it again "
                    "in %gs", self.name, record.topic, record.partition, record.offset, exc,
                    DEAD_LETTER_AGAIN_S)
        await self.pause(DEAD_LETTER_AGAIN_S)
        return False

    async def _succeed(self, outputs: Outputs,
                       settle: Settle) -> Ticket | asyncio.Future[Ticket]:
        """Settle a successful call; the ticket still to await before it counts as done
        and its replies are handed over (an exactly-once step: written, or queued
        behind the member's steps being synced: its ticket's future), else DONE."""
        if self.delivery is Delivery.EXACTLY_ONCE:
            if isinstance(settle, _Settle) and settle.queue is not None:
                return await settle.queue(self.step_of(outputs))
            return await settle(self.step_of(outputs))
        ticket = self.send(outputs)
        if (self.delivery is Delivery.AT_LEAST_ONCE and isinstance(settle, _Settle)
                and ticket != Ticket.DONE):
            # a partition's record: the member goes on at once; its offset is committed
            # by `_flush` once the outputs of every record it passes are durable, and
            # the record counts as done (replies handed over) once its own are
            self._sent[settle.member] = self._sent.get(settle.member, Ticket.DONE).max(ticket)
            await settle(Step())
            return ticket
        # the outputs are durable before the record counts as done and before
        # replies are handed over (a replayed record: before its dead letter is acked)
        await self.env.backend.durable(ticket)
        if self.delivery is Delivery.AT_LEAST_ONCE:
            await settle(Step())
        return Ticket.DONE

    async def _dead_letter(
        self, record: Record, death: dict[str, Any], settle: Settle,
    ) -> None:
        to_queue, to_topic = self.dlq_target()
        step = Step()
        if to_queue is None and to_topic is None:
            self.counters.dropped += 1
            log.warning("group %s: dropped %s[%d]@%d after %s (no dead_letter_queue)",
                        self.name, record.topic, record.partition, record.offset,
                        death["error"]["type"])
        else:
            self.counters.dead_lettered += 1
            step = self.env.backend.dead_letter_step(
                self.name, record, death, to_queue=to_queue, to_topic=to_topic
            )
        if self.delivery is Delivery.AT_MOST_ONCE:
            if step.writes:
                await self.env.backend.durable(self.env.backend.commit_step(step))
            return
        await self.env.backend.durable(await settle(step))
