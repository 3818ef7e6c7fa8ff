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

`sticky` (Kafka's StickyAssignor): balanced per topic and overall, and a member
keeps what it had (up to its fair share on each topic) when another joins or
leaves::

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

from collections import deque
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
    """Balanced per topic and overall, moving as few partitions as it can.

    Quotas first: on topic t each member gets n_t // m partitions; the n_t % m
    extra ones go to members with the fewest extras so far (so totals differ by at
    most one), preferring among those the members that held more than n_t // m of
    t. Then each member keeps its previous partitions of each topic up to its quota
    there, and the partitions left over fill the quotas still open. O(partitions +
    members x topics that have at least one partition per member).
    """
    order = sorted(set(members))
    out: Assignment = {m: [] for m in order}
    if not order:
        return out
    count = len(order)
    topics = sorted(t for t, n in partitions.items() if n > 0)
    # previous partitions still valid, by topic then member (the first claimer wins)
    prev: dict[str, dict[str, list[int]]] = {t: {} for t in topics}
    claimed: set[tuple[str, int]] = set()
    for member in order:
        for t, p in previous.get(member, ()):
            if t in prev and 0 <= p < partitions[t] and (t, p) not in claimed:
                claimed.add((t, p))
                prev[t].setdefault(member, []).append(p)
    extras = _sticky_extras(order, topics, partitions, prev)
    if extras is None:  # stickiness made the quotas infeasible: balance comes first
        fallback = _Extras(order)
        extras = {}
        for topic in topics:
            base, extra = divmod(partitions[topic], count)
            extras[topic] = fallback.choose(extra, sorted(
                m for m, ps in prev[topic].items() if len(ps) > base))
    for topic in topics:
        n = partitions[topic]
        base = n // count
        mine = prev[topic]
        chosen = extras.get(topic, set())
        takers = order if base else sorted(chosen)
        held: set[int] = set()
        want: list[tuple[str, int]] = []
        for m in takers:
            quota = base + (m in chosen)
            ps = mine.get(m)
            keep = sorted(ps)[:quota] if ps else []
            if keep:
                out[m].extend(TopicPartition(topic, p) for p in keep)
                held.update(keep)
            if quota > len(keep):
                want.append((m, quota - len(keep)))
        free = [p for p in range(n) if p not in held] if held else range(n)
        i = 0
        for m, k in want:
            out[m].extend(TopicPartition(topic, p) for p in free[i:i + k])
            i += k
    for tps in out.values():
        tps.sort()
    return out


def _sticky_extras(
    order: list[str], topics: list[str], partitions: Mapping[str, int],
    prev: Mapping[str, Mapping[str, list[int]]],
) -> dict[str, set[str]] | None:
    """Per topic, the members that get one of its n % m extra partitions, so that
    every member gets floor(S/m) or ceil(S/m) extras in all (S: the sum of extras).

    First every topic's extras go to members that held more than n // m of it
    while their total allows; then the rest, topics with the most left first, to
    members with the fewest extras. None when that greedy fill gets stuck (the
    caller then deals extras without preference, which always fits)."""
    count = len(order)
    want = {t: partitions[t] % count for t in topics if partitions[t] % count}
    if not want:
        return {}
    floor, ceil_slots = divmod(sum(want.values()), count)
    level = dict.fromkeys(order, 0)
    at_ceil = 0
    chosen: dict[str, set[str]] = {t: set() for t in want}

    def take(m: str, t: str) -> bool:
        nonlocal at_ceil
        if level[m] > floor or (level[m] == floor and at_ceil >= ceil_slots):
            return False
        if level[m] == floor:
            at_ceil += 1
        level[m] += 1
        chosen[t].add(m)
        return True

    for t in want:
        base = partitions[t] // count
        for m in sorted(m for m, ps in prev[t].items() if len(ps) > base):
            if len(chosen[t]) == want[t]:
                break
            take(m, t)
    for left, t in sorted(((want[t] - len(chosen[t]), t) for t in want), reverse=True):
        if not left:
            break
        mine = chosen[t]
        for m in sorted((m for m in order if m not in mine), key=lambda m: (level[m], m)):
            if not left:
                break
            if take(m, t):
                left -= 1
        if left:
            return None
    return chosen


class _Extras:
    """Who gets a topic's extra partitions: members with the fewest extras so far
    (their counts never differ by more than one), preferred ones first."""

    def __init__(self, order: list[str]) -> None:
        self.level = dict.fromkeys(order, 0)
        self.floor = 0
        self.at_floor = len(order)  # members with `floor` extras
        self.low: deque[str] = deque(order)  # members at `floor` (lazily: some moved up)
        self.high: deque[str] = deque()  # members at `floor` + 1, in the order they got there

    def choose(self, extra: int, preferred: list[str]) -> set[str]:
        chosen: set[str] = set()
        skipped: list[str] = []
        level = self.level
        while len(chosen) < extra:
            if self.at_floor == 0:
                self.low, self.high = self.high, deque()
                self.floor += 1
                self.at_floor = len(level)
            for m in preferred:
                if len(chosen) == extra or self.at_floor == 0:
                    break
                if level[m] == self.floor and m not in chosen:
                    self._up(m, chosen)
            while len(chosen) < extra and self.at_floor and self.low:
                m = self.low.popleft()
                if level[m] != self.floor:
                    continue  # moved up already
                if m in chosen:
                    skipped.append(m)  # chosen for this topic before the levels turned
                    continue
                self._up(m, chosen)
        self.low.extendleft(reversed(skipped))
        return chosen

    def _up(self, m: str, chosen: set[str]) -> None:
        chosen.add(m)
        self.level[m] += 1
        self.high.append(m)
        self.at_floor -= 1
