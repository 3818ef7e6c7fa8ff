"""Less travelled paths: mixed exchange chains, spilled retries, interval fsync, epochs."""

from __future__ import annotations

import time

from runner.broker.message import Message
from runner.clock import ManualClock
from runner.topology.model import (
    Binding,
    DeadLetter,
    Exchange,
    ExchangeType,
    HeadersMatch,
    Queue,
)
from tests.broker.conftest import MakeBroker

T = ExchangeType


def test_headers_exchange_behind_a_fanout_sees_the_headers(make_broker: MakeBroker) -> None:
    b = make_broker(
        [Exchange("in", T.FANOUT), Exchange("h", T.HEADERS, internal=True)],
        [Queue("pdf"), Queue("any")],
        [Binding("in", to_exchange="h"),
         Binding("h", queue="pdf", headers=(("format", "pdf"),)),
         Binding("h", queue="any", match=HeadersMatch.ANY,
                 headers=(("format", "pdf"), ("format2", "doc")))])
    routes = b.publish("in", [Message(b"1", headers={"format": "pdf"}),
                              Message(b"2", headers={"format2": "doc"}),
                              Message(b"3")])
    assert [r.queues for r in routes] == [("pdf", "any"), ("any",), ()]
    assert b.stats().exchange_unroutable["in"] == 1


def test_alternate_exchange_of_an_alternate_exchange(make_broker: MakeBroker) -> None:
    b = make_broker(
        [Exchange("a", T.DIRECT, alternate_exchange="b"),
         Exchange("b", T.DIRECT, alternate_exchange="c"), Exchange("c", T.FANOUT)],
        [Queue("qa"), Queue("qb"), Queue("qc")],
        [Binding("a", queue="qa", routing_key="ka"), Binding("b", queue="qb", routing_key="kb"),
         Binding("c", queue="qc")])
    routes = b.publish("a", [Message(b"", "ka"), Message(b"", "kb"), Message(b"", "zz")])
    assert [r.queues for r in routes] == [("qa",), ("qb",), ("qc",)]


def test_dead_letter_exchange_bound_to_a_topic_feeds_the_sink(
    make_broker: MakeBroker, clock: ManualClock,
) -> None:
    got: list[tuple[str, bytes, str]] = []
    b = make_broker(
        [Exchange("dlx", T.TOPIC)],
        [Queue("q", message_ttl_s=1, dead_letter=DeadLetter("dlx", "dead.q"))],
        [Binding("dlx", topic="dead-letters", routing_key="dead.#")],
        topic_sink=lambda t, m: got.append((t, m.body, m.headers["x-dead-letter"]["reason"])))
    b.publish_to_queue("q", [Message(b"late")])
    clock.advance(2)
    b.tick()
    assert got == [("dead-letters", b"late", "expired")]


def test_requeued_high_priority_goes_before_waiting_low_priority(make_broker: MakeBroker) -> None:
    b = make_broker(queues=[Queue("q", max_priority=5)])
    b.publish_to_queue("q", [Message(b"hi", priority=5), Message(b"lo", priority=1)])
    hi = b.pull("q", 1, consumer_id="c")[0]
    b.nack("q", [hi.delivery_id], requeue=True)
    assert [d.body for d in b.pull("q", 2, consumer_id="c")] == [b"hi", b"lo"]


def test_spilled_durable_message_retried_and_recovered(make_broker: MakeBroker,
                                                        clock: ManualClock) -> None:
    topo: tuple[list[Exchange], list[Queue], list[Binding]] = ([], [Queue("q")], [])
    b = make_broker(*topo, memory_budget_bytes=0)
    b.publish_to_queue("q", [Message(b"big" * 100), Message(b"next")])
    d = b.pull("q", 1, consumer_id="c")[0]
    b.retry_later("q", d.delivery_id, 5)
    b.compact(force=True)  # the first publish record may go: the retry holds the body
    b.close()
    b = make_broker(*topo, memory_budget_bytes=0)
    clock.advance(6)
    b.tick()
    got = b.pull("q", 5, consumer_id="c")
    assert [(m.body, m.delivery_count) for m in got] == [(b"next", 1), (b"big" * 100, 2)]


def test_interval_fsync_syncs_in_the_background(
    make_broker: MakeBroker, clock: ManualClock,
) -> None:
    b = make_broker(queues=[Queue("q")], fsync="interval")
    b.publish_to_queue("q", [Message(b"x")])
    log = b.journals["q"].log
    assert log.unsynced_bytes > 0
    time.sleep(0.05)
    assert log.unsynced_bytes > 0  # not before the interval passed
    clock.advance(1)  # no tick: the broker's flusher thread syncs
    deadline = time.monotonic() + 5
    while log.unsynced_bytes and time.monotonic() < deadline:
        time.sleep(0.005)
    assert log.unsynced_bytes == 0


def test_non_durable_delivery_ids_do_not_repeat_after_restart(make_broker: MakeBroker) -> None:
    topo: tuple[list[Exchange], list[Queue], list[Binding]] = (
        [], [Queue("m", durable=False)], [])
    b = make_broker(*topo)
    b.publish_to_queue("m", [Message(b"a")])
    first = b.pull("m", 1, consumer_id="c")[0].delivery_id
    b.close()
    b = make_broker(*topo)
    b.publish_to_queue("m", [Message(b"a")])
    second = b.pull("m", 1, consumer_id="c")[0].delivery_id
    assert first != second
    assert b.ack("m", [first]) == [first]


def test_replay_leaves_letters_whose_queue_is_gone(make_broker: MakeBroker) -> None:
    b = make_broker(queues=[Queue("dlq")])
    death = {"reason": "rejected", "original_queue": "vanished", "original_routing_key": "k"}
    b.publish_to_queue("dlq", [Message(b"x", headers={"x-dead-letter": death})])
    assert b.replay("dlq").replayed == 0
    assert b.queue_info("dlq").ready == 1


def test_oldest_age_ignores_expired_heads(make_broker: MakeBroker, clock: ManualClock) -> None:
    b = make_broker(queues=[Queue("q")])
    b.publish_to_queue("q", [Message(b"old", ttl_s=1)])
    clock.advance(5)
    b.publish_to_queue("q", [Message(b"new")])
    clock.advance(2)
    b.tick()
    assert b.queue_info("q").oldest_ready_age_s == 2.0
