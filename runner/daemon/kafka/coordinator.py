"""The group coordinator: Kafka's classic consumer group protocol for Kafka clients.

A group moves through Kafka's states::

    Empty --join--> PreparingRebalance --all joined / rebalance timeout-->
    CompletingRebalance --leader's SyncGroup--> Stable --join, leave, expiry-->
    PreparingRebalance ...

A JoinGroup is answered when every known member has (re)joined, or when the
longest rebalance timeout of the members passed (the ones that did not rejoin
are removed); then the generation goes up, the protocol (assignor) is the one
every member supports that most members prefer, and the leader (the previous
leader if it rejoined, else the first to join) gets every member's
subscription metadata. Its SyncGroup hands each member its assignment: the
assignors run in the clients (range, roundrobin, sticky, cooperative-sticky),
as in Kafka. A member silent for its session timeout is removed and the group
rebalances; heartbeats during a rebalance answer REBALANCE_IN_PROGRESS so the
members rejoin.

From JoinGroup v4 on, a member joining without an id gets one with
MEMBER_ID_REQUIRED and joins again with it (KIP-394). Static membership
(group instance ids) is not kept: an instance id is echoed, not used.

The coordinator holds membership only (lost on restart, as members simply
rejoin); committed offsets are the engine's (see `groups_api`).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from dataclasses import dataclass, field
from enum import Enum

from runner.clock import Clock
from runner.daemon.kafka.protocol import ErrorCode

log = logging.getLogger(__name__)


class State(str, Enum):  # noqa: UP042 - compared and shown as Kafka's state names
    EMPTY = "Empty"
    PREPARING = "PreparingRebalance"
    COMPLETING = "CompletingRebalance"
    STABLE = "Stable"


@dataclass(frozen=True, slots=True)
class JoinResult:
    error: int
    generation: int = -1
    protocol_type: str | None = None
    protocol: str | None = None
    leader: str = ""
    member_id: str = ""
    members: tuple[tuple[str, str | None, bytes], ...] = ()  # leader only: id, instance, meta


@dataclass(frozen=True, slots=True)
class SyncResult:
    error: int
    protocol_type: str | None = None
    protocol: str | None = None
    assignment: bytes = b""


@dataclass(slots=True)
class Member:
    member_id: str
    client_id: str
    client_host: str
    instance_id: str | None
    session_timeout_s: float
    rebalance_timeout_s: float
    protocols: list[tuple[str, bytes]]
    last_seen: float
    assignment: bytes = b""
    joining: asyncio.Future[JoinResult] | None = None
    syncing: asyncio.Future[SyncResult] | None = None

    def metadata(self, protocol: str) -> bytes:
        for name, meta in self.protocols:
            if name == protocol:
                return meta
        return b""


@dataclass(slots=True)
class Group:
    name: str
    state: State = State.EMPTY
    generation: int = 0
    protocol_type: str | None = None
    protocol: str | None = None
    leader: str | None = None
    members: dict[str, Member] = field(default_factory=dict)
    pending: dict[str, float] = field(default_factory=dict)  # ids handed out, not joined yet
    rebalance_deadline: float = 0.0


class Coordinator:
    """Membership of every group Kafka clients joined on this listener."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.groups: dict[str, Group] = {}
        self._ids = itertools.count(1)

    def group(self, name: str) -> Group:
        g = self.groups.get(name)
        if g is None:
            g = self.groups[name] = Group(name)
        return g

    def _new_member_id(self, client_id: str) -> str:
        return f"{client_id or 'member'}-{next(self._ids)}-{int(self.clock.time() * 1000)}"

    # ------------------------------------------------------------ JoinGroup
    async def join(
        self, name: str, member_id: str, *, client_id: str, client_host: str,
        instance_id: str | None, protocol_type: str, protocols: list[tuple[str, bytes]],
        session_timeout_s: float, rebalance_timeout_s: float, require_known_id: bool,
    ) -> JoinResult:
        g = self.group(name)
        now = self.clock.monotonic()
        if not protocols:
            return JoinResult(ErrorCode.inconsistent_group_protocol, member_id=member_id)
        if g.members and (protocol_type != g.protocol_type or not self._compatible(
                g, protocols)):
            return JoinResult(ErrorCode.inconsistent_group_protocol, member_id=member_id)
        if not member_id:
            member_id = self._new_member_id(client_id)
            if require_known_id:
                g.pending[member_id] = now
                return JoinResult(ErrorCode.member_id_required, member_id=member_id)
        elif member_id not in g.members and member_id not in g.pending:
            return JoinResult(ErrorCode.unknown_member_id, member_id=member_id)
        g.pending.pop(member_id, None)
        member = g.members.get(member_id)
        if (member is not None and member.protocols == protocols and member_id != g.leader
                and g.state in (State.STABLE, State.COMPLETING)):
            # a follower rejoining with nothing new: the current generation, no rebalance
            member.last_seen = now
            return JoinResult(ErrorCode.none, g.generation, g.protocol_type, g.protocol,
                              g.leader or "", member_id)
        if member is None:
            member = Member(member_id, client_id, client_host, instance_id, session_timeout_s,
                            rebalance_timeout_s, protocols, now)
            g.members[member_id] = member
            log.info("kafka group %s: member %s joined", name, member_id,
                     extra={"event": "kafka_group_join", "group": name})
        member.protocols = protocols
        member.session_timeout_s = session_timeout_s
        member.rebalance_timeout_s = rebalance_timeout_s
        member.last_seen = now
        g.protocol_type = protocol_type
        if member.joining is not None and not member.joining.done():
            member.joining.set_result(JoinResult(ErrorCode.unknown_member_id,
                                                 member_id=member_id))
        member.joining = asyncio.get_running_loop().create_future()
        joining = member.joining
        if g.state is not State.PREPARING:
            self._prepare(g)
        self._maybe_complete(g)
        return await joining

    @staticmethod
    def _compatible(g: Group, protocols: list[tuple[str, bytes]]) -> bool:
        """Whether some protocol is supported by every member and the joiner."""
        names = {n for n, _ in protocols}
        for m in g.members.values():
            names &= {n for n, _ in m.protocols}
        return bool(names)

    def _prepare(self, g: Group) -> None:
        """Start a rebalance: pending syncs learn it, members must rejoin."""
        g.state = State.PREPARING
        g.rebalance_deadline = self.clock.monotonic() + max(
            (m.rebalance_timeout_s for m in g.members.values()), default=0.0)
        for m in g.members.values():
            if m.syncing is not None and not m.syncing.done():
                m.syncing.set_result(SyncResult(ErrorCode.rebalance_in_progress))
            m.syncing = None

    def _maybe_complete(self, g: Group, *, timed_out: bool = False) -> None:
        if g.state is not State.PREPARING:
            return
        waiting = [m for m in g.members.values()
                   if m.joining is None or m.joining.done()]
        if waiting and not timed_out:
            return
        for m in waiting:  # did not rejoin in time
            self._remove(g, m.member_id, "did not rejoin within the rebalance timeout")
        if not g.members:
            g.state = State.EMPTY
            g.generation += 1
            g.leader = None
            g.protocol = None
            return
        g.generation += 1
        g.protocol = self._choose_protocol(g)
        if g.leader not in g.members:
            g.leader = next(iter(g.members))
        g.state = State.COMPLETING
        everyone = tuple((m.member_id, m.instance_id, m.metadata(g.protocol))
                         for m in g.members.values())
        log.info("kafka group %s: generation %d with %d member(s), protocol %s, leader %s",
                 g.name, g.generation, len(g.members), g.protocol, g.leader,
                 extra={"event": "kafka_group_rebalanced", "group": g.name,
                        "generation": g.generation})
        for m in g.members.values():
            assert m.joining is not None
            m.joining.set_result(JoinResult(
                ErrorCode.none, g.generation, g.protocol_type, g.protocol, g.leader or "",
                m.member_id, everyone if m.member_id == g.leader else ()))

    @staticmethod
    def _choose_protocol(g: Group) -> str:
        common = None
        for m in g.members.values():
            names = {n for n, _ in m.protocols}
            common = names if common is None else common & names
        assert common
        votes: dict[str, int] = {}
        for m in g.members.values():
            first = next(n for n, _ in m.protocols if n in common)
            votes[first] = votes.get(first, 0) + 1
        leader = g.members.get(g.leader or "")
        order = [n for n, _ in (leader or next(iter(g.members.values()))).protocols]
        return max(common, key=lambda n: (votes.get(n, 0), -order.index(n)
                                          if n in order else -999))

    # ------------------------------------------------------------ SyncGroup
    async def sync(self, name: str, member_id: str, generation: int,
                   assignments: dict[str, bytes]) -> SyncResult:
        g = self.groups.get(name)
        member = g.members.get(member_id) if g else None
        if g is None or member is None:
            return SyncResult(ErrorCode.unknown_member_id)
        if generation != g.generation:
            return SyncResult(ErrorCode.illegal_generation)
        if g.state is State.PREPARING:
            return SyncResult(ErrorCode.rebalance_in_progress)
        member.last_seen = self.clock.monotonic()
        if g.state is State.STABLE:
            return SyncResult(ErrorCode.none, g.protocol_type, g.protocol, member.assignment)
        if member_id == g.leader:
            for m in g.members.values():
                m.assignment = assignments.get(m.member_id, b"")
            g.state = State.STABLE
            for m in g.members.values():
                if m.syncing is not None and not m.syncing.done():
                    m.syncing.set_result(SyncResult(ErrorCode.none, g.protocol_type,
                                                    g.protocol, m.assignment))
                m.syncing = None
            return SyncResult(ErrorCode.none, g.protocol_type, g.protocol, member.assignment)
        member.syncing = asyncio.get_running_loop().create_future()
        return await member.syncing

    # ------------------------------------------------------------ Heartbeat, Leave
    def heartbeat(self, name: str, member_id: str, generation: int) -> int:
        g = self.groups.get(name)
        member = g.members.get(member_id) if g else None
        if g is None or member is None:
            return ErrorCode.unknown_member_id
        member.last_seen = self.clock.monotonic()
        if generation != g.generation:
            return ErrorCode.illegal_generation
        if g.state is State.PREPARING:
            return ErrorCode.rebalance_in_progress
        return ErrorCode.none

    def leave(self, name: str, member_id: str) -> int:
        g = self.groups.get(name)
        if g is None or member_id not in g.members:
            return ErrorCode.unknown_member_id
        self._remove(g, member_id, "left the group")
        self._after_removal(g)
        return ErrorCode.none

    def _remove(self, g: Group, member_id: str, why: str) -> None:
        m = g.members.pop(member_id)
        log.info("kafka group %s: member %s %s", g.name, member_id, why,
                 extra={"event": "kafka_group_leave", "group": g.name})
        if m.joining is not None and not m.joining.done():
            m.joining.set_result(JoinResult(ErrorCode.unknown_member_id, member_id=member_id))
        if m.syncing is not None and not m.syncing.done():
            m.syncing.set_result(SyncResult(ErrorCode.unknown_member_id))

    def _after_removal(self, g: Group) -> None:
        if not g.members:
            if g.state is not State.PREPARING:
                g.state = State.EMPTY
                g.generation += 1
                g.leader = None
                g.protocol = None
            else:
                self._maybe_complete(g)
            return
        if g.state is State.PREPARING:
            self._maybe_complete(g)
        else:
            self._prepare(g)

    # ------------------------------------------------------------ time
    def check(self) -> None:
        """Expire silent members and end rebalances past their timeout (call often)."""
        now = self.clock.monotonic()
        for g in list(self.groups.values()):
            for mid, seen in list(g.pending.items()):
                if now - seen > 300:
                    del g.pending[mid]
            dead = [m for m in g.members.values()
                    if (m.joining is None or m.joining.done())
                    and (m.syncing is None or m.syncing.done())
                    and now - m.last_seen > m.session_timeout_s]
            for m in dead:
                self._remove(g, m.member_id, "timed out (no heartbeat within its session "
                                             "timeout)")
            if dead:
                self._after_removal(g)
            if g.state is State.PREPARING and now >= g.rebalance_deadline:
                self._maybe_complete(g, timed_out=True)

    def members(self, name: str) -> list[Member]:
        g = self.groups.get(name)
        return list(g.members.values()) if g else []

    def state(self, name: str) -> State:
        g = self.groups.get(name)
        return g.state if g else State.EMPTY

    def member_counts(self) -> dict[str, int]:
        return {name: len(g.members) for name, g in self.groups.items() if g.members}

    def has_members(self, name: str) -> bool:
        g = self.groups.get(name)
        return bool(g and g.members)
