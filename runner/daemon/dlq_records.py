"""Dead letters of a dead-letter topic replayed or purged one by one (issue 13).

A selection names records by partition and offset (`{"records": [{"partition":
0, "offset": 5}]}`). Each one is settled in one engine step with its replay:
where it is the partition's next pending record the replay position moves past
it (and past the records settled before it); further on, a marker goes to the
hidden queue `__dlq.<topic>` so it is no longer pending, is never replayed
again by "replay all", and the position skips it when it gets there. A record
that cannot go back (no dead letter, its queue or group gone) stays pending and
is counted in `skipped` by reason. Unknown offsets answer 404 and records
already replayed or purged 409, before anything changes.
"""

from __future__ import annotations

from typing import Any

from runner.daemon import codec
from runner.daemon.dlq import (
    check_replay_target,
    forget_settled,
    to_dest,
    to_origin,
    topic_positions,
)
from runner.engine import Engine, Step, TopicPartition, dlq_position_group, dlq_settled_queue
from runner.engine import settled_marker as marker
from runner.errors import Conflict, NotFound
from runner.topology.model import Topology

MAX_RECORDS = 1000  # records named in one request
RECORD_FIELDS = frozenset({"partition", "offset"})

Chosen = list[tuple[int, int]]


def chosen_records(body: dict[str, Any], topology: Topology, topic: str) -> Chosen:
    """The `records` field: a non-empty list of `{"partition", "offset"}`, each
    partition of `topic`, at most MAX_RECORDS, no record twice."""
    items = body.get("records")
    if not isinstance(items, list) or not items:
        raise codec.BadInput("'records' must be a non-empty list of "
                             '{"partition": P, "offset": O}')
    if len(items) > MAX_RECORDS:
        raise codec.BadInput(f"'records' names {len(items)} records; at most {MAX_RECORDS} "
                             "a request")
    partitions = topology.topic_map()[topic].partitions
    out: Chosen = []
    for i, item in enumerate(items):
        where = f"records[{i}]"
        if not isinstance(item, dict):
            raise codec.BadInput(f"'{where}' must be an object "
                                 '{"partition": P, "offset": O}')
        codec.check_fields(item, RECORD_FIELDS)
        for name in ("partition", "offset"):
            if item.get(name) is None:
                raise codec.BadInput(f"'{where}.{name}' is missing")
        p = codec.check_int(item["partition"], f"{where}.partition")
        off = codec.check_int(item["offset"], f"{where}.offset")
        if p >= partitions:
            raise NotFound(f"topic '{topic}' has no partition {p} "
                           f"(it has {partitions}: 0..{partitions - 1})")
        if (p, off) in out:
            raise codec.BadInput(f"'{where}' names partition {p} offset {off} twice")
        out.append((p, off))
    return out


def _check(engine: Engine, topic: str, chosen: Chosen) -> dict[int, dict[str, Any]]:
    """The partitions' positions; 404 for an offset the log does not hold, 409 for a
    record already replayed or purged."""
    parts = {p["partition"]: p for p in topic_positions(engine, topic)}
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


def _settle(engine: Engine, topic: str, parts: dict[int, dict[str, Any]],
            done: Chosen, step: Step) -> None:
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
        marks = [marker(p, off) for off in sorted(offsets) if off >= position]
        if marks:
            step.queue_puts.append((queue, marks))


def replay_records(engine: Engine, topology: Topology, topic: str, chosen: Chosen,
                   to: str | None = None) -> dict[str, Any]:
    """Replay the chosen dead letters back to where they died (or into `to`)."""
    check_replay_target(topology, topic, to)
    parts = _check(engine, topic, chosen)
    step = Step()
    done: Chosen = []
    reasons: dict[str, int] = {}
    for p, off in chosen:
        recs, _ = engine.read(topic, p, off, max_records=1, max_bytes=64 * 1024 * 1024)
        if not recs or recs[0].offset != off:
            raise NotFound(f"topic '{topic}' partition {p} has no record at offset {off} "
                           "(removed by compaction)")
        if to is not None:
            to_dest(topology, recs[0], to, step)
        else:
            reason = to_origin(engine, topology, recs[0], step)
            if reason is not None:
                reasons[reason] = reasons.get(reason, 0) + 1
                continue
        done.append((p, off))
    _settle(engine, topic, parts, done, step)
    if step.commits or step.queue_puts or step.appends:
        engine.commit_step(step)
    forget_settled(engine, topic)
    out: dict[str, Any] = {
        "replayed": len(done), "skipped": sum(reasons.values()), "skipped_reasons": reasons,
        "remaining": sum(p["pending"] for p in topic_positions(engine, topic))}
    if to is not None:
        out["to"] = to
    return out


def purge_records(engine: Engine, topic: str, chosen: Chosen) -> dict[str, Any]:
    """Mark the chosen dead letters handled without replaying them (the log keeps
    them until retention)."""
    parts = _check(engine, topic, chosen)
    step = Step()
    _settle(engine, topic, parts, chosen, step)
    engine.commit_step(step)
    forget_settled(engine, topic)
    return {"purged": len(chosen),
            "remaining": sum(p["pending"] for p in topic_positions(engine, topic))}
