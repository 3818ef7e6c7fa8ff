"""Idle cost: a real daemon with one consumer and one handled group, no traffic,
makes no engine calls and wakes no worker; a message still reaches its handler
at once (events, not polling).

In-process: the real Supervisor with the real parts (engine, pipeline, HTTP);
only `open_engine` is wrapped so that every call of a public Engine method is
counted. Before issue 10 the daemon called the engine ~51 times a second here.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp

from runner.clock import Clock
from runner.daemon.console import ConsoleMode
from runner.daemon.supervisor import DaemonConfig, Supervisor, real_parts
from runner.engine import Engine, FsyncPolicy
from runner.pipeline.runtime import Pipeline
from runner.topology.load import load
from runner.topology.model import Topology
from tests.daemon import idle_handlers

TOPOLOGY = """\
version: 1
name: idle
topics:
  events: {partitions: 2}
queues:
  jobs: {}
consumers:
  worker: {queue: jobs, handler: "tests.daemon.idle_handlers:note"}
consumer_groups:
  readers: {topics: [events], handler: "tests.daemon.idle_handlers:note"}
"""

IDLE_WINDOW_S = 2.0


def _counted(engine: Engine, calls: dict[str, int]) -> Engine:
    """Count every call of the engine's public methods (on this instance only)."""
    for name in dir(Engine):
        attr = getattr(Engine, name)
        if name.startswith("_") or not callable(attr) or isinstance(attr, type):
            continue
        method = getattr(engine, name)

        def wrapper(*args: Any, _m: Any = method, _n: str = name, **kw: Any) -> Any:
            calls[_n] = calls.get(_n, 0) + 1
            return _m(*args, **kw)

        setattr(engine, name, wrapper)
    return engine


def test_an_idle_daemon_makes_no_engine_calls_and_delivers_at_once(tmp_path: Path) -> None:
    path = tmp_path / "topology.yaml"
    path.write_text(TOPOLOGY)
    loaded = load(str(path))
    assert loaded.topology is not None, loaded.problems
    calls: dict[str, int] = {}
    parts = real_parts()
    open_engine = parts.open_engine

    def counting(topology: Topology, config: DaemonConfig, clock: Clock) -> Engine:
        return _counted(open_engine(topology, config, clock), calls)

    parts.open_engine = counting
    config = DaemonConfig(path=path, data_dir=tmp_path / "data", port=0, watch=False,
                          fsync=FsyncPolicy.ALWAYS, grace_s=1.0, console=ConsoleMode.OFF)
    supervisor = Supervisor(config, loaded, parts)
    idle_handlers.calls.clear()

    async def main() -> None:
        started: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        serving = asyncio.create_task(
            supervisor.serve(ready=lambda host, port: started.set_result(port)))
        port = await asyncio.wait_for(started, 10)
        try:
            pipeline = supervisor._pipeline
            assert isinstance(pipeline, Pipeline)
            await asyncio.sleep(0.5)  # members joined, first fetches and reads done
            calls.clear()
            woken = pipeline.wakeups()
            await asyncio.sleep(IDLE_WINDOW_S)
            assert calls == {}, f"engine calls while idle: {calls}"
            assert pipeline.wakeups() == woken
            async with aiohttp.ClientSession() as session:
                url = f"http://127.0.0.1:{port}/v1/queues/jobs/messages"
                sent = time.monotonic()
                async with session.post(url, json={"messages": [{"body": {"n": 1}}]}) as r:
                    assert r.status in (200, 202), await r.text()
                for _ in range(200):
                    if idle_handlers.calls:
                        break
                    await asyncio.sleep(0.005)
                assert idle_handlers.calls, "the handler never ran"
                latency = idle_handlers.calls[0] - sent
                assert latency < 0.05, f"publish -> handler took {latency * 1000:.1f} ms"
                url = f"http://127.0.0.1:{port}/v1/topics/events/records"
                idle_handlers.calls.clear()
                sent = time.monotonic()
                async with session.post(url, json={"records": [{"value": {"n": 2}}]}) as r:
                    assert r.status in (200, 202), await r.text()
                for _ in range(200):
                    if idle_handlers.calls:
                        break
                    await asyncio.sleep(0.005)
                assert idle_handlers.calls, "the group's handler never ran"
                latency = idle_handlers.calls[0] - sent
                assert latency < 0.05, f"append -> handler took {latency * 1000:.1f} ms"
        finally:
            supervisor.stop()
            assert await asyncio.wait_for(serving, 10) == 0

    asyncio.run(main())
