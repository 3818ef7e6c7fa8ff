"""The list documents of `GET /v1/queues|exchanges|bindings|topics|groups` and the index `GET /`.

Each list is `{"<kind>": [one object per entity, sorted by name]}`: the declared
settings beside the live counts, what `rabbitmqadmin list queues` or
`kafka-consumer-groups --list` would show. Shapes are documented in
docs/daemon.md ("Lists"); the CLI (`runner queues`...) renders them as tables.
"""

from __future__ import annotations

from typing import Any

from runner import __version__
from runner.daemon.status import dead_letter_queues
from runner.engine.contract import Backend, PartitionInfo
from runner.errors import EngineError
from runner.topology.model import Binding, Topology

# `GET /`: where things are (for programs; the console serves HTML to browsers).
INDEX_LINKS = {
    "queues": "/v1/queues",
    "exchanges": "/v1/exchanges",
    "bindings": "/v1/bindings",
    "topics": "/v1/topics",
    "groups": "/v1/groups",
    "status": "/v1/status",
    "metrics": "/metrics",
    "health": "/healthz",
    "ready": "/readyz",
}


def index_json() -> dict[str, Any]:
    return {
        "service": "topology-runner",
        "version": __version__,
        "links": dict(INDEX_LINKS),
        "docs": "docs/daemon.md in the topology-runner repository",
    }


def partition_json(p: PartitionInfo) -> dict[str, Any]:
    """One partition's offsets, size and oldest record (ms; None when empty)."""
    return {
        "partition": p.partition,
        "log_start_offset": p.log_start_offset,
        "log_end_offset": p.log_end_offset,
        "size_bytes": p.size_bytes,
        "oldest_timestamp": p.oldest_timestamp_ms,
    }


def queues_json(backend: Backend, topology: Topology) -> dict[str, Any]:
    """Declared queues (and the internal replay queues of groups), with their counts."""
    dlqs = dead_letter_queues(topology)
    readers: dict[str, list[str]] = {}
    for cname, consumer in topology.consumers:
        readers.setdefault(consumer.queue, []).append(cname)
    out = []
    for name, q in topology.queues:
        info = backend.queue_info(name)
        out.append(
            {
                "name": name,
                "ready": info.ready,
                "unacked": info.unacked,
                "delayed": info.delayed,
                "oldest_ready_age_s": info.oldest_ready_age_s,
                "consumers": readers.get(name, []),
                "dead_letter_queue": name in dlqs,
                "internal": False,
                "durable": q.durable,
                "max_length": q.max_length,
                "max_length_bytes": q.max_length_bytes,
                "overflow": q.overflow.value,
                "message_ttl_s": q.message_ttl_s,
                "max_priority": q.max_priority,
                "delivery_limit": q.delivery_limit,
                "dead_letter_exchange": q.dead_letter.exchange if q.dead_letter else None,
            }
        )
    for group, _ in topology.consumer_groups:
        replay = backend.replay_queue(group)
        if replay is None:
            continue
        info = backend.queue_info(replay)
        out.append(
            {
                "name": replay,
                "ready": info.ready,
                "unacked": info.unacked,
                "delayed": info.delayed,
                "oldest_ready_age_s": info.oldest_ready_age_s,
                "consumers": [group],
                "dead_letter_queue": False,
                "internal": True,
                "durable": True,
                "max_length": None,
                "max_length_bytes": None,
                "overflow": None,
                "message_ttl_s": None,
                "max_priority": None,
                "delivery_limit": None,
                "dead_letter_exchange": None,
            }
        )
    return {"queues": sorted(out, key=lambda q: q["name"])}


def exchanges_json(backend: Backend, topology: Topology) -> dict[str, Any]:
    stats = backend.stats()
    bound: dict[str, int] = {}
    for b in topology.bindings:
        bound[b.exchange] = bound.get(b.exchange, 0) + 1
    return {
        "exchanges": [
            {
                "name": name,
                "type": ex.type.value,
                "durable": ex.durable,
                "internal": ex.internal,
                "alternate_exchange": ex.alternate_exchange,
                "bindings": bound.get(name, 0),
                "published": stats.exchange_published.get(name, 0),
                "unroutable": stats.exchange_unroutable.get(name, 0),
            }
            for name, ex in topology.exchanges
        ]
    }


def binding_json(b: Binding) -> dict[str, Any]:
    return {
        "exchange": b.exchange,
        "destination": b.destination,
        "destination_kind": b.destination_kind,
        "routing_key": b.routing_key,
        "match": b.match.value if b.headers else None,
        "headers": dict(b.headers),
    }


def bindings_json(topology: Topology) -> dict[str, Any]:
    return {"bindings": [binding_json(b) for b in topology.bindings]}


def topic_json(backend: Backend, topology: Topology, name: str) -> dict[str, Any]:
    """One topic of the `topics` list (`GET /v1/topics/{name}`)."""
    topic = topology.topic_map()[name]
    parts = backend.partitions(name)
    return {
        "name": name,
        "partitions": topic.partitions,
        "records": sum(p.log_end_offset - p.log_start_offset for p in parts),
        "size_bytes": sum(p.size_bytes for p in parts),
        "cleanup_policy": list(topic.cleanup_policy),
        "retention_s": topic.retention.time_s,
        "retention_bytes": topic.retention.bytes,
        "key": topic.key,
        "groups": [g for g, spec in topology.consumer_groups if name in spec.topics],
        "dead_letter_topic": name in topology.dead_letter_topics(),
        "partition_offsets": [partition_json(p) for p in parts],
    }


def topics_json(backend: Backend, topology: Topology) -> dict[str, Any]:
    return {"topics": [topic_json(backend, topology, name) for name, _ in topology.topics]}


def groups_json(backend: Backend, topology: Topology) -> dict[str, Any]:
    out = []
    for name, group in topology.consumer_groups:
        try:
            info = backend.group_info(name)
        except EngineError:  # a group the engine does not know yet (mid-reload)
            continue
        out.append(
            {
                "name": name,
                "topics": list(group.topics),
                "handler": group.handler,
                "external": group.handler is None,
                "instances": group.instances,
                "assignment": group.assignment.value,
                "offset_reset": group.offset_reset.value,
                "delivery": group.delivery.value,
                "members": list(info.members),
                "partitions": len(info.partitions),
                "lag": sum(p.lag for p in info.partitions),
            }
        )
    return {"groups": out}
