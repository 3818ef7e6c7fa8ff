"""Dead-letter cycles through drop-on-arrival and full queues, requeues over
`max_length`, and the hop guard: the RabbitMQ parity cases of issue 8."""

from __future__ import annotations

import logging
import time

import pytest

from runner.broker.message import Message
from runner.clock import ManualClock
from runner.errors import Refused
from runner.topology.model import Binding, DeadLetter, Exchange, ExchangeType, Overflow, Queue
from tests.broker.conftest import MakeBroker

FAN = ExchangeType.FANOUT
X12 = [Exchange("x1", FAN), Exchange("x2", FAN)]
B12 = [Binding("x1", queue="q1"), Binding("x2", queue="q2")]


def bodies(b, queue: str) -> list[bytes]:  # type: ignore[no-untyped-def]
    return [d.body for d in b.peek(queue, 100)]


def test_drop_on_arrival_cycle_ends_after_one_round(make_broker: MakeBroker) -> None:
    # issue 8 item 1: q1 drops m1 on arrival (max_length 0) -> x2 -> q2 drops it on
    # arrival -> x1 -> q1 again: a cycle, dropped (RabbitMQ confirms and drops it)
    b = make_broker(X12, [
        Queue("q1", max_length=0, message_ttl_s=60, dead_letter=DeadLetter("x2")),
        Queue("q2", max_length=0, dead_letter=DeadLetter("x1")),
    ], B12)
    routes = b.publish_to_queue("q1", [Message(b"m1")])
    assert routes[0].queues == ("q1",)
    st = b.stats()
    assert st.queues["q1"].dead_lettered["maxlen"] == 1
    assert st.queues["q2"].dead_lettered["maxlen"] == 1
    assert st.dead_letter_cycles == 1
    assert st.dead_letter_loops == 0
    assert bodies(b, "q1") == [] and bodies(b, "q2") == []
    b.tick()  # nothing left to bounce
    assert b.stats().queues["q1"].dead_lettered["maxlen"] == 1


def test_two_full_reject_publish_dlx_queues_do_not_bounce(
    make_broker: MakeBroker, clock: ManualClock,
) -> None:
    # issue 8 item 2: m3 is refused by q1, dead-lettered to q2, refused there, and
    # dropped as a cycle on its way back to q1
    b = make_broker(X12, [
        Queue("q1", max_length=1, overflow=Overflow.REJECT_PUBLISH_DLX, message_ttl_s=60,
              dead_letter=DeadLetter("x2")),
        Queue("q2", max_length=1, overflow=Overflow.REJECT_PUBLISH_DLX,
              dead_letter=DeadLetter("x1")),
    ], B12)
    b.publish_to_queue("q1", [Message(b"m1")])
    b.publish_to_queue("q2", [Message(b"m2")])
    with pytest.raises(Refused):
        b.publish_to_queue("q1", [Message(b"m3")])
    for _ in range(5):
        clock.advance(0.1)
        b.tick()
    st = b.stats()
    assert st.queues["q1"].dead_lettered["maxlen"] == 1
    assert st.queues["q2"].dead_lettered["maxlen"] == 1
    assert st.dead_letter_cycles == 1
    assert bodies(b, "q1") == [b"m1"] and bodies(b, "q2") == [b"m2"]
    assert "x-dead-letter" not in b.peek("q1", 1)[0].headers


def _drop_head_queue(make_broker: MakeBroker, **kw: object):  # type: ignore[no-untyped-def]
    return make_broker([Exchange("dlx", FAN)], [
        Queue("q", max_length=2, overflow=Overflow.DROP_HEAD, dead_letter=DeadLetter("dlx")),
        Queue("dlq"),
    ], [Binding("dlx", queue="dlq")], **kw)


def test_nack_requeue_into_a_full_drop_head_queue_drops_the_head(
    make_broker: MakeBroker,
) -> None:
    # issue 8 item 3: m1 goes back to the head, the queue is over max_length: m1 drops
    b = _drop_head_queue(make_broker)
    b.publish_to_queue("q", [Message(b"m1")])
    d = b.pull("q", 1, consumer_id="c")[0]
    b.publish_to_queue("q", [Message(b"m2"), Message(b"m3")])
    assert b.nack("q", [d.delivery_id], requeue=True) == []
    assert bodies(b, "q") == [b"m2", b"m3"]
    dead = b.peek("dlq", 5)
    assert [x.body for x in dead] == [b"m1"]
    assert dead[0].headers["x-dead-letter"]["reason"] == "maxlen"
    assert b.queue_info("q").ready == 2


def test_expired_lease_into_a_full_drop_head_queue_drops_the_head(
    make_broker: MakeBroker, clock: ManualClock,
) -> None:
    b = _drop_head_queue(make_broker)
    b.publish_to_queue("q", [Message(b"m1")])
    b.pull("q", 1, consumer_id="c", lease_s=5)
    b.publish_to_queue("q", [Message(b"m2"), Message(b"m3")])
    clock.advance(6)
    b.tick()
    assert bodies(b, "q") == [b"m2", b"m3"]
    assert bodies(b, "dlq") == [b"m1"]
    assert b.stats().queues["q"].dead_lettered["maxlen"] == 1


def test_detach_into_a_full_drop_head_queue_drops_the_head(make_broker: MakeBroker) -> None:
    b = _drop_head_queue(make_broker)
    b.publish_to_queue("q", [Message(b"m1"), Message(b"m2")])
    b.pull("q", 2, consumer_id="c")
    b.publish_to_queue("q", [Message(b"m3")])
    assert b.detach("q", "c") == 2
    # m1 and m2 return to the head: the queue holds 3, one over -> m1 drops
    assert bodies(b, "q") == [b"m2", b"m3"]
    assert bodies(b, "dlq") == [b"m1"]


def test_requeue_within_the_bound_keeps_the_message(make_broker: MakeBroker) -> None:
    b = _drop_head_queue(make_broker)
    b.publish_to_queue("q", [Message(b"m1")])
    d = b.pull("q", 1, consumer_id="c")[0]
    b.publish_to_queue("q", [Message(b"m2")])
    b.nack("q", [d.delivery_id], requeue=True)
    assert bodies(b, "q") == [b"m1", b"m2"]
    assert bodies(b, "dlq") == []


def test_requeue_into_a_full_reject_publish_queue_is_kept(make_broker: MakeBroker) -> None:
    # reject-publish refuses publishes only: a requeue is never refused (RabbitMQ)
    b = make_broker(queues=[Queue("q", max_length=1, overflow=Overflow.REJECT_PUBLISH)])
    b.publish_to_queue("q", [Message(b"m1")])
    d = b.pull("q", 1, consumer_id="c")[0]
    b.publish_to_queue("q", [Message(b"m2")])
    b.nack("q", [d.delivery_id], requeue=True)
    assert bodies(b, "q") == [b"m1", b"m2"]


def test_drop_head_requeue_survives_a_restart(make_broker: MakeBroker) -> None:
    b = _drop_head_queue(make_broker)
    b.publish_to_queue("q", [Message(b"m1")])
    d = b.pull("q", 1, consumer_id="c")[0]
    b.publish_to_queue("q", [Message(b"m2"), Message(b"m3")])
    b.nack("q", [d.delivery_id], requeue=True)
    b.close()
    b = _drop_head_queue(make_broker)
    assert bodies(b, "q") == [b"m2", b"m3"]
    assert bodies(b, "dlq") == [b"m1"]


# ------------------------------------------------------------------ the hop guard


def _amplifier(n: int) -> tuple[list[Exchange], list[Queue], list[Binding]]:
    """n drop-on-arrival queues, each dead-lettering to a fanout bound to all of them:
    cycle detection ends every path, but there are n! of them."""
    queues = [Queue(f"a{i}", max_length=0, dead_letter=DeadLetter("fan")) for i in range(n)]
    return ([Exchange("fan", FAN)], queues, [Binding("fan", queue=f"a{i}") for i in range(n)])


def test_hop_guard_stops_a_cascade_at_1000_hops(
    make_broker: MakeBroker, caplog: pytest.LogCaptureFixture,
) -> None:
    b = make_broker(*_amplifier(9))  # 9! paths: hundreds of thousands of hops unguarded
    caplog.set_level(logging.WARNING, logger="runner.broker")
    started = time.monotonic()
    b.publish("fan", [Message(b"boom")])
    assert time.monotonic() - started < 10
    st = b.stats()
    deaths = sum(q.dead_lettered["maxlen"] for q in st.queues.values())
    loops = sum(q.dead_letter_loops for q in st.queues.values())
    assert loops == st.dead_letter_loops > 0
    # every death is either a hop (republished) or dropped by the guard
    assert deaths - loops == 1000
    lines = [r.getMessage() for r in caplog.records if "dead-letter loop" in r.getMessage()]
    assert lines, caplog.records
    assert "after 1000 dead-letter hops" in lines[0]
    assert len(lines) == 1  # one line per publish, not one per dropped letter


def test_hop_guard_does_not_limit_independent_messages(make_broker: MakeBroker) -> None:
    # 3,000 messages dropped on arrival into a plain DLQ: 3,000 legitimate hops
    b = make_broker([Exchange("dlx", FAN)], [
        Queue("q", max_length=0, dead_letter=DeadLetter("dlx")), Queue("dlq"),
    ], [Binding("dlx", queue="dlq")])
    b.publish_to_queue("q", [Message(b"m%d" % i) for i in range(3000)])
    assert b.queue_info("dlq").ready == 3000
    assert b.stats().dead_letter_loops == 0
