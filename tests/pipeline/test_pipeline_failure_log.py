"""The failure lines of a worker: fields, and identical failures rate-limited with a count."""

from __future__ import annotations

import logging

import pytest

from runner.clock import ManualClock
from runner.errors import NotFound
from runner.pipeline.failures import FailureLog
from runner.pipeline.message import QueueMessage, TopicMessage


def queue_msg(i: int) -> QueueMessage:
    return QueueMessage(body=None, payload=b"", headers={}, message_id=f"m-{i}",
                        redelivered=False, delivery_count=1, queue="work", exchange="",
                        routing_key="work", priority=0, timestamp=0, delivery_id=i)


def topic_msg(offset: int) -> TopicMessage:
    return TopicMessage(body=None, payload=b"", headers={}, message_id=None, redelivered=False,
                        delivery_count=1, topic="events", partition=2, offset=offset, key=None,
                        timestamp=0)


def lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "event", "").endswith("_failed")]


def test_a_failure_line_has_consumer_origin_and_error(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    failures = FailureLog("billing", ManualClock())
    assert failures.report("outputs", NotFound("exchange 'payments' not found"), queue_msg(7))
    (rec,) = lines(caplog)
    assert rec.getMessage() == (
        "consumer billing: applying the handler's outputs failed: runner.errors.NotFound: exchange "
        "'payments' not found (queue work message m-7)")
    assert (rec.event, rec.consumer, rec.stage, rec.error_type, rec.error) == (  # type: ignore[attr-defined]
        "outputs_failed", "billing", "outputs", "runner.errors.NotFound",
        "exchange 'payments' not found")
    assert (rec.queue, rec.message_id, rec.delivery_id) == ("work", "m-7", 7)  # type: ignore[attr-defined]
    assert rec.levelno == logging.WARNING


def test_identical_failures_are_counted_not_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    clock = ManualClock()
    failures = FailureLog("g", clock, window_s=10.0)
    written = [failures.report("handler", ValueError(f"bad {i}"), topic_msg(i))
               for i in range(50_000)]
    assert written.count(True) == 1
    failures.report("handler", KeyError("k"), topic_msg(1))  # another type: its own line
    clock.advance(10.0)
    assert failures.report("handler", ValueError("again"), topic_msg(50_000))
    got = lines(caplog)
    assert [r.getMessage() for r in got] == [
        "consumer g: handler failed: ValueError: bad 0 (topic events partition 2 offset 0)",
        "consumer g: handler failed: KeyError: 'k' (topic events partition 2 offset 1)",
        "consumer g: handler failed: ValueError: again (topic events partition 2 offset 50000)"
        " [49999 more like it in the last 10s not logged]",
    ]
    assert got[2].repeated == 49_999  # type: ignore[attr-defined]
    assert (got[0].topic, got[0].partition, got[0].offset) == ("events", 2, 0)  # type: ignore[attr-defined]
