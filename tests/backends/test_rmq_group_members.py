"""Group members of the RabbitMQ runtime (runner.backends.rabbitmq.groups) on the real
broker, beyond the contract suite: a member reads its partitions from its own buffer,
loses them with its connection and claims them again; the group's queues stay out of
plan and prune; a topic record's dead letter is a step of writes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from typing import TypeVar
from urllib.parse import quote

import pytest

from runner.backends.rabbitmq import apply as apply_mod
from runner.backends.rabbitmq import groups, live, runtime
from runner.backends.rabbitmq.mapping import offset_queue, owner_queue
from runner.engine.contract import (
    Event,
    EventKind,
    MemberReader,
    OutRecord,
    Record,
    Step,
    TopicPartition,
)
from runner.errors import Conflict
from runner.topology.model import ConsumerGroup, Queue, Topic, Topology
from tests.contract.conftest import take
from tests.rmq import fresh_vhost

T = TypeVar("T")

TOPOLOGY = Topology(
    topics=(("ev", Topic("ev", partitions=2)),),
    queues=(("dlq", Queue("dlq")),),
    consumer_groups=(("g", ConsumerGroup("g", ("ev",))),),
)
TP0, TP1 = TopicPartition("ev", 0), TopicPartition("ev", 1)


@pytest.fixture
def backend() -> Iterator[runtime.RabbitBackend]:
    with fresh_vhost() as target:
        b = runtime.open_rabbitmq(TOPOLOGY, target)
        try:
            yield b
        finally:
            b.close()


def eventually(check: Callable[[], T], ok: Callable[[T], bool], timeout_s: float = 15.0) -> T:
    deadline = time.monotonic() + timeout_s
    while True:
        got = check()
        if ok(got) or time.monotonic() > deadline:
            return got
        time.sleep(0.05)


def test_fair_share_deals_the_partitions_round_robin_over_the_members() -> None:
    parts = [TopicPartition("t", p) for p in range(5)]
    assert groups.fair_share(parts, ["b", "a"], "a") == {parts[0], parts[2], parts[4]}
    assert groups.fair_share(parts, ["b", "a"], "b") == {parts[1], parts[3]}
    assert groups.fair_share(parts, [], "z") == set(parts)


def test_a_member_reads_its_partition_from_its_buffer_and_again_from_below(
    backend: runtime.RabbitBackend,
) -> None:
    appended = backend.append("ev", [OutRecord(b"%d" % i, key=b"k", partition=0)
                                     for i in range(5)])
    asyncio.run(backend.durable(appended.ticket))
    m = backend.open_member("g", "m1")
    try:
        assert isinstance(m, MemberReader)
        eventually(m.assignment, lambda a: TP0 in a)
        got = eventually(lambda: m.read(TP0, 0, max_records=3), lambda r: len(r.records) == 3)
        assert [(r.offset, r.value, r.key) for r in got.records] == [
            (0, b"0", b"k"), (1, b"1", b"k"), (2, b"2", b"k")]
        assert got.next_offset == 3
        rest = eventually(lambda: m.read(TP0, 3), lambda r: len(r.records) == 2)
        assert [r.value for r in rest.records] == [b"3", b"4"]
        assert m.read(TP0, 5).records == ()
        # below what was taken: the member attaches there again
        again = eventually(lambda: m.read(TP0, 1), lambda r: len(r.records) == 4)
        assert [r.offset for r in again.records] == [1, 2, 3, 4]
        assert m.read(TP1, 0).records == ()
    finally:
        m.close()


def test_a_member_that_loses_its_connection_loses_its_partitions_then_claims_them(
    backend: runtime.RabbitBackend,
) -> None:
    changes: list[Event] = []
    sub = backend.subscribe([Event(EventKind.ASSIGNMENT_CHANGED, "g")], changes.append)
    m = backend.open_member("g", "m1")
    try:
        assert eventually(lambda: set(m.assignment()), lambda a: a == {TP0, TP1}) == {TP0, TP1}
        asyncio.run(backend.durable(m.commit({TP0: 0})))
        gen = m.generation
        target = backend.target
        conns = live.request(target, "GET",
                             f"/api/vhosts/{quote(target.vhost, safe='')}/connections")
        mine = [c["name"] for c in eventually(
            lambda: live.request(target, "GET",
                                 f"/api/vhosts/{quote(target.vhost, safe='')}/connections"),
            lambda cs: any("member m1" in str(c.get("client_properties", {}).get(
                "connection_name", "")) for c in cs))
            if "member m1" in str(c.get("client_properties", {}).get("connection_name", ""))]
        assert mine, conns
        changes.clear()
        live.request(target, "DELETE", f"/api/connections/{quote(mine[0], safe='')}")
        eventually(lambda: m.generation, lambda g: g > gen)
        with pytest.raises(Conflict):  # while it owns nothing, or fenced by generation
            eventually(lambda: m.assignment(), lambda a: not a, timeout_s=2)
            m.commit({TP0: 1})
        assert eventually(lambda: set(m.assignment()), lambda a: a == {TP0, TP1}) == {TP0, TP1}
        assert changes
        assert m.position(TP0) == 0  # the committed offset, read back at the claim
    finally:
        sub.close()
        m.close()


def test_the_groups_queues_stay_out_of_plan_and_prune(backend: runtime.RabbitBackend) -> None:
    m = backend.open_member("g", "m1")
    try:
        eventually(m.assignment, lambda a: set(a) == {TP0, TP1})
        asyncio.run(backend.durable(m.commit({TP0: 0, TP1: 0})))
        applied = apply_mod.apply(backend.target, TOPOLOGY, prune=True)
        assert list(applied.lines) == []
        names = {q["name"] for q in live.request(
            backend.target, "GET", f"/api/queues/{quote(backend.target.vhost, safe='')}")}
        assert {offset_queue("g", "ev", 0), owner_queue("g", "ev", 1)} <= names
        assert [q for q in backend.queue_infos() if q.startswith("__runner")] == []
    finally:
        m.close()


def test_a_topic_records_dead_letter_is_a_step_of_writes(backend: runtime.RabbitBackend) -> None:
    record = Record("ev", 1, 7, 1_000, b"k", b'{"a":1}', {"h": "v"})
    step = backend.dead_letter_step("g", record, {"reason": "handler_error"}, to_queue="dlq")
    assert not step.acks and not step.commits and step.puts
    asyncio.run(backend.durable(backend.commit_step(step)))
    (d,) = take(backend, "dlq", 1)
    assert d.body == b'{"a":1}'
    assert d.headers["x-dead-letter"]["original_group"] == "g"
    assert d.headers["x-original-key"] == "k"
    with pytest.raises(NotImplementedError, match="exactly-once"):
        backend.commit_step(Step(commits=(("g", TP0, 1),)))


def test_a_reload_that_adds_partitions_gets_them_claimed(backend: runtime.RabbitBackend) -> None:
    m = backend.open_member("g", "m1")
    try:
        eventually(m.assignment, lambda a: set(a) == {TP0, TP1})
        grown = Topology(topics=(("ev", Topic("ev", partitions=3)),), queues=TOPOLOGY.queues,
                         consumer_groups=TOPOLOGY.consumer_groups)
        assert backend.apply(grown) == ["+ queue ev.2 (stream)"]
        tp2 = TopicPartition("ev", 2)
        assert tp2 in eventually(m.assignment, lambda a: tp2 in a)
    finally:
        m.close()


def test_a_leaving_member_holds_its_partitions_until_its_last_commit_is_written(
    backend: runtime.RabbitBackend,
) -> None:
    m1 = backend.open_member("g", "m1")
    eventually(m1.assignment, lambda a: set(a) == {TP0, TP1})
    ticket = m1.commit({TP0: 5, TP1: 7})
    m1.close()  # not awaited: close waits for it
    assert backend._written(ticket)
    assert _next_owner_starts_at(backend) == (5, 7)


def test_a_members_commits_keep_no_memory_of_each_other(
    backend: runtime.RabbitBackend,
) -> None:
    """A member remembers only its last commit's place for close (not a combination
    of every commit of its life: `Ticket.max` keeps each combined write's seq), so a
    long-lived member's commits cost the same and hold nothing; close still waits for
    the last one, and the next owner starts from it."""
    m1 = backend.open_member("g", "m1")
    eventually(m1.assignment, lambda a: set(a) == {TP0, TP1})
    tickets = [m1.commit({TP0: offset, TP1: offset}) for offset in range(1, 301)]
    assert len({t.seq for t in tickets}) == 300
    assert m1._last_commit.seq == tickets[-1].seq and not m1._last_commit.others
    asyncio.run(backend.durable(tickets[-1]))
    m1.close()
    assert _next_owner_starts_at(backend) == (300, 300)


def _next_owner_starts_at(backend: runtime.RabbitBackend) -> tuple[int, int]:
    """The positions a new member `m2` taking both partitions starts from."""
    m2 = backend.open_member("g", "m2")
    try:
        eventually(m2.assignment, lambda a: set(a) == {TP0, TP1})
        return m2.position(TP0), m2.position(TP1)
    finally:
        m2.close()
