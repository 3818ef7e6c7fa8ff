"""Assignors: worked examples, and properties every assignment must have."""

from __future__ import annotations

import doctest

from hypothesis import given, settings
from hypothesis import strategies as st

import runner.log.assignors as assignors
from runner.log.assignors import assign_range, assign_roundrobin, assign_sticky
from runner.log.partition import TopicPartition


def test_docstring_examples() -> None:
    result = doctest.testmod(assignors)
    assert result.attempted >= 4 and result.failed == 0


def test_range_is_per_topic_like_kafka() -> None:
    got = assign_range(["c1", "c0"], {"t0": 3, "t1": 3})
    assert {m: [(tp.topic, tp.partition) for tp in tps] for m, tps in got.items()} == {
        "c0": [("t0", 0), ("t0", 1), ("t1", 0), ("t1", 1)],
        "c1": [("t0", 2), ("t1", 2)],
    }


def test_more_members_than_partitions_leaves_some_idle() -> None:
    got = assign_roundrobin(["a", "b", "c"], {"t": 2})
    assert got == {"a": [TopicPartition("t", 0)], "b": [TopicPartition("t", 1)], "c": []}


def test_no_members_no_assignment() -> None:
    assert assign_sticky([], {"t": 3}, {}) == {}


members_st = st.lists(st.text("abcdefgh", min_size=1, max_size=3), min_size=1, max_size=8,
                      unique=True)
layout_st = st.dictionaries(st.sampled_from(["x", "y", "z"]), st.integers(0, 12), max_size=3)


def check_exactly_once(assignment: dict[str, list[TopicPartition]],
                       layout: dict[str, int]) -> None:
    every = [tp for tps in assignment.values() for tp in tps]
    assert sorted(every) == sorted(TopicPartition(t, p) for t, n in layout.items()
                                   for p in range(n))


@settings(max_examples=200, deadline=None)
@given(members=members_st, layout=layout_st)
def test_every_partition_exactly_once_and_balanced(members: list[str],
                                                   layout: dict[str, int]) -> None:
    for got in (assign_range(members, layout), assign_roundrobin(members, layout),
                assign_sticky(members, layout, {})):
        check_exactly_once(got, layout)
        assert set(got) == set(members)
    counts = [len(v) for v in assign_roundrobin(members, layout).values()]
    assert max(counts) - min(counts) <= 1
    counts = [len(v) for v in assign_sticky(members, layout, {}).values()]
    assert max(counts) - min(counts) <= 1


def check_balanced_per_topic(assignment: dict[str, list[TopicPartition]],
                             layout: dict[str, int]) -> None:
    counts = [len(v) for v in assignment.values()]
    assert max(counts) - min(counts) <= 1
    for t in layout:
        per = [sum(1 for tp in v if tp.topic == t) for v in assignment.values()]
        assert max(per) - min(per) <= 1, (t, per)


def test_sticky_balances_per_topic_when_a_member_joins() -> None:
    # issue 8 item 6: a keeps 6 + 6, not all of t1 (Kafka's StickyAssignor)
    alone = assign_sticky(["a"], {"t1": 12, "t2": 12}, {})
    got = assign_sticky(["a", "b"], {"t1": 12, "t2": 12}, alone)
    for member in ("a", "b"):
        assert [sum(1 for tp in got[member] if tp.topic == t) for t in ("t1", "t2")] == [6, 6]
    assert set(got["a"]) <= set(alone["a"])


def test_fresh_sticky_is_balanced_per_topic() -> None:
    got = assign_sticky([f"m{i}" for i in range(5)], {"x": 7, "y": 4, "z": 13}, {})
    check_balanced_per_topic(got, {"x": 7, "y": 4, "z": 13})


@settings(max_examples=300, deadline=None)
@given(members=members_st, layout=layout_st)
def test_sticky_is_balanced_per_topic(members: list[str], layout: dict[str, int]) -> None:
    check_balanced_per_topic(assign_sticky(members, layout, {}), layout)


@settings(max_examples=200, deadline=None)
@given(members=members_st, layout=layout_st, newcomer=st.text("xyz", min_size=1, max_size=2),
       data=st.data())
def test_sticky_keeps_partitions_when_members_come_and_go(
        members: list[str], layout: dict[str, int], newcomer: str, data: st.DataObject) -> None:
    before = assign_sticky(members, layout, {})
    check_balanced_per_topic(before, layout)
    # someone joins: balance holds per topic and overall, and on every topic each
    # member keeps what it had up to its new share there (balance comes first: a
    # member may trade a partition of one topic for one of another, as in Kafka)
    after = assign_sticky([*members, newcomer], layout, before)
    check_exactly_once(after, layout)
    check_balanced_per_topic(after, layout)
    for m in members:
        if m != newcomer:
            for t in layout:
                had = {tp for tp in before[m] if tp.topic == t}
                has = {tp for tp in after[m] if tp.topic == t}
                assert len(had & has) == min(len(had), len(has)), (m, t)
    # someone leaves: the others keep everything they had
    if len(members) > 1:
        gone = data.draw(st.sampled_from(members))
        rest = [m for m in members if m != gone]
        later = assign_sticky(rest, layout, before)
        check_exactly_once(later, layout)
        check_balanced_per_topic(later, layout)
        # per topic, each keeps what it had up to its new share there; with one topic
        # (no trade between topics possible) the others keep everything
        for m in rest:
            for t in layout:
                had = {tp for tp in before[m] if tp.topic == t}
                has = {tp for tp in later[m] if tp.topic == t}
                assert len(had & has) == min(len(had), len(has)), (m, t)
            if len(layout) == 1:
                assert set(before[m]) <= set(later[m])
