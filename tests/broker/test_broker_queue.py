"""Queue semantics: FIFO, priorities, TTL, length limits, consumers, leases, retries."""

from __future__ import annotations

import pytest

from runner.broker.message import Message
from runner.clock import ManualClock
from runner.errors import Conflict, NotFound, Refused
from runner.topology.model import Binding, DeadLetter, Exchange, ExchangeType, Overflow, Queue
from tests.broker.conftest import MakeBroker

DLX = [Exchange("dlx", ExchangeType.FANOUT)]
DLQ_BINDING = [Binding("dlx", queue="dlq")]


def bodies(ds: list) -> list[bytes]:  # type: ignore[type-arg]
    return [d.body for d in ds]


def put(b, q: str, *items: bytes | tuple[bytes, int | None], **kw: object) -> None:  # type: ignore[no-untyped-def]
    msgs = []
    for it in items:
        body, prio = it if isinstance(it, tuple) else (it, None)
        msgs.append(Message(body, priority=prio, **kw))  # type: ignore[arg-type]
    b.publish_to_queue(q, msgs)


def test_fifo_order(make_broker: MakeBroker) -> None:
    b = make_broker(queues=[Queue("q")])
    put(b, "q", b"1", b"2", b"3")
    assert bodies(b.pull("q", 2, consumer_id="c")) == [b"1", b"2"]
    assert bodies(b.pull("q", 5, consumer_id="c")) == [b"3"]


def test_priority_queue_delivers_higher_first_fifo_within_level(make_broker: MakeBroker) -> None:
    b = make_broker(queues=[Queue("q", max_priority=5)])
    put(b, "q", (b"low1", 1), (b"none", None), (b"high1", 5), (b"low2", 1), (b"high2", 5),
        (b"huge", 200), (b"neg", -3))
    got = bodies(b.pull("q", 10, consumer_id="c"))
    assert got == [b"high1", b"high2", b"huge", b"low1", b"low2", b"none", b"neg"]


def test_priority_is_reported_as_published(make_broker: MakeBroker) -> None:
    b = make_broker(queues=[Queue("q", max_priority=5)])
    put(b, "q", (b"x", 9))
    assert b.pull("q", 1, consumer_id="c")[0].priority == 9


def test_unknown_queue_is_not_found(make_broker: MakeBroker) -> None:
    b = make_broker()
    with pytest.raises(NotFound) as err:
        b.pull("nope", 1, consumer_id="c")
    assert str(err.value) == "queue 'nope' not found"


def test_default_exchange_uses_queue_name_as_routing_key(make_broker: MakeBroker) -> None:
    b = make_broker(queues=[Queue("q")])
    b.publish_to_queue("q", [Message(b"x")])
    d = b.pull("q", 1, consumer_id="c")[0]
    assert (d.routing_key, d.exchange) == ("q", "")


# ------------------------------------------------------------------ TTL


def test_queue_ttl_expires_and_dead_letters(make_broker: MakeBroker, clock: ManualClock) -> None:
    b = make_broker(DLX, [Queue("q", message_ttl_s=10, dead_letter=DeadLetter("dlx")),
                          Queue("dlq")], DLQ_BINDING)
    put(b, "q", b"old")
    clock.advance(5)
    put(b, "q", b"new")
    clock.advance(6)
    assert bodies(b.pull("q", 5, consumer_id="c")) == [b"new"]
    dead = b.pull("dlq", 5, consumer_id="c")
    assert bodies(dead) == [b"old"]
    death = dead[0].headers["x-dead-letter"]
    assert death["reason"] == "expired"
    assert b.stats().queues["q"].dead_lettered["expired"] == 1


def test_per_message_ttl_expires_behind_the_head(
    make_broker: MakeBroker, clock: ManualClock,
) -> None:
    b = make_broker(DLX, [Queue("q", dead_letter=DeadLetter("dlx")), Queue("dlq")], DLQ_BINDING)
    b.publish_to_queue("q", [Message(b"long", ttl_s=100), Message(b"short", ttl_s=1),
                             Message(b"forever")])
    clock.advance(2)
    b.tick()  # the sweep removes it though it is not at the head
    assert b.queue_info("q").ready == 2
    assert bodies(b.peek("dlq", 5)) == [b"short"]


def test_expired_message_is_not_delivered_even_without_a_sweep(
    make_broker: MakeBroker, clock: ManualClock,
) -> None:
    b = make_broker(queues=[Queue("q")])
    b.publish_to_queue("q", [Message(b"a", ttl_s=1), Message(b"b")])
    clock.advance(1.5)
    assert bodies(b.pull("q", 5, consumer_id="c")) == [b"b"]
    assert b.stats().queues["q"].dead_lettered["expired"] == 1


def test_shorter_of_queue_and_message_ttl_wins(
    make_broker: MakeBroker, clock: ManualClock,
) -> None:
    b = make_broker(queues=[Queue("q", message_ttl_s=10)])
    b.publish_to_queue("q", [Message(b"a", ttl_s=60), Message(b"b", ttl_s=2)])
    clock.advance(3)
    b.tick()
    assert bodies(b.peek("q", 5)) == [b"a"]
    clock.advance(8)
    b.tick()
    assert b.peek("q", 5) == []


# ------------------------------------------------------------------ length limits


def test_drop_head_drops_the_oldest(make_broker: MakeBroker) -> None:
    b = make_broker(DLX, [Queue("q", max_length=2, dead_letter=DeadLetter("dlx")),
                          Queue("dlq")], DLQ_BINDING)
    put(b, "q", b"1", b"2", b"3")
    assert bodies(b.peek("q", 5)) == [b"2", b"3"]
    dead = b.peek("dlq", 5)
    assert bodies(dead) == [b"1"]
    assert dead[0].headers["x-dead-letter"]["reason"] == "maxlen"


def test_drop_head_on_priority_queue_drops_oldest_of_lowest_level(make_broker: MakeBroker) -> None:
    b = make_broker(queues=[Queue("q", max_length=3, max_priority=5)])
    put(b, "q", (b"h1", 5), (b"l1", 1), (b"l2", 1), (b"h2", 5))
    assert bodies(b.peek("q", 5)) == [b"h1", b"h2", b"l2"]


def test_max_length_bytes(make_broker: MakeBroker) -> None:
    b = make_broker(queues=[Queue("q", max_length_bytes=10)])
    put(b, "q", b"aaaa", b"bbbb", b"cccc")
    assert bodies(b.peek("q", 5)) == [b"bbbb", b"cccc"]


def test_reject_publish_refuses_with_a_clear_message(make_broker: MakeBroker) -> None:
    b = make_broker(queues=[Queue("q", max_length=1, overflow=Overflow.REJECT_PUBLISH)])
    with pytest.raises(Refused) as err:
        put(b, "q", b"1", b"2", b"3")
    assert str(err.value) == (
        "queue 'q' is full (max_length 1, overflow reject-publish): publish refused")
    assert err.value.accepted == 1
    assert bodies(b.peek("q", 5)) == [b"1"]
    assert b.stats().queues["q"].rejected_publishes == 1


def test_refused_names_the_destinations_that_took_the_message(make_broker: MakeBroker) -> None:
    b = make_broker(
        [Exchange("f", ExchangeType.FANOUT)],
        [Queue("full", max_length=0, overflow=Overflow.REJECT_PUBLISH), Queue("ok")],
        [Binding("f", queue="ok"), Binding("f", queue="full")])
    with pytest.raises(Refused) as err:
        b.publish("f", [Message(b"x")])
    assert err.value.accepted == 0
    assert err.value.routed == ("ok",)


def test_reject_publish_dlx_refuses_and_dead_letters(make_broker: MakeBroker) -> None:
    b = make_broker(DLX, [Queue("q", max_length=1, overflow=Overflow.REJECT_PUBLISH_DLX,
                                dead_letter=DeadLetter("dlx")), Queue("dlq")], DLQ_BINDING)
    put(b, "q", b"1")
    with pytest.raises(Refused) as err:
        put(b, "q", b"2")
    assert str(err.value) == (
        "queue 'q' is full (max_length 1, overflow reject-publish-dlx): publish refused")
    dead = b.peek("dlq", 5)
    assert bodies(dead) == [b"2"]
    assert dead[0].headers["x-dead-letter"]["reason"] == "maxlen"
    assert dead[0].headers["x-dead-letter"]["retry_count"] == 0


# ------------------------------------------------------------------ consumers


def test_prefetch_limits_unacked_per_consumer(make_broker: MakeBroker) -> None:
    b = make_broker(queues=[Queue("q")])
    put(b, "q", *[bytes([i]) for i in range(10)])
    first = b.pull("q", 10, consumer_id="a", prefetch=3)
    assert len(first) == 3
    assert b.pull("q", 10, consumer_id="a", prefetch=3) == []
    assert len(b.pull("q", 10, consumer_id="b", prefetch=3)) == 3
    b.ack("q", [first[0].delivery_id])
    assert len(b.pull("q", 10, consumer_id="a", prefetch=3)) == 1


def test_single_active_consumer_and_failover(make_broker: MakeBroker) -> None:
    b = make_broker(queues=[Queue("q", single_active_consumer=True)])
    put(b, "q", b"1", b"2", b"3")
    a = b.pull("q", 1, consumer_id="a")
    assert bodies(a) == [b"1"]
    assert b.pull("q", 1, consumer_id="b") == []
    assert bodies(b.pull("q", 1, consumer_id="a")) == [b"2"]
    assert b.detach("q", "a") == 2
    got = b.pull("q", 5, consumer_id="b")
    assert bodies(got) == [b"1", b"2", b"3"]
    assert b.pull("q", 1, consumer_id="a") == []


def test_single_active_consumer_fails_over_when_its_lease_expires(
    make_broker: MakeBroker, clock: ManualClock,
) -> None:
    b = make_broker(queues=[Queue("q", single_active_consumer=True)])
    put(b, "q", b"1")
    assert bodies(b.pull("q", 1, consumer_id="a", lease_s=5)) == [b"1"]
    assert b.pull("q", 1, consumer_id="b", lease_s=5) == []
    clock.advance(6)
    b.tick()
    assert bodies(b.pull("q", 1, consumer_id="b", lease_s=5)) == [b"1"]


def test_delivery_tags_are_unique_and_ack_returns_unknown(make_broker: MakeBroker) -> None:
    b = make_broker(queues=[Queue("q")])
    put(b, "q", b"1", b"2")
    ds = b.pull("q", 2, consumer_id="c")
    assert len({d.delivery_id for d in ds}) == 2
    assert b.ack("q", [ds[0].delivery_id, 999]) == [999]
    assert b.ack("q", [ds[0].delivery_id]) == [ds[0].delivery_id]  # already settled
    st_ = b.stats().queues["q"]
    assert (st_.acked, st_.unacked, st_.delivered) == (1, 1, 2)


def test_nack_requeue_returns_to_original_position(make_broker: MakeBroker) -> None:
    b = make_broker(queues=[Queue("q")])
    put(b, "q", b"1", b"2", b"3", b"4")
    ds = b.pull("q", 3, consumer_id="c")
    assert b.nack("q", [ds[1].delivery_id, ds[0].delivery_id], requeue=True) == []
    again = b.pull("q", 5, consumer_id="c")
    assert bodies(again) == [b"1", b"2", b"4"]
    assert [d.redelivered for d in again] == [True, True, False]
    assert [d.delivery_count for d in again] == [2, 2, 1]
    assert b.stats().queues["q"].redelivered == 2


def test_nack_without_requeue_dead_letters_rejected(make_broker: MakeBroker) -> None:
    b = make_broker(DLX, [Queue("q", dead_letter=DeadLetter("dlx")), Queue("dlq")], DLQ_BINDING)
    put(b, "q", b"1")
    d = b.pull("q", 1, consumer_id="c")[0]
    assert b.nack("q", [d.delivery_id, 77], requeue=False) == [77]
    assert b.peek("dlq", 1)[0].headers["x-dead-letter"]["reason"] == "rejected"
    assert b.stats().queues["q"].dead_lettered["rejected"] == 1


def test_expired_lease_redelivers(make_broker: MakeBroker, clock: ManualClock) -> None:
    b = make_broker(queues=[Queue("q")])
    put(b, "q", b"1", b"2")
    first = b.pull("q", 1, consumer_id="c", lease_s=30)
    clock.advance(31)
    b.tick()
    again = b.pull("q", 5, consumer_id="c", lease_s=30)
    assert bodies(again) == [b"1", b"2"]
    assert again[0].redelivered and again[0].delivery_count == 2
    assert b.ack("q", [first[0].delivery_id]) == [first[0].delivery_id]


def test_delivery_limit_dead_letters(make_broker: MakeBroker) -> None:
    b = make_broker(DLX, [Queue("q", delivery_limit=2, dead_letter=DeadLetter("dlx")),
                          Queue("dlq")], DLQ_BINDING)
    put(b, "q", b"1")
    for _ in range(2):
        d = b.pull("q", 1, consumer_id="c")[0]
        b.nack("q", [d.delivery_id], requeue=True)
    assert b.pull("q", 1, consumer_id="c") == []
    dead = b.peek("dlq", 1)[0].headers["x-dead-letter"]
    assert dead["reason"] == "delivery_limit"
    assert dead["retry_count"] == 1


def test_retry_later_does_not_block_messages_behind(
    make_broker: MakeBroker, clock: ManualClock,
) -> None:
    b = make_broker(queues=[Queue("q")])
    put(b, "q", b"1", b"2", b"3")
    d = b.pull("q", 1, consumer_id="c")[0]
    b.retry_later("q", d.delivery_id, 10)
    assert b.queue_info("q").delayed == 1
    assert bodies(b.pull("q", 1, consumer_id="c")) == [b"2"]
    clock.advance(5)
    b.tick()
    assert bodies(b.pull("q", 1, consumer_id="c")) == [b"3"]
    clock.advance(6)
    b.tick()
    again = b.pull("q", 1, consumer_id="c")
    assert bodies(again) == [b"1"]
    assert again[0].delivery_count == 2 and again[0].redelivered


def test_retry_later_of_unknown_delivery_is_a_conflict(make_broker: MakeBroker) -> None:
    b = make_broker(queues=[Queue("q")])
    with pytest.raises(Conflict) as err:
        b.retry_later("q", 12345, 1.0)
    assert str(err.value) == "queue 'q': unknown or expired delivery id 12345"


def test_counters_and_oldest_age(make_broker: MakeBroker, clock: ManualClock) -> None:
    b = make_broker(queues=[Queue("q")])
    put(b, "q", b"1", b"2")
    clock.advance(7)
    info = b.queue_info("q")
    assert (info.ready, info.unacked, info.oldest_ready_age_s) == (2, 0, 7.0)
    b.pull("q", 1, consumer_id="c")
    s = b.stats().queues["q"]
    assert (s.ready, s.unacked, s.published, s.delivered) == (1, 1, 2, 1)
    assert set(s.dead_lettered) == {"handler_error", "rejected", "expired", "maxlen",
                                    "delivery_limit"}


def test_peek_leaves_messages_in_place(make_broker: MakeBroker) -> None:
    b = make_broker(queues=[Queue("q", max_priority=3)])
    put(b, "q", (b"a", 1), (b"b", 3))
    assert bodies(b.peek("q", 10)) == [b"b", b"a"]
    assert b.queue_info("q").ready == 2


def test_settled_messages_do_not_stay_pinned_by_ttl_or_lease_heaps(
    make_broker: MakeBroker,
) -> None:
    b = make_broker(queues=[Queue("q", message_ttl_s=86400)])
    for _ in range(5):
        b.publish_to_queue("q", [Message(b"x" * 100) for _ in range(1000)])
        ds = b.pull("q", 1000, consumer_id="c", lease_s=300)
        b.ack("q", [d.delivery_id for d in ds])
    mq = b.queues["q"]
    assert len(mq.expiries) <= 1024 + 2 * mq.ready
    assert len(mq.leases) <= 1024
    assert mq.lease_tags <= 1024  # one entry per pull; settled tags are pruned
    assert b.memory.used == 0


def test_a_lease_covers_a_whole_pull_and_pruning_keeps_the_unacked(
    make_broker: MakeBroker, clock: ManualClock,
) -> None:
    b = make_broker(queues=[Queue("q")])
    put(b, "q", *[b"%d" % i for i in range(3000)])
    first = b.pull("q", 3, consumer_id="c", lease_s=30)
    b.ack("q", [first[1].delivery_id])
    for _ in range(2):  # enough settled tags to prune the lease heap
        ds = b.pull("q", 1000, consumer_id="c", lease_s=60)
        b.ack("q", [d.delivery_id for d in ds])
    mq = b.queues["q"]
    assert mq.lease_tags == 2  # pruned: only the two unacked of the first pull remain
    clock.advance(31)
    b.tick()
    again = b.pull("q", 2, consumer_id="c", lease_s=30)
    assert bodies(again) == [b"0", b"2"]
    assert [d.delivery_count for d in again] == [2, 2]


def test_requeued_message_is_still_swept_after_pruning(
    make_broker: MakeBroker, clock: ManualClock,
) -> None:
    b = make_broker(queues=[Queue("q", message_ttl_s=10)])
    b.publish_to_queue("q", [Message(b"keep")] + [Message(b"x") for _ in range(3000)])
    first = b.pull("q", 1, consumer_id="c")
    rest = b.pull("q", 3000, consumer_id="d")  # prunes the TTL heap
    b.ack("q", [d.delivery_id for d in rest])
    b.nack("q", [first[0].delivery_id], requeue=True)
    clock.advance(11)
    b.tick()
    assert b.queue_info("q").ready == 0
    assert b.stats().queues["q"].dead_lettered["expired"] == 1


def test_check_ids_lists_unknown_delivery_ids(make_broker: MakeBroker) -> None:
    b = make_broker(queues=[Queue("q")])
    put(b, "q", b"1")
    d = b.pull("q", 1, consumer_id="c")[0]
    b.check_ids("q", [d.delivery_id])  # known: no error
    with pytest.raises(Conflict) as err:
        b.check_ids("q", [d.delivery_id, 5, 6])
    assert str(err.value) == "queue 'q': unknown or expired delivery ids [5, 6]"
    assert err.value.unknown == (5, 6)


def test_a_step_to_an_unknown_queue_is_not_found(make_broker: MakeBroker) -> None:
    b = make_broker(queues=[Queue("q")])
    with pytest.raises(NotFound) as err:
        b.check_publish([], [("ghost", [Message(b"x")])])
    assert str(err.value) == "queue 'ghost' not found"


def test_drop_head_with_no_room_at_all_drops_the_new_message(make_broker: MakeBroker) -> None:
    b = make_broker(DLX, [Queue("q", max_length=0, dead_letter=DeadLetter("dlx")),
                          Queue("dlq")], DLQ_BINDING)
    b.publish_to_queue("q", [Message(b"x")])
    assert b.queue_info("q").ready == 0
    assert b.peek("dlq", 1)[0].headers["x-dead-letter"]["reason"] == "maxlen"


def test_message_larger_than_the_byte_limit_is_dropped(make_broker: MakeBroker) -> None:
    # as RabbitMQ: drop from the head until it fits, the new message last
    b = make_broker(queues=[Queue("q", max_length_bytes=4)])
    put(b, "q", b"ok", b"far too big")
    assert b.peek("q", 5) == []
    assert b.stats().queues["q"].dead_lettered["maxlen"] == 2
    put(b, "q", b"fits")
    assert bodies(b.peek("q", 5)) == [b"fits"]
