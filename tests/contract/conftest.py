"""Backends for the contract suite: every test here runs once per implementation.

Modelled on dramatiq's broker fixtures: one `backend` fixture parametrised by
name; a backend that needs a service (RabbitMQ) gets its own param, in its own
vhost created and deleted by the fixture, and fails, never skips, when the
service is missing in CI (locally: one skip line). A test marked
`@pytest.mark.needs(Capability.X, ...)` is only generated for the backends
that have those capabilities (selected, not skipped). The topology is the same
for every backend, less what a backend cannot serve: `contract_topology()`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import TypeVar

import pytest

from runner.backends.rabbitmq import runtime
from runner.clock import ManualClock
from runner.engine import embedded
from runner.engine.contract import Backend, Capability, Event, EventKind, QueueDelivery, Waiter
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
from tests.rmq import fresh_vhost

T = TypeVar("T")


def contract_topology(capabilities: frozenset[Capability] = frozenset(Capability)) -> Topology:
    topics = Capability.TOPICS in capabilities
    return Topology(
        # `feed` is bound to an exchange: one partition (RabbitMQ binds an exchange to a
        # topic's stream only when it has one); `ev` is the group's, two partitions
        topics=(("ev", Topic("ev", partitions=2)), ("feed", Topic("feed"))) if topics else (),
        exchanges=(("int", Exchange("int", ExchangeType.FANOUT, internal=True)),
                   ("orders", Exchange("orders", ExchangeType.TOPIC))),
        queues=(("dlq", Queue("dlq")), ("q", Queue("q"))),
        bindings=(Binding("orders", queue="q", routing_key="orders.#"),
                  *([Binding("orders", topic="feed", routing_key="orders.*")] if topics else [])),
        consumer_groups=(("g", ConsumerGroup("g", ("ev",))),) if topics else (),
    )


def _embedded(tmp_path: Path, clock: ManualClock, stack: ExitStack) -> Backend:
    return open_embedded(contract_topology(), tmp_path / "data", fsync=FsyncPolicy.ALWAYS,
                         clock=clock)


def _rabbitmq(tmp_path: Path, clock: ManualClock, stack: ExitStack) -> Backend:
    target = stack.enter_context(fresh_vhost())
    return runtime.open_rabbitmq(contract_topology(runtime.CAPABILITIES), target)


OPENERS: dict[str, Callable[[Path, ManualClock, ExitStack], Backend]] = {
    "embedded": _embedded,
    "rabbitmq": _rabbitmq,
}
CAPABILITIES: dict[str, frozenset[Capability]] = {
    "embedded": embedded.CAPABILITIES,
    "rabbitmq": runtime.CAPABILITIES,
}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "needs(*capabilities): run only on backends that have them")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "backend" not in metafunc.fixturenames:
        return
    needed: set[Capability] = set()
    for mark in metafunc.definition.iter_markers("needs"):
        needed.update(mark.args)
    names = [n for n in sorted(OPENERS) if needed <= CAPABILITIES[n]]
    metafunc.parametrize("backend", names, indirect=True)


@pytest.fixture()
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture()
def backend(
    request: pytest.FixtureRequest, tmp_path: Path, clock: ManualClock,
) -> Iterator[Backend]:
    with ExitStack() as stack:
        b = OPENERS[request.param](tmp_path, clock, stack)
        try:
            yield b
        finally:
            b.close()


# ---------------------------------------------------------------- helpers


def take(backend: Backend, queue: str, n: int, *, timeout_s: float = 15.0,
         consumer_id: str = "c1", lease_s: float = 30.0) -> list[QueueDelivery]:
    """Fetch until `n` deliveries arrived (waiting on QUEUE_READY) or `timeout_s`."""

    async def go() -> list[QueueDelivery]:
        waiter = Waiter(backend, [Event(EventKind.QUEUE_READY, queue)])
        got: list[QueueDelivery] = []
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                got += backend.fetch(queue, n - len(got), lease_s=lease_s,
                                     consumer_id=consumer_id)
                left = deadline - time.monotonic()
                if len(got) >= n or left <= 0:
                    return got
                await waiter.wait(left)
        finally:
            waiter.close()

    return asyncio.run(go())


def eventually(check: Callable[[], T], ok: Callable[[T], bool], *,
               timeout_s: float = 15.0) -> T:
    """`check()` until `ok` says yes (the broker's statistics lag by seconds)."""
    deadline = time.monotonic() + timeout_s
    while True:
        got = check()
        if ok(got) or time.monotonic() > deadline:
            return got
        time.sleep(0.2)
