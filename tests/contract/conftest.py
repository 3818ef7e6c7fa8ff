"""Backends for the contract suite: every test here runs once per implementation.

Modelled on dramatiq's broker fixtures: one `backend` fixture parametrised by
name; a backend that needs a service (RabbitMQ) gets its own param and fails,
never skips, when the service is missing in CI. The topology is the same for
every backend: `contract_topology()`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from runner.clock import ManualClock
from runner.engine.contract import Backend
from runner.engine.embedded import open_embedded
from runner.engine.values import FsyncPolicy
from runner.topology.model import (
    Binding,
    ConsumerGroup,
    Exchange,
    ExchangeType,
    Queue,
    Topic,
    Topology,
)


def contract_topology() -> Topology:
    return Topology(
        topics=(("ev", Topic("ev", partitions=2)),),
        exchanges=(("int", Exchange("int", ExchangeType.FANOUT, internal=True)),
                   ("orders", Exchange("orders", ExchangeType.TOPIC))),
        queues=(("dlq", Queue("dlq")), ("q", Queue("q"))),
        bindings=(Binding("orders", queue="q", routing_key="orders.#"),
                  Binding("orders", topic="ev", routing_key="orders.*")),
        consumer_groups=(("g", ConsumerGroup("g", ("ev",))),),
    )


def _embedded(tmp_path: Path, clock: ManualClock) -> Backend:
    return open_embedded(contract_topology(), tmp_path / "data", fsync=FsyncPolicy.ALWAYS,
                         clock=clock)


OPENERS: dict[str, Callable[[Path, ManualClock], Backend]] = {
    "embedded": _embedded,
}


@pytest.fixture()
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture(params=sorted(OPENERS))
def backend(
    request: pytest.FixtureRequest, tmp_path: Path, clock: ManualClock,
) -> Iterator[Backend]:
    b = OPENERS[request.param](tmp_path, clock)
    try:
        yield b
    finally:
        b.close()
