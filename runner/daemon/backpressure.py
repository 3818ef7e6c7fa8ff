"""Backpressure from slow consumer groups: a topic refuses appends while a group
with `max_lag` lags more than that on it.

Off by default (no `max_lag`): Kafka never refuses a producer because a
consumer is slow; retention bounds the log instead. With `max_lag`, a group
that stops also stops its producers (HTTP 429 with Retry-After) - the trade-off
the topology chooses. The lag is the group's lag on that topic, summed over
its partitions (`log end - committed`, as `runner groups describe` shows it).
"""

from __future__ import annotations

from runner.engine.contract import Backend
from runner.errors import Refused
from runner.topology.model import Topology


class Lagging(Refused):
    """An append refused because a group with `max_lag` lags too much (HTTP 429)."""


def check_lag(backend: Backend, topology: Topology, topic: str) -> None:
    """Raise Lagging when a consumer group of `topic` with `max_lag` lags more
    than that on it; nothing is asked of the backend when no group sets one."""
    for name, group in topology.consumer_groups:
        if group.max_lag is None or topic not in group.topics:
            continue
        info = backend.group_info(name)
        lag = sum(p.lag for p in info.partitions if p.topic == topic)
        if lag > group.max_lag:
            raise Lagging(
                f"topic '{topic}' refuses appends while consumer group '{name}' lags "
                f"{lag} records on it (max_lag {group.max_lag}); retry when it has caught up"
            )
