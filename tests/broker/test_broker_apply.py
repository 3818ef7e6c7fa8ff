"""Topology changes applied live, and the unsafe ones refused like PRECONDITION_FAILED."""

from __future__ import annotations

import pytest

from runner.broker.message import Message
from runner.clock import ManualClock
from runner.errors import Refused, UnsafeChange
from runner.topology.model import Binding, DeadLetter, Exchange, ExchangeType, Overflow, Queue
from tests.broker.conftest import MakeBroker

X = Exchange("x", ExchangeType.DIRECT)
B = Binding("x", queue="q", routing_key="k")


def test_add_and_remove_bindings_exchanges_queues(make_broker: MakeBroker) -> None:
    b = make_broker([X], [Queue("q")], [B])
    lines = b.apply([X, Exchange("y", ExchangeType.FANOUT)], [Queue("q"), Queue("q2")],
                    [Binding("x", queue="q2", routing_key="k"), Binding("y", queue="q")])
    assert lines == ["- binding x -> q", "+ exchange y", "+ queue q2", "+ binding x -> q2",
                     "+ binding y -> q"]
    assert b.publish("x", [Message(b"1", "k")])[0].queues == ("q2",)
    b.ack("q2", [d.delivery_id for d in b.pull("q2", 1, consumer_id="c")])
    lines = b.apply([X], [Queue("q")], [B])
    assert lines == ["- binding x -> q2", "- binding y -> q", "- exchange y", "- queue q2",
                     "+ binding x -> q"]


def test_removing_a_queue_with_messages_needs_force(make_broker: MakeBroker) -> None:
    b = make_broker([X], [Queue("q")], [B])
    b.publish("x", [Message(b"1", "k"), Message(b"2", "k")])
    with pytest.raises(UnsafeChange) as err:
        b.apply([X], [], [])
    assert str(err.value) == "queue 'q': the queue holds messages"
    assert b.queue_info("q").ready == 2  # nothing applied
    assert b.apply([X], [], [], force=True) == ["- binding x -> q", "- queue q"]
    assert not (b.data_dir / "queues" / "q").exists()


@pytest.mark.parametrize(("old", "new", "message"), [
    (Queue("q", max_priority=10), Queue("q", max_priority=5),
     "queue 'q' max_priority: a queue's max_priority cannot change; declare a new queue"),
    (Queue("q"), Queue("q", max_priority=5),
     "queue 'q' max_priority: a queue's max_priority cannot change; declare a new queue"),
    (Queue("q"), Queue("q", durable=False),
     "queue 'q' durable: a queue's durable cannot change; declare a new queue"),
])
def test_unsafe_queue_changes_are_refused(
    make_broker: MakeBroker, old: Queue, new: Queue, message: str,
) -> None:
    b = make_broker([X], [old], [B])
    with pytest.raises(UnsafeChange) as err:
        b.apply([X], [new], [B])
    assert str(err.value) == message
    assert b.queues["q"].spec == old


def test_unsafe_exchange_changes_are_refused(make_broker: MakeBroker) -> None:
    b = make_broker([X], [Queue("q")], [B])
    with pytest.raises(UnsafeChange) as err:
        b.apply([Exchange("x", ExchangeType.FANOUT, durable=False), Exchange("new", X.type)],
                [Queue("q")], [B])
    assert str(err.value) == (
        "exchange 'x' type: an exchange's type cannot change; declare a new exchange; "
        "exchange 'x' durable: an exchange's durable cannot change; declare a new exchange")
    assert not b.router.has_exchange("new")


def test_live_changes_take_effect(make_broker: MakeBroker, clock: ManualClock) -> None:
    b = make_broker([X], [Queue("q")], [B])
    b.publish("x", [Message(b"1", "k")])
    lines = b.apply([X], [Queue("q", message_ttl_s=5, max_length=1,
                                overflow=Overflow.REJECT_PUBLISH,
                                dead_letter=DeadLetter("x", "dead"), delivery_limit=3)], [B])
    assert lines == ["~ queue q: message_ttl_s None -> 5, max_length None -> 1, "
                     "overflow drop-head -> reject-publish, delivery_limit None -> 3, "
                     "dead_letter None -> DeadLetter(exchange='x', routing_key='dead')"]
    with pytest.raises(Refused):
        b.publish("x", [Message(b"2", "k")])  # full under the new limit
    b.ack("q", [d.delivery_id for d in b.pull("q", 5, consumer_id="c")])
    b.publish("x", [Message(b"3", "k")])
    clock.advance(6)
    b.tick()  # the new TTL expires it, dead-lettered through the new DLX (no binding: dropped)
    stats = b.stats()
    assert stats.queues["q"].dead_lettered["expired"] == 1
    assert stats.exchange_unroutable["x"] == 1


def test_declare_is_idempotent(make_broker: MakeBroker) -> None:
    b = make_broker([X], [Queue("q")], [B])
    assert b.declare([X], [Queue("q")], [B]) == []


def test_lower_max_length_drops_the_excess_at_once(make_broker: MakeBroker) -> None:
    dlx = Exchange("dlx", ExchangeType.FANOUT)
    b = make_broker([X, dlx], [Queue("q", dead_letter=DeadLetter("dlx")), Queue("dlq")],
                    [B, Binding("dlx", queue="dlq")])
    b.publish("x", [Message(b"%d" % i, "k") for i in range(5)])
    b.apply([X, dlx], [Queue("q", max_length=2, dead_letter=DeadLetter("dlx")), Queue("dlq")],
            [B, Binding("dlx", queue="dlq")])
    assert [d.body for d in b.peek("q", 10)] == [b"3", b"4"]
    assert [d.body for d in b.peek("dlq", 10)] == [b"0", b"1", b"2"]
