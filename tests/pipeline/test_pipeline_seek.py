"""Seeking a group that this pipeline runs: members re-read their positions, records
read before the seek are never committed over it, and outside commits are refused."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from runner.engine import TopicPartition
from runner.errors import Conflict
from runner.topology.model import ConsumerGroup, Delivery, DlqPolicy, Queue, Topic
from tests.pipeline import pipeline_handlers as ph
from tests.pipeline.harness import H, rec, running, topology, wait_until

TP = TopicPartition("events", 0)


def _offsets() -> list[int]:
    return [int(e["offset"]) for e in ph.SEEN if e.get("phase") in (None, "end")]


@pytest.mark.parametrize("delivery", list(Delivery))
def test_a_seek_replays_a_running_group(tmp_path: Path, delivery: Delivery) -> None:
    topo = topology(topics=(Topic("events"),),
                    groups=(ConsumerGroup("g", ("events",), handler=f"{H}:ok",
                                          delivery=delivery),))

    async def go() -> None:
        async with running(topo, tmp_path) as r:
            r.append("events", *({"id": i} for i in range(4)))
            await wait_until(lambda: r.engine.position("g", TP) == 4)
            await wait_until(lambda: len(ph.SEEN) == 4)
            assert r.engine.seek("g", TP, offset=0) == 0
            r.pipeline.notify()
            await wait_until(lambda: len(ph.SEEN) == 8)
            await wait_until(lambda: r.engine.position("g", TP) == 4)
            await asyncio.sleep(0.3)
            assert _offsets() == [0, 1, 2, 3, 0, 1, 2, 3]

    asyncio.run(go())


@pytest.mark.parametrize("delivery", [Delivery.AT_LEAST_ONCE, Delivery.EXACTLY_ONCE])
def test_a_record_in_flight_is_not_committed_over_a_seek(
    tmp_path: Path, delivery: Delivery,
) -> None:
    topo = topology(topics=(Topic("events"),),
                    groups=(ConsumerGroup("g", ("events",), handler=f"{H}:blocking",
                                          delivery=delivery),))

    async def go() -> None:
        async with running(topo, tmp_path) as r:
            r.append("events", *({"id": i} for i in range(3)))
            await wait_until(ph.STARTED.is_set)
            r.engine.seek("g", TP, offset=2)  # skip record 1 while record 0 runs
            ph.RELEASE.set()
            await wait_until(lambda: 2 in _offsets())
            await wait_until(lambda: r.engine.position("g", TP) == 3)
            await asyncio.sleep(0.3)
            assert _offsets() == [0, 2]
            assert r.engine.position("g", TP) == 3

    asyncio.run(go())


def test_an_outside_commit_to_a_handled_group_is_refused(tmp_path: Path) -> None:
    topo = topology(topics=(Topic("events"),),
                    groups=(ConsumerGroup("g", ("events",), handler=f"{H}:ok"),
                            ConsumerGroup("ext", ("events",))))

    async def go() -> None:
        async with running(topo, tmp_path) as r:
            r.engine.append("events", [rec({"id": i}) for i in range(2)])
            with pytest.raises(Conflict) as err:
                r.engine.commit("g", {TP: 0})
            assert str(err.value) == ("group g is run by this daemon's handler; use "
                                      "POST /v1/groups/g/offsets to seek it")
            r.engine.commit("ext", {TP: 1})  # a group without a handler: anyone commits
            assert r.engine.position("ext", TP) == 1

    asyncio.run(go())


def test_a_seek_ends_the_retries_of_a_record_it_skipped(tmp_path: Path) -> None:
    policy = DlqPolicy("p", max_retries=100, backoff=(0.05,), dead_letter_queue="dlq")
    topo = topology(queues=(Queue("dlq"),), topics=(Topic("events"),), policies=(policy,),
                    groups=(ConsumerGroup("g", ("events",), handler=f"{H}:flaky",
                                          dlq_policy="p"),))

    async def go() -> None:
        async with running(topo, tmp_path) as r:
            r.engine.append("events", [rec({"id": "bad", "fail": 999}), rec({"id": "good"})])
            r.pipeline.notify()
            await wait_until(lambda: ph.ATTEMPTS.get("bad", 0) >= 2)
            r.engine.seek("g", TP, offset=1)
            await wait_until(lambda: ph.ATTEMPTS.get("good", 0) == 1, timeout=2.0)
            await wait_until(lambda: r.engine.position("g", TP) == 2)
            tries = ph.ATTEMPTS["bad"]
            await asyncio.sleep(0.3)
            assert ph.ATTEMPTS["bad"] == tries  # no longer retried
            assert r.engine.queue_info("dlq").ready == 0  # and not dead-lettered

    asyncio.run(go())
