"""Hot reload in-process: admin reload, watched files, invalid and unsafe changes, counters."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import threading
from pathlib import Path
from typing import Any

import pytest

from runner.clock import Clock
from runner.daemon.supervisor import DaemonConfig, Supervisor
from runner.engine import Engine
from runner.errors import EngineError, HandlerImportError
from runner.pipeline.handler import check_handlers
from runner.pipeline.runtime import WorkerChanges
from runner.topology.load import load
from runner.topology.model import Topology
from tests.daemon.harness import Client, FakePipeline, embedded_parts, run_daemon

BASE = """\
version: 1
name: reloading
queues:
  work: {}
"""

WITH_JOBS = BASE + "  jobs: {max_priority: 5}\n"


def counted(c: Client) -> dict[str, int]:
    return dict(c.supervisor.reloads.counts)


async def wait_until(predicate: object, timeout_s: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while loop.time() < deadline:
        if predicate():  # type: ignore[operator]
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not met in time")


def test_admin_reload_applies_a_safe_change(tmp_path: Path) -> None:
    topo = tmp_path / "topology.yaml"

    async def scenario(c: Client) -> None:
        status, body, _ = await c.call("POST", "/v1/admin/reload")
        assert (status, body) == (200, {"generation": 1, "changes": []})
        topo.write_text(WITH_JOBS)
        status, body, _ = await c.call("POST", "/v1/admin/reload")
        assert status == 200 and body["generation"] == 2
        assert [(ch["kind"], ch["entity"], ch["name"], ch["safe"]) for ch in body["changes"]] == [
            ("added", "queue", "jobs", True)
        ]
        assert "jobs" in c.backend.topology.queue_map()
        assert "jobs" in c.pipeline.applied[-1].queue_map()
        status, body, _ = await c.call("POST", "/v1/queues/jobs/messages", {"body": 1})
        assert status == 202
        _, st, _ = await c.call("GET", "/v1/status")
        assert st["topology"]["generation"] == 2 and st["topology"]["last_reload_error"] is None
        assert counted(c) == {"applied": 2, "invalid": 0, "refused": 0}

    topo.write_text(BASE)
    run_daemon(tmp_path, "", scenario, path=topo)


def test_an_invalid_file_is_422_with_file_line_and_keeps_running(tmp_path: Path) -> None:
    topo = tmp_path / "topology.yaml"

    async def scenario(c: Client) -> None:
        topo.write_text(BASE + "  jobs: {max_lenght: 3}\n")
        status, body, _ = await c.call("POST", "/v1/admin/reload")
        assert status == 422
        assert body["error"].startswith(f"invalid topology: {topo}:5:")
        problem = body["problems"][0]
        assert (problem["file"], problem["line"]) == (str(topo), 5)
        assert "max_lenght" in problem["message"]
        assert c.supervisor.topology.queue_map().keys() == {"work"}
        _, st, _ = await c.call("GET", "/v1/status")
        assert st["topology"]["generation"] == 1
        assert st["topology"]["last_reload_result"] == "invalid"
        assert f"{topo}:5:" in st["topology"]["last_reload_error"]
        _, text, _ = await c.call("GET", "/metrics")
        assert 'runner_topology_reloads_total{result="invalid"} 1.0' in text

    topo.write_text(BASE)
    run_daemon(tmp_path, "", scenario, path=topo)


def test_unsafe_changes_are_refused_whole_with_409(tmp_path: Path) -> None:
    topo = tmp_path / "topology.yaml"

    async def scenario(c: Client) -> None:
        await c.call("POST", "/v1/queues/work/messages", {"body": 1})
        # removing a queue that holds a message + adding one: nothing is applied
        topo.write_text("version: 1\nname: reloading\nqueues:\n  other: {}\n")
        status, body, _ = await c.call("POST", "/v1/admin/reload")
        assert status == 409
        assert body["error"] == (
            "refused 1 unsafe change(s): queue 'work': the queue holds messages"
        )
        kinds = {(ch["kind"], ch["name"], ch["safe"]) for ch in body["changes"]}
        assert kinds == {("removed", "work", False), ("added", "other", True)}
        assert "other" not in c.backend.topology.queue_map()
        # once drained, removing it is safe
        _, pulled, _ = await c.call("POST", "/v1/queues/work/pull", {})
        await c.call("POST", "/v1/queues/work/ack",
                     {"delivery_ids": [pulled["messages"][0]["delivery_id"]]})
        status, body, _ = await c.call("POST", "/v1/admin/reload")
        assert status == 200, body
        assert counted(c) == {"applied": 1, "invalid": 0, "refused": 1}

    topo.write_text(BASE)
    run_daemon(tmp_path, "", scenario, path=topo)


def test_a_handler_that_does_not_import_makes_the_reload_invalid(tmp_path: Path) -> None:
    topo = tmp_path / "topology.yaml"
    parts = embedded_parts()
    parts.check_handlers = check_handlers

    async def scenario(c: Client) -> None:
        topo.write_text(BASE + "consumers:\n  mailer:\n    queue: work\n"
                        "    handler: no_such_module_xyz:send\n")
        status, body, _ = await c.call("POST", "/v1/admin/reload")
        assert status == 422
        assert body["error"].startswith(f"handler import failed: {topo}:8:14:")
        assert "consumer 'mailer'" in body["error"]
        assert "no_such_module_xyz:send" in body["error"]

    topo.write_text(BASE)
    run_daemon(tmp_path, "", scenario, path=topo, parts=parts)


def test_watched_file_changes_reload_once_per_save_burst_and_ignore_noop_saves(
    tmp_path: Path,
) -> None:
    topo = tmp_path / "topology.yaml"

    async def scenario(c: Client) -> None:
        # a burst of writes (editor save) is one reload
        for text in (BASE + "  a: {}\n", BASE + "  b: {}\n", WITH_JOBS):
            topo.write_text(text)
            await asyncio.sleep(0.01)
        await wait_until(lambda: counted(c)["applied"] == 1)
        await asyncio.sleep(0.4)
        assert counted(c)["applied"] == 1
        assert c.supervisor.topology.queue_map().keys() == {"work", "jobs"}
        # the same content written again: not a reload, not counted
        topo.write_text(WITH_JOBS)
        os.utime(topo)
        await asyncio.sleep(0.5)
        assert counted(c) == {"applied": 1, "invalid": 0, "refused": 0}
        # an editor's atomic save: write a temp file, rename it over the topology
        tmp = tmp_path / ".topology.yaml.swp"
        tmp.write_text(BASE)
        tmp.replace(topo)
        await wait_until(lambda: counted(c)["applied"] == 2)
        assert c.supervisor.topology.queue_map().keys() == {"work"}

    topo.write_text(BASE)
    run_daemon(tmp_path, "", scenario, path=topo, watch=True)


def test_a_watched_directory_reloads_on_added_changed_and_deleted_files(tmp_path: Path) -> None:
    topo = tmp_path / "topology"
    topo.mkdir()
    (topo / "a.yaml").write_text(BASE)

    async def scenario(c: Client) -> None:
        (topo / "b.yaml").write_text("version: 1\nqueues:\n  jobs: {}\n")
        await wait_until(lambda: "jobs" in c.supervisor.topology.queue_map())
        (topo / "b.yaml").write_text("version: 1\nqueues:\n  jobs2: {}\n")
        await wait_until(lambda: "jobs2" in c.supervisor.topology.queue_map())
        (topo / "notes.txt").write_text("not a topology file")
        (topo / "b.yaml").unlink()
        await wait_until(lambda: c.supervisor.topology.queue_map().keys() == {"work"})
        assert counted(c) == {"applied": 3, "invalid": 0, "refused": 0}
        (topo / "c.yaml").write_text("version: 1\nqueues:\n  work: {}\n")  # duplicate name
        await wait_until(lambda: counted(c)["invalid"] == 1)
        assert c.supervisor.status()["topology"]["last_reload_error"].startswith(
            "invalid topology: "
        )

    run_daemon(tmp_path, "", scenario, path=topo, watch=True)


def test_a_deleted_topology_file_is_an_invalid_reload_and_a_new_save_applies(
    tmp_path: Path,
) -> None:
    topo = tmp_path / "topology.yaml"

    async def scenario(c: Client) -> None:
        topo.unlink()
        await wait_until(lambda: counted(c)["invalid"] == 1)
        assert c.supervisor.status()["topology"]["last_reload_error"] == (
            f"{topo}: the topology path does not exist"
        )
        topo.write_text(WITH_JOBS)
        await wait_until(lambda: "jobs" in c.supervisor.topology.queue_map())

    topo.write_text(BASE)
    run_daemon(tmp_path, "", scenario, path=topo, watch=True)


def test_a_pipeline_that_refuses_the_new_topology_rolls_the_engine_back(tmp_path: Path) -> None:
    topo = tmp_path / "topology.yaml"
    parts = embedded_parts()

    class Refusing(FakePipeline):
        async def apply(self, new: Topology) -> WorkerChanges:
            raise HandlerImportError("consumer 'x': handler 'gone:fn': cannot import module")

    parts.make_pipeline = (
        lambda backend, topology, config, clock, executor, replies: Refusing(topology))

    async def scenario(c: Client) -> None:
        topo.write_text(WITH_JOBS)
        status, body, _ = await c.call("POST", "/v1/admin/reload")
        assert (status, body["error"]) == (
            422, "pipeline refused: consumer 'x': handler 'gone:fn': cannot import module"
        )
        assert c.supervisor.topology.queue_map().keys() == {"work"}
        assert c.backend.topology.queue_map().keys() == {"work"}
        assert counted(c) == {"applied": 0, "invalid": 1, "refused": 0}

    topo.write_text(BASE)
    run_daemon(tmp_path, "", scenario, path=topo, parts=parts)


def test_a_reload_whose_read_hangs_gives_up_after_the_load_timeout(tmp_path: Path) -> None:
    # a topology file on a dead NFS server: the read never returns; the reload lock
    # was held for good and every later reload (admin, SIGHUP, watch) waited forever
    topo = tmp_path / "topology.yaml"
    topo.write_text(BASE)
    gate = threading.Event()
    hang = [True]

    def load_hanging(path: str) -> Any:
        if hang[0]:
            gate.wait(10)
        return load(path)

    parts = dataclasses.replace(embedded_parts(), load=load_hanging)

    async def scenario(c: Client) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        status, body, _ = await c.call("POST", "/v1/admin/reload")
        assert loop.time() - started < 5
        assert (status, body["error"]) == (422, (
            f"{topo}: reading the topology did not finish within 0.3s (--load-timeout; a "
            "hung file system?); the running topology stays"))
        status, body, _ = await c.call("POST", "/v1/admin/reload")
        assert (status, body["error"]) == (422, (
            f"{topo}: the previous read of the topology has not finished (a hung file "
            "system?); the running topology stays"))
        assert (await c.call("GET", "/healthz"))[0] == 200
        hang[0] = False
        gate.set()  # the file system answers again
        await wait_until(lambda: c.supervisor._reloading.loading is not None
                         and c.supervisor._reloading.loading.done())
        topo.write_text(WITH_JOBS)
        status, body, _ = await c.call("POST", "/v1/admin/reload")
        assert status == 200, body
        assert "jobs" in c.backend.topology.queue_map()

    run_daemon(tmp_path, "", scenario, path=topo, parts=parts, load_timeout_s=0.3)


def test_a_dead_timer_task_stops_the_daemon_and_fails_serve(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    """Without ticks leases, retries and TTLs never come due: the daemon must not run
    on quietly (this is how the old test fake failed every test, unseen)."""
    topo = tmp_path / "topology.yaml"
    topo.write_text(BASE)
    parts = embedded_parts()
    open_real = parts.open_engine

    def open_engine(topology: Topology, config: DaemonConfig, clock: Clock) -> Engine:
        engine = open_real(topology, config, clock)

        def broken() -> float | None:
            raise RuntimeError("no timers here")

        engine.timer_due = broken  # type: ignore[method-assign]
        return engine

    parts.open_engine = open_engine
    config = DaemonConfig(path=topo, data_dir=tmp_path / "data", port=0, watch=False,
                          grace_s=1.0)
    supervisor = Supervisor(config, load(str(topo)), parts)

    async def main() -> None:
        await asyncio.wait_for(supervisor.serve(), 10)  # stops by itself

    with caplog.at_level(logging.ERROR), pytest.raises(EngineError) as failed:
        asyncio.run(main())
    assert str(failed.value) == (
        "the engine's timer task failed (RuntimeError: no timers here); the daemon stopped"
    )
    assert "the engine's timer task failed; stopping" in caplog.text
