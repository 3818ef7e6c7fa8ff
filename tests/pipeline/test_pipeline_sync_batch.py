"""Sync handlers run in batches (one pool thread per batch): per-call timeout,
outputs only on success, order, and the loop-side overrun check of SyncBatch."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

from runner.clock import SystemClock
from runner.pipeline.deadletter import DEAD_LETTER_HEADER
from runner.pipeline.handler import Handler
from runner.pipeline.message import Context, QueueMessage
from runner.pipeline.sync_batch import SyncBatch
from runner.topology.model import Consumer, DlqPolicy, Queue
from tests.pipeline import pipeline_handlers as ph
from tests.pipeline.harness import H, bodies, running, topology, wait_until

TIMEOUT_TYPE = "runner.pipeline.handler.HandlerTimeout"


def _topo(consumer: Consumer, *, retries: int = 0) -> Any:
    return topology(queues=(Queue("work"), Queue("dlq")), consumers=(consumer,),
                    policies=(DlqPolicy("p", max_retries=retries, dead_letter_queue="dlq"),))


def test_a_call_overrunning_in_a_batch_fails_alone_and_the_rest_do_not_wait(
    tmp_path: Path,
) -> None:
    topo = _topo(Consumer("c", "work", f"{H}:sleepy_forward", timeout_s=0.15, dlq_policy="p"))

    async def go() -> None:
        async with running(topo, tmp_path) as r:
            t0 = time.monotonic()
            r.publish("work", {"id": 1}, {"id": 2, "sleep": 3.0}, {"id": 3})
            await wait_until(lambda: r.pipeline.stats().consumers["c"].succeeded == 2)
            # id 3 did not wait for id 2's thread to end (3 s; generous for a loaded machine)
            assert time.monotonic() - t0 < 2.5
            await wait_until(lambda: r.engine.queue_info("dlq").ready == 1)
            death = r.engine.peek("dlq", 1)[0].headers[DEAD_LETTER_HEADER]
            assert death["error"]["type"] == TIMEOUT_TYPE
            assert death["error"]["message"] == (
                f"handler '{H}:sleepy_forward' did not finish within 0.15s")
            await asyncio.sleep(0.7)  # id 2's thread ends and tries to publish: refused
            assert [b["id"] for b in bodies(r.engine, "outbox")] == [1, 3]
            stats = r.pipeline.stats().consumers["c"]
            assert stats.errors == {TIMEOUT_TYPE: 1}
            assert stats.duration_count == 3
            info = r.engine.queue_info("work")
            assert (info.ready, info.unacked) == (0, 0)

    asyncio.run(go())
    assert [e["id"] for e in ph.SEEN] == ["1", "3"]


def test_a_failed_call_in_a_batch_applies_no_outputs_and_the_others_do(
    tmp_path: Path,
) -> None:
    topo = _topo(Consumer("c", "work", f"{H}:flaky", dlq_policy="p"))

    async def go() -> None:
        async with running(topo, tmp_path) as r:
            r.publish("work", *({"id": i, "fail": 1 if i == 2 else 0} for i in range(5)))
            await wait_until(lambda: r.pipeline.stats().consumers["c"].succeeded == 4)
            await wait_until(lambda: r.engine.queue_info("dlq").ready == 1)
            assert sorted(b["id"] for b in bodies(r.engine, "outbox")) == [0, 1, 3, 4]
            death = r.engine.peek("dlq", 1)[0].headers[DEAD_LETTER_HEADER]
            assert death["error"]["message"] == "attempt 1 of 2 failed"

    asyncio.run(go())


def test_one_sync_worker_sees_a_backlog_in_order_and_acks_it_all(tmp_path: Path) -> None:
    topo = _topo(Consumer("c", "work", f"{H}:ok", prefetch=30))

    async def go() -> None:
        async with running(topo, tmp_path) as r:
            r.publish("work", *({"id": i} for i in range(300)))
            await wait_until(lambda: r.pipeline.stats().consumers["c"].succeeded == 300)
            await wait_until(lambda: r.engine.queue_info("work").unacked == 0)
            assert r.engine.queue_info("work").ready == 0

    asyncio.run(go())
    assert [e["id"] for e in ph.SEEN] == [str(i) for i in range(300)]


def test_a_sync_callable_returning_a_coroutine_is_awaited_within_the_timeout(
    tmp_path: Path,
) -> None:
    topo = _topo(Consumer("c", "work", f"{H}:returns_coroutine", timeout_s=0.2,
                          dlq_policy="p"))

    async def go() -> None:
        async with running(topo, tmp_path) as r:
            r.publish("work", {"id": 1}, {"id": 2, "sleep": 1.0})
            await wait_until(lambda: r.engine.queue_info("dlq").ready == 1)
            death = r.engine.peek("dlq", 1)[0].headers[DEAD_LETTER_HEADER]
            assert death["error"]["message"] == (
                f"handler '{H}:returns_coroutine' did not finish within 0.2s")
            assert r.pipeline.stats().consumers["c"].succeeded == 1

    asyncio.run(go())
    assert [e["id"] for e in ph.SEEN] == ["1"]


def _message(i: int) -> QueueMessage:
    return QueueMessage(body={"id": i}, payload=b"{}", headers={}, message_id=None,
                        redelivered=False, delivery_count=1, queue="q", exchange="",
                        routing_key="", priority=0, timestamp=0, delivery_id=i)


def test_sync_batch_overrun_abandons_the_batch_and_voids_the_late_outcome() -> None:
    ph.reset()
    handler = Handler.load(f"{H}:blocking")
    calls = [(m, Context("c", m)) for m in (_message(1), _message(2))]
    batch = SyncBatch(handler, calls, clock=SystemClock(), stopping=lambda: False)
    assert batch.overran(0.2) == (False, 0.2)  # nothing started yet: a full timeout left
    thread = threading.Thread(target=batch.run)
    thread.start()
    try:
        assert ph.STARTED.wait(5)
        overran, left = batch.overran(0.2)
        assert not overran and 0 < left <= 0.2
        time.sleep(left + 0.01)
        overran, ran = batch.overran(0.2)
        assert overran and ran >= 0.2
    finally:
        ph.RELEASE.set()
        thread.join(5)
    # the overrun call's outcome is void and the second call never started
    assert batch.outcomes == []
    assert [(e["id"], e["phase"]) for e in ph.SEEN] == [("1", "start"), ("1", "end")]
