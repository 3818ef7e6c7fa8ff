"""The step journal: exactly-once steps across topics, queues and offsets.

The engine owns the only step journal (`engine_steps/`, a `StepJournal`).
A step (`Step`) is written whole to it as one JSON record and fsynced, then
applied part by part (topic appends, the broker's idempotent `apply_step`,
group offset commits) with every log it touched synced ONCE at the end (the
data dir's group commit, `runner.log.commits`), then marked done (not synced
on its own: a lost done mark only re-applies the step). Steps not marked
done are applied again (idempotently) by the next step, a tick, or at open.
An exactly-once step thus costs one fsync for the journal plus one per log it
touched (a queue -> queue step: 3; it was 4, with a journal of the broker's
inside the engine's, and up to 6 with topics).

Order under `--fsync interval`: a step is synced as under `always` (the
journal record before it is applied, every log it touched at the end of the
block, the done mark after that), and in addition the journal record is
fsynced only after every log the step writes to or acks in is synced up to
what was written before it (topic partitions of its records, queues of its
acks, puts and routed publishes, the offsets log when it commits). Each of
the three orders closes a power cut the cut-point tests found
(tests/engine/test_engine_step_fsync_order.py):

* the logs before the record: else the record survives an earlier unsynced
  append to the same partition that is lost, and the replayed step lands on
  the hole (its record at the lost record's offset);
* the record before the outputs: the background flusher may sync an output
  any moment after it is written, and a cut could keep it without the record
  or the input's ack (half a step);
* the outputs before the done mark: a done mark kept (a torn page, or synced
  with a later step's record) without the outputs it vouches for is half a
  step never replayed.

Off the event loop (`commit(step, ticketed=True)`, `--fsync always`): the
journal record is fsynced as above, then the step is applied in a ticketed
block whose logs the data dir's flusher syncs (in any order: the record is
durable, so a power cut that keeps only some of them is completed by the
replay); the caller awaits the ticket, and the step is marked done only once
that ticket resolved (`mark_resolved`, on the next step, tick, flusher round
or flush). A failed fsync of the apply leaves the step not marked done: the
next open applies it again.

So under `interval` a step costs what it costs under `always`, plus an fsync
of each touched log holding plain (non-step) writes not yet synced; `never`
syncs none of this (the OS writes back when it likes).

A data directory written before this journal may hold the broker's old
queue-only journal (`steps/`, records `T` = the same message codec under keys
"a", "x", "q", `C` = done): its pending steps are applied once at open and the
directory is removed (`replay_legacy`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from runner import jsontext
from runner.broker.broker import Broker
from runner.broker.headers import decode_value, encode_value
from runner.clock import Clock
from runner.datapath import remove_tree
from runner.engine.records import b64, record_of_message, to_append, unb64
from runner.engine.values import OutMessage, Step
from runner.errors import (
    EngineError,
    InvalidRequest,
    LogFailed,
    NotFound,
    Refused,
    StorageError,
)
from runner.fs import FileSystem
from runner.log.commits import GroupCommit
from runner.log.journal import StepJournal
from runner.log.partition import TopicPartition as LogTopicPartition
from runner.log.record import Fsync
from runner.log.segment import SegmentedLog
from runner.log.store import AppendRecord, Store

log = logging.getLogger(__name__)

STEP_PRODUCER = "__engine_step__"  # producer id of records appended by steps (gapped)
STEP_STRIDE = 1 << 20  # sequence numbers per step and partition


class _Log(Protocol):
    """A log a step writes to or acks in (a queue's, a topic partition's, the offsets)."""

    @property
    def failed(self) -> LogFailed | None: ...

    def sync(self) -> None: ...


class StepLog:
    """Commits `Step`s as durable units over a Store and a Broker (see the module)."""

    def __init__(self, journal: StepJournal, store: Store, broker: Broker,
                 group: GroupCommit) -> None:
        self.journal = journal
        self.store = store
        self.broker = broker
        self.group = group
        self.half_applied = False  # a journaled step failed to apply: recover first
        # ticketed steps applied, not yet marked done: (ticket, step id), in order
        self.inflight: list[tuple[int, int]] = []

    def mark_resolved(self, *, everything: bool = False) -> None:
        """Mark done the ticketed steps whose apply is durable (`everything`: all of
        them; the caller synced every log). One whose round failed stays pending:
        the next open applies it again."""
        done: list[int] = []
        while self.inflight and (everything or self.inflight[0][0] <= self.group.done):
            seq, sid = self.inflight.pop(0)
            if everything or self.group.error_of(seq) is None:
                done.append(sid)
        if done and self.journal.failed is None:
            self.journal.mark_done(*done)

    def commit(self, step: Step, *, ticketed: bool = False) -> tuple[int, list[str]]:
        """Apply `step` as one durable unit (see the module). `ticketed`: the apply's
        fsyncs are left to the flusher; returns (its ticket, the topics it appended
        to), else (0, those topics) once everything is synced."""
        if self.half_applied:
            self.recover()
        self.mark_resolved()
        for queue, did in step.acks:
            self.broker.check_ids(queue, [did])
        for group, tp, off in step.commits:
            self.store.groups.position(group, LogTopicPartition(tp[0], tp[1]))
            if off < 0:
                raise InvalidRequest(f"offset {off} for {tp.topic}/{tp.partition} is negative")
        # unknown / internal exchanges and queues, and outputs a full
        # `reject-publish` queue would refuse: Refused before anything is written
        # (a step is all or nothing), as is an exhausted disk budget
        self.broker.check_publish(step.publishes, step.queue_puts)
        sid = self.journal.next_id
        before: dict[int, _Log] = {}
        doc = self._document(sid, step, before)
        for wal in before.values():
            if wal.failed is not None:
                # a log the step writes to or acks in failed an fsync and refuses
                # every write until the next open: refused before anything is
                # journaled (half applied, a step's outputs could be applied without
                # its commit, and the input handled again: duplicated outputs)
                raise wal.failed
        if self.journal.fsync is Fsync.INTERVAL:
            # the journal record is fsynced only after every log the step writes
            # to or acks in (see the module); under ALWAYS they are synced
            for wal in before.values():
                wal.sync()
        # an input pulled before its publish was synced is durable before the step
        # that settles it (runner.log.commits "Ordering"): a ticketed step syncs
        # only its acked queues' pending writes (what else the flusher holds, the
        # step does not depend on: topic records it read were synced before they
        # were readable), the synchronous one everything pending, as before
        if ticketed:
            self.group.flush_pending_of(
                [j.log for q, _ in step.acks if (j := self.broker.journals.get(q)) is not None])
        else:
            self.group.flush_pending()
        written = self.journal.write(jsontext.dumps(doc, default=str))
        if written != sid:
            raise StorageError(f"engine step journal out of order ({written} != {sid})")
        topics = sorted({str(r[0]) for r in doc["rec"]})
        seq = 0
        try:
            if ticketed:
                with self.group.ticketed(ordered=False) as box:
                    refused = self._apply(sid, doc)
                seq = box.seq
            else:
                refused = self.apply(sid, doc)
        except LogFailed as exc:
            # a log it touches failed an fsync meanwhile (the flusher's thread) and
            # refuses every write until the next open: the step stays pending in the
            # journal, neither done nor re-applied before then (it cannot be), and
            # the next open completes it
            log.error("engine step %d is journaled but not fully applied: %s; it is "
                      "completed when the runner opens its data again", sid, exc)
            raise
        except Exception as exc:
            # durable but half applied: re-applied (idempotently) by the next
            # commit_step or tick, or at the next open
            self.half_applied = True
            log.error("engine step %d is journaled but not fully applied: %s", sid, exc)
            raise StorageError(f"step {sid} is stored but not fully applied yet: {exc}; "
                               "it is completed automatically") from exc
        if seq:
            self.inflight.append((seq, sid))  # marked done once durable
        else:
            self.journal.mark_done(sid)
        if refused is not None:
            raise refused
        return seq, topics

    def _document(self, sid: int, step: Step,
                  before: dict[int, _Log] | None = None) -> dict[str, Any]:
        """The journal record of step `sid`: outputs named, records resolved.
        Fills `before` with the logs the step writes to or acks in."""
        if before is None:
            before = {}
        queues = self.broker.journals

        def queue(name: str) -> None:
            j = queues.get(name)
            if j is not None:
                before.setdefault(id(j.log), j.log)

        for q, _did in step.acks:
            queue(q)
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
                records.extend((t, record_of_message(m, exchange)) for t in route.topics)
                for q in route.queues:
                    queue(q)
            publishes.append((exchange, owned))
        puts: list[tuple[str, list[OutMessage]]] = []
        for name, msgs in step.queue_puts:
            queue(name)
            owned = []
            for m in msgs:
                owned.append(_with_id(m, f"__e{sid}-{n}"))
                n += 1
            puts.append((name, owned))
        for topic, recs in step.appends:
            records.extend((topic, to_append(r)) for r in recs)
        resolved: list[list[Any]] = []
        for topic, rec in records:
            ((p, (key, value, headers, ts)),) = self.store.resolve(topic, [rec])
            wal = self.store.partition(topic, p).log
            before.setdefault(id(wal), wal)
            resolved.append([topic, p, b64(key), b64(value),
                             [[h, b64(v)] for h, v in headers], ts])
        if step.commits:
            before.setdefault(id(self.store.offsets), self.store.offsets)
        return {
            "acks": [[q, d] for q, d in step.acks],
            "commits": [[g, tp.topic, tp.partition, off] for g, tp, off in step.commits],
            "pub": [[ex, [encode_message(m) for m in ms]] for ex, ms in publishes],
            "put": [[q, [encode_message(m) for m in ms]] for q, ms in puts],
            "rec": resolved,
        }

    def apply(self, sid: int, doc: Mapping[str, Any]) -> Refused | None:
        """Apply a journaled step (idempotent); every log it touched is synced once,
        on return. A queue refusing an output (`reject-publish`) ends the step
        like a refused batch: what was stored stays, the input is not settled,
        and the Refused is returned."""
        with self.group.deferred():
            return self._apply(sid, doc)

    def _apply(self, sid: int, doc: Mapping[str, Any]) -> Refused | None:
        counters: dict[tuple[str, int], int] = {}
        by_topic: dict[str, list[AppendRecord]] = {}
        for topic, p, key, value, headers, ts in doc["rec"]:
            k = counters.get((topic, p), 0)
            counters[(topic, p)] = k + 1
            by_topic.setdefault(topic, []).append(AppendRecord(
                value=unb64(value), key=unb64(key),
                headers=tuple((h, unb64(v) or b"") for h, v in headers), partition=p,
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
        pubs = [(str(ex), [decode_message(m) for m in ms]) for ex, ms in doc["pub"]
                if self.broker.router.has_exchange(ex)]
        puts = [(str(q), [decode_message(m) for m in ms]) for q, ms in doc["put"]
                if q in self.broker.queues]
        acks = [(q, d) for q, d in acks if q in self.broker.queues]
        if acks or pubs or puts:
            try:
                self.broker.apply_step(acks=acks, publishes=pubs, queue_puts=puts)
            except Refused as exc:
                log.warning("step %d: an output was refused: %s", sid, exc)
                return exc
        commits: dict[str, dict[LogTopicPartition, int]] = {}
        for g, topic, p, off in doc["commits"]:
            commits.setdefault(g, {})[LogTopicPartition(topic, p)] = off
        for g, offsets in commits.items():
            try:
                self.store.groups.commit(g, offsets)
            except LogFailed:
                raise  # the step stays pending: completed at the next open (`commit`)
            except EngineError as exc:
                log.warning("step %d: commit of group %s dropped: %s", sid, g, exc)
        return None

    def recover(self) -> None:
        """Apply again every journaled step not marked done (oldest first)."""
        for sid, payload in self.journal.pending():
            log.info("re-applying engine step %d", sid)
            self.apply(sid, jsontext.loads(payload))
            self.journal.mark_done(sid)
        self.half_applied = False


def encode_message(m: OutMessage) -> dict[str, Any]:
    """A message in the journal (the engine's one message codec; see the module)."""
    return {"b": b64(m.body), "k": m.routing_key, "h": encode_value(m.headers), "p": m.priority,
            "t": m.ttl_s, "i": m.message_id, "c": m.content_type}


def decode_message(d: Mapping[str, Any]) -> OutMessage:
    """The message `encode_message` wrote."""
    return OutMessage(body=unb64(d["b"]) or b"", routing_key=d["k"], headers=decode_value(d["h"]),
                      priority=d["p"], ttl_s=d["t"], message_id=d["i"], content_type=d["c"])


def _with_id(m: OutMessage, mid: str) -> OutMessage:
    if m.message_id is not None:
        return m
    return OutMessage(body=m.body, routing_key=m.routing_key, headers=m.headers,
                      priority=m.priority, ttl_s=m.ttl_s, message_id=mid,
                      content_type=m.content_type)


def replay_legacy(directory: Path, broker: Broker, *, root: Path, clock: Clock,
                  fs: FileSystem) -> int:
    """Apply the pending steps of the broker's old queue-only journal (`steps/`,
    written before the engine owned the only journal), then remove it; returns
    how many were applied. Re-applying is idempotent (ids, acks by message)."""
    if not fs.is_dir(directory):
        return 0
    wal = SegmentedLog(directory, fsync=Fsync.NEVER, clock=clock, fs=fs)
    try:
        pending: dict[int, bytes] = {}
        off = wal.start_offset
        while off < wal.end_offset:
            recs = wal.read(off, max_records=1000)
            if not recs:
                break
            for r in recs:
                if r.key == b"T":
                    pending[r.offset] = r.value or b"{}"
                elif r.key == b"C":
                    pending.pop(int(r.value or b"-1"), None)
            off = recs[-1].offset + 1
    finally:
        wal.close()
    for seq, data in sorted(pending.items()):
        doc = jsontext.loads(data)
        log.info("re-applying the old broker step %d", seq)
        broker.apply_step(
            acks=[(str(q), int(t)) for q, t in doc["a"] if q in broker.queues],
            publishes=[(str(ex), [decode_message(m) for m in ms]) for ex, ms in doc["x"]
                       if broker.router.has_exchange(ex)],
            queue_puts=[(str(q), [decode_message(m) for m in ms]) for q, ms in doc["q"]
                        if q in broker.queues])
    broker.flush()
    remove_tree(directory, root=root, fs=fs)
    return len(pending)
