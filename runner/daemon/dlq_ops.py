"""The DLQ tools on the engine contract, for any backend that serves `DlqBackend`:
what the HTTP API's DLQ routes, the console and `runner dlq` run (the selection of
dead letters by record is parsed in `runner.daemon.dlq_records`).

Queue DLQs: `purge` takes every ready message out of a queue (its unacked ones
stay with their consumers, as in RabbitMQ); `replay_to` moves up to `n`
messages into another queue or topic, without their `x-dead-letter` header and
with `x-replay-count` + 1, as one exactly-once step (the acks and the puts
together), so a crash never loses or doubles a message.

Topic DLQs: a dead-letter topic is a log: its records are never deleted by the
tools. Each partition has a durable replay position (the committed offsets of
the hidden group `dlq_position_group(topic)`): records below it were replayed
or purged, the rest are pending. Replay and purge advance it in the same step
as the puts, so a crash never replays a record twice or loses one. A record
replayed or purged on its own above the position leaves a marker in the hidden
queue `dlq_settled_queue(topic)` (same step): pending is what is neither below
the position nor marked, and the position skips marked records when it
reaches them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from runner.deadletter_headers import DEATH_HEADER as DEAD_LETTER_HEADER
from runner.deadletter_headers import (
    EXCHANGE_HEADER,
    NULL_VALUE_HEADER,
    ORIGINAL_KEY_B64_HEADER,
    ORIGINAL_KEY_HEADER,
    ORIGINAL_TIMESTAMP_HEADER,
    RECORD_OFFSET_HEADER,
    RECORD_PARTITION_HEADER,
    RECORD_TOPIC_HEADER,
    ROUTING_KEY_HEADER,
    b64,
    content_type,
    replay_target,
    replayed_headers,
)
from runner.deadletter_headers import REPLAY_HEADER as REPLAY_COUNT_HEADER
from runner.engine.contract import (
    Ack,
    Backend,
    DeadLetterTopics,
    OutMessage,
    OutRecord,
    QueueDelivery,
    Record,
    Requeue,
    Step,
    Ticket,
    TopicPartition,
    dlq_position_group,
    dlq_settled_queue,
    settled_marker,
)
from runner.errors import Conflict, InvalidRequest, NotFound
from runner.topology.model import Topology
from runner.topology.suggest import did_you_mean

PAGE = 10_000  # messages taken per backend call
LEASE_S = 60.0
TOOL_CONSUMER = "runner-dlq-tool"
READ_BYTES = 64 * 1024 * 1024

NOT_A_DEAD_LETTER = "not a dead letter (no x-dead-letter header naming where it died)"
REPLAY_MESSAGE_ID = "__dlq-replay:{topic}/{partition}/{offset}"

Chosen = list[tuple[int, int]]


class DlqBackend(Backend, DeadLetterTopics, Protocol):
    """A Backend with the topic DLQ tools' extras (the embedded engine's)."""


@dataclass(slots=True)
class StepBuilder:
    """A contract `Step` built part by part."""

    acks: list[tuple[str, int]] = field(default_factory=list)
    commits: list[tuple[str, TopicPartition, int]] = field(default_factory=list)
    puts: list[tuple[str, tuple[OutMessage, ...]]] = field(default_factory=list)
    appends: list[tuple[str, tuple[OutRecord, ...]]] = field(default_factory=list)

    def build(self) -> Step:
        return Step(acks=tuple(self.acks), commits=tuple(self.commits),
                    puts=tuple(self.puts), appends=tuple(self.appends))


def death(headers: Mapping[str, Any]) -> Any:
    """The `x-dead-letter` header of a dead letter (None: not one)."""
    return headers.get(DEAD_LETTER_HEADER)


# ------------------------------------------------------------------ queue DLQs
async def purge(backend: Backend, queue: str) -> int:
    """Remove the ready messages of `queue`; how many went. A page of PAGE messages
    a backend call, the event loop serving other requests between pages (a purge
    of millions held the loop for its whole duration)."""
    total = 0
    ticket = Ticket.DONE
    while True:
        got = backend.fetch(queue, PAGE, lease_s=LEASE_S, consumer_id=TOOL_CONSUMER)
        if not got:
            await backend.durable(ticket)  # answered once the acks are durable
            return total
        ticket = ticket.max(backend.settle(queue, [Ack(d.delivery_id) for d in got]).ticket)
        total += len(got)
        await asyncio.sleep(0)


def _headers(d: QueueDelivery) -> dict[str, Any]:
    headers = dict(d.headers)
    headers.pop(DEAD_LETTER_HEADER, None)
    count = headers.get(REPLAY_COUNT_HEADER, 0)
    headers[REPLAY_COUNT_HEADER] = (count if isinstance(count, int) else 0) + 1
    return headers


def check_replay_to(topology: Topology, source: str, dest: str) -> bool:
    """`to` of a queue replay (any backend): a declared queue (True) or topic (False),
    not the queue being replayed."""
    is_queue = dest in topology.queue_map()
    if not is_queue and dest not in topology.topic_map():
        raise NotFound(f"queue '{dest}' not found")
    if dest == source:
        raise InvalidRequest(f"'to' names the queue being replayed ('{source}'); give "
                             "another queue or a topic")
    return is_queue


def replay_to(backend: Backend, topology: Topology, source: str, dest: str, n: int) -> int:
    """Move up to `n` ready messages of queue `source` into queue or topic `dest`."""
    is_queue = check_replay_to(topology, source, dest)
    got = backend.fetch(source, n, lease_s=LEASE_S, consumer_id=TOOL_CONSUMER)
    if not got:
        return 0
    step = StepBuilder(acks=[(source, d.delivery_id) for d in got])
    if is_queue:
        step.puts.append((dest, tuple(
            OutMessage(body=d.body, routing_key=d.routing_key, headers=_headers(d),
                       priority=d.priority, content_type=d.content_type)
            for d in got)))
    else:
        records = []
        for d in got:
            headers = _headers(d)
            key = headers.pop(ORIGINAL_KEY_HEADER, None)
            records.append(OutRecord(value=d.body, key=None if key is None else str(key).encode(),
                                     headers=headers))
        step.appends.append((dest, tuple(records)))
    try:
        backend.commit_step(step.build())
    except Exception:
        backend.settle(source, [Requeue(d.delivery_id) for d in got])  # all stay
        raise
    return len(got)


# ------------------------------------------------------------------ topic DLQs
def topic_positions(backend: DlqBackend, topic: str) -> list[dict[str, Any]]:
    """Per partition of dead-letter topic `topic`: log start/end, replay position,
    pending records and the timestamp (ms) of the oldest pending one (None: none)."""
    group = dlq_position_group(topic)
    settled = backend.dlq_settled(topic)
    out = []
    for p in backend.partitions(topic):
        pos = max(backend.position(group, TopicPartition(topic, p.partition)),
                  p.log_start_offset)
        skip = {o for o in settled.get(p.partition, ()) if o >= pos}
        oldest = None
        if pos < p.log_end_offset:
            recs = backend.read(topic, p.partition, pos, max_records=len(skip) + 1,
                                max_bytes=1 << 20).records
            first = next((r for r in recs if r.offset not in skip), None)
            oldest = first.timestamp_ms if first else None
        out.append({"partition": p.partition, "log_start_offset": p.log_start_offset,
                    "log_end_offset": p.log_end_offset, "position": pos,
                    "pending": max(0, p.log_end_offset - pos - len(skip)),
                    "settled": sorted(skip), "oldest_timestamp_ms": oldest})
    return out


def topic_summary(backend: DlqBackend, topic: str, now_ms: int,
                  parts: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """`{"name", "kind": "topic", "depth", "age_s", "partitions"}` of a dead-letter topic:
    depth = pending records, age = of the oldest pending one (0 when none); `parts`:
    its `topic_positions` when the caller has them already (each costs reads of
    every partition: on RabbitMQ, stream scans of a connection and a quiet period)."""
    if parts is None:
        parts = topic_positions(backend, topic)
    oldest = [p["oldest_timestamp_ms"] for p in parts if p["oldest_timestamp_ms"] is not None]
    return {"name": topic, "kind": "topic", "depth": sum(p["pending"] for p in parts),
            "age_s": round(max(0.0, (now_ms - min(oldest)) / 1000), 3) if oldest else 0.0,
            "partitions": parts}


def topic_letters(backend: DlqBackend, topic: str, n: int,
                  parts: list[dict[str, Any]] | None = None) -> list[Record]:
    """Up to `n` pending dead letters of topic `topic`, partition by partition
    (`parts`: as for `topic_summary`)."""
    got: list[Record] = []
    for p in topic_positions(backend, topic) if parts is None else parts:
        if len(got) >= n or not p["pending"]:
            continue
        skip = set(p["settled"])
        recs = backend.read(topic, p["partition"], p["position"],
                            max_records=n - len(got) + len(skip), max_bytes=READ_BYTES).records
        got.extend([r for r in recs if r.offset not in skip][:n - len(got)])
    return got


def purge_topic(backend: DlqBackend, topic: str) -> int:
    """Advance every partition's replay position to the log end; how many records
    it passed (they stay in the log until retention removes them)."""
    group = dlq_position_group(topic)
    step = StepBuilder()
    total = 0
    for p in topic_positions(backend, topic):
        if p["pending"]:
            step.commits.append((group, TopicPartition(topic, p["partition"]),
                                 p["log_end_offset"]))
            total += p["pending"]
    if step.commits:
        backend.commit_step(step.build())
    forget_settled(backend, topic)
    return total


def forget_settled(backend: DlqBackend, topic: str) -> None:
    """Drop the markers of `topic` once the replay position passed every one of them
    (they are ignored below it; this keeps the hidden queue from growing)."""
    queue = dlq_settled_queue(topic)
    try:
        if not backend.queue_info(queue).ready or backend.dlq_settled(topic):
            return
    except NotFound:
        return
    backend.purge(queue)


def _queue_message(r: Record, routing_key: str, headers: dict[str, Any]) -> OutMessage:
    for name in (ROUTING_KEY_HEADER, EXCHANGE_HEADER):
        headers.pop(name, None)
    return OutMessage(
        body=r.value or b"", routing_key=routing_key, headers=headers,
        message_id=REPLAY_MESSAGE_ID.format(topic=r.topic, partition=r.partition,
                                            offset=r.offset),
        content_type=content_type(r.value))


def to_origin(backend: Backend, topology: Topology, r: Record, step: StepBuilder) -> str | None:
    """Add to `step` what puts record `r` back where it died; the reason it cannot
    go back, else None."""
    target = replay_target(r.headers)
    if target is None:
        return NOT_A_DEAD_LETTER
    if target.queue is not None:
        if target.queue not in topology.queue_map():
            return f"original queue '{target.queue}' no longer exists"
        step.puts.append((target.queue, (_queue_message(
            r, target.routing_key, replayed_headers(r.headers)),)))
        return None
    dead = r.headers.get(DEAD_LETTER_HEADER) or {}
    group = dead.get("original_group") if isinstance(dead, dict) else None
    if not group:
        return "a topic record without its consumer group"
    replay_q = backend.replay_queue(str(group))
    if replay_q is None:
        return f"consumer group '{group}' no longer exists"
    headers = replayed_headers(r.headers)
    if r.key is not None:
        try:
            headers[ORIGINAL_KEY_HEADER] = r.key.decode()
        except UnicodeDecodeError:
            headers[ORIGINAL_KEY_B64_HEADER] = b64(r.key)
    if r.value is None:
        headers[NULL_VALUE_HEADER] = True
    headers[ORIGINAL_TIMESTAMP_HEADER] = r.timestamp_ms
    headers[RECORD_TOPIC_HEADER] = target.topic
    headers[RECORD_PARTITION_HEADER] = target.partition
    headers[RECORD_OFFSET_HEADER] = target.offset
    step.puts.append((replay_q, (_queue_message(r, r.topic, headers),)))
    return None


def to_dest(topology: Topology, r: Record, dest: str, step: StepBuilder) -> None:
    headers = replayed_headers(r.headers)
    if dest in topology.queue_map():
        step.puts.append((dest, (_queue_message(r, r.topic, headers),)))
    else:
        step.appends.append((dest, (OutRecord(value=r.value, key=r.key, headers=headers),)))


def check_replay_target(topology: Topology, topic: str, to: str | None) -> None:
    """`to` of a topic replay (all or chosen records): a declared queue or topic, not the
    dead-letter topic itself."""
    if to is None:
        return
    if to not in topology.queue_map() and to not in topology.topic_map():
        raise NotFound(f"queue or topic '{to}' not found"
                       + did_you_mean(to, [*topology.queue_map(), *topology.topic_map()]))
    if to == topic:
        raise InvalidRequest(f"'to' names the topic being replayed ('{topic}'); give "
                             "another queue or topic")


def replay_topic(backend: DlqBackend, topology: Topology, topic: str, n: int,
                 to: str | None = None) -> dict[str, Any]:
    """Replay up to `n` pending dead letters of topic `topic` back to where they
    died (or into queue or topic `to`) and advance the replay positions past them,
    as one step. A record that cannot go back stops its partition there (the
    position cannot skip it): it is counted in `skipped` by reason and waits for
    `--to` or a purge."""
    check_replay_target(topology, topic, to)
    group = dlq_position_group(topic)
    step = StepBuilder()
    replayed = 0
    reasons: dict[str, int] = {}
    for p in topic_positions(backend, topic):
        if replayed >= n or not p["pending"]:
            continue
        skip = set(p["settled"])
        recs = backend.read(topic, p["partition"], p["position"],
                            max_records=n - replayed + len(skip), max_bytes=READ_BYTES).records
        position = p["position"]
        for r in recs:
            if r.offset in skip:  # replayed or purged on its own already
                position = r.offset + 1
                continue
            if replayed >= n:
                break
            if to is not None:
                to_dest(topology, r, to, step)
            else:
                reason = to_origin(backend, topology, r, step)
                if reason is not None:
                    left = p["log_end_offset"] - r.offset
                    reasons[reason] = reasons.get(reason, 0) + left
                    break
            replayed += 1
            position = r.offset + 1
        while position in skip:
            position += 1
        if position != p["position"]:
            step.commits.append((group, TopicPartition(topic, p["partition"]), position))
    if step.commits:
        backend.commit_step(step.build())
    forget_settled(backend, topic)
    remaining = sum(p["pending"] for p in topic_positions(backend, topic))
    out: dict[str, Any] = {"replayed": replayed, "skipped": sum(reasons.values()),
                           "skipped_reasons": reasons, "remaining": remaining}
    if to is not None:
        out["to"] = to
    return out


# ------------------------------------------------------------------ chosen records
def _check(backend: DlqBackend, topic: str, chosen: Chosen) -> dict[int, dict[str, Any]]:
    """The partitions' positions; 404 for an offset the log does not hold, 409 for a
    record already replayed or purged."""
    parts = {p["partition"]: p for p in topic_positions(backend, topic)}
    for p, off in chosen:
        info = parts[p]
        start, end = info["log_start_offset"], info["log_end_offset"]
        if not start <= off < end:
            keeps = f"{start}..{end - 1}" if end > start else "none"
            raise NotFound(f"topic '{topic}' partition {p} has no record at offset {off} "
                           f"(it keeps offsets {keeps})")
        if off < info["position"] or off in info["settled"]:
            raise Conflict(f"the dead letter at partition {p} offset {off} of topic '{topic}' "
                           "was already replayed or purged")
    return parts


def _settle(topic: str, parts: dict[int, dict[str, Any]], done: Chosen,
            step: StepBuilder) -> None:
    """Add to `step` what marks `done` as settled: a moved position, else markers."""
    group = dlq_position_group(topic)
    queue = dlq_settled_queue(topic)
    by_partition: dict[int, set[int]] = {}
    for p, off in done:
        by_partition.setdefault(p, set()).add(off)
    for p, offsets in sorted(by_partition.items()):
        info = parts[p]
        every = offsets | set(info["settled"])
        position = info["position"]
        while position in every:
            position += 1
        if position != info["position"]:
            step.commits.append((group, TopicPartition(topic, p), position))
        marks = tuple(settled_marker(p, off) for off in sorted(offsets) if off >= position)
        if marks:
            step.puts.append((queue, marks))


def replay_records(backend: DlqBackend, topology: Topology, topic: str, chosen: Chosen,
                   to: str | None = None) -> dict[str, Any]:
    """Replay the chosen dead letters back to where they died (or into `to`)."""
    check_replay_target(topology, topic, to)
    parts = _check(backend, topic, chosen)
    step = StepBuilder()
    done: Chosen = []
    reasons: dict[str, int] = {}
    for p, off in chosen:
        recs = backend.read(topic, p, off, max_records=1, max_bytes=READ_BYTES).records
        if not recs or recs[0].offset != off:
            raise NotFound(f"topic '{topic}' partition {p} has no record at offset {off} "
                           "(removed by compaction)")
        if to is not None:
            to_dest(topology, recs[0], to, step)
        else:
            reason = to_origin(backend, topology, recs[0], step)
            if reason is not None:
                reasons[reason] = reasons.get(reason, 0) + 1
                continue
        done.append((p, off))
    _settle(topic, parts, done, step)
    if step.commits or step.puts or step.appends:
        backend.commit_step(step.build())
    forget_settled(backend, topic)
    out: dict[str, Any] = {
        "replayed": len(done), "skipped": sum(reasons.values()), "skipped_reasons": reasons,
        "remaining": sum(p["pending"] for p in topic_positions(backend, topic))}
    if to is not None:
        out["to"] = to
    return out


def purge_records(backend: DlqBackend, topic: str, chosen: Chosen) -> dict[str, Any]:
    """Mark the chosen dead letters handled without replaying them (the log keeps
    them until retention)."""
    parts = _check(backend, topic, chosen)
    step = StepBuilder()
    _settle(topic, parts, chosen, step)
    backend.commit_step(step.build())
    forget_settled(backend, topic)
    return {"purged": len(chosen),
            "remaining": sum(p["pending"] for p in topic_positions(backend, topic))}
