"""Group commit off the event loop over real HTTP (issue 10 item 3): the real
Supervisor and HTTP server over a real Engine on a simulated disk
(`tests.faultfs.SimDisk`) under `--fsync always`. Concurrent publishes are
written while an fsync runs and share the next one; none is answered before
its bytes are on the (simulated) disk; a failed fsync answers that round's
requests 503 and later requests to other queues go on."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from pathlib import Path

from runner.clock import Clock, ManualClock
from runner.daemon.supervisor import DaemonConfig, Parts, PipelineLike
from runner.engine import Engine, FsyncPolicy
from runner.engine.embedded import EmbeddedBackend
from runner.pipeline.replies import Replies
from runner.topology.diff import diff
from runner.topology.load import load
from runner.topology.model import Topology
from tests.daemon.harness import Client, FakePipeline, run_daemon
from tests.faultfs import SimDisk

TOPOLOGY = """\
version: 1
name: grouped
queues:
  gate: {}
  a: {}
  b: {}
topics:
  t: {}
consumer_groups:
  g: {topics: [t]}
"""


class HeldDisk(SimDisk):
    """A simulated disk that counts syncs per file, holds the syncs of files under
    `hold` until `release` is set, and fails the next sync of a file under `fail`."""

    def __init__(self) -> None:
        super().__init__()
        self.paths: dict[int, str] = {}
        self.synced: list[str] = []
        self.hold: str | None = None
        self.release = threading.Event()
        self.holding = threading.Event()
        self.fail: str | None = None

    def open(self, path: Path, *, create: bool = False, truncate: bool = False) -> int:
        fd = super().open(path, create=create, truncate=truncate)
        self.paths[fd] = str(path)
        return fd

    def sync(self, fd: int) -> None:
        path = self.paths.get(fd, "?")
        if self.hold is not None and f"/{self.hold}/" in path:
            self.holding.set()
            self.release.wait(20)
        if self.fail is not None and f"/{self.fail}/" in path:
            self.fail = None
            self.fail_sync_at = self.syncs + 1
        super().sync(fd)
        self.synced.append(path)

    def count(self, directory: str) -> int:
        return sum(1 for p in self.synced if f"/{directory}/" in p)

    def durable(self, path: Path) -> bytes:
        """The bytes of `path` a power cut now would keep."""
        node = self._node(path)
        return bytes(getattr(node, "durable", b""))


def _parts(disk: HeldDisk) -> Parts:
    def open_engine(topology: Topology, config: DaemonConfig, clock: Clock) -> Engine:
        engine = Engine.open(topology, config.data_dir, fsync=FsyncPolicy.ALWAYS,
                             clock=clock, fs=disk)
        # a held fsync on the loop would stall the loop itself: these tests are
        # about the flusher thread (the loop's own rounds: test_engine_tickets and
        # the fast-lane tests' loop-round test)
        engine.sync_on_loop = False
        return engine

    def make_pipeline(
        backend: EmbeddedBackend, topology: Topology, config: DaemonConfig, clock: Clock,
        executor: concurrent.futures.ThreadPoolExecutor, replies: Replies,
    ) -> PipelineLike:
        return FakePipeline(topology)

    return Parts(load=load, check_handlers=lambda t: [], diff=diff, open_engine=open_engine,
                 make_pipeline=make_pipeline, clock=ManualClock())


async def _held_round(c: Client, disk: HeldDisk) -> asyncio.Task[tuple[int, object, object]]:
    """A publish to queue `gate` whose fsync is held (in the flusher thread). Of 101
    messages: a request that big is not merged with others (runner.engine.merged
    holds the writes that come while a merged batch waits for its fsync)."""
    disk.hold = "gate"
    task = asyncio.create_task(c.call("POST", "/v1/queues/gate/messages",
                                      {"messages": [{"body": "g"}] * 101}))
    for _ in range(2000):
        if disk.holding.is_set():
            return task
        await asyncio.sleep(0.005)
    raise AssertionError("the gate's fsync was not reached")


async def _until(predicate: object, what: str) -> None:
    assert callable(predicate)
    for _ in range(2000):
        if predicate():
            return
        await asyncio.sleep(0.005)
    raise AssertionError(what)


def test_concurrent_publishes_share_fsyncs_and_are_answered_only_once_durable(
        tmp_path: Path) -> None:
    disk = HeldDisk()
    data = tmp_path / "data"
    alog = data / "queues" / "a" / "00000000000000000000.log"
    tlog = data / "topics" / "t-0" / "00000000000000000000.log"
    n = 40

    async def scenario(c: Client) -> None:
        gate = await _held_round(c, disk)
        early: list[str] = []

        async def publish(i: int) -> int:
            body = f"m-{i:03d}"
            status, _, _ = await c.call("POST", "/v1/queues/a/messages", {"body": body})
            if f'"{body}"'.encode() not in disk.durable(alog):
                early.append(body)  # answered before its bytes were synced
            return status

        async def append(i: int) -> int:
            value = f"r-{i:03d}"
            status, _, _ = await c.call("POST", "/v1/topics/t/records", {"value": value})
            if f'"{value}"'.encode() not in disk.durable(tlog):
                early.append(value)
            return status

        before = disk.count("a"), disk.count("t-0")
        tasks = [asyncio.create_task(publish(i)) for i in range(n)]
        tasks += [asyncio.create_task(append(i)) for i in range(n // 4)]
        # every request is written (the loop never waited for the held fsync) ...
        backend = c.backend
        await _until(lambda: backend.queue_info("a").ready == n, "publishes not written")
        await _until(lambda: backend.partitions("t")[0].log_end_offset == n // 4,
                     "appends not written")
        await asyncio.sleep(0.05)
        # ... and none is answered: their fsync waits behind the held one
        assert not any(t.done() for t in tasks)
        assert not gate.done()
        # not readable yet either: a topic's readers see synced records only
        assert backend.read("t", 0, 0).records == ()
        disk.release.set()
        statuses = await asyncio.gather(*tasks)
        assert statuses == [202] * len(tasks)
        assert (await gate)[0] == 202
        assert early == []
        # 40 publishes, 10 appends: one shared fsync per log (the held round had none)
        assert (disk.count("a"), disk.count("t-0")) == (before[0] + 1, before[1] + 1)
        assert len(backend.read("t", 0, 0, max_records=100).records) == n // 4

    run_daemon(tmp_path, TOPOLOGY, scenario, parts=_parts(disk))


def test_a_failed_fsync_answers_that_rounds_requests_503_and_later_rounds_go_on(
        tmp_path: Path) -> None:
    disk = HeldDisk()
    data = tmp_path / "data"
    alog = f"{data}/queues/a/00000000000000000000.log"

    async def scenario(c: Client) -> None:
        gate = await _held_round(c, disk)
        backend = c.backend
        tasks = [asyncio.create_task(c.call("POST", f"/v1/queues/{q}/messages",
                                            {"body": f"{q}-{i}"}))
                 for i in range(5) for q in ("a", "b")]
        await _until(lambda: backend.queue_info("a").ready == 5
                     and backend.queue_info("b").ready == 5, "publishes not written")
        disk.fail = "a"
        disk.release.set()
        assert (await gate)[0] == 202  # its round was synced before
        answers = await asyncio.gather(*tasks)
        want = (f"storage error: fsync of {alog} failed (Input/output error (simulated fsync "
                "failure)): the log refuses writes and reads until the runner is restarted "
                "and recovers it from disk")
        # one round held every one of them: all answered 503 with a's error
        assert [(s, b["error"]) for s, b, _ in answers] == [(503, want)] * 10  # type: ignore[index]
        assert all(h["Retry-After"] for _, _, h in answers)  # type: ignore[index]
        # a later round of another log succeeds; the failed log refuses as without tickets
        assert (await c.call("POST", "/v1/queues/b/messages", {"body": "later"}))[0] == 202
        status, body, _ = await c.call("POST", "/v1/queues/a/messages", {"body": "x"})
        assert (status, body["error"]) == (503, want)
        assert (await c.call("POST", "/v1/topics/t/records", {"value": "v"}))[0] == 202

    run_daemon(tmp_path, TOPOLOGY, scenario, parts=_parts(disk))
    assert disk.sync_failures == 1


def test_ack_nack_and_commit_answer_after_their_fsync_without_holding_the_loop(
        tmp_path: Path) -> None:
    disk = HeldDisk()

    async def scenario(c: Client) -> None:
        for body in ("x", "y", "z"):
            assert (await c.call("POST", "/v1/queues/a/messages", {"body": body}))[0] == 202
        assert (await c.call("POST", "/v1/topics/t/records", {"value": "v"}))[0] == 202
        status, pulled, _ = await c.call("POST", "/v1/queues/a/pull", {"max": 3})
        assert status == 200
        ids = [m["delivery_id"] for m in pulled["messages"]]
        assert len(ids) == 3
        gate = await _held_round(c, disk)
        ack = asyncio.create_task(c.call("POST", "/v1/queues/a/ack",
                                         {"delivery_ids": ids[:1]}))
        requeue = asyncio.create_task(c.call("POST", "/v1/queues/a/nack",
                                             {"delivery_ids": ids[1:2]}))
        reject = asyncio.create_task(c.call("POST", "/v1/queues/a/nack",
                                            {"delivery_ids": ids[2:], "requeue": False}))
        commit = asyncio.create_task(c.call("POST", "/v1/groups/g/commit", {
            "offsets": [{"topic": "t", "partition": 0, "offset": 1}]}))
        await asyncio.sleep(0.2)
        # written, not answered: their fsync waits behind the held one, in the flusher
        assert not any(t.done() for t in (ack, requeue, reject, commit))
        assert c.backend.queue_info("a").ready == 1  # the requeued one
        # the loop was never blocked by a disk: other requests are served meanwhile
        assert (await c.call("GET", "/healthz"))[0] == 200
        disk.release.set()
        assert (await ack)[:2] == (200, {"acked": 1})
        assert (await requeue)[:2] == (200, {"nacked": 1})
        assert (await reject)[:2] == (200, {"nacked": 1})
        status, body, _ = await commit
        assert (status, body) == (200, {"committed": 1}), body
        assert (await gate)[0] == 202

    run_daemon(tmp_path, TOPOLOGY, scenario, parts=_parts(disk))


def test_single_publishes_that_come_during_a_merged_batchs_fsync_wait_and_share_the_next(
        tmp_path: Path) -> None:
    disk = HeldDisk()

    async def scenario(c: Client) -> None:
        disk.hold = "gate"  # a one-message publish: a merged batch, its fsync held
        gate = asyncio.create_task(c.call("POST", "/v1/queues/gate/messages", {"body": "g"}))
        await _until(disk.holding.is_set, "the gate's fsync was not reached")
        before = disk.count("a")
        tasks = [asyncio.create_task(c.call("POST", "/v1/queues/a/messages",
                                            {"body": f"m-{i}"})) for i in range(10)]
        await asyncio.sleep(0.1)
        backend = c.backend
        # held, not written: they could not make the held round anyway
        assert backend.queue_info("a").ready == 0
        assert not any(t.done() for t in tasks) and not gate.done()
        disk.hold = None
        disk.release.set()
        assert (await gate)[0] == 202
        assert [s for s, _, _ in await asyncio.gather(*tasks)] == [202] * 10
        assert backend.queue_info("a").ready == 10
        assert disk.count("a") == before + 1  # written as one batch: one fsync

    run_daemon(tmp_path, TOPOLOGY, scenario, parts=_parts(disk))


def test_single_publishes_behind_another_writers_round_share_the_round_their_batch_waits_for(
        tmp_path: Path) -> None:
    disk = HeldDisk()

    async def scenario(c: Client) -> None:
        gate = await _held_round(c, disk)  # not merged: the flusher is busy with it
        backend = c.backend
        before = disk.count("a")
        first = asyncio.create_task(c.call("POST", "/v1/queues/a/messages", {"body": "f"}))
        await _until(lambda: backend.queue_info("a").ready == 1, "the first not written")
        tasks = []
        for i in range(5):  # later turns, while the first's ticket waits for the next round
            tasks.append(asyncio.create_task(
                c.call("POST", "/v1/queues/a/messages", {"body": f"m-{i}"})))
            await asyncio.sleep(0.01)
        # not held: the round they can make is the one the first waits for
        await _until(lambda: backend.queue_info("a").ready == 6, "later ones not written")
        assert not first.done() and not any(t.done() for t in tasks)
        disk.hold = None
        disk.release.set()
        assert (await gate)[0] == 202
        assert [s for s, _, _ in await asyncio.gather(first, *tasks)] == [202] * 6
        assert disk.count("a") == before + 1  # one fsync of a for all six

    run_daemon(tmp_path, TOPOLOGY, scenario, parts=_parts(disk))
