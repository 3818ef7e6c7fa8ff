"""The contract every backend keeps: produce, consume, settle, groups, events, durability."""

from __future__ import annotations

import asyncio

import pytest

from runner.clock import ManualClock
from runner.engine.contract import (
    Ack,
    Backend,
    Capability,
    DeadLetter,
    Event,
    EventKind,
    OutMessage,
    OutRecord,
    Requeue,
    Retry,
    Step,
    Ticket,
    TopicPartition,
    Waiter,
)
from runner.errors import Conflict, Forbidden, NotFound


def test_a_backend_is_a_backend(backend: Backend) -> None:
    assert isinstance(backend, Backend)
    assert backend.capabilities <= frozenset(Capability)
    assert all(isinstance(c, Capability) for c in backend.capabilities)


def test_publish_routes_to_queues_and_topics_and_fetch_settles(backend: Backend) -> None:
    pub = backend.publish("orders", [OutMessage(b'{"n":1}', "orders.new"),
                                     OutMessage(b"2", "orders.a.b"), OutMessage(b"3", "x")])
    assert [sorted(r) for r in pub.routes] == [["ev", "q"], ["q"], []]
    asyncio.run(backend.durable(pub.ticket))
    got = backend.fetch("q", 10, lease_s=30, consumer_id="c1")
    assert [(d.body, d.routing_key, d.delivery_count) for d in got] == [
        (b'{"n":1}', "orders.new", 1), (b"2", "orders.a.b", 1)]
    settled = backend.settle("q", [Ack(got[0].delivery_id), Ack(got[1].delivery_id),
                                   Ack(123456789)])
    assert settled.unknown == (123456789,)
    assert backend.fetch("q", 10, lease_s=30, consumer_id="c1") == []
    info = backend.queue_info("q")
    assert (info.ready, info.unacked) == (0, 0)
    read = backend.read("ev", 0, 0) if backend.read("ev", 0, 0).records else backend.read(
        "ev", 1, 0)
    assert [r.value for r in read.records] == [b'{"n":1}']


def test_unknown_and_internal_names_are_errors(backend: Backend) -> None:
    with pytest.raises(NotFound):
        backend.publish("nope", [OutMessage(b"x")])
    with pytest.raises(NotFound):
        backend.put("nope", [OutMessage(b"x")])
    with pytest.raises(NotFound):
        backend.append("nope", [OutRecord(b"x")])
    with pytest.raises(Forbidden):
        backend.publish("int", [OutMessage(b"x")])


def test_retry_after_a_delay_comes_back_at_next_due(backend: Backend, clock: ManualClock) -> None:
    backend.put("q", [OutMessage(b"a")])
    (d,) = backend.fetch("q", 1, lease_s=30, consumer_id="c1")
    backend.settle("q", [Retry(d.delivery_id, 5.0)])
    assert backend.fetch("q", 1, lease_s=30, consumer_id="c1") == []
    due = backend.next_due()
    assert due is not None and due == pytest.approx(clock.time() + 5.0)
    clock.advance(5.0)
    backend.tick()
    (again,) = backend.fetch("q", 1, lease_s=30, consumer_id="c1")
    assert (again.body, again.delivery_count, again.redelivered) == (b"a", 2, True)


def test_requeue_and_dead_letter_outcomes(backend: Backend) -> None:
    backend.put("q", [OutMessage(b"a"), OutMessage(b"b")])
    a, b = backend.fetch("q", 2, lease_s=30, consumer_id="c1")
    death = {"reason": "handler_error", "error": {"type": "KeyError", "message": "'x'"},
             "retry_count": 0, "original_queue": "q", "consumer_id": "c1", "death_count": 1}
    backend.settle("q", [Requeue(a.delivery_id),
                         DeadLetter(b.delivery_id, reason="handler_error", death=death,
                                    to_queue="dlq")])
    (again,) = backend.fetch("q", 5, lease_s=30, consumer_id="c1")
    assert (again.body, again.redelivered) == (b"a", True)
    (dead,) = backend.fetch("dlq", 5, lease_s=30, consumer_id="c1")
    assert dead.body == b"b"
    assert dead.headers["x-dead-letter"]["error"]["type"] == "KeyError"


def test_events_fire_on_writes_and_a_waiter_wakes(backend: Backend) -> None:
    seen: list[Event] = []
    sub = backend.subscribe([Event(EventKind.QUEUE_READY, "q"),
                             Event(EventKind.RECORDS_APPENDED, "ev")], seen.append)
    try:
        backend.publish("orders", [OutMessage(b'{"n":1}', "orders.new")])
        assert set(seen) == {Event(EventKind.QUEUE_READY, "q"),
                             Event(EventKind.RECORDS_APPENDED, "ev")}
        seen.clear()
        backend.publish("orders", [OutMessage(b"x", "other")])  # unroutable: nothing to say
        assert seen == []
    finally:
        sub.close()
    backend.put("q", [OutMessage(b"after")])
    assert seen == []  # closed

    async def wait_for_put() -> bool:
        waiter = Waiter(backend, [Event(EventKind.QUEUE_READY, "dlq")])
        try:
            asyncio.get_running_loop().call_later(0.01, backend.put, "dlq", [OutMessage(b"x")])
            return await waiter.wait(timeout_s=5.0)
        finally:
            waiter.close()

    assert asyncio.run(wait_for_put()) is True


def test_a_group_member_owns_its_partitions_and_is_fenced_after_a_rebalance(
    backend: Backend,
) -> None:
    changes: list[Event] = []
    sub = backend.subscribe([Event(EventKind.ASSIGNMENT_CHANGED, "g")], changes.append)
    try:
        m1 = backend.open_member("g", "m1")
        assert set(m1.assignment()) == {TopicPartition("ev", 0), TopicPartition("ev", 1)}
        assert changes
        gen = m1.generation
        changes.clear()
        m2 = backend.open_member("g", "m2")
        assert changes and m1.generation != gen
        mine, theirs = set(m1.assignment()), set(m2.assignment())
        assert len(mine) == len(theirs) == 1 and not mine & theirs
        with pytest.raises(Conflict):
            m1.commit({next(iter(theirs)): 0})
        assert m1.commit({next(iter(mine)): 0}) is not None
        stale = Step(commits=(("g", next(iter(mine)), 0),), fence=("g", "m1", gen))
        with pytest.raises(Conflict):
            backend.commit_step(stale)
        m2.close()
        assert set(m1.assignment()) == {TopicPartition("ev", 0), TopicPartition("ev", 1)}
        m1.close()
    finally:
        sub.close()


def test_a_seek_fires_and_moves_the_generation(backend: Backend) -> None:
    backend.append("ev", [OutRecord(b"1", partition=0), OutRecord(b"2", partition=0)])
    m = backend.open_member("g", "m1")
    seen: list[Event] = []
    sub = backend.subscribe([Event(EventKind.SEEK, "g")], seen.append)
    try:
        gen = m.generation
        assert backend.seek("g", TopicPartition("ev", 0), offset=1) == 1
        assert seen == [Event(EventKind.SEEK, "g")]
        assert m.generation != gen
        assert m.position(TopicPartition("ev", 0)) == 1
    finally:
        sub.close()
        m.close()


def test_commit_step_is_all_or_nothing(backend: Backend) -> None:
    backend.put("q", [OutMessage(b"in")])
    (d,) = backend.fetch("q", 1, lease_s=30, consumer_id="c1")
    m = backend.open_member("g", "m1")
    try:
        tp = TopicPartition("ev", 0)
        backend.append("ev", [OutRecord(b"r", partition=0)])
        ticket = backend.commit_step(Step(
            acks=(("q", d.delivery_id),), commits=(("g", tp, 1),),
            puts=(("dlq", (OutMessage(b"out"),)),), fence=("g", "m1", m.generation)))
        asyncio.run(backend.durable(ticket))
        assert backend.queue_info("q").unacked == 0
        assert m.position(tp) == 1
        assert [x.body for x in backend.fetch("dlq", 5, lease_s=30, consumer_id="c")] == [b"out"]
        with pytest.raises(NotFound):
            backend.commit_step(Step(puts=(("dlq", (OutMessage(b"no"),)),
                                           ("nope", (OutMessage(b"no"),)))))
        assert backend.queue_info("dlq").ready == 0
    finally:
        m.close()


def test_the_done_ticket_is_durable_at_once(backend: Backend) -> None:
    asyncio.run(backend.durable(Ticket.DONE))
