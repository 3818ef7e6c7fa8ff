"""The status document of `GET /v1/status`: topology, topics, queues, groups, consumers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from runner import __version__
from runner.daemon.metrics import HandlerView
from runner.engine.contract import Backend
from runner.errors import EngineError
from runner.topology.model import Topology


@dataclass(frozen=True, slots=True)
class TopologyState:
    """What the supervisor knows about the running topology and its reloads."""

    topology: Topology
    content_hash: str
    generation: int
    last_reload_error: str | None
    last_reload_result: str | None


def dead_letter_queues(topology: Topology) -> set[str]:
    """Queues that receive dead letters: policy DLQs and queues bound to a queue's DLX."""
    out = {p.dead_letter_queue for _, p in topology.dlq_policies if p.dead_letter_queue}
    dlx = {q.dead_letter.exchange for _, q in topology.queues if q.dead_letter is not None}
    out |= {b.queue for b in topology.bindings if b.exchange in dlx and b.queue is not None}
    return out & set(topology.queue_map())  # a policy's DLQ may be a topic


def status_json(backend: Backend, state: TopologyState, view: HandlerView) -> dict[str, Any]:
    topology = state.topology
    topics = []
    for name, topic in topology.topics:
        parts = [
            {
                "partition": p.partition,
                "log_start_offset": p.log_start_offset,
                "log_end_offset": p.log_end_offset,
                "size_bytes": p.size_bytes,
            }
            for p in backend.partitions(name)
        ]
        topics.append({"name": name, "partitions": parts, "cleanup_policy": topic.cleanup_policy})
    queues = []
    dlqs = dead_letter_queues(topology)
    for name, _ in topology.queues:
        info = backend.queue_info(name)
        queues.append(
            {
                "name": name,
                "ready": info.ready,
                "unacked": info.unacked,
                "delayed": info.delayed,
                "oldest_ready_age_s": info.oldest_ready_age_s,
                "dead_letter_queue": name in dlqs,
            }
        )
    groups = []
    for name, group in topology.consumer_groups:
        try:
            info_g = backend.group_info(name)
        except EngineError:
            continue
        groups.append(
            {
                "name": name,
                "topics": list(group.topics),
                "handler": group.handler,
                "delivery": group.delivery.value,
                "members": list(info_g.members),
                "lag": sum(p.lag for p in info_g.partitions),
                "partitions": [
                    {
                        "topic": p.topic,
                        "partition": p.partition,
                        "committed": p.committed,
                        "log_end_offset": p.log_end_offset,
                        "lag": p.lag,
                    }
                    for p in info_g.partitions
                ],
            }
        )
    consumers = []
    for name, c in topology.consumers:
        consumers.append(
            {
                "name": name,
                "queue": c.queue,
                "handler": c.handler,
                "concurrency": c.concurrency,
                "delivery": c.delivery.value,
                "errors": sum(n for (who, _), n in view.errors.items() if who == name),
                "retries": view.retries.get(name, 0),
            }
        )
    return {
        "version": __version__,
        "topology": {
            "name": topology.name,
            "hash": state.content_hash,
            "generation": state.generation,
            "files": list(topology.files),
            "last_reload_result": state.last_reload_result,
            "last_reload_error": state.last_reload_error,
        },
        "topics": topics,
        "queues": queues,
        "groups": groups,
        "consumers": consumers,
    }
