"""The contract every backend keeps: produce, consume, settle, groups, events, durability."""

from __future__ import annotations

import asyncio
import time

import pytest

from runner.clock import ManualClock
from runner.engine.contract import (
    Ack,
    Backend,
    Capability,
    DeadLetter,
    Event,
    EventKind,
    Fence,
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
from tests.contract.conftest import eventually, take


def test_a_backend_is_a_backend(backend: Backend) -> None:
    assert isinstance(backend, Backend)
    assert backend.capabilities <= frozenset(Capability)
    assert all(isinstance(c, Capability) for c in backend.capabilities)


def test_publish_routes_to_queues_and_fetch_settles(backend: Backend) -> None:
    pub = backend.publish("orders", [OutMessage(b"1", "orders.a.b"), OutMessage(b"2", "x"),
                                     OutMessage(b"3", "orders.c.d")])
    assert [sorted(r) for r in pub.routes] == [["q"], [], ["q"]]
    asyncio.run(backend.durable(pub.ticket))
    got = take(backend, "q", 2)
    assert [(d.body, d.routing_key, d.exchange, d.delivery_count, d.redelivered)
            for d in got] == [(b"1", "orders.a.b", "orders", 1, False),
                              (b"3", "orders.c.d", "orders", 1, False)]
    settled = backend.settle("q", [Ack(got[0].delivery_id), Ack(got[1].delivery_id),
                                   Ack(123456789)])
    assert settled.unknown == (123456789,)
    asyncio.run(backend.durable(settled.ticket))
    again = backend.settle("q", [Ack(got[0].delivery_id)])  # settled twice
    assert again.unknown == (got[0].delivery_id,)
    assert backend.fetch("q", 10, lease_s=30, consumer_id="c1") == []
    info = eventually(lambda: backend.queue_info("q"), lambda i: (i.ready, i.unacked) == (0, 0))
    assert (info.name, info.ready, info.unacked) == ("q", 0, 0)


@pytest.mark.needs(Capability.TOPICS)
def test_publish_routes_to_topics_too(backend: Backend) -> None:
    pub = backend.publish("orders", [OutMessage(b'{"n":1}', "orders.new"),
                                     OutMessage(b"2", "orders.a.b"), OutMessage(b"3", "x")])
    assert [sorted(r) for r in pub.routes] == [["feed", "q"], ["q"], []]
    asyncio.run(backend.durable(pub.ticket))
    read = backend.read("feed", 0, 0)
    assert [r.value for r in read.records] == [b'{"n":1}']


def test_put_keeps_the_message_properties(backend: Backend) -> None:
    pub = backend.put("q", [OutMessage(b'{"a":1}', "ignored", headers={"h": "v", "n": 3},
                                       priority=None, message_id="m-1",
                                       content_type="application/json")])
    assert pub.routes == (("q",),)
    asyncio.run(backend.durable(pub.ticket))
    (d,) = take(backend, "q", 1)
    assert (d.queue, d.body, d.exchange, d.message_id, d.content_type) == (
        "q", b'{"a":1}', "", "m-1", "application/json")
    assert dict(d.headers) == {"h": "v", "n": 3}
    assert d.timestamp_ms > 0


def test_unknown_and_internal_names_are_errors(backend: Backend) -> None:
    with pytest.raises(NotFound):
        backend.publish("nope", [OutMessage(b"x")])
    with pytest.raises(NotFound):
        backend.put("nope", [OutMessage(b"x")])
    with pytest.raises(NotFound):
        backend.fetch("nope", 1, lease_s=30, consumer_id="c1")
    with pytest.raises(NotFound):
        backend.queue_info("nope")
    with pytest.raises(Forbidden):
        backend.publish("int", [OutMessage(b"x")])


def test_chosen_messages_are_purged_where_the_backend_can_choose_them(backend: Backend) -> None:
    pub = backend.put("q", [OutMessage(b"1"), OutMessage(b"2"), OutMessage(b"3")])
    asyncio.run(backend.durable(pub.ticket))
    peeked = eventually(lambda: backend.peek_ids("q", 10), lambda p: len(p) == 3)
    chosen = [peeked[1][0]]
    if Capability.CHOSEN_MESSAGES in backend.capabilities:
        assert backend.purge("q", chosen) == 1
        assert [d.body for _, d in backend.peek_ids("q", 10)] == [b"1", b"3"]
        return
    with pytest.raises(NotImplementedError, match="cannot purge chosen messages"):
        backend.purge("q", chosen)
    with pytest.raises(NotImplementedError, match="cannot replay chosen messages"):
        backend.replay("q", only=chosen)
    assert [d.body for _, d in backend.peek_ids("q", 10)] == [b"1", b"2", b"3"]


@pytest.mark.needs(Capability.TOPICS)
def test_append_to_an_unknown_topic_is_not_found(backend: Backend) -> None:
    with pytest.raises(NotFound):
        backend.append("nope", [OutRecord(b"x")])


@pytest.mark.needs(Capability.DELAYED_RETRY)
def test_retry_after_a_delay_comes_back(backend: Backend, clock: ManualClock) -> None:
    """Embedded: at next_due on the injected clock, by tick(). A backend whose
    next_due is None keeps its own time (RabbitMQ: a delay queue): real time."""
    backend.put("q", [OutMessage(b"a", headers={"k": 1})])
    (d,) = take(backend, "q", 1)
    settled = backend.settle("q", [Retry(d.delivery_id, 0.5)])
    asyncio.run(backend.durable(settled.ticket))
    assert backend.fetch("q", 1, lease_s=30, consumer_id="c1") == []
    due = backend.next_due()
    if due is not None:
        assert due == pytest.approx(clock.time() + 0.5)
        clock.advance(0.5)
        backend.tick()
    started = time.monotonic()
    (again,) = take(backend, "q", 1)
    if due is None:
        assert time.monotonic() - started >= 0.2  # it waited on the broker's side
    assert (again.body, again.delivery_count, again.redelivered) == (b"a", 2, True)
    assert (again.exchange, again.routing_key) == (d.exchange, d.routing_key)
    assert dict(again.headers) == {"k": 1}  # the backend's own headers are taken off
    backend.settle("q", [Retry(again.delivery_id, 0.0)])
    if due is not None:
        backend.tick()
    (third,) = take(backend, "q", 1)
    assert (third.body, third.delivery_count) == (b"a", 3)


def test_a_lease_that_runs_out_delivers_again(backend: Backend, clock: ManualClock) -> None:
    """Embedded: on the injected clock, by tick(). A backend whose next_due is None
    keeps its own time (RabbitMQ: its I/O thread gives the delivery back)."""
    backend.put("q", [OutMessage(b"a")])
    (d,) = take(backend, "q", 1, lease_s=0.5)
    due = backend.next_due()
    if due is not None:
        assert due <= clock.time() + 0.5
        clock.advance(0.5)
        backend.tick()
    (again,) = take(backend, "q", 1)
    assert (again.body, again.redelivered) == (b"a", True)
    assert backend.settle("q", [Ack(d.delivery_id)]).unknown == (d.delivery_id,)
    assert backend.settle("q", [Ack(again.delivery_id)]).unknown == ()


def test_requeue_and_dead_letter_outcomes(backend: Backend) -> None:
    backend.put("q", [OutMessage(b"a"), OutMessage(b"b", message_id="mb")])
    a, b = take(backend, "q", 2)
    death = {"reason": "handler_error", "error": {"type": "KeyError", "message": "'x'"},
             "retry_count": 0, "original_queue": "q", "consumer_id": "c1"}
    backend.settle("q", [Requeue(a.delivery_id),
                         DeadLetter(b.delivery_id, reason="handler_error", death=death,
                                    to_queue="dlq")])
    (again,) = take(backend, "q", 1)
    assert (again.body, again.redelivered) == (b"a", True)
    (dead,) = take(backend, "dlq", 1)
    assert dead.body == b"b"
    header = dead.headers["x-dead-letter"]
    assert header["error"] == {"type": "KeyError", "message": "'x'"}
    assert {k: header[k] for k in ("reason", "retry_count", "original_queue", "original_exchange",
                                   "original_routing_key", "consumer_id", "death_count")} == {
        "reason": "handler_error", "retry_count": 0, "original_queue": "q",
        "original_exchange": "", "original_routing_key": "q", "consumer_id": "c1",
        "death_count": 1}
    assert isinstance(header["first_attempt"], str) and header["first_attempt"].endswith("Z")
    with pytest.raises(NotFound):
        backend.settle("q", [DeadLetter(again.delivery_id, death=death, to_queue="nope")])
    assert backend.settle("q", [Ack(again.delivery_id)]).unknown == ()


def test_events_fire_on_writes_and_a_waiter_wakes(backend: Backend) -> None:
    topics = Capability.TOPICS in backend.capabilities
    wanted = {Event(EventKind.QUEUE_READY, "q")} | (
        {Event(EventKind.RECORDS_APPENDED, "feed")} if topics else set())

    async def publish_and_see() -> tuple[set[Event], list[Event]]:
        seen: list[Event] = []
        sub = backend.subscribe(wanted, seen.append)
        try:
            backend.fetch("q", 1, lease_s=30, consumer_id="c1")  # subscribe, check, wait
            pub = backend.publish("orders", [OutMessage(b'{"n":1}', "orders.new")])
            await backend.durable(pub.ticket)
            for _ in range(300):
                if set(seen) >= wanted:
                    break
                await asyncio.sleep(0.01)
            first = set(seen)
            seen.clear()
            pub = backend.publish("orders", [OutMessage(b"x", "other")])  # unroutable
            await backend.durable(pub.ticket)
            await asyncio.sleep(0.2)
            return first, list(seen)
        finally:
            sub.close()

    first, after_unroutable = asyncio.run(publish_and_see())
    assert first == wanted
    assert after_unroutable == []

    async def wait_for_put() -> bool:
        waiter = Waiter(backend, [Event(EventKind.QUEUE_READY, "dlq")])
        try:
            backend.fetch("dlq", 1, lease_s=30, consumer_id="c1")
            asyncio.get_running_loop().call_later(0.01, backend.put, "dlq", [OutMessage(b"x")])
            return await waiter.wait(timeout_s=5.0)
        finally:
            waiter.close()

    assert asyncio.run(wait_for_put()) is True


@pytest.mark.needs(Capability.TOPICS)
def test_a_group_member_owns_its_partitions_and_is_fenced_after_a_rebalance(
    backend: Backend,
) -> None:
    """An assignment is the member's local state; a remote backend changes it in the
    background (ASSIGNMENT_CHANGED fires), so each step waits for it."""
    both = {TopicPartition("ev", 0), TopicPartition("ev", 1)}
    changes: list[Event] = []
    sub = backend.subscribe([Event(EventKind.ASSIGNMENT_CHANGED, "g")], changes.append)
    try:
        m1 = backend.open_member("g", "m1")
        assert eventually(lambda: set(m1.assignment()), lambda a: a == both) == both
        assert changes
        gen = m1.generation
        changes.clear()
        m2 = backend.open_member("g", "m2")
        mine, theirs = eventually(
            lambda: (set(m1.assignment()), set(m2.assignment())),
            lambda got: len(got[0]) == len(got[1]) == 1 and not got[0] & got[1])
        assert len(mine) == len(theirs) == 1 and not mine & theirs
        assert changes and m1.generation != gen
        with pytest.raises(Conflict):
            m1.commit({next(iter(theirs)): 0})
        assert m1.commit({next(iter(mine)): 0}) is not None
        if Capability.EXACTLY_ONCE in backend.capabilities:
            stale = Step(commits=(("g", next(iter(mine)), 0),), fence=("g", "m1", gen))
            with pytest.raises(Conflict):
                backend.commit_step(stale)
        m2.close()
        assert eventually(lambda: set(m1.assignment()), lambda a: a == both) == both
        m1.close()
    finally:
        sub.close()


@pytest.mark.needs(Capability.TOPICS)
def test_a_member_resumes_from_the_committed_offset(backend: Backend) -> None:
    tp = TopicPartition("ev", 1)
    appended = backend.append("ev", [OutRecord(b"%d" % i, partition=1) for i in range(4)])
    asyncio.run(backend.durable(appended.ticket))
    m1 = backend.open_member("g", "m1")
    try:
        eventually(lambda: set(m1.assignment()), lambda a: tp in a)
        assert m1.position(tp) == 0  # offset_reset earliest: the log start
        asyncio.run(backend.durable(m1.commit({tp: 3})))
        assert m1.position(tp) == 3
    finally:
        m1.close()
    m2 = backend.open_member("g", "m2")
    try:
        eventually(lambda: set(m2.assignment()), lambda a: tp in a)
        assert m2.position(tp) == 3
    finally:
        m2.close()


@pytest.mark.needs(Capability.TOPICS, Capability.SEEK)
def test_a_seek_fires_and_moves_the_generation(backend: Backend) -> None:
    backend.append("ev", [OutRecord(b"1", partition=0), OutRecord(b"2", partition=0)])
    m = backend.open_member("g", "m1")
    eventually(lambda: m.assignment(), lambda a: TopicPartition("ev", 0) in a)
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


@pytest.mark.needs(Capability.TOPICS, Capability.EXACTLY_ONCE)
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


@pytest.mark.needs(Capability.TOPICS, Capability.EXACTLY_ONCE)
def test_merged_steps_keep_each_members_fence(backend: Backend) -> None:
    """Steps of two members merged with `+` carry both fences: the merged step is
    refused whole when one member's fence is stale (nothing applied), and each
    part alone is taken or refused on its own fence."""
    m1 = backend.open_member("g", "m1")
    m2 = backend.open_member("g", "m2")
    try:
        p1, p2 = m1.assignment()[0], m2.assignment()[0]
        backend.append("ev", [OutRecord(b"a", partition=p.partition) for p in (p1, p2)])
        gen = m1.generation
        assert m2.generation == gen
        one = Step(commits=(("g", p1, 1),), puts=(("dlq", (OutMessage(b"1"),)),),
                   fences=(Fence("g", "m1", gen, (p1,)),))
        # m2 claims a partition that is m1's: its fence is refused
        two = Step(commits=(("g", p2, 1),), puts=(("dlq", (OutMessage(b"2"),)),),
                   fences=(Fence("g", "m2", gen, (p1,)),))
        merged = one + two
        assert merged.all_fences() == (Fence("g", "m1", gen, (p1,)), Fence("g", "m2", gen, (p1,)))
        with pytest.raises(Conflict):
            backend.commit_step(merged)
        assert backend.queue_info("dlq").ready == 0 and m1.position(p1) == 0
        asyncio.run(backend.durable(backend.commit_step(one)))
        with pytest.raises(Conflict):
            backend.commit_step(two)
        assert m1.position(p1) == 1 and m2.position(p2) == 0
        assert [x.body for x in backend.fetch("dlq", 5, lease_s=30, consumer_id="c")] == [b"1"]
        # a single `fence` covers the commits of its group in its own step only
        three = Step(commits=(("g", p2, 1),), fence=("g", "m2", gen))
        assert (Step() + three).all_fences() == (Fence("g", "m2", gen, (p2,)),)
        asyncio.run(backend.durable(backend.commit_step(Step() + three)))
        assert m2.position(p2) == 1
    finally:
        m2.close()
        m1.close()


def test_the_done_ticket_is_durable_at_once(backend: Backend) -> None:
    asyncio.run(backend.durable(Ticket.DONE))


def test_taken_covers_every_write_taken_so_far(backend: Backend) -> None:
    first = backend.put("q", [OutMessage(b"1", "q")])
    second = backend.put("q", [OutMessage(b"2", "q")])
    taken = backend.taken()
    # tickets are ordered: the one `taken` hands out is at least the last write's;
    # combined with an earlier one it keeps its place and covers that one too
    assert taken.max(first.ticket).seq == taken.seq == taken.max(second.ticket).seq
    assert taken.max(first.ticket).earliest == first.ticket.earliest
    assert taken != Ticket.DONE  # under --fsync always / confirms: writes are pending
    asyncio.run(backend.durable(taken))  # and awaiting it covers both
    assert [d.body for d in take(backend, "q", 2)] == [b"1", b"2"]
