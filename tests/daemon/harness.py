"""An in-process daemon: the real Supervisor, HTTP server, loader, diff and embedded
engine (on the test's temp dir), with a stand-in pipeline that runs no handlers.

`run_daemon(tmp_path, yaml, scenario)` starts `Supervisor.serve()` on a fresh
loop on a free port, runs `async scenario(client)` against it over real HTTP,
then stops the supervisor and checks that `serve()` returned 0.

Background failures fail the test instead of being logged and forgotten: an
exception that escapes a task or callback on the loop (asyncio only logs it),
the supervisor's timer task dying (`serve()` then raises), and an exception the
supervisor logs with its traceback (a background reload, a failed engine tick),
unless the test passes `logged_failures=True`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from runner.cli.daemon import event_loop
from runner.clock import Clock, ManualClock
from runner.daemon.supervisor import DaemonConfig, Parts, PipelineLike, Supervisor
from runner.engine import Engine
from runner.engine.contract import Backend
from runner.engine.embedded import EmbeddedBackend
from runner.pipeline.replies import Replies
from runner.pipeline.runtime import WorkerChanges, plan
from runner.pipeline.stats import PipelineStats
from runner.topology.diff import diff
from runner.topology.load import load
from runner.topology.model import Topology


@dataclass
class FakePipeline:
    topology: Topology
    stats_value: PipelineStats = field(default_factory=PipelineStats)
    notified: int = 0
    applied: list[Topology] = field(default_factory=list)
    drained: float | None = None

    async def start(self) -> None:
        pass

    async def apply(self, new: Topology) -> WorkerChanges:
        self.applied.append(new)
        changes = plan(self.topology, new)
        self.topology = new
        return changes

    async def drain(self, grace_s: float) -> None:
        self.drained = grace_s

    def notify(self) -> None:
        self.notified += 1

    def stats(self) -> PipelineStats:
        return self.stats_value


@dataclass
class Client:
    session: aiohttp.ClientSession
    url: str
    supervisor: Supervisor
    token: str | None = None

    async def call(
        self, method: str, path: str, body: Any = None, *, raw: bytes | None = None,
        token: str | None | bool = True,
    ) -> tuple[int, Any, dict[str, str]]:
        headers = {}
        use = self.token if token is True else (token or None)
        if use:
            headers["Authorization"] = f"Bearer {use}"
        kwargs: dict[str, Any] = {"headers": headers}
        if raw is not None:
            kwargs["data"] = raw
        elif body is not None:
            kwargs["json"] = body
        async with self.session.request(method, self.url + path, **kwargs) as resp:
            text = await resp.read()
            try:
                parsed = await resp.json(content_type=None) if text else None
            except ValueError:
                parsed = text.decode()
            return resp.status, parsed, dict(resp.headers)

    @property
    def backend(self) -> Backend:
        """The daemon's engine through the contract (what tests should look at)."""
        return self.supervisor.backend

    @property
    def pipeline(self) -> FakePipeline:
        pipeline = self.supervisor._pipeline
        assert isinstance(pipeline, FakePipeline)
        return pipeline


def embedded_parts(failures: list[tuple[str, str, str]] | None = None) -> Parts:
    """The real loader, diff and embedded engine; handler checks answer `failures`;
    the pipeline is a FakePipeline; the clock a ManualClock."""

    def open_engine(topology: Topology, config: DaemonConfig, clock: Clock) -> Engine:
        return Engine.open(topology, config.data_dir, fsync=config.fsync, clock=clock)

    def make_pipeline(
        backend: EmbeddedBackend, topology: Topology, config: DaemonConfig, clock: Clock,
        executor: concurrent.futures.ThreadPoolExecutor, replies: Replies,
    ) -> PipelineLike:
        return FakePipeline(topology)

    return Parts(
        load=load,
        check_handlers=lambda t: list(failures or []),
        diff=diff,
        open_engine=open_engine,
        make_pipeline=make_pipeline,
        clock=ManualClock(),
    )


def run_daemon(
    tmp_path: Path,
    yaml_text: str,
    scenario: Callable[[Client], Awaitable[None]],
    *,
    token: str | None = None,
    max_message_bytes: int = 1024,
    max_request_bytes: int = 64 * 1024,
    watch: bool = False,
    parts: Parts | None = None,
    path: Path | None = None,
    load_timeout_s: float = 30.0,
    logged_failures: bool = False,
) -> Supervisor:
    topo = path or tmp_path / "topology.yaml"
    if path is None:
        topo.write_text(yaml_text)
    loaded = load(str(topo))
    assert loaded.topology is not None, loaded.problems
    config = DaemonConfig(
        path=topo, data_dir=tmp_path / "data", port=0, token=token,
        max_message_bytes=max_message_bytes, max_request_bytes=max_request_bytes,
        watch=watch, grace_s=1.0, debounce_s=0.1, load_timeout_s=load_timeout_s,
    )
    supervisor = Supervisor(config, loaded, parts or embedded_parts())

    escaped: list[dict[str, Any]] = []

    async def main() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda _loop, ctx: escaped.append(ctx))
        started: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        serving = asyncio.create_task(
            supervisor.serve(ready=lambda host, port: started.set_result(port))
        )
        port = await asyncio.wait_for(started, 10)
        try:
            async with aiohttp.ClientSession() as session:
                await scenario(Client(session, f"http://127.0.0.1:{port}", supervisor, token))
        finally:
            supervisor.stop()
            assert await asyncio.wait_for(serving, 10) == 0

    caught = _Caught()
    supervisor_log = logging.getLogger("runner.daemon.supervisor")
    supervisor_log.addHandler(caught)
    try:
        # the loop `runner run` runs on (uvloop when installed)
        with asyncio.Runner(loop_factory=event_loop("auto")) as runner:
            runner.run(main())
    finally:
        supervisor_log.removeHandler(caught)
    if not logged_failures:
        assert not caught.records, [r.getMessage() for r in caught.records]
    assert not escaped, [f"{c.get('message')}: {c.get('exception')!r}" for c in escaped]
    return supervisor


class _Caught(logging.Handler):
    """Records logged with an exception's traceback (log.exception, exc_info=)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info is not None:
            self.records.append(record)
