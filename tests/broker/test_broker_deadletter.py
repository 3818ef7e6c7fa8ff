"""Dead-lettering: the x-dead-letter header, cycles, explicit dead letters, replay."""

from __future__ import annotations

import pytest

from runner.broker.message import Message
from runner.broker.routing import Route
from runner.clock import ManualClock
from runner.errors import NotFound
from runner.topology.model import Binding, DeadLetter, Exchange, ExchangeType, Queue
from tests.broker.conftest import MakeBroker

FAN = ExchangeType.FANOUT


def test_death_header_fields(make_broker: MakeBroker, clock: ManualClock) -> None:
    b = make_broker(
        [Exchange("orders", ExchangeType.TOPIC), Exchange("dlx", ExchangeType.DIRECT)],
        [Queue("work", dead_letter=DeadLetter("dlx", "work.dead")), Queue("dlq")],
        [Binding("orders", queue="work", routing_key="orders.#"),
         Binding("dlx", queue="dlq", routing_key="work.dead")])
    b.publish("orders", [Message(b'{"id":1}', "orders.created", headers={"h": "v"},
                                 priority=2, message_id="m-1", content_type="application/json")])
    d = b.pull("work", 1, consumer_id="worker-3@host")[0]
    b.nack("work", [d.delivery_id], requeue=True)
    clock.advance(30)
    d = b.pull("work", 1, consumer_id="worker-3@host")[0]
    b.nack("work", [d.delivery_id], requeue=False)
    dead = b.pull("dlq", 1, consumer_id="ops")[0]
    assert dead.body == b'{"id":1}'
    assert dead.routing_key == "work.dead"
    assert (dead.message_id, dead.content_type, dead.priority) == (
        "m-1", "application/json", 2)
    assert dead.headers["h"] == "v"
    assert dead.headers["x-dead-letter"] == {
        "reason": "rejected", "error": None, "retry_count": 1,
        "first_attempt": "2023-11-14T22:13:20Z", "last_attempt": "2023-11-14T22:13:50Z",
        "original_queue": "work", "original_exchange": "orders",
        "original_routing_key": "orders.created", "consumer_id": "worker-3@host",
        "death_count": 1,
    }


def test_never_delivered_has_zero_retries_and_null_attempts(
    make_broker: MakeBroker, clock: ManualClock,
) -> None:
    b = make_broker([Exchange("dlx", FAN)],
                    [Queue("q", message_ttl_s=1, dead_letter=DeadLetter("dlx")), Queue("dlq")],
                    [Binding("dlx", queue="dlq")])
    b.publish_to_queue("q", [Message(b"x")])
    clock.advance(2)
    b.tick()
    death = b.peek("dlq", 1)[0].headers["x-dead-letter"]
    assert (death["retry_count"], death["first_attempt"], death["last_attempt"]) == (0, None, None)
    assert death["consumer_id"] is None


def test_caller_death_dict_is_kept_and_death_count_grows(make_broker: MakeBroker) -> None:
    b = make_broker([Exchange("dlx", FAN)],
                    [Queue("q", dead_letter=DeadLetter("dlx")), Queue("dlq")],
                    [Binding("dlx", queue="dlq")])
    b.publish_to_queue("q", [Message(b"x")])
    d = b.pull("q", 1, consumer_id="c")[0]
    given = {"reason": "handler_error", "retry_count": 4,
             "error": {"type": "ValueError", "message": "bad", "stack_trace": "Traceback..."}}
    assert b.dead_letter("q", d.delivery_id, reason="handler_error", death=given) == Route(
        ("dlq",), ())
    dead = b.pull("dlq", 1, consumer_id="c")[0]
    death = dead.headers["x-dead-letter"]
    assert death["error"]["stack_trace"] == "Traceback..."
    assert death["retry_count"] == 4
    assert death["original_queue"] == "q"
    assert death["death_count"] == 1
    assert b.stats().queues["q"].dead_lettered["handler_error"] == 1
    # it dies again in the DLQ (straight to a queue): a fresh header, death_count 2
    b.declare(queues=[Queue("graveyard")])
    b.dead_letter("dlq", dead.delivery_id, reason="rejected", to_queue="graveyard")
    again = b.peek("graveyard", 1)[0].headers["x-dead-letter"]
    assert (again["reason"], again["original_queue"], again["death_count"]) == (
        "rejected", "dlq", 2)


def test_dead_letter_to_unknown_queue_is_not_found(make_broker: MakeBroker) -> None:
    b = make_broker(queues=[Queue("q")])
    b.publish_to_queue("q", [Message(b"x")])
    d = b.pull("q", 1, consumer_id="c")[0]
    with pytest.raises(NotFound) as err:
        b.dead_letter("q", d.delivery_id, reason="rejected", to_queue="nope")
    assert str(err.value) == "queue 'nope' not found"
    assert b.queue_info("q").unacked == 1


def test_dead_letter_to_topic_goes_to_the_sink(make_broker: MakeBroker) -> None:
    got: list[tuple[str, Message]] = []
    b = make_broker(queues=[Queue("q")], topic_sink=lambda t, m: got.append((t, m)))
    b.publish_to_queue("q", [Message(b"x")])
    d = b.pull("q", 1, consumer_id="c")[0]
    assert b.dead_letter("q", d.delivery_id, reason="handler_error",
                         to_topic="dead-events") == Route((), ("dead-events",))
    assert got[0][0] == "dead-events"
    assert got[0][1].body == b"x"
    assert got[0][1].headers["x-dead-letter"]["reason"] == "handler_error"


def test_no_dead_letter_exchange_drops_and_counts(make_broker: MakeBroker) -> None:
    b = make_broker(queues=[Queue("q")])
    b.publish_to_queue("q", [Message(b"x")])
    d = b.pull("q", 1, consumer_id="c")[0]
    b.nack("q", [d.delivery_id], requeue=False)
    st_ = b.stats()
    assert st_.dead_letters_dropped == 1
    assert st_.queues["q"].dead_lettered["rejected"] == 1


def test_ttl_cycle_is_broken(make_broker: MakeBroker, clock: ManualClock) -> None:
    # a -> (expire) -> b -> (expire) -> a: the second return to a is dropped
    b = make_broker(
        [Exchange("to_b", FAN), Exchange("to_a", FAN)],
        [Queue("a", message_ttl_s=1, dead_letter=DeadLetter("to_b")),
         Queue("b", message_ttl_s=1, dead_letter=DeadLetter("to_a"))],
        [Binding("to_b", queue="b"), Binding("to_a", queue="a")])
    b.publish_to_queue("a", [Message(b"x")])
    for _ in range(4):
        clock.advance(2)
        b.tick()
    assert b.queue_info("a").ready == 0 and b.queue_info("b").ready == 0
    assert b.stats().dead_letter_cycles == 1


def test_rejection_between_deaths_is_not_a_cycle(
    make_broker: MakeBroker, clock: ManualClock,
) -> None:
    # work (rejected) -> retry (ttl) -> work: a deliberate retry loop keeps going
    b = make_broker(
        [Exchange("to_retry", FAN), Exchange("to_work", FAN)],
        [Queue("work", dead_letter=DeadLetter("to_retry")),
         Queue("retry", message_ttl_s=1, dead_letter=DeadLetter("to_work"))],
        [Binding("to_retry", queue="retry"), Binding("to_work", queue="work")])
    b.publish_to_queue("work", [Message(b"x")])
    for round_ in range(3):
        d = b.pull("work", 1, consumer_id="c")
        assert len(d) == 1, round_
        b.nack("work", [d[0].delivery_id], requeue=False)
        clock.advance(2)
        b.tick()
    assert b.stats().dead_letter_cycles == 0
    assert b.peek("work", 1)[0].headers["x-dead-letter"]["death_count"] == 6


def test_replay_returns_dead_letters_to_their_queue(make_broker: MakeBroker) -> None:
    b = make_broker([Exchange("dlx", FAN)],
                    [Queue("q", dead_letter=DeadLetter("dlx")), Queue("dlq")],
                    [Binding("dlx", queue="dlq")])
    b.publish_to_queue("q", [Message(b"1", "k1"), Message(b"2", "k2")])
    for d in b.pull("q", 2, consumer_id="c"):
        b.nack("q", [d.delivery_id], requeue=False)
    b.publish_to_queue("dlq", [Message(b"not-a-dead-letter")])
    result = b.replay("dlq", max_messages=1)
    assert result.replayed == 1
    res2 = b.replay("dlq")
    assert res2.replayed == 1
    back = b.pull("q", 5, consumer_id="c")
    assert [(d.body, d.routing_key) for d in back] == [(b"1", "k1"), (b"2", "k2")]
    assert all("x-dead-letter" not in d.headers for d in back)
    assert [d.headers["x-replay-count"] for d in back] == [1, 1]
    assert [d.body for d in b.peek("dlq", 5)] == [b"not-a-dead-letter"]
    # dies and is replayed again: the count goes on
    b.nack("q", [back[0].delivery_id], requeue=False)
    b.replay("dlq")
    assert b.peek("q", 1)[0].headers["x-replay-count"] == 2


def test_replay_hands_topic_dead_letters_back(make_broker: MakeBroker) -> None:
    b = make_broker(queues=[Queue("dlq")])
    death = {"reason": "handler_error", "original_topic": "orders", "original_partition": 3,
             "original_offset": 42, "retry_count": 3}
    b.publish_to_queue("dlq", [Message(b"rec", headers={"x-dead-letter": death, "a": 1})])
    result = b.replay("dlq")
    assert result.replayed == 0
    (letter,) = result.topic_letters
    assert (letter.target.topic, letter.target.partition, letter.target.offset) == (
        "orders", 3, 42)
    assert letter.message.headers == {"a": 1, "x-replay-count": 1}
    assert letter.death["original_offset"] == 42
    assert b.queue_info("dlq").ready == 0


def test_replay_into_the_same_queue(make_broker: MakeBroker) -> None:
    b = make_broker(queues=[Queue("q")])
    death = {"reason": "rejected", "original_queue": "q", "original_routing_key": "k"}
    b.publish_to_queue("q", [Message(b"x", headers={"x-dead-letter": death}), Message(b"y")])
    assert b.replay("q").replayed == 1
    got = b.peek("q", 5)
    assert [(d.body, "x-dead-letter" in d.headers) for d in got] == [(b"y", False),
                                                                     (b"x", False)]


TOPOLOGY_FIELDS = {"reason", "error", "retry_count", "first_attempt", "last_attempt",
                   "original_queue", "original_exchange", "original_routing_key",
                   "consumer_id", "death_count"}


def _cycle_topology() -> tuple[list[Exchange], list[Queue], list[Binding]]:
    return ([Exchange("to_b", FAN), Exchange("to_a", FAN)],
            [Queue("a", message_ttl_s=1, dead_letter=DeadLetter("to_b")),
             Queue("b", message_ttl_s=1, dead_letter=DeadLetter("to_a")), Queue("c")],
            [Binding("to_b", queue="b"), Binding("to_a", queue="a")])


def test_cycle_watch_is_not_visible_in_headers(make_broker: MakeBroker, clock: ManualClock) -> None:
    b = make_broker(*_cycle_topology())
    b.publish_to_queue("a", [Message(b"x", headers={"h": "v"})])
    clock.advance(2)
    b.tick()  # a -> b: the message carries a cycle watch [a] internally
    peeked = b.peek("b", 1)[0]
    assert set(peeked.headers) == {"h", "x-dead-letter"}
    assert set(peeked.headers["x-dead-letter"]) == TOPOLOGY_FIELDS
    pulled = b.pull("b", 1, consumer_id="c")[0]
    assert pulled.headers == peeked.headers
    b.nack("b", [pulled.delivery_id], requeue=True)
    b.close()
    b = make_broker(*_cycle_topology())  # the same after a restart
    assert b.peek("b", 1)[0].headers == peeked.headers
    assert b.pull("b", 1, consumer_id="c")[0].headers == peeked.headers


def test_cycle_watch_survives_a_restart(make_broker: MakeBroker, clock: ManualClock) -> None:
    b = make_broker(*_cycle_topology())
    b.publish_to_queue("a", [Message(b"x")])
    clock.advance(2)
    b.tick()  # a -> b
    b.close()
    b = make_broker(*_cycle_topology())
    clock.advance(2)
    b.tick()  # b -> a would return it to a, where it died: dropped
    assert b.queue_info("a").ready == 0 and b.queue_info("b").ready == 0
    assert b.stats().dead_letter_cycles == 1


def test_a_callers_death_queues_field_does_not_reach_the_header(make_broker: MakeBroker) -> None:
    b = make_broker(*_cycle_topology())
    b.publish_to_queue("c", [Message(b"x")])
    d = b.pull("c", 1, consumer_id="c")[0]
    b.dead_letter("c", d.delivery_id, reason="handler_error", to_queue="a",
                  death={"error": {"type": "E", "message": "m"}, "death_queues": ["a"]})
    letter = b.peek("a", 1)[0]  # no cycle: a caller's decision, whatever it says
    assert set(letter.headers["x-dead-letter"]) == TOPOLOGY_FIELDS


def test_replay_clears_the_cycle_watch(make_broker: MakeBroker, clock: ManualClock) -> None:
    b = make_broker(
        [Exchange("dlx", FAN)],
        [Queue("w", message_ttl_s=1, dead_letter=DeadLetter("dlx"),
               max_length=5), Queue("dlq", dead_letter=DeadLetter("dlx"), message_ttl_s=1)],
        [Binding("dlx", queue="dlq")])
    b.publish_to_queue("w", [Message(b"x")])
    clock.advance(2)
    b.tick()  # w expired -> dlq (watch [w])
    assert b.replay("dlq").replayed == 1
    replayed = b.peek("w", 1)[0]
    assert set(replayed.headers) == {"x-replay-count"}
    clock.advance(2)
    b.tick()  # w -> dlq again: a fresh watch [w], not [w, ...]; dlq -> dlq is a cycle
    assert b.queue_info("dlq").ready == 1
    clock.advance(2)
    b.tick()
    assert b.queue_info("dlq").ready == 0
    assert b.stats().dead_letter_cycles == 1
