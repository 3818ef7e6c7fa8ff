"""Topology changes as the engine sees them: what a reload may not do to topics,
which queues the broker keeps, and which exchanges can reach a topic."""

from __future__ import annotations

from runner.broker.broker import Broker
from runner.engine.deadletters import (
    DLQ_POSITION_PREFIX,
    REPLAY_PREFIX,
    dlq_settled_queue,
    replay_queue_name,
)
from runner.log.store import Store
from runner.topology.model import Queue, Topology


def broker_queues(broker: Broker, new: Topology) -> list[Queue]:
    """The topology's queues plus one replay queue per consumer group and one
    queue of settled markers per dead-letter topic (and the non-empty ones of
    removed groups and topics, kept until drained)."""
    queues = [q for _, q in new.queues]
    wanted = {replay_queue_name(g) for g, _ in new.consumer_groups}
    wanted.update(dlq_settled_queue(t) for t in new.dead_letter_topics())
    for name, mq in broker.queues.items():
        if (name.startswith((REPLAY_PREFIX, DLQ_POSITION_PREFIX)) and name not in wanted
                and len(mq)):
            wanted.add(name)
    queues.extend(Queue(name) for name in sorted(wanted))
    return queues


def topic_problems(store: Store, new: Topology) -> list[str]:
    """What `Store.apply` would refuse (its own sentences, `Store.unsafe_changes`),
    checked up front so a refused reload touches neither side."""
    return store.unsafe_changes(new.topic_map())


def topic_reach(topology: Topology) -> set[str]:
    """Exchanges from which some topic binding is reachable (e2e and alternates)."""
    edges: dict[str, set[str]] = {}
    reach: set[str] = set()
    for b in topology.bindings:
        if b.topic is not None:
            reach.add(b.exchange)
        if b.to_exchange is not None:
            edges.setdefault(b.to_exchange, set()).add(b.exchange)
    for name, ex in topology.exchanges:
        if ex.alternate_exchange:
            edges.setdefault(ex.alternate_exchange, set()).add(name)
    todo = list(reach)
    while todo:
        for src in edges.get(todo.pop(), ()):
            if src not in reach:
                reach.add(src)
                todo.append(src)
    return reach
