"""Partition assignors: who in a group reads which partition (pure functions).

Each takes the members (any order; they are sorted by id) and the partition
count per topic, and returns member -> sorted list of `TopicPartition`.
Every partition goes to exactly one member; counts differ by at most one
(for `range`, per topic).

`range` (Kafka's RangeAssignor), per topic, consecutive runs; the first
`n % m` members get one more::

    >>> assign_range(["b", "a"], {"t": 5})
    {'a': [TopicPartition(topic='t', partition=0), TopicPartition(topic='t', partition=1), \
TopicPartition(topic='t', partition=2)], 'b': [TopicPartition(topic='t', partition=3), \
TopicPartition(topic='t', partition=4)]}

`roundrobin`: all partitions of all topics, sorted, dealt in turn::

    >>> {m: [f"{tp.topic}{tp.partition}" for tp in tps]
    ...  for m, tps in assign_roundrobin(["a", "b"], {"x": 2, "y": 1}).items()}
    {'a': ['x0', 'y0'], 'b': ['x1']}

`sticky`: balanced like roundrobin, but a member keeps what it had (up to its
fair share) when another joins or leaves::

    >>> before = {"a": [TopicPartition("t", 0), TopicPartition("t", 1)],
    ...           "b": [TopicPartition("t", 2), TopicPartition("t", 3)]}
    >>> {m: [tp.partition for tp in tps]
    ...  for m, tps in assign_sticky(["a", "b", "c"], {"t": 4}, before).items()}
    {'a': [0, 1], 'b': [2], 'c': [3]}
    >>> {m: [tp.partition for tp in tps]
    ...  for m, tps in assign_sticky(["b", "c"], {"t": 4}, {"a": [TopicPartition("t", 0),
    ...  TopicPartition("t", 1)], "b": [TopicPartition("t", 2)],
    ...  "c": [TopicPartition("t", 3)]}).items()}
    {'b': [0, 2], 'c': [1, 3]}
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from runner.log.partition import TopicPartition

Assignment = dict[str, list[TopicPartition]]


def _all(partitions: Mapping[str, int]) -> list[TopicPartition]:
    return [TopicPartition(t, p) for t in sorted(partitions) for p in range(partitions[t])]


def assign_range(members: Sequence[str], partitions: Mapping[str, int]) -> Assignment:
    """Kafka's range assignor: per topic, consecutive partitions per member."""
    order = sorted(set(members))
    out: Assignment = {m: [] for m in order}
    if not order:
        return out
    for topic in sorted(partitions):
        n = partitions[topic]
        share, extra = divmod(n, len(order))
        start = 0
        for i, member in enumerate(order):
            count = share + (1 if i < extra else 0)
            out[member].extend(TopicPartition(topic, p) for p in range(start, start + count))
            start += count
    return out


def assign_roundrobin(members: Sequence[str], partitions: Mapping[str, int]) -> Assignment:
    """All partitions, sorted by (topic, partition), dealt to members in turn."""
    order = sorted(set(members))
    out: Assignment = {m: [] for m in order}
    if not order:
        return out
    for i, tp in enumerate(_all(partitions)):
        out[order[i % len(order)]].append(tp)
    return out


def assign_sticky(
    members: Sequence[str], partitions: Mapping[str, int],
    previous: Mapping[str, Sequence[TopicPartition]],
) -> Assignment:
    """Balanced assignment that moves as few partitions as it can."""
    order = sorted(set(members))
    out: Assignment = {m: [] for m in order}
    if not order:
        return out
    every = _all(partitions)
    valid = set(every)
    share, extra = divmod(len(every), len(order))
    taken: set[TopicPartition] = set()
    kept: dict[str, list[TopicPartition]] = {}
    for member in order:
        mine = []
        for tp in previous.get(member, ()):
            if tp in valid and tp not in taken:
                mine.append(tp)
                taken.add(tp)
        kept[member] = mine
    taken.clear()
    for member in order:  # everyone keeps up to the fair share
        out[member] = kept[member][:share]
        taken.update(out[member])
    for member in order:  # some keep one more while extras last
        if extra and len(kept[member]) > share:
            out[member].append(kept[member][share])
            taken.add(kept[member][share])
            extra -= 1
    for tp in every:
        if tp in taken:
            continue
        below = [m for m in order if len(out[m]) < share]
        if below:
            target = min(below, key=lambda m: (len(out[m]), m))
        else:
            target = next(m for m in order if len(out[m]) == share)
            extra -= 1
        out[target].append(tp)
    return {m: sorted(tps) for m, tps in out.items()}
