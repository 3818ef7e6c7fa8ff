"""One builder of the `x-dead-letter` header (issue 8, one owner per rule): a
death the broker writes (a TTL expiry in a queue) and one the pipeline writes (a
handler failure, at-least-once and at-most-once) have the same fields in the same
order, the same time format and the same `death_count` rule."""

from __future__ import annotations

import asyncio
import re
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
    Queue,
)
from tests.pipeline.harness import H, msg, running, topology, wait_until

ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{3})?Z$")
FIELDS = ["reason", "error", "retry_count", "first_attempt", "last_attempt", "original_queue",
          "original_exchange", "original_routing_key", "consumer_id", "death_count"]


@pytest.mark.parametrize("delivery", [Delivery.AT_LEAST_ONCE, Delivery.AT_MOST_ONCE])
def test_broker_and_pipeline_deaths_have_one_shape(tmp_path: Path, delivery: Delivery) -> None:
    topo = topology(
        queues=(Queue("work"), Queue("dlq"), Queue("dlq_ttl"),
                Queue("short", message_ttl_s=0.05, dead_letter=DeadLetter("dlx"))),
        exchanges=(Exchange("dlx", ExchangeType.FANOUT),),
        bindings=(Binding("dlx", queue="dlq_ttl"),),
        policies=(DlqPolicy("p", max_retries=0, dead_letter_queue="dlq"),),
        consumers=(Consumer("c", "work", f"{H}:invalid", dlq_policy="p", delivery=delivery),),
    )

    async def go() -> tuple[dict[str, Any], dict[str, Any]]:
        async with running(topo, tmp_path) as r:
            r.engine.publish_to_queue("short", [msg({"id": 1}, message_id="m1")])
            r.publish("work", {"id": 2})
            await wait_until(lambda: r.engine.queue_info("dlq").ready == 1
                             and r.engine.queue_info("dlq_ttl").ready == 1)
            by_pipeline = r.engine.peek("dlq", 1)[0].headers[DEAD_LETTER_HEADER]
            by_broker = r.engine.peek("dlq_ttl", 1)[0].headers[DEAD_LETTER_HEADER]
            return dict(by_broker), dict(by_pipeline)

    by_broker, by_pipeline = asyncio.run(go())
    assert list(by_broker) == FIELDS
    assert list(by_pipeline) == FIELDS
    assert by_broker["reason"] == "expired" and by_broker["error"] is None
    assert by_broker["first_attempt"] is None and by_broker["retry_count"] == 0
    assert by_pipeline["reason"] == "handler_error"
    assert set(by_pipeline["error"]) == {"type", "message", "stack_trace"}
    assert ISO.match(by_pipeline["first_attempt"]) and ISO.match(by_pipeline["last_attempt"])
    assert by_broker["death_count"] == by_pipeline["death_count"] == 1
    for death in (by_broker, by_pipeline):
        assert [type(death[k]) for k in ("retry_count", "original_queue", "death_count")] == [
            int, str, int]
