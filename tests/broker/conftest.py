"""Fixtures: a real broker on a temp data dir with a manual clock."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from runner.broker.broker import Broker
from runner.clock import ManualClock
from runner.topology.model import Binding, Exchange, Queue

MakeBroker = Callable[..., Broker]


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def make_broker(tmp_path: Path, clock: ManualClock) -> Iterator[MakeBroker]:
    opened: list[Broker] = []

    def make(
        exchanges: list[Exchange] | None = None, queues: list[Queue] | None = None,
        bindings: list[Binding] | None = None, **kw: object,
    ) -> Broker:
        kw.setdefault("fsync", "never")
        b = Broker(tmp_path / "data", clock=clock, **kw)  # type: ignore[arg-type]
        b.declare(exchanges or [], queues or [], bindings or [])
        opened.append(b)
        return b

    yield make
    for b in opened:
        with contextlib.suppress(Exception):  # some tests close it themselves
            b.close()
