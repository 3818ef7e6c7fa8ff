"""Queue consumers on a real Engine: delivery modes, onward publish, retries,
no_retry_on, dead letters, timeouts, idempotency across a restart."""

from __future__ import annotations

import asyncio
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from runner.pipeline.deadletter import DEAD_LETTER_HEADER
from runner.topology.model import (
    Binding,
    Consumer,
    DeadLetter,
    Delivery,
    DlqPolicy,
    Exchange,
    ExchangeType,
    Idempotency,
    Queue,
    Topic,
)
from tests.pipeline import pipeline_handlers as ph
from tests.pipeline.harness import H, bodies, msg, running, topology, wait_until


def _work(*consumers: Consumer, policies: tuple[DlqPolicy, ...] = (),
          queue: Queue | None = None, extra_queues: tuple[Queue, ...] = (),
          **kw: Any) -> Any:
    return topology(
        queues=(queue or Queue("work"), Queue("dlq"), *extra_queues),
        policies=policies, consumers=consumers, **{"topics": (Topic("results"),), **kw},
    )


@pytest.mark.parametrize("delivery", list(Delivery))
@pytest.mark.parametrize("handler", ["with_ctx", "async_with_ctx"])
def test_every_delivery_mode_runs_the_handler_and_applies_outputs(
    tmp_path: Path, delivery: Delivery, handler: str,
) -> None:
    topo = _work(Consumer("c", "work", f"{H}:{handler}", concurrency=2, delivery=delivery))

    async def go() -> None:
        async with running(topo, tmp_path) as r:
            r.publish("work", *({"id": i} for i in range(5)))
            await wait_until(lambda: r.pipeline.stats().consumers["c"].succeeded == 5)
            info = r.engine.queue_info("work")
            assert (info.ready, info.unacked) == (0, 0)
            if handler == "with_ctx":
                assert sorted(b["from"]["id"] for b in bodies(r.engine, "outbox")) == [
                    0, 1, 2, 3, 4]
            else:
                recs, _ = r.engine.read("results", 0, 0)
                assert sorted(rr.value for rr in recs if rr.value) == sorted(
                    b'{"from":{"id":%d}}' % i for i in range(5))
                assert {rr.key for rr in recs} == {b"k"}

    asyncio.run(go())
    assert sorted(e["id"] for e in ph.SEEN) == ["0", "1", "2", "3", "4"]
    assert all(e["delivery_count"] == 1 and not e["redelivered"] for e in ph.SEEN)


def test_retries_follow_the_schedule_then_dead_letter_with_the_enriched_header(
    tmp_path: Path,
) -> None:
    policy = DlqPolicy("p", max_retries=2, backoff=(0.1, 0.2), dead_letter_queue="dlq")
    topo = _work(Consumer("c", "work", f"{H}:flaky", dlq_policy="p"), policies=(policy,))

    async def go() -> dict[str, Any]:
        async with running(topo, tmp_path) as r:
            r.engine.publish_to_queue("work", [
                msg({"id": "doomed", "fail": 99}, message_id="m-doomed", routing_key="rk"),
                msg({"id": "lucky", "fail": 1}),
            ])
            r.pipeline.notify()
            await wait_until(lambda: r.engine.queue_info("dlq").ready == 1)
            await wait_until(lambda: r.pipeline.stats().consumers["c"].succeeded == 1)
            dead = r.engine.peek("dlq", 10)
            stats = r.pipeline.stats().consumers["c"]
            assert (stats.retries, stats.dead_lettered, stats.errors) == (
                3, 1, {"RuntimeError": 4})
            # staged outputs of failed attempts were discarded: only lucky's 2nd attempt
            assert bodies(r.engine, "outbox") == [{"id": "lucky", "attempt": 2}]
            assert dead[0].body == b'{"id":"doomed","fail":99}'
            assert dead[0].message_id == "m-doomed"
            return dict(dead[0].headers[DEAD_LETTER_HEADER])

    death = asyncio.run(go())
    doomed = [e for e in ph.SEEN if e["id"] == "doomed"]
    assert [e["delivery_count"] for e in doomed] == [1, 2, 3]
    gaps = [b["t"] - a["t"] for a, b in zip(doomed, doomed[1:], strict=False)]
    assert 0.1 <= gaps[0] < 0.6 and 0.2 <= gaps[1] < 0.7
    error = death.pop("error")
    assert error["type"] == "RuntimeError"
    assert error["message"] == "attempt 3 of doomed failed"
    trace = error["stack_trace"].splitlines()
    assert trace[0] == "Traceback (most recent call last):"
    assert "pipeline_handlers.py" in trace[1] and ", in flaky" in trace[1]  # no runner frames
    assert trace[-1] == "RuntimeError: attempt 3 of doomed failed"
    first, last = death.pop("first_attempt"), death.pop("last_attempt")
    assert first.endswith("Z") and last.endswith("Z")
    span = datetime.fromisoformat(last) - datetime.fromisoformat(first)
    assert 0.3 <= span.total_seconds() < 2.0  # first delivery .. third delivery
    assert death == {
        "reason": "handler_error", "retry_count": 2, "original_queue": "work",
        "original_exchange": "", "original_routing_key": "rk", "consumer_id": "c-1@host",
        "death_count": 1,
    }


def test_no_retry_on_goes_straight_to_the_dead_letter_topic(tmp_path: Path) -> None:
    policy = DlqPolicy("p", max_retries=5, backoff=(0.05,), dead_letter_queue="dead-topic",
                       no_retry_on=("ValueError",))
    topo = _work(Consumer("c", "work", f"{H}:invalid", dlq_policy="p"), policies=(policy,),
                 topics=(Topic("results"), Topic("dead-topic")))

    async def go() -> None:
        async with running(topo, tmp_path) as r:
            r.publish("work", {"id": 1})
            await wait_until(lambda: r.engine.partitions("dead-topic")[0].log_end_offset == 1)
            recs, _ = r.engine.read("dead-topic", 0, 0)
            death = recs[0].headers[DEAD_LETTER_HEADER]
            assert (death["retry_count"], death["error"]["type"]) == (
                0, f"{H}.ValidationError")
            assert recs[0].value == b'{"id":1}'
            assert r.pipeline.stats().consumers["c"].retries == 0

    asyncio.run(go())
    assert len(ph.SEEN) == 1


def test_at_most_once_never_retries_and_dead_letters_a_copy(tmp_path: Path) -> None:
    policy = DlqPolicy("p", max_retries=3, backoff=(0.01,), dead_letter_queue="dlq")
    topo = _work(Consumer("c", "work", f"{H}:flaky", dlq_policy="p",
                          delivery=Delivery.AT_MOST_ONCE), policies=(policy,))

    async def go() -> None:
        async with running(topo, tmp_path) as r:
            r.publish("work", {"id": "x", "fail": 1})
            await wait_until(lambda: r.engine.queue_info("dlq").ready == 1)
            dead = r.engine.peek("dlq", 1)[0]
            assert dead.headers[DEAD_LETTER_HEADER]["retry_count"] == 0
            info = r.engine.queue_info("work")
            assert (info.ready, info.unacked, info.delayed) == (0, 0, 0)
            assert bodies(r.engine, "outbox") == []

    asyncio.run(go())
    assert len(ph.SEEN) == 1


def test_without_policy_dead_letters_through_the_queue_dlx_or_drops(tmp_path: Path) -> None:
    dlx_queue = Queue("work", dead_letter=DeadLetter("dlx", routing_key="dead.work"))
    topo = _work(
        Consumer("c", "work", f"{H}:invalid", delivery=Delivery.AT_MOST_ONCE),
        Consumer("d", "plain", f"{H}:invalid", delivery=Delivery.AT_MOST_ONCE),
        queue=dlx_queue, extra_queues=(Queue("plain"), Queue("parked")),
        exchanges=(Exchange("dlx", ExchangeType.DIRECT),),
        bindings=(Binding("dlx", queue="parked", routing_key="dead.work"),),
    )

    async def go() -> None:
        async with running(topo, tmp_path) as r:
            r.engine.publish_to_queue("work", [msg({"id": 1})])
            r.publish("plain", {"id": 2})
            await wait_until(lambda: r.engine.queue_info("parked").ready == 1)
            await wait_until(lambda: r.pipeline.stats().consumers["d"].dropped == 1)
            parked = r.engine.peek("parked", 1)[0]
            assert parked.routing_key == "dead.work"
            assert parked.headers[DEAD_LETTER_HEADER]["original_queue"] == "work"
            assert r.engine.queue_info("plain").ready == 0

    asyncio.run(go())


def test_a_handler_over_its_timeout_has_failed(tmp_path: Path) -> None:
    policy = DlqPolicy("p", max_retries=0, dead_letter_queue="dlq")
    topo = _work(Consumer("c", "work", f"{H}:sleepy", timeout_s=0.1, dlq_policy="p"),
                 policies=(policy,))

    async def go() -> None:
        async with running(topo, tmp_path) as r:
            r.publish("work", {"id": 1, "sleep": 0.4})
            await wait_until(lambda: r.engine.queue_info("dlq").ready == 1)
            death = r.engine.peek("dlq", 1)[0].headers[DEAD_LETTER_HEADER]
            assert death["error"]["type"] == "runner.pipeline.handler.HandlerTimeout"
            assert death["error"]["message"] == (
                f"handler '{H}:sleepy' did not finish within 0.1s")
            stats = r.pipeline.stats().consumers["c"]
            assert stats.errors == {"runner.pipeline.handler.HandlerTimeout": 1}
            assert stats.duration_count == 1 and 0.1 <= stats.duration_sum < 0.4

    asyncio.run(go())


def test_idempotency_window_skips_repeats_across_a_restart(tmp_path: Path) -> None:
    topo = _work(Consumer("c", "work", f"{H}:ok",
                          idempotency=Idempotency("order.id", window_s=3600)))

    async def first() -> None:
        async with running(topo, tmp_path) as r:
            r.publish("work", {"id": "a", "order": {"id": 7}})
            await wait_until(lambda: r.pipeline.stats().consumers["c"].succeeded == 1)

    async def second() -> None:
        async with running(topo, tmp_path) as r:
            r.engine.publish_to_queue("work", [
                msg({"id": "b", "order": {"id": 7}}), msg({"id": "c", "order": {"id": 8}}),
                msg({"id": "d"})])
            r.pipeline.notify()
            await wait_until(lambda: r.pipeline.stats().consumers["c"].succeeded == 2)
            stats = r.pipeline.stats().consumers["c"]
            assert stats.skipped == 1
            assert r.engine.queue_info("work").ready == 0

    asyncio.run(first())
    asyncio.run(second())
    assert [e["id"] for e in ph.SEEN] == ["a", "c", "d"]
