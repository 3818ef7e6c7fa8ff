"""Consumer groups: join/leave/die with a manual clock, positions, commits, seeks, restarts."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from runner.clock import ManualClock, now_ms
from runner.engine.snapshots import group_info
from runner.errors import Conflict, InvalidRequest, NotFound
from runner.log.partition import TopicPartition
from runner.log.record import Fsync
from runner.log.store import AppendRecord, Store
from runner.topology.model import Assignment, ConsumerGroup, OffsetReset, Retention, Topic

Opener = Callable[..., Store]
TP0 = TopicPartition("t", 0)


@pytest.fixture
def open_store(tmp_path: Path, clock: ManualClock) -> Iterator[Opener]:
    opened: list[Store] = []

    def factory(groups: dict[str, ConsumerGroup] | None = None, partitions: int = 4,
                **kw: Any) -> Store:
        kw.setdefault("fsync", Fsync.NEVER)
        kw.setdefault("clock", clock)
        kw.setdefault("session_timeout_s", 10.0)
        store = Store(tmp_path / "data", **kw)
        store.apply({"t": Topic("t", partitions=partitions)},
                    groups if groups is not None else {"g": ConsumerGroup("g", ("t",))})
        opened.append(store)
        return store

    yield factory
    for s in opened:
        s.close()


def owners(store: Store, group: str = "g") -> dict[TopicPartition, str | None]:
    return {TopicPartition("t", p): store.groups.owner(group, TopicPartition("t", p))
            for p in range(store.partition_count("t"))}


def test_members_joining_leaving_and_dying(open_store: Opener, clock: ManualClock) -> None:
    store = open_store()
    g = store.groups
    g.join("g", "a")
    assert g.assignment("g", "a") == [TopicPartition("t", p) for p in range(4)]
    gen = g.join("g", "b")
    assert g.assignment("g", "a") == [TopicPartition("t", 0), TopicPartition("t", 1)]
    assert g.assignment("g", "b") == [TopicPartition("t", 2), TopicPartition("t", 3)]
    g.join("g", "c")
    assert g.generation("g") == gen + 1
    assert sorted(owners(store).values(), key=str) == ["a", "a", "b", "c"]
    g.leave("g", "b")
    assert set(owners(store).values()) == {"a", "c"}
    clock.advance(6)
    g.heartbeat("g", "a")
    clock.advance(6)  # c silent for 12 s > 10 s
    assert g.expire() == [("g", "c")]
    assert set(owners(store).values()) == {"a"}
    with pytest.raises(NotFound) as exc:
        g.heartbeat("g", "c")
    assert str(exc.value) == "member 'c' is not in group 'g' (expired or never joined)"
    g.join("g", "c")  # a member that died may come back
    assert set(owners(store).values()) == {"a", "c"}


def test_sticky_group_keeps_partitions_when_one_joins(open_store: Opener) -> None:
    store = open_store({"g": ConsumerGroup("g", ("t",), assignment=Assignment.STICKY)},
                       partitions=6)
    g = store.groups
    for m in ("a", "b", "c"):
        g.join("g", m)
    before = {m: set(g.assignment("g", m)) for m in ("a", "b", "c")}
    g.join("g", "d")
    during = {m: set(g.assignment("g", m)) for m in ("a", "b", "c", "d")}
    for m in ("a", "b", "c"):
        assert during[m] <= before[m]
    assert len(during["d"]) == 1 or len(during["d"]) == 2
    g.leave("g", "d")
    for m in ("a", "b", "c"):
        assert during[m] <= set(g.assignment("g", m))
        assert len(g.assignment("g", m)) == 2


def test_roundrobin_group(open_store: Opener) -> None:
    store = open_store({"g": ConsumerGroup("g", ("t",), assignment=Assignment.ROUNDROBIN)})
    store.groups.join("g", "a")
    store.groups.join("g", "b")
    assert store.groups.assignment("g", "a") == [TopicPartition("t", 0), TopicPartition("t", 2)]


def test_growing_partitions_rebalances(open_store: Opener) -> None:
    store = open_store(partitions=2)
    store.groups.join("g", "a")
    store.groups.join("g", "b")
    store.apply({"t": Topic("t", partitions=4)})
    assert len(store.groups.assignment("g", "a")) == 2
    assert None not in owners(store).values()


def test_committed_offsets_survive_restarts(open_store: Opener) -> None:
    store = open_store()
    store.append("t", [AppendRecord(b"v", partition=0)] * 10)
    store.groups.commit("g", {TP0: 7})
    assert store.groups.position("g", TP0) == 7
    assert store.groups.lag("g", TP0) == 3
    store.close()
    again = open_store()
    assert again.groups.committed("g", TP0) == 7
    assert again.groups.lag("g", TP0) == 3


def test_offset_reset_latest_is_the_end_when_the_group_was_created(open_store: Opener) -> None:
    store = open_store({})
    store.append("t", [AppendRecord(b"v", partition=0)] * 5)
    store.apply({"t": Topic("t", partitions=4)},
                {"late": ConsumerGroup("late", ("t",), offset_reset=OffsetReset.LATEST),
                 "early": ConsumerGroup("early", ("t",))})
    store.append("t", [AppendRecord(b"v", partition=0)] * 3)
    assert store.groups.position("late", TP0) == 5
    assert store.groups.lag("late", TP0) == 3
    assert store.groups.position("early", TP0) == 0
    assert store.groups.lag("early", TP0) == 8
    store.close()
    again = open_store({"late": ConsumerGroup("late", ("t",), offset_reset=OffsetReset.LATEST)})
    assert again.groups.position("late", TP0) == 5  # persisted, not the end now (8)


def test_seek_to_offset_and_timestamp(open_store: Opener, clock: ManualClock) -> None:
    store = open_store()
    start = now_ms(clock)
    for _ in range(10):
        store.append("t", [AppendRecord(b"v", partition=0)])
        clock.advance(1)
    assert store.groups.seek("g", TP0, offset=4) == 4
    assert store.groups.position("g", TP0) == 4
    assert store.groups.seek("g", TP0, timestamp_ms=start + 6500) == 7
    assert store.groups.seek("g", TP0, timestamp_ms=start + 10**9) == 10
    with pytest.raises(InvalidRequest) as exc:
        store.groups.seek("g", TP0)
    assert str(exc.value) == "seek needs exactly one of offset or timestamp"


def test_bad_commits_are_refused(open_store: Opener) -> None:
    store = open_store()
    with pytest.raises(InvalidRequest) as exc:
        store.groups.commit("g", {TP0: 1})
    assert str(exc.value) == "offset 1 for t/0 is outside 0..0"
    with pytest.raises(NotFound) as exc2:
        store.groups.commit("g", {TopicPartition("t", 9): 0})
    assert str(exc2.value) == "topic 't' has no partition 9"
    with pytest.raises(NotFound) as exc3:
        store.groups.commit("nope", {TP0: 0})
    assert str(exc3.value) == "unknown consumer group 'nope'"
    with pytest.raises(NotFound) as exc4:
        store.groups.assignment("g", "ghost")
    assert str(exc4.value) == "member 'ghost' is not in group 'g' (expired or never joined)"


def test_offsets_log_is_compacted(open_store: Opener, tmp_path: Path) -> None:
    store = open_store()
    store.append("t", [AppendRecord(b"v", partition=0)] * 10)
    for i in range(3000):
        store.groups.commit("g", {TP0: i % 10})
    store.close()
    again = open_store()
    assert again.groups.committed("g", TP0) == 2999 % 10
    assert again.offsets.size_bytes < 60_000


def test_changing_the_assignor_rebalances(open_store: Opener) -> None:
    store = open_store()
    store.groups.join("g", "a")
    store.groups.join("g", "b")
    assert store.groups.assignment("g", "a") == [TopicPartition("t", 0), TopicPartition("t", 1)]
    store.apply({"t": Topic("t", partitions=4)},
                {"g": ConsumerGroup("g", ("t",), assignment=Assignment.ROUNDROBIN)})
    assert store.groups.assignment("g", "a") == [TopicPartition("t", 0), TopicPartition("t", 2)]
    assert store.groups.members("g") == ["a", "b"]


def test_bad_membership_requests(open_store: Opener) -> None:
    store = open_store()
    with pytest.raises(InvalidRequest) as exc:
        store.groups.join("g", "")
    assert str(exc.value) == "member id must not be empty"
    with pytest.raises(NotFound) as exc2:
        store.groups.join("nope", "a")
    assert str(exc2.value) == "unknown consumer group 'nope'"
    with pytest.raises(NotFound) as exc3:
        store.groups.position("g", TopicPartition("other", 0))
    assert str(exc3.value) == "group 'g' does not read topic 'other'"
    store.groups.leave("g", "never-joined")  # leaving twice is harmless
    assert store.groups.members("g") == []


def test_a_committed_offset_below_the_log_start_is_reset_by_the_policy(
        open_store: Opener, clock: ManualClock) -> None:
    store = open_store({})
    short = Topic("t", partitions=4, retention=Retention(time_s=60.0, bytes=None))
    store.apply({"t": short},
                {"late": ConsumerGroup("late", ("t",), offset_reset=OffsetReset.LATEST),
                 "early": ConsumerGroup("early", ("t",))})
    store.append("t", [AppendRecord(b"v", partition=0)] * 5)
    store.groups.commit("late", {TP0: 2})
    store.groups.commit("early", {TP0: 2})
    clock.advance(120)
    store.tick()  # retention: offsets 0..4 are gone
    store.append("t", [AppendRecord(b"v", partition=0)] * 3)
    assert (store.log_start(TP0), store.log_end(TP0)) == (5, 8)
    assert store.groups.position("late", TP0) == 8
    assert store.groups.position("early", TP0) == 5
    # lag counts from the commit, also below the log start (TOPOLOGY.md 1.1; as
    # kafka-consumer-groups and kafka_exporter report it)
    assert store.groups.lag("late", TP0) == 6
    assert store.groups.lag("early", TP0) == 6
    info = group_info(store, "late")
    assert [(p.committed, p.position, p.lag) for p in info.partitions][0] == (2, 8, 6)


def test_a_zombie_members_commit_is_fenced(open_store: Opener, clock: ManualClock) -> None:
    store = open_store()
    gen_a = store.groups.join("g", "a")
    mine = store.groups.assignment("g", "a")
    store.groups.commit("g", {TP0: 0}, member_id="a", generation=gen_a)  # fine
    gen_b = store.groups.join("g", "b")  # rebalance: a is now at a stale generation
    with pytest.raises(Conflict) as exc:
        store.groups.commit("g", {mine[0]: 0}, member_id="a", generation=gen_a)
    assert str(exc.value) == (f"group 'g' rebalanced: generation {gen_a} is stale, "
                              f"current is {gen_b}")
    taken = next(tp for tp in mine if store.groups.owner("g", tp) == "b")
    with pytest.raises(Conflict) as exc:
        store.groups.commit("g", {taken: 0}, member_id="a", generation=gen_b)
    assert str(exc.value) == (f"group 'g' rebalanced: t/{taken.partition} is assigned "
                              f"to 'b', not 'a' (generation {gen_b})")
    clock.advance(11)
    store.groups.heartbeat("g", "b")
    store.tick()  # a's session expired
    with pytest.raises(Conflict) as exc:
        store.groups.commit("g", {TP0: 0}, member_id="a")
    assert str(exc.value) == ("group 'g' rebalanced: member 'a' is not in the group any "
                              f"more (current generation is {gen_b + 1})")
    with pytest.raises(Conflict, match=f"^group 'g' rebalanced: generation {gen_b} is stale"):
        store.groups.commit("g", {TP0: 5}, member_id="b", generation=gen_b)
    assert store.groups.committed("g", TP0) == 0
    store.groups.commit("g", {TP0: 0}, member_id="b", generation=gen_b + 1)
    store.groups.commit("g", {TP0: 0})  # no member given: an external commit, as before
