"""Consumer groups: membership, session timeouts, assignment, positions and lag.

A member joins, heart-beats and leaves; one that stays silent longer than
`session_timeout_s` (on the injected Clock's monotonic time) is removed by
`expire()`. Every change of membership (or of the partitions of the group's
topics) rebalances the group with its assignor and bumps `generation`, so each
partition belongs to exactly one member at a time.

Positions: the committed offset, else the reset position fixed (and persisted)
when the group first saw the partition: the log start for `earliest` (read
live, so retention moves it), the log end at that time for `latest`. A position
that fell below the log start is reset by `offset_reset` (Kafka's
auto.offset.reset for an out-of-range offset): the log start or the log end.
Lag = log end - committed offset (also when that is below the log start), else
log end - the reset position.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from runner.clock import Clock
from runner.errors import Conflict, InvalidRequest, NotFound
from runner.log.assignors import assign_range, assign_roundrobin, assign_sticky
from runner.log.offsets import OffsetStore
from runner.log.partition import TopicPartition
from runner.topology.model import Assignment, ConsumerGroup, OffsetReset

log = logging.getLogger(__name__)


class PartitionView(Protocol):
    """What groups need to know about partitions (the Store implements it)."""

    def partition_count(self, topic: str) -> int: ...

    def log_start(self, tp: TopicPartition) -> int: ...

    def log_end(self, tp: TopicPartition) -> int: ...

    def offset_for_timestamp(self, tp: TopicPartition, ts_ms: int) -> int: ...


@dataclass(slots=True)
class GroupState:
    config: ConsumerGroup
    members: dict[str, float] = field(default_factory=dict)  # member -> last heartbeat
    assignment: dict[str, list[TopicPartition]] = field(default_factory=dict)
    generation: int = 0
    layout: dict[str, int] = field(default_factory=dict)  # topic -> partitions at last rebalance


class Groups:
    """All consumer groups of a store."""

    def __init__(
        self, offsets: OffsetStore, view: PartitionView, clock: Clock, *,
        session_timeout_s: float = 10.0,
    ) -> None:
        self.offsets = offsets
        self.view = view
        self.clock = clock
        self.session_timeout_s = session_timeout_s
        self._groups: dict[str, GroupState] = {}
        # (group, member) of in-process members: their process keeps their session,
        # so they never time out (and cost no timer)
        self.local: set[tuple[str, str]] = set()
        # called with the group's name after each rebalance (the engine's events)
        self.on_rebalance: Callable[[str], None] | None = None

    # ------------------------------------------------------------ declaring
    def declare(self, config: ConsumerGroup) -> None:
        """Add or update a group; fixes reset positions of partitions it has not seen."""
        state = self._groups.get(config.name)
        if state is None:
            state = self._groups[config.name] = GroupState(config)
        elif state.config != config:
            state.config = config
            state.layout = {}  # an assignor or topic change: rebalance now
        self.refresh(config.name)

    def remove(self, name: str) -> None:
        self._groups.pop(name, None)

    def names(self) -> list[str]:
        return sorted(self._groups)

    def config(self, name: str) -> ConsumerGroup:
        return self._get(name).config

    def refresh(self, name: str) -> None:
        """Re-read partition counts; rebalance when they changed."""
        state = self._get(name)
        layout = {t: self.view.partition_count(t) for t in state.config.topics}
        resets: dict[tuple[str, TopicPartition], int] = {}
        for topic, n in layout.items():
            for p in range(n):
                tp = TopicPartition(topic, p)
                if (name, tp) not in self.offsets.resets:
                    latest = state.config.offset_reset is OffsetReset.LATEST
                    resets[(name, tp)] = self.view.log_end(tp) if latest else -1
        if resets:
            self.offsets.set_resets(resets)
        if layout != state.layout:
            state.layout = layout
            self._rebalance(state)

    def _get(self, name: str) -> GroupState:
        state = self._groups.get(name)
        if state is None:
            raise NotFound(f"unknown consumer group {name!r}")
        return state

    # ------------------------------------------------------------ membership
    def join(self, name: str, member: str) -> int:
        """Add (or re-add) a member; returns the generation."""
        state = self._get(name)
        if not member:
            raise InvalidRequest("member id must not be empty")
        new = member not in state.members
        state.members[member] = self.clock.monotonic()
        if new:
            self._rebalance(state)
        return state.generation

    def leave(self, name: str, member: str) -> None:
        self.local.discard((name, member))
        state = self._get(name)
        if state.members.pop(member, None) is not None:
            self._rebalance(state)

    def heartbeat(self, name: str, member: str) -> None:
        state = self._get(name)
        if member not in state.members:
            raise NotFound(f"member {member!r} is not in group {name!r} (expired or never joined)")
        state.members[member] = self.clock.monotonic()

    def expire(self, now: float | None = None) -> list[tuple[str, str]]:
        """Remove members silent for longer than the session timeout."""
        now = self.clock.monotonic() if now is None else now
        gone: list[tuple[str, str]] = []
        for name, state in self._groups.items():
            dead = [m for m, seen in state.members.items()
                    if now - seen > self.session_timeout_s and (name, m) not in self.local]
            for m in dead:
                del state.members[m]
                gone.append((name, m))
                log.info("member %s of group %s timed out", m, name)
            if dead:
                self._rebalance(state)
        return gone

    def next_expiry(self) -> float | None:
        """The monotonic time at which the first member not heard from since
        would time out (None: no member that can time out)."""
        seen = [t for name, state in self._groups.items() for m, t in state.members.items()
                if (name, m) not in self.local]
        return min(seen) + self.session_timeout_s if seen else None

    def members(self, name: str) -> list[str]:
        return sorted(self._get(name).members)

    def generation(self, name: str) -> int:
        return self._get(name).generation

    def assignment(self, name: str, member: str) -> list[TopicPartition]:
        state = self._get(name)
        if member not in state.members:
            raise NotFound(f"member {member!r} is not in group {name!r} (expired or never joined)")
        return list(state.assignment.get(member, ()))

    def owner(self, name: str, tp: TopicPartition) -> str | None:
        for member, tps in self._get(name).assignment.items():
            if tp in tps:
                return member
        return None

    def _rebalance(self, state: GroupState) -> None:
        members = list(state.members)
        layout = state.layout
        how = state.config.assignment
        if how is Assignment.RANGE:
            new = assign_range(members, layout)
        elif how is Assignment.ROUNDROBIN:
            new = assign_roundrobin(members, layout)
        else:
            new = assign_sticky(members, layout, state.assignment)
        state.assignment = new
        state.generation += 1
        if self.on_rebalance is not None:
            self.on_rebalance(state.config.name)

    # ------------------------------------------------------------ positions
    def _check(self, name: str, tp: TopicPartition) -> None:
        state = self._get(name)
        n = state.layout.get(tp.topic)
        if n is None:
            raise NotFound(f"group {name!r} does not read topic {tp.topic!r}")
        if not 0 <= tp.partition < n:
            raise NotFound(f"topic {tp.topic!r} has no partition {tp.partition}")

    def committed(self, name: str, tp: TopicPartition) -> int | None:
        return self.offsets.committed.get((name, tp))

    def position(self, name: str, tp: TopicPartition) -> int:
        """The committed offset, else the reset position. A position below the log
        start (retention or compaction removed it) is out of range and reset by the
        group's `offset_reset`, as in Kafka: `earliest` -> the log start, `latest`
        -> the log end."""
        self._check(name, tp)
        pos = self.offsets.committed.get((name, tp))
        if pos is None:
            pos = self.offsets.resets.get((name, tp), -1)
        start = self.view.log_start(tp)
        if pos >= start:
            return pos
        if pos < 0:
            return start  # `earliest` before the first commit: the live log start
        return self._get(name).config.offset_reset.out_of_range(start, self.view.log_end(tp))

    def lag(self, name: str, tp: TopicPartition) -> int:
        """Log end - committed offset wherever the group committed, also below the log
        start (as kafka-consumer-groups and kafka_exporter report it: the records the
        group never consumed, retention-deleted ones included); before the first
        commit, log end - the reset position."""
        self._check(name, tp)
        committed = self.offsets.committed.get((name, tp))
        pos = committed if committed is not None else self.position(name, tp)
        return max(0, self.view.log_end(tp) - pos)

    def check_member(self, name: str, tps: Iterable[TopicPartition], *,
                     member_id: str | None = None, generation: int | None = None) -> None:
        """Fencing: Conflict unless `member_id` is in the group, `generation` is the
        current one and every partition in `tps` is assigned to `member_id` (each
        check only when its argument is given)."""
        state = self._get(name)
        current = state.generation
        if member_id is not None and member_id not in state.members:
            raise Conflict(f"group {name!r} rebalanced: member {member_id!r} is not in the "
                           f"group any more (current generation is {current})")
        if generation is not None and generation != current:
            raise Conflict(f"group {name!r} rebalanced: generation {generation} is stale, "
                           f"current is {current}")
        if member_id is not None:
            mine = state.assignment.get(member_id, [])
            for tp in tps:
                if TopicPartition(*tp) not in mine:
                    owner = self.owner(name, TopicPartition(*tp))
                    raise Conflict(f"group {name!r} rebalanced: {tp[0]}/{tp[1]} is assigned "
                                   f"to {owner!r}, not {member_id!r} (generation {current})")

    def commit(self, name: str, offsets: Mapping[TopicPartition, int], *,
               member_id: str | None = None, generation: int | None = None) -> None:
        """Commit next-offsets-to-read; refuses offsets outside [0, log end].
        With `member_id` and/or `generation` (a member of the group committing) a
        zombie is fenced off: Conflict "group 'g' rebalanced: generation 3 is
        stale, current is 4" (see `check_member`); without them anyone may commit."""
        if member_id is not None or generation is not None:
            self.check_member(name, offsets, member_id=member_id, generation=generation)
        for tp, off in offsets.items():
            self._check(name, tp)
            end = self.view.log_end(tp)
            if not 0 <= off <= end:
                raise InvalidRequest(
                    f"offset {off} for {tp.topic}/{tp.partition} is outside 0..{end}")
        self.offsets.commit({(name, TopicPartition(*tp)): off for tp, off in offsets.items()})

    def seek(self, name: str, tp: TopicPartition, *, offset: int | None = None,
             timestamp_ms: int | None = None) -> int:
        """Move the group's position (a commit): to an offset, or to the first
        record at or after a timestamp. Returns the new position."""
        if (offset is None) == (timestamp_ms is None):
            raise InvalidRequest("seek needs exactly one of offset or timestamp")
        self._check(name, tp)
        if timestamp_ms is not None:
            offset = self.view.offset_for_timestamp(tp, timestamp_ms)
        assert offset is not None
        offset = min(max(offset, self.view.log_start(tp)), self.view.log_end(tp))
        self.offsets.commit({(name, TopicPartition(*tp)): offset})
        return offset
