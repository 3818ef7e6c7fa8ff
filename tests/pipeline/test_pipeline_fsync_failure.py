"""Failed fsyncs under running pipeline workers over the embedded engine (`--fsync
always`, the real file system whose fsyncs of one log fail once armed): a group
member whose offsets log failed stops taking records, visibly (logged once with
the log's name, reported by `failed_logs`), instead of its task dying; after a
restart every record past the last durable commit is handled again."""

from __future__ import annotations

import asyncio
import errno
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from runner.engine import Engine, FsyncPolicy, TopicPartition
from runner.errors import NotFound
from runner.fs import LOCAL
from runner.pipeline import Pipeline
from runner.topology.model import ConsumerGroup, Delivery, Topic, Topology
from tests.pipeline import pipeline_handlers as ph
from tests.pipeline.harness import H, bodies, msg, rec, running, topology, wait_until


class FailingFs:
    """The real file system; once `armed`, every fsync of a file whose path contains
    it fails (EIO), as a disk that lost the pages would."""

    def __init__(self) -> None:
        self._paths: dict[int, str] = {}
        self.armed: str | None = None
        self.failures = 0

    def open(self, path: Path, *, create: bool = False, truncate: bool = False) -> int:
        fd = LOCAL.open(path, create=create, truncate=truncate)
        self._paths[fd] = str(path)
        return fd

    def sync(self, fd: int) -> None:
        if self.armed is not None and self.armed in self._paths.get(fd, ""):
            self.failures += 1
            raise OSError(errno.EIO, "Input/output error (simulated fsync failure)")
        LOCAL.sync(fd)

    def __getattr__(self, name: str) -> Any:
        return getattr(LOCAL, name)


@asynccontextmanager
async def _running(topo: Topology, data_dir: Path, fs: FailingFs,
                   ) -> AsyncIterator[tuple[Engine, Pipeline]]:
    async with running(topo, data_dir, workers=4, fsync=FsyncPolicy.ALWAYS, fs=fs,
                       quiet_close=True) as r:  # a failed log's last fsync fails at close too
        yield r.engine, r.pipeline


def _member_tasks(pipeline: Pipeline) -> list[asyncio.Task[None]]:
    return [t for w in pipeline._workers.values() for t in w.tasks]


@pytest.mark.parametrize("delivery", [Delivery.AT_LEAST_ONCE, Delivery.AT_MOST_ONCE,
                                      Delivery.EXACTLY_ONCE])
def test_a_member_whose_offsets_log_failed_stops_visibly_and_loses_nothing(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, delivery: Delivery) -> None:
    fs = FailingFs()
    topo = topology(topics=(Topic("events"), Topic("results")),
                    groups=(ConsumerGroup("g", ("events",), handler=f"{H}:forward",
                                          delivery=delivery),))
    tp = TopicPartition("events", 0)
    offsets_log = f"{tmp_path}/__consumer_offsets/"

    async def go() -> None:
        async with _running(topo, tmp_path, fs) as (engine, pipeline):
            engine.append("events", [rec({"id": i}) for i in range(3)])
            await wait_until(lambda: engine.position("g", tp) == 3)
            # at-most-once commits before the handler runs: wait for the three
            # handlers' outputs too (a member that stops meanwhile may drop a record
            # it committed and had not handled yet, as at-most-once allows)
            await wait_until(lambda: len(bodies(engine, "outbox")) == 3)
            fs.armed = "__consumer_offsets"
            engine.append("events", [rec({"id": i}) for i in range(3, 8)])
            await wait_until(lambda: any(
                getattr(r, "event", None) == "member_stopped" for r in caplog.records))
            failed = engine.failed_logs()
            assert [p for p in failed if p.startswith(offsets_log)] == list(failed)
            assert len(failed) == 1
            await asyncio.sleep(0.3)
            # the member is parked, not dead: its task runs until the pipeline drains
            assert not any(t.done() for t in _member_tasks(pipeline))

    with caplog.at_level(logging.INFO):
        asyncio.run(go())
    assert fs.failures >= 1
    stopped = [r.getMessage() for r in caplog.records
               if getattr(r, "event", None) == "member_stopped"]
    assert len(stopped) == 1, stopped
    assert stopped[0].startswith(
        f"group g: member g-1@host stops taking records: fsync of {offsets_log}")
    fate = ("its partitions stay with it until a restart completes its steps"
            if delivery is Delivery.EXACTLY_ONCE
            else "it leaves the group, its partitions go to the other members")
    assert stopped[0].endswith(f"; {fate}; records past its last durable commit are "
                               "handled again after a restart")
    assert not [r for r in caplog.records if "worker task failed" in r.getMessage()]

    # restart on a healthy disk: nothing committed is lost, the rest is handled again
    fs.armed = None
    ph.SEEN.clear()

    async def again() -> None:
        async with _running(topo, tmp_path, fs) as (engine, _):
            assert engine.position("g", tp) >= 3
            await wait_until(lambda: engine.position("g", tp) == 8)
            got = sorted(b["id"] for b in bodies(engine, "outbox"))
            if delivery is Delivery.AT_MOST_ONCE:  # a record may be lost, none twice
                assert len(got) == len(set(got)) and set(got) >= {0, 1, 2}
            elif delivery is Delivery.EXACTLY_ONCE:
                assert got == list(range(8))
            else:
                assert set(got) == set(range(8))

    asyncio.run(again())


@pytest.mark.parametrize("delivery", [Delivery.AT_LEAST_ONCE, Delivery.AT_MOST_ONCE,
                                      Delivery.EXACTLY_ONCE])
def test_a_stopped_member_hands_its_partitions_to_the_group_unless_exactly_once(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, delivery: Delivery) -> None:
    """Another member of the group (here one joined like a Kafka client's) holds one of
    two partitions; the daemon's member holds the other and stops on a failed log. An
    at-least-once or at-most-once member leaves: the other member is given both
    partitions at once, not after a restart. An exactly-once member keeps its own (a
    journaled step of it is completed at the next open, commit included)."""
    fs = FailingFs()
    topo = topology(topics=(Topic("events", partitions=2), Topic("results")),
                    groups=(ConsumerGroup("g", ("events",), handler=f"{H}:forward",
                                          delivery=delivery),))
    both = [TopicPartition("events", 0), TopicPartition("events", 1)]

    def held(engine: Engine, member: str) -> list[TopicPartition] | None:
        try:
            return engine.assignment("g", member)
        except NotFound:  # not (or no longer) a member
            return None

    async def go() -> None:
        async with _running(topo, tmp_path, fs) as (engine, _pipeline):
            await wait_until(lambda: held(engine, "g-1@host") == both)
            engine.join("g", "a-kafka-client", local=True)
            await wait_until(lambda: len(engine.assignment("g", "g-1@host")) == 1)
            (theirs,) = engine.assignment("g", "a-kafka-client")
            (ours,) = engine.assignment("g", "g-1@host")
            fs.armed = "__consumer_offsets"
            engine.append("events", [rec({"id": i}, partition=ours.partition)
                                     for i in range(3)])
            await wait_until(lambda: any(
                getattr(r, "event", None) == "member_stopped" for r in caplog.records))
            await asyncio.sleep(0.2)
            if delivery is Delivery.EXACTLY_ONCE:
                assert engine.assignment("g", "a-kafka-client") == [theirs]
                assert engine.assignment("g", "g-1@host") == [ours]
            else:
                assert engine.assignment("g", "a-kafka-client") == both
                assert held(engine, "g-1@host") is None

    with caplog.at_level(logging.INFO):
        asyncio.run(go())
    assert fs.failures >= 1
    assert not [r for r in caplog.records if "worker task failed" in r.getMessage()]
    assert not [r for r in caplog.records if "could not leave cleanly" in r.getMessage()]


@pytest.mark.parametrize("failing", ["/topics/results-0/", "/queues/outbox/"])
def test_at_least_once_commits_nothing_past_outputs_that_failed_to_sync(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, failing: str) -> None:
    """An at-least-once member writes the next records' outputs without waiting for
    each to be synced; the flusher's fsync of an output log fails: nothing is
    committed past the records whose outputs were not synced, the member stops, and
    after a restart every record from the last commit on is handled again."""
    fs = FailingFs()
    topo = topology(topics=(Topic("events"), Topic("results")),
                    groups=(ConsumerGroup("g", ("events",), handler=f"{H}:forward",
                                          delivery=Delivery.AT_LEAST_ONCE),))
    tp = TopicPartition("events", 0)

    async def go() -> None:
        async with _running(topo, tmp_path, fs) as (engine, pipeline):
            engine.append("events", [rec({"id": i}) for i in range(3)])
            await wait_until(lambda: engine.position("g", tp) == 3)
            fs.armed = failing
            engine.append("events", [rec({"id": i}) for i in range(3, 8)])
            await wait_until(lambda: any(
                getattr(r, "event", None) == "member_stopped" for r in caplog.records))
            await asyncio.sleep(0.3)
            assert engine.position("g", tp) == 3  # nothing committed past them
            assert pipeline.stats().consumers["g"].succeeded == 3

    with caplog.at_level(logging.INFO):
        asyncio.run(go())
    assert fs.failures >= 1
    fs.armed = None
    ph.SEEN.clear()

    async def again() -> None:
        async with _running(topo, tmp_path, fs) as (engine, _):
            assert engine.position("g", tp) == 3
            await wait_until(lambda: engine.position("g", tp) == 8)
            await asyncio.sleep(0.2)
            assert set(b["id"] for b in bodies(engine, "outbox")) == set(range(8))
            results, _ = engine.read("results", 0, 0, max_records=100)
            assert {int(r.key or b"-1") for r in results} == set(range(8))

    asyncio.run(again())
    assert sorted(int(e["id"]) for e in ph.SEEN) == list(range(3, 8))  # handled again


@pytest.mark.parametrize("failing", ["/topics/results-0/", "/queues/outbox/"])
def test_an_exactly_once_step_whose_outputs_failed_to_sync_is_completed_at_restart(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, failing: str) -> None:
    """The flusher's fsync of a step's output log fails (its ticket fails): the record
    does not count as done, the member stops; the step stays pending in the journal
    and the next open completes it: every output there once, every offset committed."""
    fs = FailingFs()
    topo = topology(topics=(Topic("events"), Topic("results")),
                    groups=(ConsumerGroup("g", ("events",), handler=f"{H}:forward",
                                          delivery=Delivery.EXACTLY_ONCE),))
    tp = TopicPartition("events", 0)

    async def go() -> None:
        async with _running(topo, tmp_path, fs) as (engine, pipeline):
            engine.append("events", [rec({"id": i}) for i in range(3)])
            await wait_until(lambda: engine.position("g", tp) == 3)
            await wait_until(lambda: pipeline.stats().consumers["g"].succeeded == 3)
            fs.armed = failing
            engine.append("events", [rec({"id": i}) for i in range(3, 8)])
            await wait_until(lambda: any(
                getattr(r, "event", None) == "member_stopped" for r in caplog.records))
            await asyncio.sleep(0.3)
            assert list(engine.failed_logs()) == [
                p for p in engine.failed_logs() if failing in p]
            assert len(engine.failed_logs()) == 1
            # the steps whose outputs were not synced do not count as done
            assert pipeline.stats().consumers["g"].succeeded == 3
            assert engine.journal.pending()  # completed at the next open

    with caplog.at_level(logging.INFO):
        asyncio.run(go())
    assert fs.failures >= 1
    stopped = [r.getMessage() for r in caplog.records
               if getattr(r, "event", None) == "member_stopped"]
    assert len(stopped) == 1 and failing in stopped[0], stopped

    fs.armed = None

    async def again() -> None:
        async with _running(topo, tmp_path, fs) as (engine, _):
            await wait_until(lambda: engine.position("g", tp) == 8)
            await wait_until(lambda: len(engine.peek("outbox", 100)) >= 8)
            await asyncio.sleep(0.2)
            assert sorted(b["id"] for b in bodies(engine, "outbox")) == list(range(8))
            results, _ = engine.read("results", 0, 0, max_records=100)
            assert sorted(int(r.key or b"-1") for r in results) == list(range(8))
            assert engine.journal.pending() == []

    asyncio.run(again())


def test_a_queue_consumers_exactly_once_step_whose_output_failed_to_sync_is_completed_at_restart(
        tmp_path: Path) -> None:
    """A queue consumer's exactly-once step: the outbox's fsync fails, so the step's
    ticket fails: the message does not count as done and stays unacked; the next
    open completes the step (its output there once, its input acked once)."""
    from runner.topology.model import Consumer, Queue

    fs = FailingFs()
    topo = topology(queues=(Queue("work"),), topics=(Topic("results"),),
                    consumers=(Consumer("c", "work", f"{H}:forward",
                                        delivery=Delivery.EXACTLY_ONCE),))

    async def go() -> None:
        async with _running(topo, tmp_path, fs) as (engine, pipeline):
            engine.publish_to_queue("work", [msg({"id": 0})])
            await wait_until(lambda: pipeline.stats().consumers["c"].succeeded == 1)
            fs.armed = "/queues/outbox/"
            engine.publish_to_queue("work", [msg({"id": 1})])
            await wait_until(lambda: bool(engine.failed_logs()))
            await asyncio.sleep(0.3)
            assert list(engine.failed_logs()) == [
                p for p in engine.failed_logs() if "/queues/outbox/" in p]
            assert pipeline.stats().consumers["c"].succeeded == 1
            assert engine.journal.pending()  # completed at the next open

    asyncio.run(go())
    fs.armed = None

    async def again() -> None:
        async with _running(topo, tmp_path, fs) as (engine, _):
            await wait_until(lambda: len(engine.peek("outbox", 100)) >= 2)
            await asyncio.sleep(0.3)
            assert sorted(b["id"] for b in bodies(engine, "outbox")) == [0, 1]
            info = engine.queue_info("work")
            assert (info.ready, info.unacked) == (0, 0)
            results, _ = engine.read("results", 0, 0, max_records=100)
            assert sorted(int(r.key or b"-1") for r in results) == [0, 1]
            assert engine.journal.pending() == []

    asyncio.run(again())
