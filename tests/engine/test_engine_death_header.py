"""One owner for the `x-dead-letter` header: a death written by the broker (a
rejection) and one written by the pipeline (a handler failure) agree on
`death_count` after a replay and on the time format (issue 8, one owner per rule)."""

from __future__ import annotations

from pathlib import Path

from runner.clock import ManualClock
from runner.engine import Engine, FsyncPolicy, OutMessage
from runner.pipeline.deadletter import build_death
from runner.pipeline.message import QueueMessage
from runner.topology.model import Binding as Bind
from runner.topology.model import DeadLetter, Exchange, ExchangeType, Queue, Topology

# a wall-clock time with a sub-millisecond part: both sides print it the same way
NOW = 1_705_312_800.0004


def _topology() -> Topology:
    return Topology(
        exchanges=(("dlx", Exchange("dlx", ExchangeType.FANOUT)),),
        queues=(("dlq", Queue("dlq")),
                ("work", Queue("work", dead_letter=DeadLetter("dlx")))),
        bindings=(Bind("dlx", queue="dlq"),),
    )


def test_broker_and_pipeline_deaths_agree_after_a_replay(tmp_path: Path) -> None:
    e = Engine.open(_topology(), tmp_path, fsync=FsyncPolicy.NEVER, clock=ManualClock(NOW))
    try:
        e.publish_to_queue("work", [OutMessage(b"m", message_id="m1")])
        d = e.pull("work", 1, lease_s=30, consumer_id="c")[0]
        e.nack("work", [d.delivery_id], requeue=False)
        first = e.peek("dlq", 1)[0].headers["x-dead-letter"]
        assert first["death_count"] == 1
        assert e.replay("dlq") == 1

        d = e.pull("work", 1, lease_s=30, consumer_id="c")[0]
        by_pipeline = build_death(QueueMessage.from_delivery(d), RuntimeError("boom"),
                                  retry_count=0, first_attempt=NOW, last_attempt=NOW,
                                  consumer_id="c")
        e.nack("work", [d.delivery_id], requeue=False)
        by_broker = e.peek("dlq", 1)[0].headers["x-dead-letter"]
    finally:
        e.close()
    assert by_broker["death_count"] == by_pipeline["death_count"] == 2
    assert by_broker["last_attempt"] == by_pipeline["last_attempt"] == "2024-01-15T10:00:00Z"
