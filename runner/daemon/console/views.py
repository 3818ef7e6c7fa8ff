"""What the console's pages show, as JSON: overview, flow graph, queues, topics,
groups and dead letters (read-only; changes are in `actions`).

Each function reads the backend and the running topology once and returns plain
data; live numbers come separately from the feed (`live`), so a page renders
from one answer and is then kept current by the event stream.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from runner.daemon import codec, dlq_ops
from runner.daemon.console.live import FeedSource
from runner.daemon.reload import ReloadEntry
from runner.daemon.status import dead_letter_queues
from runner.engine.contract import Backend, Capability
from runner.errors import NotFound
from runner.topology.graph import binding_label, diagram
from runner.topology.model import Topology
from runner.topology.units import format_duration

MAX_PEEK = 1000
MAX_BROWSE = 1000
CANNOT_CHOOSE = ("This backend replays and purges a queue's dead letters all at once: "
                 "it has no ids to choose single messages by.")


class ViewSource(FeedSource, Protocol):
    """What the pages read from the daemon (the feed's source plus its history)."""

    @property
    def started_s(self) -> float: ...

    def reload_log(self) -> list[ReloadEntry]: ...


def _duration(seconds: float | None) -> str | None:
    return None if seconds is None else format_duration(seconds)


def overview(src: ViewSource, now_s: float) -> dict[str, Any]:
    topology = src.topology
    reloads = []
    for entry in reversed(src.reload_log()):
        out = entry.outcome
        reloads.append({
            "at": entry.at_s, "trigger": entry.trigger, "result": out.result,
            "generation": out.generation, "error": out.error, "changes": out.changes,
            "problems": out.problems,
        })
    return {
        "name": topology.name,
        "hash": src.content_hash,
        "generation": src.generation,
        "files": list(topology.files),
        "started": src.started_s,
        "uptime_s": max(0.0, now_s - src.started_s),
        "healthy": src.accepting,
        "counts": {
            "exchanges": len(topology.exchanges), "queues": len(topology.queues),
            "bindings": len(topology.bindings), "topics": len(topology.topics),
            "groups": len(topology.consumer_groups), "consumers": len(topology.consumers),
            "dlq_policies": len(topology.dlq_policies),
        },
        "reloads": reloads,
    }


def flow(topology: Topology) -> dict[str, Any]:
    """The declared flow as nodes and edges (`runner graph`'s diagram) plus which
    nodes receive dead letters."""
    d = diagram(topology)
    dead = dead_letter_queues(topology) | topology.dead_letter_topics()
    return {
        "nodes": [
            {"id": n.id, "kind": n.kind, "name": n.name, "label": n.label,
             "dlq": n.kind in ("queue", "topic") and n.name in dead}
            for n in d.nodes
        ],
        "edges": [
            {"source": e.source, "target": e.target, "label": e.label, "dashed": e.dashed}
            for e in d.edges
        ],
    }


def queues(topology: Topology) -> list[dict[str, Any]]:
    """Every queue's declaration; the live numbers come from the feed."""
    dlqs = dead_letter_queues(topology)
    readers: dict[str, list[str]] = {}
    for name, c in topology.consumers:
        readers.setdefault(c.queue, []).append(name)
    policies = topology.policy_map()
    out = []
    for name, q in topology.queues:
        dlq = None
        if q.dead_letter is not None:
            dlq = f"exchange {q.dead_letter.exchange}"
        for consumer in readers.get(name, ()):
            spec = topology.consumer_map()[consumer]
            policy = policies.get(spec.dlq_policy) if spec.dlq_policy else None
            if policy is not None and policy.dead_letter_queue:
                dlq = policy.dead_letter_queue
        out.append({
            "name": name, "consumers": readers.get(name, []), "dead_letter_to": dlq,
            "is_dlq": name in dlqs, "max_priority": q.max_priority,
            "max_length": q.max_length, "ttl": _duration(q.message_ttl_s),
            "overflow": q.overflow.value, "delivery_limit": q.delivery_limit,
        })
    return out


def peek(backend: Backend, topology: Topology, queue: str, n: int) -> list[dict[str, Any]]:
    if queue not in topology.queue_map():
        raise NotFound(f"queue '{queue}' not found")
    return [codec.delivery_json(d) for _, d in backend.peek_ids(queue, n)]


def topics(backend: Backend, topology: Topology) -> list[dict[str, Any]]:
    readers: dict[str, list[str]] = {}
    for name, g in topology.consumer_groups:
        for t in g.topics:
            readers.setdefault(t, []).append(name)
    dlt = topology.dead_letter_topics()
    out = []
    for name, spec in topology.topics:
        out.append({
            "name": name, "partitions": spec.partitions, "key": spec.key,
            "retention": _duration(spec.retention.time_s),
            "retention_bytes": spec.retention.bytes,
            "cleanup_policy": ",".join(
                p for p, on in (("delete", spec.delete), ("compact", spec.compact)) if on
            ),
            "groups": readers.get(name, []), "is_dlq": name in dlt,
            "partition_info": [
                {"partition": p.partition, "log_start_offset": p.log_start_offset,
                 "log_end_offset": p.log_end_offset, "size_bytes": p.size_bytes,
                 "oldest_timestamp": p.oldest_timestamp_ms}
                for p in backend.partitions(name)
            ],
        })
    return out


def groups(backend: Backend, topology: Topology) -> list[dict[str, Any]]:
    out = []
    for name, g in topology.consumer_groups:
        info = backend.group_info(name)
        out.append({
            "name": name, "topics": list(g.topics), "handler": g.handler,
            "instances": g.instances, "delivery": g.delivery.value,
            "offset_reset": g.offset_reset.value, "dlq_policy": g.dlq_policy,
            "members": list(info.members),
            "partitions": [
                {"topic": p.topic, "partition": p.partition, "committed": p.committed,
                 "position": p.position, "log_end_offset": p.log_end_offset, "lag": p.lag,
                 "member": p.member}
                for p in info.partitions
            ],
        })
    return out


def dead_letter_summary(src: FeedSource, topology: Topology, now_s: float) -> list[dict[str, Any]]:
    """Every dead-letter queue and topic with its depth and the age of its oldest letter.
    (A dead-letter topic's pending letters through `dlq_ops`, on the contract's
    optional DeadLetterTopics.)"""
    out: list[dict[str, Any]] = []
    for name in sorted(dead_letter_queues(topology)):
        info = src.backend.queue_info(name)
        out.append({"name": name, "kind": "queue", "depth": info.ready,
                    "age_s": round(info.oldest_ready_age_s, 3)})
    for name in sorted(topology.dead_letter_topics()):
        summary = dlq_ops.topic_summary(src.backend, name, int(now_s * 1000))
        summary.pop("partitions")
        out.append(summary)
    return out


def dead_letters(src: FeedSource, topology: Topology, name: str, n: int) -> dict[str, Any]:
    """The first `n` dead letters of a DLQ (queue: ready messages in delivery order,
    each with `id` for replay or purge; topic: the pending records, partition by
    partition from its replay position). `choose` False: the backend acts on a
    queue's letters all at once only, `note` says so (the page shows it)."""
    if name in topology.queue_map():
        letters = []
        for uid, d in src.backend.peek_ids(name, n):
            item = codec.delivery_json(d)
            item["id"] = uid
            item["death"] = dlq_ops.death(d.headers)
            letters.append(item)
        out: dict[str, Any] = {"name": name, "kind": "queue", "letters": letters,
                               "choose": True}
        if Capability.CHOSEN_MESSAGES not in src.backend.capabilities:
            out["choose"] = False
            out["note"] = CANNOT_CHOOSE
        return out
    if name in topology.topic_map():
        letters = []
        for r in dlq_ops.topic_letters(src.backend, name, n):
            item = codec.record_json(r)
            item["death"] = dlq_ops.death(r.headers)
            letters.append(item)
        return {"name": name, "kind": "topic", "letters": letters, "choose": True}
    raise NotFound(f"no queue or topic named '{name}'")


def browse(
    backend: Backend, topology: Topology, topic: str, query: Mapping[str, str]
) -> dict[str, Any]:
    """Records of one partition from `offset`, or from the first record at or after
    `timestamp` (ms); at most `limit`."""
    spec = topology.topic_map().get(topic)
    if spec is None:
        raise NotFound(f"topic '{topic}' not found")
    partition = codec.query_int(query, "partition", default=0, high=spec.partitions - 1)
    limit = codec.query_int(query, "limit", default=50, low=1, high=MAX_BROWSE)
    info = next(p for p in backend.partitions(topic) if p.partition == partition)
    if query.get("timestamp") is not None:
        offset = backend.offset_for_time(topic, partition, codec.query_int(
            query, "timestamp", default=None))
    else:
        offset = codec.query_int(query, "offset", default=info.log_start_offset)
    offset = min(max(offset, info.log_start_offset), info.log_end_offset)
    got = backend.read(topic, partition, offset, max_records=limit, max_bytes=16 * 1024 * 1024)
    return {
        "topic": topic, "partition": partition, "offset": offset, "next_offset": got.next_offset,
        "log_start_offset": info.log_start_offset, "log_end_offset": info.log_end_offset,
        "records": [codec.record_json(r) for r in got.records],
    }


def binding_rows(topology: Topology) -> list[dict[str, Any]]:
    exchanges = topology.exchange_map()
    return [
        {"exchange": b.exchange, "to": b.destination, "kind": b.destination_kind,
         "match": binding_label(b, exchanges[b.exchange].type if b.exchange in exchanges
                                else None)}
        for b in topology.bindings
    ]
