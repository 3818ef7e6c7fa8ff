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


@settings(max_examples=200, deadline=None)
@given(members=members_st, layout=layout_st, newcomer=st.text("xyz", min_size=1, max_size=2),
       data=st.data())
def test_sticky_keeps_partitions_when_members_come_and_go(
        members: list[str], layout: dict[str, int], newcomer: str, data: st.DataObject) -> None:
    before = assign_sticky(members, layout, {})
    # someone joins: everybody keeps a subset of what they had, balance holds
    after = assign_sticky([*members, newcomer], layout, before)
    check_exactly_once(after, layout)
    counts = [len(v) for v in after.values()]
    assert max(counts) - min(counts) <= 1
    for m in members:
        if m != newcomer:
            assert set(after[m]) <= set(before[m]) or len(before[m]) <= min(counts)
            assert len(set(after[m]) & set(before[m])) == min(len(before[m]), len(after[m]))
    # someone leaves: the others keep everything they had
    if len(members) > 1:
        gone = data.draw(st.sampled_from(members))
        rest = [m for m in members if m != gone]
        later = assign_sticky(rest, layout, before)
        check_exactly_once(later, layout)
        for m in rest:
            assert set(before[m]) <= set(later[m])
