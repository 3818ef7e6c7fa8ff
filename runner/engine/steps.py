"""The engine's step journal: exactly-once steps across topics, queues and offsets.

A step (`Step`) that touches topics or offsets is written whole to the
journal under `engine_steps/` as one JSON record before any of it is applied,
then applied, then marked done; steps not marked done are applied again
(idempotently) by the next step, a tick, or at open. The record:

    {"acks": [[queue, delivery_id]...],
     "commits": [[group, topic, partition, next_offset]...],
     "pub": [[exchange, [message...]]...], "put": [[queue, [message...]]...],
     "rec": [[topic, partition, key_b64, value_b64, [[header, value_b64]...], ts_ms]...]}

with a message as {"b": body_b64, "k": routing_key, "h": headers (the broker's
tagged encoding), "p": priority, "t": ttl_s, "i": message_id, "c": content_type}.
Outputs without a message id get `__e<step>-<n>`; records get their partition
fixed at write time and the producer `__engine_step__` with sequence
`step * 2^20 + n` per partition, so a re-applied append is dropped.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from runner import jsontext
from runner.broker.broker import Broker
from runner.broker.headers import decode_value, encode_value
from runner.engine.records import b64, record_of_message, to_append, unb64
from runner.engine.values import OutMessage, Step
from runner.errors import EngineError, InvalidRequest, NotFound, Refused, StorageError
from runner.log.journal import StepJournal
from runner.log.partition import TopicPartition as LogTopicPartition
from runner.log.store import AppendRecord, Store

log = logging.getLogger(__name__)

STEP_PRODUCER = "__engine_step__"  # producer id of records appended by commit_step
STEP_STRIDE = 1 << 20  # sequence numbers per step and partition


class StepLog:
    """Commits `Step`s as durable units over a Store and a Broker (see the module)."""

    def __init__(self, journal: StepJournal, store: Store, broker: Broker) -> None:
        self.journal = journal
        self.store = store
        self.broker = broker
        self.half_applied = False  # a journaled step failed to apply: recover first

    def commit(self, step: Step, *, topic_reach: set[str]) -> None:
        """Apply `step` as one durable unit; `topic_reach`: the exchanges from
        which a topic can be reached (see `Engine.commit_step`)."""
        if self.half_applied:
            self.recover()
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
        if not step.commits and not step.appends and not any(
                self.broker.router.route(ex, m.routing_key, m.headers, count=False).topics
                for ex, msgs in step.publishes if ex in topic_reach for m in msgs):
            # queues only: the broker's own step journal makes this one durable
            # unit (it names outputs by its step and acks by message): one journal less
            self.broker.commit_step(acks=step.acks, publishes=step.publishes,
                                    queue_puts=step.queue_puts)
            return
        sid = self.journal.next_id
        doc = self._document(sid, step)
        written = self.journal.write(jsontext.dumps(doc, default=str))
        if written != sid:
            raise StorageError(f"engine step journal out of order ({written} != {sid})")
        try:
            refused = self.apply(sid, doc)
        except Exception as exc:
            # durable but half applied: re-applied (idempotently) by the next
            # commit_step or tick, or at the next open
            self.half_applied = True
            log.error("engine step %d is journaled but not fully applied: %s", sid, exc)
            raise StorageError(f"step {sid} is stored but not fully applied yet: {exc}; "
                               "it is completed automatically") from exc
        self.journal.mark_done(sid)
        if refused is not None:
            raise refused

    def _document(self, sid: int, step: Step) -> dict[str, Any]:
        """The journal record of step `sid`: outputs named, records resolved."""
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
            publishes.append((exchange, owned))
        puts: list[tuple[str, list[OutMessage]]] = []
        for queue, msgs in step.queue_puts:
            owned = []
            for m in msgs:
                owned.append(_with_id(m, f"__e{sid}-{n}"))
                n += 1
            puts.append((queue, owned))
        for topic, recs in step.appends:
            records.extend((topic, to_append(r)) for r in recs)
        resolved: list[list[Any]] = []
        for topic, rec in records:
            ((p, (key, value, headers, ts)),) = self.store.resolve(topic, [rec])
            resolved.append([topic, p, b64(key), b64(value),
                             [[h, b64(v)] for h, v in headers], ts])
        return {
            "acks": [[q, d] for q, d in step.acks],
            "commits": [[g, tp.topic, tp.partition, off] for g, tp, off in step.commits],
            "pub": [[ex, [_enc_msg(m) for m in ms]] for ex, ms in publishes],
            "put": [[q, [_enc_msg(m) for m in ms]] for q, ms in puts],
            "rec": resolved,
        }

    def apply(self, sid: int, doc: Mapping[str, Any]) -> Refused | None:
        """Apply a journaled step (idempotent). A queue refusing an output
        (`reject-publish`) ends the step like a refused batch: what was stored
        stays, the input is not settled, and the Refused is returned."""
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
        pubs = [(str(ex), [_dec_msg(m) for m in ms]) for ex, ms in doc["pub"]
                if self.broker.router.has_exchange(ex)]
        puts = [(str(q), [_dec_msg(m) for m in ms]) for q, ms in doc["put"]
                if q in self.broker.queues]
        acks = [(q, d) for q, d in acks if q in self.broker.queues]
        if acks or pubs or puts:
            try:
                self.broker.commit_step(acks=acks, publishes=pubs, queue_puts=puts)
            except Refused as exc:
                log.warning("step %d: an output was refused: %s", sid, exc)
                return exc
        commits: dict[str, dict[LogTopicPartition, int]] = {}
        for g, topic, p, off in doc["commits"]:
            commits.setdefault(g, {})[LogTopicPartition(topic, p)] = off
        for g, offsets in commits.items():
            try:
                self.store.groups.commit(g, offsets)
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


def _enc_msg(m: OutMessage) -> dict[str, Any]:
    return {"b": b64(m.body), "k": m.routing_key, "h": encode_value(m.headers), "p": m.priority,
            "t": m.ttl_s, "i": m.message_id, "c": m.content_type}


def _dec_msg(d: Mapping[str, Any]) -> OutMessage:
    return OutMessage(body=unb64(d["b"]) or b"", routing_key=d["k"], headers=decode_value(d["h"]),
                      priority=d["p"], ttl_s=d["t"], message_id=d["i"], content_type=d["c"])


def _with_id(m: OutMessage, mid: str) -> OutMessage:
    if m.message_id is not None:
        return m
    return OutMessage(body=m.body, routing_key=m.routing_key, headers=m.headers,
                      priority=m.priority, ttl_s=m.ttl_s, message_id=mid,
                      content_type=m.content_type)
