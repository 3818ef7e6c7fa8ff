"""A handler failure on a message's last allowed delivery (the queue's
`delivery_limit`) is dead-lettered by the pipeline: reason `delivery_limit`, the
handler's error, to the policy's dead_letter_queue (else the queue's DLX)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from runner.pipeline.deadletter import DEAD_LETTER_HEADER
from runner.topology.model import (
    Binding,
    Consumer,
    DeadLetter,
    DlqPolicy,
    Exchange,
    ExchangeType,
    Queue,
)
from tests.pipeline import pipeline_handlers as ph
from tests.pipeline.harness import H, running, topology, wait_until


def _topo(*, policy: bool) -> Any:
    policies = (DlqPolicy("p", max_retries=5, backoff=(0.05,), dead_letter_queue="dlq"),)
    return topology(
        queues=(Queue("work", delivery_limit=2, dead_letter=DeadLetter("dlx")), Queue("dlq"),
                Queue("parked")),
        exchanges=(Exchange("dlx", ExchangeType.FANOUT),),
        bindings=(Binding("dlx", queue="parked"),),
        policies=policies if policy else (),
        consumers=(Consumer("c", "work", f"{H}:invalid", dlq_policy="p" if policy else None),),
    )


@pytest.mark.parametrize("policy", [True, False])
def test_the_last_allowed_delivery_dies_with_the_handler_error(
    tmp_path: Path, policy: bool,
) -> None:
    target, other = ("dlq", "parked") if policy else ("parked", "dlq")

    async def go() -> dict[str, Any]:
        async with running(_topo(policy=policy), tmp_path) as r:
            r.publish("work", {"id": "x"})
            await wait_until(lambda: r.engine.queue_info(target).ready == 1)
            await asyncio.sleep(0.2)
            assert r.engine.queue_info(other).ready == 0
            assert r.engine.queue_info("work").ready == 0
            stats = r.pipeline.stats().consumers["c"]
            assert (stats.retries, stats.dead_lettered) == (1, 1)
            return dict(r.engine.peek(target, 1)[0].headers[DEAD_LETTER_HEADER])

    death = asyncio.run(go())
    assert [e["delivery_count"] for e in ph.SEEN] == [1, 2]
    assert death["reason"] == "delivery_limit"
    assert death["error"]["type"] == "tests.pipeline.pipeline_handlers.ValidationError"
    assert death["error"]["message"] == "Invalid order_id format"
    assert death["retry_count"] == 1
