"""Exactly-once queue consumers with async handlers commit the steps of calls that
finish together as one step (one journal write and its fsyncs for all); a merged
step the engine refuses is committed call by call, so only the refused calls fail."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from runner.engine import Engine, FsyncPolicy
from runner.engine.contract import Fence, Step, Ticket, TopicPartition
from runner.topology.model import (
    Binding,
    Consumer,
    ConsumerGroup,
    Delivery,
    DlqPolicy,
    Exchange,
    ExchangeType,
    Overflow,
    Queue,
    Topic,
    Topology,
)
from tests.pipeline import pipeline_handlers as ph
from tests.pipeline.harness import (
    CountingBackend,
    H,
    bodies,
    msg,
    rec,
    running,
    topology,
    wait_until,
)


def _gate() -> None:
    assert ph.GATE is not None
    ph.GATE.set()


@asynccontextmanager
async def _running(topo: Topology, data_dir: Path) -> AsyncIterator[tuple[Engine, CountingBackend]]:
    async with running(topo, data_dir, workers=2, fsync=FsyncPolicy.ALWAYS,
                       backend=CountingBackend, before_drain=_gate) as r:
        assert isinstance(r.backend, CountingBackend)
        yield r.engine, r.backend


def _consumer(**kw: object) -> Consumer:
    return Consumer("c", "work", f"{H}:gated_forward", concurrency=8, prefetch=8,
                    delivery=Delivery.EXACTLY_ONCE, **kw)  # type: ignore[arg-type]


def test_calls_that_finish_together_commit_one_step(tmp_path: Path) -> None:
    ph.reset()
    topo = topology(queues=(Queue("work"),), consumers=(_consumer(),))

    async def go() -> None:
        ph.GATE = asyncio.Event()
        async with _running(topo, tmp_path) as (engine, backend):
            engine.publish_to_queue("work", [msg({"id": i}) for i in range(8)])
            await wait_until(lambda: len(ph.SEEN) == 8)  # all 8 calls wait at the gate
            ph.GATE.set()
            await wait_until(lambda: engine.queue_info("work").unacked == 0)
            assert sorted(b["id"] for b in bodies(engine, "outbox")) == list(range(8))
            assert engine.queue_info("work").ready == 0
            # before: 8 steps of one ack each; now the calls woken together share one
            acks = [len(step.acks) for step, how in backend.steps if how == "ok"]
            assert sum(acks) == 8 and len(acks) <= 2 and max(acks) >= 4, backend.steps

    asyncio.run(go())


def test_a_refused_merged_step_is_committed_call_by_call(tmp_path: Path) -> None:
    ph.reset()
    topo = topology(
        queues=(Queue("work"), Queue("work.dlq"),
                Queue("full", max_length=3, overflow=Overflow.REJECT_PUBLISH)),
        exchanges=(Exchange("tofull", ExchangeType.FANOUT),),
        bindings=(Binding("tofull", queue="full"),),
        policies=(DlqPolicy("none", max_retries=0, dead_letter_queue="work.dlq"),),
        consumers=(_consumer(dlq_policy="none"),),
    )

    async def go() -> None:
        ph.GATE = asyncio.Event()
        async with _running(topo, tmp_path) as (engine, backend):
            engine.publish_to_queue("work", [msg({"id": i, "to": "tofull"}) for i in range(8)])
            await wait_until(lambda: len(ph.SEEN) == 8)
            ph.GATE.set()
            await wait_until(lambda: engine.queue_info("work").unacked == 0
                             and engine.queue_info("work.dlq").ready == 5)
            # the merged step of 8 publishes was refused as a whole (nothing of it
            # applied), then each call's own step: 3 fit, 5 are refused and dead-lettered
            outcomes = [(len(step.acks), how) for step, how in backend.steps]
            assert outcomes[0] == (8, "Refused"), outcomes
            assert sorted(outcomes[1:]) == [(1, "Refused")] * 5 + [(1, "ok")] * 3
            assert len(bodies(engine, "full")) == 3
            letters = engine.peek("work.dlq", 10)
            assert len(letters) == 5
            assert all("full" in str(d.headers["x-dead-letter"]["error"]["message"])
                       for d in letters)
            assert engine.queue_info("work").ready == 0

    asyncio.run(go())


def test_a_sync_handlers_batch_commits_one_step(tmp_path: Path) -> None:
    ph.reset()
    topo = topology(queues=(Queue("work"),), consumers=(
        Consumer("c", "work", f"{H}:with_ctx", concurrency=1, prefetch=16,
                 delivery=Delivery.EXACTLY_ONCE),))

    async def go() -> None:
        ph.GATE = asyncio.Event()
        async with _running(topo, tmp_path) as (engine, backend):
            engine.publish_to_queue("work", [msg({"id": i}) for i in range(16)])
            await wait_until(lambda: engine.queue_info("work").ready == 0
                             and engine.queue_info("work").unacked == 0)
            assert sorted(b["from"]["id"] for b in bodies(engine, "outbox")) == list(range(16))
            # one pool thread ran the buffered calls as one batch: their steps are one
            acks = [len(step.acks) for step, how in backend.steps if how == "ok"]
            assert sum(acks) == 16 and max(acks) >= 8, backend.steps

    asyncio.run(go())


def _group(instances: int) -> ConsumerGroup:
    return ConsumerGroup("g", ("ev",), handler=f"{H}:gated_forward", instances=instances,
                         delivery=Delivery.EXACTLY_ONCE)


def test_group_members_that_finish_together_commit_one_fenced_step(tmp_path: Path) -> None:
    """Exactly-once group members (one per partition) whose handlers finish in the same
    loop turn commit their records' steps as one merged step, each part fenced by its
    own member (before: a step per record, 4 here)."""
    ph.reset()
    topo = topology(topics=(Topic("ev", partitions=4),), groups=(_group(4),))

    async def go() -> None:
        ph.GATE = asyncio.Event()
        async with _running(topo, tmp_path) as (engine, backend):
            engine.append("ev", [rec({"id": p}, partition=p) for p in range(4)])
            await wait_until(lambda: len(ph.SEEN) == 4)  # every member waits at the gate
            ph.GATE.set()
            await wait_until(lambda: len(bodies(engine, "outbox")) == 4)
            await wait_until(lambda: all(
                engine.position("g", TopicPartition("ev", p)) == 1 for p in range(4)))
            ok = [step for step, how in backend.steps if how == "ok"]
            commits = [len(step.commits) for step in ok]
            assert sum(commits) == 4 and len(commits) <= 2 and max(commits) >= 2, backend.steps
            merged = max(ok, key=lambda s: len(s.commits))
            # every committed partition is covered by the fence of the member that owns it
            fenced = {tp: f.member_id for f in merged.all_fences() for tp in f.partitions}
            assert set(fenced) == {tp for _, tp, _ in merged.commits}
            assert len(set(fenced.values())) == len(merged.commits)
            assert sorted(b["id"] for b in bodies(engine, "outbox")) == list(range(4))

    asyncio.run(go())


def test_a_stale_member_in_a_merged_group_step_commits_nothing(tmp_path: Path) -> None:
    """A merged step whose one part is fenced off (as if its member's generation moved
    between its check and the commit) is refused whole; the parts are then committed
    one by one: the fenced one commits nothing (its outputs are discarded and its
    member reads its position again, then handles the record anew), the other
    commits. Every record's output lands once."""
    ph.reset()
    topo = topology(topics=(Topic("ev", partitions=2),), groups=(_group(2),))

    async def go() -> None:
        ph.GATE = asyncio.Event()
        async with _running(topo, tmp_path) as (engine, backend):
            stale: list[Fence] = []  # the fence made stale, once merged and once alone
            real = backend.commit_step

            def with_stale(step: Step, fence: Fence) -> Step:
                fences = tuple(f._replace(generation=f.generation - 1) if f == fence else f
                               for f in step.all_fences())
                return Step(step.acks, step.commits, step.publishes, step.puts, step.appends,
                            None, fences)

            def commit_step(step: Step) -> Ticket:
                if len(step.commits) == 2 and not stale:
                    stale.append(step.all_fences()[0])
                    step = with_stale(step, stale[0])
                elif len(stale) == 1 and step.all_fences() == (stale[0],):
                    stale.append(stale[0])
                    step = with_stale(step, stale[0])
                return real(step)

            backend.commit_step = commit_step  # type: ignore[method-assign]
            engine.append("ev", [rec({"id": p}, partition=p) for p in range(2)])
            await wait_until(lambda: len(ph.SEEN) == 2)
            ph.GATE.set()
            await wait_until(lambda: all(
                engine.position("g", TopicPartition("ev", p)) == 1 for p in range(2)))
            outcomes = [(len(step.commits), how) for step, how in backend.steps]
            assert outcomes[0] == (2, "Conflict"), outcomes
            assert sorted(outcomes[1:3]) == [(1, "Conflict"), (1, "ok")], outcomes
            assert outcomes[3:] == [(1, "ok")], outcomes  # the stale record, handled anew
            assert len(ph.SEEN) == 3
            assert sorted(b["id"] for b in bodies(engine, "outbox")) == [0, 1]

    asyncio.run(go())
