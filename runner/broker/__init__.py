"""The RabbitMQ side of the embedded engine: routing, queues, dead-lettering.

Public API (see docs/broker.md)::

    Broker(data_dir, *, fsync, clock, memory_budget_bytes, disk_budget_bytes, ...)
    Message, Delivery, Route, QueueInfo, BrokerStats, QueueCounters,
    PublishRefused, ReplayResult, TopicLetter
"""

from __future__ import annotations

from runner.broker.broker import (
    Broker,
    BrokerStats,
    PublishRefused,
    QueueCounters,
    QueueInfo,
    ReplayResult,
    TopicLetter,
)
from runner.broker.message import Delivery, Message
from runner.broker.routing import Route

__all__ = [
    "Broker", "BrokerStats", "Delivery", "Message", "PublishRefused", "QueueCounters",
    "QueueInfo", "ReplayResult", "Route", "TopicLetter",
]
