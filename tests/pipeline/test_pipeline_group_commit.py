"""At-least-once workers over the embedded engine's group commit (issue 10
item 3), `--fsync always`: a handler's outputs are written without blocking the
loop, and the input is acked (a queue) or its offset committed (a group) only
after the flusher synced them. The fsync of the output queue is held to see
the order."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

from runner.engine import Engine, FsyncPolicy, TopicPartition
from runner.fs import LOCAL
from runner.topology.model import Consumer, ConsumerGroup, Delivery, Queue, Topic, Topology
from tests.pipeline import pipeline_handlers as ph
from tests.pipeline.harness import H, Running, bodies, msg, rec, running, topology, wait_until


class HeldFs:
    """The real file system; the fsyncs of files under `hold` wait for `release`."""

    def __init__(self) -> None:
        self._paths: dict[int, str] = {}
        self.synced: list[str] = []
        self.hold: str | None = None
        self.release = threading.Event()

    def open(self, path: Path, *, create: bool = False, truncate: bool = False) -> int:
        fd = LOCAL.open(path, create=create, truncate=truncate)
        self._paths[fd] = str(path)
        return fd

    def sync(self, fd: int) -> None:
        path = self._paths.get(fd, "?")
        if self.hold is not None and f"/{self.hold}/" in path:
            self.release.wait(20)
        LOCAL.sync(fd)
        self.synced.append(path)

    def __getattr__(self, name: str) -> Any:
        return getattr(LOCAL, name)


@asynccontextmanager
async def _running(topo: Topology, data_dir: Path, fs: HeldFs) -> AsyncIterator[Engine]:
    async with _running_pipeline(topo, data_dir, fs) as r:
        yield r.engine


def _running_pipeline(
    topo: Topology, data_dir: Path, fs: HeldFs,
) -> AbstractAsyncContextManager[Running]:
    """The engine on `fs` under `--fsync always` and its pipeline (held fsyncs are
    released before the drain; every round on the flusher thread: a held fsync
    on the loop would stall the loop itself)."""
    return running(topo, data_dir, workers=4, fsync=FsyncPolicy.ALWAYS, fs=fs,
                   before_drain=fs.release.set, sync_on_loop=False)


def _forwarding_group() -> tuple[Topology, TopicPartition]:
    """An at-least-once group `g` on `events` whose handler forwards to `outbox`."""
    topo = topology(topics=(Topic("events"), Topic("results")),
                    groups=(ConsumerGroup("g", ("events",), handler=f"{H}:forward",
                                          delivery=Delivery.AT_LEAST_ONCE),))
    return topo, TopicPartition("events", 0)


async def _three_outputs_held(engine: Engine, fs: HeldFs) -> None:
    """Hold the outbox's fsyncs; three records in, until their outputs are written."""
    fs.hold = "outbox"
    engine.append("events", [rec({"id": i}) for i in range(3)])
    await wait_until(lambda: len(engine.peek("outbox", 10)) == 3)


def test_a_queue_input_is_acked_only_after_its_outputs_are_synced(tmp_path: Path) -> None:
    fs = HeldFs()
    topo = topology(queues=(Queue("work"),), topics=(Topic("results"),),
                    consumers=(Consumer("c", "work", f"{H}:forward", concurrency=8,
                                        delivery=Delivery.AT_LEAST_ONCE),))

    async def go() -> None:
        async with _running(topo, tmp_path, fs) as engine:
            fs.hold = "outbox"
            engine.publish_to_queue("work", [msg({"id": i}) for i in range(6)])
            # every handler ran and wrote its outputs, the loop went on ...
            await wait_until(lambda: len(engine.peek("outbox", 10)) == 6)
            await asyncio.sleep(0.3)
            # ... and no input is acked while the outputs' fsync is held
            info = engine.queue_info("work")
            assert (info.ready, info.unacked) == (0, 6)
            fs.release.set()
            await wait_until(lambda: engine.queue_info("work").unacked == 0)
            assert sorted(b["id"] for b in bodies(engine, "outbox")) == list(range(6))

    asyncio.run(go())
    assert sorted(int(e["id"]) for e in ph.SEEN) == list(range(6))


def test_a_group_commits_a_record_only_after_its_outputs_are_synced(tmp_path: Path) -> None:
    fs = HeldFs()
    topo, tp = _forwarding_group()

    async def go() -> None:
        async with _running_pipeline(topo, tmp_path, fs) as r:
            engine = r.engine

            def pipeline_succeeded() -> int:
                return r.pipeline.stats().consumers["g"].succeeded

            fs.hold = "outbox"
            engine.append("events", [rec({"id": i}) for i in range(3)])
            # the member does not wait for each record's output to be synced: all
            # three are written ...
            await wait_until(lambda: len(engine.peek("outbox", 10)) == 3)
            await asyncio.sleep(0.3)
            # ... but nothing is committed past an output not synced, and no record
            # counts as done yet
            assert engine.position("g", tp) == 0
            assert len(engine.peek("outbox", 10)) == 3
            assert pipeline_succeeded() == 0
            fs.release.set()
            await wait_until(lambda: engine.position("g", tp) == 3)
            assert sorted(b["id"] for b in bodies(engine, "outbox")) == [0, 1, 2]
            await wait_until(lambda: pipeline_succeeded() == 3)

    asyncio.run(go())


async def _loop_turns_while_held(
    fs: HeldFs, seconds: float, check: Callable[[], None] = lambda: None,
) -> int:
    """Turns of the event loop (10 ms sleeps) during the next `seconds`, after which a
    timer thread releases the held fsyncs: a loop blocked on a held fsync makes
    none until then. `check` runs at each turn while they are held."""
    timer = threading.Timer(seconds, fs.release.set)
    timer.start()
    turns = 0
    try:
        while True:
            await asyncio.sleep(0.01)
            if fs.release.is_set():
                break
            check()
            turns += 1
    finally:
        timer.cancel()
    return turns


def test_an_at_most_once_member_runs_its_handler_only_after_its_commit_is_synced(
    tmp_path: Path,
) -> None:
    fs = HeldFs()
    topo = topology(topics=(Topic("events"), Topic("results")),
                    groups=(ConsumerGroup("g", ("events",), handler=f"{H}:forward",
                                          delivery=Delivery.AT_MOST_ONCE),))
    tp = TopicPartition("events", 0)

    async def go() -> None:
        async with _running(topo, tmp_path, fs) as engine:
            engine.append("events", [rec({"id": -1})])  # the group's start-up writes
            await wait_until(lambda: len(engine.peek("outbox", 10)) == 1)
            fs.synced.clear()
            fs.hold = "__consumer_offsets"
            engine.append("events", [rec({"id": 0})])
            await wait_until(lambda: engine.position("g", tp) == 2)  # written, not synced
            assert not any("__consumer_offsets" in p for p in fs.synced)
            # the loop goes on while the commit waits for its fsync (it used to be
            # blocked inside it), and the handler is not called before it is durable
            def not_called() -> None:
                assert [e["id"] for e in ph.SEEN] == ["-1"]

            turns = await _loop_turns_while_held(fs, 1.0, not_called)
            assert turns >= 20, turns
            await wait_until(lambda: len(ph.SEEN) == 2)
            assert any("__consumer_offsets" in p for p in fs.synced)
            await wait_until(lambda: len(engine.peek("outbox", 10)) == 2)

    asyncio.run(go())


def test_an_at_least_once_members_commit_is_synced_off_the_loop(tmp_path: Path) -> None:
    fs = HeldFs()
    topo, tp = _forwarding_group()

    async def go() -> None:
        async with _running(topo, tmp_path, fs) as engine:
            engine.append("events", [rec({"id": -1})])  # the group's start-up writes
            await wait_until(lambda: engine.position("g", tp) == 1)
            await asyncio.sleep(0.1)
            fs.synced.clear()
            fs.hold = "__consumer_offsets"
            engine.append("events", [rec({"id": i}) for i in range(3)])
            # handled, outputs synced, the commit written but not synced ...
            await wait_until(lambda: engine.position("g", tp) == 4)
            assert not any("__consumer_offsets" in p for p in fs.synced)
            # ... while the loop goes on (it used to wait inside the commit's fsync)
            turns = await _loop_turns_while_held(fs, 1.0)
            assert turns >= 20, turns
            await wait_until(lambda: any("__consumer_offsets" in p for p in fs.synced))
            # the member reads on after its commit is durable
            engine.append("events", [rec({"id": 3})])
            await wait_until(lambda: engine.position("g", tp) == 5)
            assert sorted(b["id"] for b in bodies(engine, "outbox")) == [-1, 0, 1, 2, 3]

    asyncio.run(go())


def test_an_exactly_once_members_step_is_synced_off_the_loop(tmp_path: Path) -> None:
    fs = HeldFs()
    topo = topology(topics=(Topic("events"), Topic("results")),
                    groups=(ConsumerGroup("g", ("events",), handler=f"{H}:forward",
                                          delivery=Delivery.EXACTLY_ONCE),))
    tp = TopicPartition("events", 0)

    async def go() -> None:
        async with _running(topo, tmp_path, fs) as engine:
            engine.append("events", [rec({"id": -1})])  # the group's start-up writes
            await wait_until(lambda: engine.position("g", tp) == 1)
            await asyncio.sleep(0.1)
            fs.synced.clear()
            fs.hold = "outbox"
            engine.append("events", [rec({"id": i}) for i in range(3)])
            # the first record's step is journaled (synced) and applied: its output
            # and its commit are written, the output's fsync is held; the member
            # takes the next record meanwhile (its step journaled and applied too) ...
            await wait_until(lambda: engine.position("g", tp) == 3)
            assert any("engine_steps" in p for p in fs.synced)
            assert len(engine.peek("outbox", 10)) == 3

            # ... the loop goes on (it used to wait inside that fsync), and the
            # member has at most two steps being synced: the third record's step
            # waits (its handler may run)
            def two_in_flight() -> None:
                assert engine.position("g", tp) == 3
                assert len(engine.peek("outbox", 10)) == 3

            turns = await _loop_turns_while_held(fs, 1.0, two_in_flight)
            assert turns >= 20, turns
            await wait_until(lambda: engine.position("g", tp) == 4)
            assert sorted(b["id"] for b in bodies(engine, "outbox")) == [-1, 0, 1, 2]
            # every step is marked done once durable: nothing left to replay
            await wait_until(lambda: not engine.journal.pending())

    asyncio.run(go())


def test_a_drain_does_not_return_before_a_leaving_member_left(tmp_path: Path) -> None:
    """An at-least-once member leaving while its outputs' fsync is held waits for them
    before its last commit, but only for the drain's grace: then it leaves without
    committing (its records are handled again). The drain returns with the member out
    of its group, and nothing is committed after it (a reload's new member joins
    under the same id: a late close would throw that one out)."""
    fs = HeldFs()
    topo, tp = _forwarding_group()

    async def go() -> None:
        async with _running_pipeline(topo, tmp_path, fs) as r:
            engine = r.engine
            await wait_until(lambda: len(engine.group_info("g").members) == 1)
            await _three_outputs_held(engine, fs)
            loop = asyncio.get_running_loop()
            began = loop.time()
            await r.pipeline.drain(0.3)
            assert loop.time() - began < 3.0
            assert engine.group_info("g").members == ()  # left within the drain
            fs.release.set()
            await asyncio.sleep(0.3)
            assert engine.position("g", tp) == 0  # nothing committed, then or later

    asyncio.run(go())


def test_a_seek_during_the_drain_is_not_overwritten_by_a_leaving_members_commit(
        tmp_path: Path) -> None:
    """A member leaving with its outputs' fsync held commits once they are synced,
    unless the group was sought meanwhile: a seek during the drain stands (the
    drain still listens for seeks until the last leaving member is gone)."""
    fs = HeldFs()
    topo, tp = _forwarding_group()

    async def go() -> None:
        async with _running_pipeline(topo, tmp_path, fs) as r:
            engine = r.engine
            await _three_outputs_held(engine, fs)
            drain = asyncio.create_task(r.pipeline.drain(5.0))
            await asyncio.sleep(0.3)  # the member left its loop; its commit waits
            assert not drain.done() and engine.position("g", tp) == 0
            # the seek's own commit waits for the held round (the engine's seek blocks
            # the loop until durable): a timer releases the held fsyncs meanwhile
            threading.Timer(0.3, fs.release.set).start()
            engine.seek("g", tp, offset=1)
            await drain
            assert engine.position("g", tp) == 1  # the seek, not the member's 3
            assert engine.group_info("g").members == ()

    asyncio.run(go())
