"""A real Engine on tmp_path and a real Pipeline on a fresh event loop, for tests."""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from runner.clock import SystemClock
from runner.engine import Engine, FsyncPolicy, OutMessage, OutRecord
from runner.engine.contract import Backend, Step, Ticket
from runner.engine.embedded import EmbeddedBackend
from runner.pipeline import Pipeline
from runner.topology.model import (
    Binding,
    Consumer,
    ConsumerGroup,
    DlqPolicy,
    Exchange,
    ExchangeType,
    Queue,
    Topic,
    Topology,
)

H = "tests.pipeline.pipeline_handlers"


@dataclass(slots=True)
class Running:
    engine: Engine
    pipeline: Pipeline
    backend: Backend

    def publish(self, queue: str, *payloads: Any) -> None:
        """Put JSON messages straight into `queue` and wake the workers."""
        self.engine.publish_to_queue(queue, [msg(p) for p in payloads])
        self.pipeline.notify()

    def append(self, topic: str, *payloads: Any) -> None:
        """Append JSON records to `topic` and wake the workers."""
        self.engine.append(topic, [rec(p) for p in payloads])
        self.pipeline.notify()


def topology(
    *, queues: tuple[Queue, ...] = (), topics: tuple[Topic, ...] = (),
    exchanges: tuple[Exchange, ...] = (), bindings: tuple[Binding, ...] = (),
    policies: tuple[DlqPolicy, ...] = (), consumers: tuple[Consumer, ...] = (),
    groups: tuple[ConsumerGroup, ...] = (),
) -> Topology:
    """A topology with an `out` fanout exchange bound to an `outbox` queue, plus the rest."""
    queues = (Queue("outbox"), *queues)
    exchanges = (Exchange("out", ExchangeType.FANOUT), *exchanges)
    bindings = (Binding("out", queue="outbox"), *bindings)
    return Topology(
        topics=tuple(sorted((t.name, t) for t in topics)),
        exchanges=tuple(sorted((e.name, e) for e in exchanges)),
        queues=tuple(sorted((q.name, q) for q in queues)),
        bindings=bindings,
        dlq_policies=tuple(sorted((p.name, p) for p in policies)),
        consumer_groups=tuple(sorted((g.name, g) for g in groups)),
        consumers=tuple(sorted((c.name, c) for c in consumers)),
    )


def msg(body: Any, **kw: Any) -> OutMessage:
    return OutMessage(body=orjson.dumps(body), content_type="application/json", **kw)


def rec(body: Any, key: str | None = None, **kw: Any) -> OutRecord:
    return OutRecord(value=orjson.dumps(body), key=key.encode() if key else None, **kw)


def bodies(engine: Engine, queue: str, n: int = 1000) -> list[Any]:
    return [orjson.loads(d.body) for d in engine.peek(queue, n)]


async def wait_until(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


async def _tick(engine: Engine) -> None:
    while True:
        engine.tick()
        await asyncio.sleep(0.01)


@asynccontextmanager
async def running(
    topo: Topology, data_dir: Path, *, grace_s: float = 2.0, workers: int = 8,
    fsync: FsyncPolicy = FsyncPolicy.NEVER, fs: Any = None,
    backend: Callable[[Engine], Backend] = EmbeddedBackend,
    before_drain: Callable[[], object] | None = None, quiet_close: bool = False,
    sync_on_loop: bool = True,
) -> AsyncIterator[Running]:
    """Engine (on `fs` when given) + Pipeline on `backend(engine)` started; on exit
    `before_drain` runs, the pipeline drains, the engine is flushed and closed (with
    `quiet_close` only closed, and a close that fails on a failed log is ignored;
    `sync_on_loop=False`: every fsync round on the flusher thread)."""
    clock = SystemClock()
    if fs is None:
        engine = Engine.open(topo, data_dir, fsync=fsync, clock=clock)
    else:
        engine = Engine.open(topo, data_dir, fsync=fsync, clock=clock, fs=fs)
    engine.sync_on_loop = sync_on_loop
    try:
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            on = backend(engine)
            pipeline = Pipeline(on, topo, data_dir=data_dir, clock=clock,
                                executor=pool, instance_id="test", hostname="host",
                                random_source=lambda: 0.5, fsync=fsync)
            ticker = asyncio.create_task(_tick(engine))
            try:
                await pipeline.start()
                yield Running(engine, pipeline, on)
            finally:
                if before_drain is not None:
                    before_drain()
                await pipeline.drain(grace_s)
                ticker.cancel()
                with suppress(asyncio.CancelledError):
                    await ticker
    finally:
        if quiet_close:
            with suppress(Exception):
                engine.close()
        else:
            engine.flush()
            engine.close()


class CountingBackend(EmbeddedBackend):
    """The embedded backend, remembering every step it was asked to commit and how it went."""

    def __init__(self, engine: Engine) -> None:
        super().__init__(engine)
        self.steps: list[tuple[Step, str]] = []

    def commit_step(self, step: Step) -> Ticket:
        try:
            ticket = super().commit_step(step)
        except Exception as exc:
            self.steps.append((step, type(exc).__name__))
            raise
        self.steps.append((step, "ok"))
        return ticket
