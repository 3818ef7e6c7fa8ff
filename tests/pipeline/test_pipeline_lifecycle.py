"""Pipeline lifecycle on a real Engine: drain with handlers in flight, apply
(add / remove / change consumers), handler import errors, stats."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from runner.errors import HandlerImportError
from runner.pipeline.stats import DURATION_BUCKETS
from runner.topology.model import Consumer, ConsumerGroup, Queue, Topic
from tests.pipeline import pipeline_handlers as ph
from tests.pipeline.harness import H, Running, msg, running, topology, wait_until


async def drain_during_a_call(r: Running, *, release_after_s: float, grace_s: float) -> float:
    """Once a handler call has started, drain with `grace_s` while the call is let go
    after `release_after_s`; how long the drain took (seconds)."""
    await wait_until(ph.STARTED.is_set)
    asyncio.get_running_loop().call_later(release_after_s, ph.RELEASE.set)
    t0 = time.monotonic()
    await r.pipeline.drain(grace_s)
    return time.monotonic() - t0


def test_drain_lets_a_call_in_flight_finish_within_grace_and_settles_it(tmp_path: Path) -> None:
    topo = topology(queues=(Queue("work"),),
                    consumers=(Consumer("c", "work", f"{H}:blocking", prefetch=5),))

    async def go() -> None:
        async with running(topo, tmp_path, grace_s=0.01) as r:
            r.publish("work", *({"id": i} for i in range(3)))
            assert 0.05 < await drain_during_a_call(r, release_after_s=0.1, grace_s=2.0) < 1.5
            info = r.engine.queue_info("work")
            # the call in flight finished and was acked; the 2 prefetched went back
            assert (info.ready, info.unacked) == (2, 0)
            assert r.pipeline.stats().consumers["c"].succeeded == 1

    asyncio.run(go())
    assert [(e["id"], e["phase"]) for e in ph.SEEN] == [("0", "start"), ("0", "end")]


def test_drain_leaves_an_unfinished_async_call_unacked_and_it_comes_back(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    topo = topology(queues=(Queue("work"),),
                    consumers=(Consumer("c", "work", f"{H}:async_blocking"),))

    async def first() -> None:
        async with running(topo, tmp_path, grace_s=0.05) as r:
            r.publish("work", {"id": "a"})
            await wait_until(ph.STARTED.is_set)
            await r.pipeline.drain(0.05)
            info = r.engine.queue_info("work")
            assert (info.ready, info.unacked) == (0, 1)
            assert r.pipeline.stats().consumers["c"].succeeded == 0
            (late,) = [x for x in caplog.records if getattr(x, "event", "") == "drain_timeout"]
            assert late.getMessage() == ("consumer c: 1 handler call(s) still running after "
                                         "the 0.05s grace; cancelled: their messages come "
                                         "back later")
            assert (late.consumer, late.abandoned) == ("c", 1)  # type: ignore[attr-defined]

    async def second() -> None:
        ph.RELEASE.set()
        async with running(topo, tmp_path) as r:
            await wait_until(lambda: r.pipeline.stats().consumers["c"].succeeded == 1)
            assert r.engine.queue_info("work").unacked == 0

    asyncio.run(first())
    ph.STARTED.clear()
    asyncio.run(second())
    starts = [e for e in ph.SEEN if e["phase"] == "start"]
    assert [(e["id"], e["redelivered"]) for e in starts] == [("a", False), ("a", True)]


def test_a_sync_call_over_the_grace_is_logged_then_settled_not_redelivered(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    topo = topology(queues=(Queue("work"),),
                    consumers=(Consumer("c", "work", f"{H}:blocking", timeout_s=5.0),))

    async def first() -> None:
        async with running(topo, tmp_path, grace_s=0.05) as r:
            r.publish("work", {"id": "a"})
            assert 0.3 < await drain_during_a_call(r, release_after_s=0.4, grace_s=0.05) < 3.0
            info = r.engine.queue_info("work")
            assert (info.ready, info.unacked) == (0, 0)  # settled after the grace
            assert r.pipeline.stats().consumers["c"].succeeded == 1

    async def second() -> None:
        async with running(topo, tmp_path) as r:
            await asyncio.sleep(0.3)
            assert r.engine.queue_info("work").ready == 0

    asyncio.run(first())
    asyncio.run(second())
    assert [e["phase"] for e in ph.SEEN] == ["start", "end"]  # never run twice
    (late,) = [x for x in caplog.records if getattr(x, "event", "") == "drain_timeout"]
    assert late.getMessage() == ("consumer c: 1 handler call(s) still running after the 0.05s "
                                 "grace; waiting up to 5s to settle them (sync handlers cannot "
                                 "be stopped)")
    assert (late.consumer, late.in_flight) == ("c", 1)  # type: ignore[attr-defined]


def test_apply_adds_removes_and_restarts_consumers_without_losing_messages(
    tmp_path: Path,
) -> None:
    old = topology(queues=(Queue("a"), Queue("b")),
                   consumers=(Consumer("ca", "a", f"{H}:ok"), Consumer("cb", "b", f"{H}:ok")))
    new = topology(queues=(Queue("a"), Queue("b"), Queue("c")),
                   consumers=(Consumer("ca", "a", f"{H}:async_ok", concurrency=3),
                              Consumer("cc", "c", f"{H}:ok")))

    async def go() -> None:
        async with running(old, tmp_path) as r:
            r.engine.publish_to_queue("a", [msg({"id": f"a{i}"}) for i in range(20)])
            r.publish("b", {"id": "b0"})
            await wait_until(lambda: r.pipeline.stats().consumers["cb"].succeeded == 1)
            r.engine.apply(new)
            await r.pipeline.apply(new)
            assert set(r.pipeline.stats().consumers) == {"ca", "cc"}
            r.engine.publish_to_queue("a", [msg({"id": f"a{i}"}) for i in range(20, 30)])
            r.engine.publish_to_queue("b", [msg({"id": "b1"})])
            r.publish("c", {"id": "c0"})
            await wait_until(lambda: r.pipeline.stats().consumers["ca"].succeeded == 30)
            await wait_until(lambda: r.pipeline.stats().consumers["cc"].succeeded == 1)
            assert r.engine.queue_info("b").ready == 1  # nobody consumes b any more

    asyncio.run(go())
    ids = [e["id"] for e in ph.SEEN]
    assert sorted(i for i in ids if i.startswith("a")) == sorted(f"a{i}" for i in range(30))
    assert "b1" not in ids and "c0" in ids


def test_apply_refuses_a_handler_that_does_not_import_and_keeps_running(
    tmp_path: Path,
) -> None:
    old = topology(queues=(Queue("a"),), consumers=(Consumer("ca", "a", f"{H}:ok"),))
    bad = topology(queues=(Queue("a"),), consumers=(Consumer("ca", "a", f"{H}:missing"),))

    async def go() -> None:
        async with running(old, tmp_path) as r:
            with pytest.raises(HandlerImportError) as info:
                await r.pipeline.apply(bad)
            assert str(info.value) == (
                f"consumer 'ca': handler '{H}:missing': module '{H}' has no attribute 'missing'")
            r.publish("a", {"id": 1})
            await wait_until(lambda: r.pipeline.stats().consumers["ca"].succeeded == 1)

    asyncio.run(go())


def test_start_fails_on_a_handler_that_does_not_import(tmp_path: Path) -> None:
    topo = topology(topics=(Topic("t"),),
                    groups=(ConsumerGroup("g", ("t",), handler="nowhere_at_all:f"),))

    async def go() -> None:
        with pytest.raises(HandlerImportError) as info:
            async with running(topo, tmp_path):
                pass
        assert str(info.value).startswith(
            "consumer 'g': handler 'nowhere_at_all:f': cannot import module 'nowhere_at_all': "
            "ModuleNotFoundError: No module named 'nowhere_at_all' (searched sys.path: ")

    asyncio.run(go())


def test_stats_histogram_and_counters(tmp_path: Path) -> None:
    topo = topology(queues=(Queue("work"),), consumers=(Consumer("c", "work", f"{H}:sleepy"),))

    async def go() -> None:
        async with running(topo, tmp_path) as r:
            assert r.pipeline.stats().consumers["c"].duration_count == 0
            r.engine.publish_to_queue("work", [msg({"id": 1, "sleep": 0.03}),
                                               msg({"id": 2, "sleep": 0.3})])
            r.pipeline.notify()
            await wait_until(lambda: r.pipeline.stats().consumers["c"].succeeded == 2)
            s = r.pipeline.stats().consumers["c"]
            assert [b for b, _ in s.buckets] == list(DURATION_BUCKETS)
            counts = dict(s.buckets)
            assert (counts[0.025], counts[0.05], counts[0.25], counts[0.5]) == (0, 1, 1, 2)
            assert s.duration_count == 2 and 0.33 <= s.duration_sum < 1.0
            assert (s.errors, s.retries) == ({}, 0)

    asyncio.run(go())
