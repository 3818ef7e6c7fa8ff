"""A failed fsync under the real daemon: the real Supervisor and HTTP server over a
real Engine on a simulated disk (`tests.faultfs.SimDisk`) whose next fsync fails.
The publish is refused (503), the log refuses everything after it, /readyz and
`runner_storage_failed_logs` report it, a log line names the file, other logs
go on, and after a restart recovery has every acknowledged message."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from runner.clock import Clock, ManualClock
from runner.daemon.supervisor import DaemonConfig, Parts, PipelineLike
from runner.engine import Engine, FsyncPolicy
from runner.engine.embedded import EmbeddedBackend
from runner.pipeline.replies import Replies
from runner.pipeline.runtime import plan
from runner.topology.diff import diff
from runner.topology.load import load
from runner.topology.model import Topology
from tests.daemon.harness import Client, FakePipeline, run_daemon
from tests.faultfs import SimDisk

TOPOLOGY = """\
version: 1
name: failing
queues:
  a: {}
  b: {}
"""


def _engine_opener(
    disk: SimDisk, opened: list[Engine],
) -> Callable[[Topology, DaemonConfig, Clock], Engine]:
    """Parts.open_engine on `disk` under --fsync always, each engine kept in `opened`."""
    def open_engine(topology: Topology, config: DaemonConfig, clock: Clock) -> Engine:
        engine = Engine.open(topology, config.data_dir, fsync=FsyncPolicy.ALWAYS, clock=clock,
                             fs=disk)
        opened.append(engine)
        return engine

    return open_engine


def _parts(disk: SimDisk, opened: list[Engine]) -> Parts:
    open_engine = _engine_opener(disk, opened)

    def make_pipeline(
        backend: EmbeddedBackend, topology: Topology, config: DaemonConfig, clock: Clock,
        executor: concurrent.futures.ThreadPoolExecutor, replies: Replies,
    ) -> PipelineLike:
        assert plan is not None
        return FakePipeline(topology)

    return Parts(load=load, check_handlers=lambda t: [], diff=diff, open_engine=open_engine,
                 make_pipeline=make_pipeline, clock=ManualClock())


def test_a_failed_fsync_is_refused_reported_and_recovered(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    disk = SimDisk()
    opened: list[Engine] = []
    data = tmp_path / "data"
    qlog = f"{data}/queues/a/00000000000000000000.log"

    async def scenario(c: Client) -> None:
        assert (await c.call("POST", "/v1/queues/a/messages", {"body": "kept"}))[0] == 202
        disk.fail_sync_at = disk.syncs + 1
        status, body, headers = await c.call("POST", "/v1/queues/a/messages", {"body": "lost"})
        assert status == 503 and headers["Retry-After"]
        assert body["error"] == (
            f"storage error: fsync of {qlog} failed (Input/output error (simulated fsync "
            f"failure)): the log refuses writes and reads until the runner is restarted "
            f"and recovers it from disk")
        for method, path, payload in (("POST", "/v1/queues/a/messages", {"body": "later"}),
                                      ("POST", "/v1/queues/a/pull", {"max": 5})):
            status, again, _ = await c.call(method, path, payload)
            assert (status, again) == (503, body), path
        status, ready, _ = await c.call("GET", "/readyz")
        assert (status, ready["status"]) == (503, "storage failed")
        assert list(ready["failed_logs"]) == [qlog]
        # the contract's StorageHealth says the same (what /readyz will ask once it moves)
        health = c.backend
        assert isinstance(health, EmbeddedBackend)
        assert health.failed_logs() == ready["failed_logs"]
        _, metrics, _ = await c.call("GET", "/metrics")
        assert "runner_storage_failed_logs 1.0" in metrics
        assert (await c.call("POST", "/v1/queues/b/messages", {"body": "other"}))[0] == 202

    with caplog.at_level(logging.ERROR, logger="runner.log.segment"):
        run_daemon(tmp_path, TOPOLOGY, scenario, parts=_parts(disk, opened))
    assert any(r.getMessage().startswith(f"fsync of {qlog} failed") for r in caplog.records)
    assert disk.sync_failures == 1

    topology = opened[0].topology
    after = Engine.open(topology, data, fsync=FsyncPolicy.ALWAYS, fs=disk.crash())
    try:
        assert after.failed_logs() == {}
        assert [d.body for d in after.peek("a", 10)][:1] == [b'"kept"']
        assert [d.body for d in after.peek("b", 10)] == [b'"other"']
    finally:
        after.close()


class _FailingFileDisk(SimDisk):
    """A simulated disk whose syncs of one file fail once `armed` (every other file
    syncs)."""

    def __init__(self) -> None:
        super().__init__()
        self.paths: dict[int, str] = {}
        self.armed: str | None = None

    def open(self, path: Path, *, create: bool = False, truncate: bool = False) -> int:
        fd = super().open(path, create=create, truncate=truncate)
        self.paths[fd] = str(path)
        return fd

    def sync(self, fd: int) -> None:
        if self.armed is not None and self.paths.get(fd) == self.armed:
            self.fail_sync_at = self.syncs + 1
        super().sync(fd)


def test_a_failed_fsync_at_stop_is_not_a_clean_stop(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Under --fsync never the last fsync is the one at stop: when it fails, the
    daemon stops (the data dir lock released) but says so and serve() raises, so
    `runner run` exits 1 instead of 0 ("runner run: closing the engine failed...")."""
    import asyncio

    import aiohttp

    from runner.daemon.supervisor import Supervisor
    from runner.errors import StorageError
    from tests.daemon.harness import Client

    disk = _FailingFileDisk()
    data = tmp_path / "data"
    qlog = f"{data}/queues/a/00000000000000000000.log"
    topo_path = tmp_path / "topology.yaml"
    topo_path.write_text(TOPOLOGY)
    loaded = load(str(topo_path))

    def open_engine(topology: Topology, config: DaemonConfig, clock: Clock) -> Engine:
        return Engine.open(topology, config.data_dir, fsync=FsyncPolicy.NEVER, clock=clock,
                           fs=disk)

    parts = Parts(load=load, check_handlers=lambda t: [], diff=diff, open_engine=open_engine,
                  make_pipeline=lambda *a: FakePipeline(a[1]), clock=ManualClock())
    supervisor = Supervisor(DaemonConfig(path=topo_path, data_dir=data, port=0, grace_s=1.0,
                                         watch=False), loaded, parts)

    async def main() -> None:
        started: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        serving = asyncio.create_task(
            supervisor.serve(ready=lambda host, port: started.set_result(port)))
        port = await asyncio.wait_for(started, 10)
        async with aiohttp.ClientSession() as session:
            c = Client(session, f"http://127.0.0.1:{port}", supervisor, None)
            assert (await c.call("POST", "/v1/queues/a/messages", {"body": "unsynced"}))[0] == 202
        disk.armed = qlog
        supervisor.stop()
        with pytest.raises(StorageError) as raised:
            await asyncio.wait_for(serving, 10)
        assert str(raised.value).startswith(f"fsync of {qlog} failed (Input/output error "
                                            "(simulated fsync failure))")

    with caplog.at_level(logging.ERROR):
        asyncio.run(main())
    assert disk.sync_failures == 1
    stopped = [r.getMessage() for r in caplog.records
               if getattr(r, "event", None) == "stopped_unsynced"]
    assert len(stopped) == 1 and stopped[0].startswith(
        f"stopped, but the last fsync failed: fsync of {qlog} failed")
    assert not any(getattr(r, "event", None) == "stopped" for r in caplog.records)
    disk.armed = None
    again = Engine.open(loaded.topology, data, fsync=FsyncPolicy.NEVER, fs=disk)  # unlocked
    again.close()


def test_engine_close_names_every_part_whose_last_fsync_failed(tmp_path: Path) -> None:
    from runner.engine import OutMessage
    from runner.errors import StorageError

    disk = _FailingFileDisk()
    topo_path = tmp_path / "topology.yaml"
    topo_path.write_text(TOPOLOGY)
    topology = load(str(topo_path)).topology
    assert topology is not None
    data = tmp_path / "data"
    engine = Engine.open(topology, data, fsync=FsyncPolicy.NEVER, fs=disk)
    engine.publish_to_queue("a", [OutMessage(b"x", "", {})])
    disk.armed = f"{data}/queues/a/00000000000000000000.log"
    with pytest.raises(StorageError) as raised:
        engine.close()
    message = str(raised.value)
    assert message.startswith(f"closing the engine failed: fsync of {disk.armed} failed")
    assert message.endswith("(what was written since the last successful fsync may be lost)")
    disk.armed = None
    Engine.open(topology, data, fsync=FsyncPolicy.NEVER, fs=disk).close()  # lock released


GROUPED = """\
version: 1
name: grouped
topics:
  events: {}
  results: {}
exchanges:
  out: {type: fanout}
queues:
  outbox: {}
bindings:
  - {exchange: out, queue: outbox}
consumer_groups:
  g: {topic: events, handler: "tests.pipeline.pipeline_handlers:forward",
      delivery: at-least-once}
"""


def test_a_group_whose_offsets_log_failed_stops_visibly_and_loses_nothing(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The real pipeline's group member under the daemon: its offsets log fails an
    fsync; the member stops taking records (one error line naming the log) instead of
    its task dying silently, /readyz names the log, other logs go on, and after a
    restart every record past the last durable commit is handled again."""
    from runner.engine import TopicPartition
    from runner.pipeline.runtime import Pipeline

    disk = _FailingFileDisk()
    opened: list[Engine] = []
    data = tmp_path / "data"
    offsets_log = f"{data}/__consumer_offsets/00000000000000000000.log"

    open_engine = _engine_opener(disk, opened)

    def make_pipeline(
        backend: EmbeddedBackend, topology: Topology, config: DaemonConfig, clock: Clock,
        executor: concurrent.futures.ThreadPoolExecutor, replies: Replies,
    ) -> PipelineLike:
        return Pipeline(backend, topology, data_dir=config.data_dir, clock=clock,
                        executor=executor, instance_id="test", hostname="host",
                        fsync=FsyncPolicy.ALWAYS, fs=disk, replies=replies)

    parts = Parts(load=load, check_handlers=lambda t: [], diff=diff, open_engine=open_engine,
                  make_pipeline=make_pipeline, clock=ManualClock())
    tp = TopicPartition("events", 0)

    async def until(cond: Callable[[], bool]) -> None:
        for _ in range(500):
            if cond():
                return
            await asyncio.sleep(0.02)
        raise AssertionError("condition not met in time")

    def stopped() -> list[str]:
        return [r.getMessage() for r in caplog.records
                if getattr(r, "event", None) == "member_stopped"]

    async def scenario(c: Client) -> None:
        engine = opened[0]
        for i in range(3):
            assert (await c.call("POST", "/v1/topics/events/records",
                                 {"value": {"id": i}}))[0] == 202
        await until(lambda: engine.position("g", tp) == 3)
        disk.armed = offsets_log
        assert (await c.call("POST", "/v1/topics/events/records",
                             {"value": {"id": 3}}))[0] == 202
        await until(lambda: bool(engine.failed_logs()))  # record 3's commit failed
        for i in range(4, 6):  # the next commit is refused at once
            assert (await c.call("POST", "/v1/topics/events/records",
                                 {"value": {"id": i}}))[0] == 202
        await until(lambda: bool(stopped()))
        status, ready, _ = await c.call("GET", "/readyz")
        assert (status, ready["status"]) == (503, "storage failed")
        assert list(ready["failed_logs"]) == [offsets_log]
        assert (await c.call("POST", "/v1/topics/events/records",
                             {"value": {"id": 6}}))[0] == 202  # other logs go on
        await asyncio.sleep(0.3)
        assert len(stopped()) == 1

    with caplog.at_level(logging.INFO):
        run_daemon(tmp_path, GROUPED, scenario, parts=parts)
    assert stopped() == [
        f"group g: member g-1@host stops taking records: fsync of {offsets_log} failed "
        "(Input/output error (simulated fsync failure)): the log refuses writes and reads "
        "until the runner is restarted and recovers it from disk; it leaves the group, "
        "its partitions go to the other members; records past its last durable commit "
        "are handled again after a restart"]
    assert not [r for r in caplog.records if "worker task failed" in r.getMessage()]

    disk.armed = None
    topology = opened[0].topology
    after = Engine.open(topology, data, fsync=FsyncPolicy.ALWAYS, fs=disk.crash())
    try:
        assert after.failed_logs() == {}
        committed = after.position("g", tp)
        assert committed >= 3  # what was committed durably stays committed
        # the rest is still there to handle again
        records, _ = after.read("events", 0, committed)
        assert [r.offset for r in records] == list(range(committed, 7))
        handled = sorted(orjson.loads(d.body)["id"] for d in after.peek("outbox", 100))
        assert set(handled) >= {0, 1, 2}
    finally:
        after.close()
