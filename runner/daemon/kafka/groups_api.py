"""JoinGroup, SyncGroup, Heartbeat, LeaveGroup, OffsetCommit, OffsetFetch,
DescribeGroups, ListGroups: Kafka consumer groups on the topology's groups.

Kafka clients may join a group the topology declares without a handler
(`consumer_groups.NAME` with `topics` and no `handler`). A group whose members
are this daemon's own handlers refuses them, and so does an undeclared group:
GROUP_AUTHORIZATION_FAILED, with the reason in the daemon's log (and in
`error_message` where the response has one). Membership is the coordinator's;
committed offsets are the engine's, so the group's lag shows in `/metrics`,
`GET /v1/groups/{group}` and `runner status`, and its offsets survive a
restart. OffsetFetch answers the committed offset, else the group's own reset
position (its `offset_reset`), so the topology decides where a new group
starts, whatever the client's `auto.offset.reset`.
"""

from __future__ import annotations

import logging
from typing import Any

from runner.daemon.kafka.coordinator import State
from runner.daemon.kafka.protocol import ErrorCode
from runner.daemon.kafka.session import Session, millis
from runner.errors import EngineError

log = logging.getLogger(__name__)

MIN_SESSION_MS, MAX_SESSION_MS = 1000, 1_800_000


def refusal(session: Session, group: str) -> str | None:
    """Why Kafka clients may not be members of `group` (None: they may)."""
    cfg = session.broker.port.group(group)
    if cfg is None:
        return (f"consumer group {group!r} is not declared in the topology (declare it "
                f"under consumer_groups, with topics and without a handler)")
    if cfg.handler is not None:
        return (f"consumer group {group!r} is run by this daemon's handler {cfg.handler}; "
                f"Kafka clients cannot be its members (declare a group without a handler)")
    return None


def _refused(session: Session, group: str, why: str) -> int:
    log.warning("kafka: group %s refused to %s: %s", group, session.peer, why,
                extra={"event": "kafka_group_refused", "group": group, "peer": session.peer})
    return ErrorCode.group_authorization_failed


# ---------------------------------------------------------------- membership
async def join_group_api(session: Session, body: Any, version: int) -> dict[str, Any]:
    group = body.group_id
    why = refusal(session, group)
    base = {"generation_id": -1, "member_id": body.member_id, "leader": "",
            "protocol_type": None, "protocol_name": None, "members": []}
    if why is not None:
        return {**base, "error_code": _refused(session, group, why)}
    session_ms = millis(body.session_timeout)
    if not MIN_SESSION_MS <= session_ms <= MAX_SESSION_MS:
        return {**base, "error_code": ErrorCode.invalid_session_timeout}
    rebalance_ms = millis(getattr(body, "rebalance_timeout", session_ms))
    result = await session.broker.coordinator.join(
        group, body.member_id, client_id=session.extra.get("client_id", ""),
        client_host=session.peer.rsplit(":", 1)[0],
        instance_id=getattr(body, "group_instance_id", None),
        protocol_type=body.protocol_type,
        protocols=[(p.name, bytes(p.metadata)) for p in body.protocols],
        session_timeout_s=session_ms / 1000, rebalance_timeout_s=rebalance_ms / 1000,
        require_known_id=version >= 4)
    return {"error_code": result.error, "generation_id": result.generation,
            "protocol_type": result.protocol_type, "protocol_name": result.protocol,
            "leader": result.leader, "member_id": result.member_id,
            "members": [{"member_id": m, "group_instance_id": i, "metadata": meta}
                        for m, i, meta in result.members]}


async def sync_group_api(session: Session, body: Any, version: int) -> dict[str, Any]:
    why = refusal(session, body.group_id)
    if why is not None:
        return {"error_code": _refused(session, body.group_id, why), "assignment": b""}
    result = await session.broker.coordinator.sync(
        body.group_id, body.member_id, body.generation_id,
        {a.member_id: bytes(a.assignment) for a in body.assignments})
    return {"error_code": result.error, "protocol_type": result.protocol_type,
            "protocol_name": result.protocol, "assignment": result.assignment}


async def heartbeat_api(session: Session, body: Any, version: int) -> dict[str, Any]:
    why = refusal(session, body.group_id)
    if why is not None:
        return {"error_code": _refused(session, body.group_id, why)}
    return {"error_code": session.broker.coordinator.heartbeat(
        body.group_id, body.member_id, body.generation_id)}


async def leave_group_api(session: Session, body: Any, version: int) -> dict[str, Any]:
    coordinator = session.broker.coordinator
    if version < 3:
        return {"error_code": coordinator.leave(body.group_id, body.member_id)}
    out = [{"member_id": m.member_id, "group_instance_id": m.group_instance_id,
            "error_code": coordinator.leave(body.group_id, m.member_id)}
           for m in body.members]
    return {"error_code": 0, "members": out}


# ---------------------------------------------------------------- offsets
async def offset_commit_api(session: Session, body: Any, version: int) -> dict[str, Any]:
    group = body.group_id
    generation: int = getattr(body, "generation_id",
                              getattr(body, "generation_id_or_member_epoch", -1))
    why = refusal(session, group)
    code = _refused(session, group, why) if why is not None else _member_check(
        session, group, body.member_id, generation)
    port = session.broker.port
    topics_out = []
    wanted: dict[tuple[str, int], int] = {}
    entries: dict[tuple[str, int], dict[str, Any]] = {}
    cfg = port.group(group)
    for topic in body.topics:
        parts = []
        for p in topic.partitions:
            entry = {"partition_index": p.partition_index, "error_code": code}
            parts.append(entry)
            if code:
                continue
            entry["error_code"] = _offset_problem(session, cfg, group, topic.name,
                                                  p.partition_index, p.committed_offset)
            if not entry["error_code"]:
                wanted[(topic.name, p.partition_index)] = p.committed_offset
                entries[(topic.name, p.partition_index)] = entry
        topics_out.append({"name": topic.name, "partitions": parts})
    if wanted:
        try:
            await port.commit(group, wanted)
        except EngineError as exc:
            log.warning("kafka: commit of group %s failed: %s", group, exc,
                        extra={"event": "kafka_commit_refused", "group": group})
            for entry in entries.values():
                entry["error_code"] = ErrorCode.unknown_server_error
        session.broker.appended.wake()
    return {"topics": topics_out}


def _member_check(session: Session, group: str, member_id: str, generation: int) -> int:
    coordinator = session.broker.coordinator
    g = coordinator.groups.get(group)
    if generation < 0 and not member_id:
        # a standalone consumer (assign + commit): only while no member is in the group
        return ErrorCode.unknown_member_id if coordinator.has_members(group) else 0
    if g is None or member_id not in g.members:
        return ErrorCode.unknown_member_id
    if generation != g.generation:
        return ErrorCode.illegal_generation
    if g.state is State.COMPLETING:
        return ErrorCode.rebalance_in_progress
    g.members[member_id].last_seen = coordinator.clock.monotonic()
    return 0


def _offset_problem(session: Session, cfg: Any, group: str, topic: str, partition: int,
                    offset: int) -> int:
    port = session.broker.port
    if topic not in cfg.topics or not 0 <= partition < port.partition_count(topic):
        log.warning("kafka: group %s cannot commit %s/%d: the group does not read it",
                    group, topic, partition,
                    extra={"event": "kafka_commit_refused", "group": group})
        return ErrorCode.unknown_topic_or_partition
    end = port.offsets(topic, partition).log_end
    if not 0 <= offset <= end:
        log.warning("kafka: group %s cannot commit offset %d on %s/%d: outside 0..%d",
                    group, offset, topic, partition, end,
                    extra={"event": "kafka_commit_refused", "group": group})
        return ErrorCode.offset_out_of_range
    return 0


async def offset_fetch_api(session: Session, body: Any, version: int) -> dict[str, Any]:
    port = session.broker.port
    group = body.group_id
    cfg = port.group(group)
    top = 0
    if cfg is None:
        top = _refused(session, group, refusal(session, group) or "")
    if body.topics is None:
        wanted = [(t, list(range(port.partition_count(t))))
                  for t in (cfg.topics if cfg else ())]
    else:
        wanted = [(t.name, list(t.partition_indexes)) for t in body.topics]
    topics_out = []
    for topic, partitions in wanted:
        parts = []
        for p in partitions:
            entry: dict[str, Any] = {"partition_index": p, "committed_offset": -1,
                                     "committed_leader_epoch": -1, "metadata": "",
                                     "error_code": top}
            if not top and cfg is not None:
                if topic in cfg.topics and 0 <= p < port.partition_count(topic):
                    entry["committed_offset"] = port.position(group, topic, p)
                else:
                    entry["error_code"] = ErrorCode.unknown_topic_or_partition
            parts.append(entry)
        topics_out.append({"name": topic, "partitions": parts})
    return {"error_code": top, "topics": topics_out}


# ---------------------------------------------------------------- describing
def _handler_state(session: Session, group: str) -> tuple[str, list[str]]:
    members = session.broker.port.group_members(group)
    return ("Stable" if members else "Empty"), members


async def describe_groups_api(session: Session, body: Any, version: int) -> dict[str, Any]:
    port = session.broker.port
    coordinator = session.broker.coordinator
    out = []
    for group in body.groups:
        cfg = port.group(group)
        entry: dict[str, Any] = {"error_code": 0, "group_id": group, "group_state": "Dead",
                                 "protocol_type": "", "protocol_data": "", "members": [],
                                 "authorized_operations": -2147483648}
        if cfg is not None and cfg.handler is not None:
            state, members = _handler_state(session, group)
            entry.update(group_state=state, protocol_type="consumer",
                         protocol_data="runner-handler",
                         members=[{"member_id": m, "client_id": "runner", "client_host": "",
                                   "member_metadata": b"", "member_assignment": b""}
                                  for m in members])
        elif cfg is not None:
            g = coordinator.groups.get(group)
            entry.update(group_state=coordinator.state(group).value,
                         protocol_type=(g.protocol_type if g and g.protocol_type
                                        else "consumer"),
                         protocol_data=(g.protocol or "") if g else "")
            if g is not None:
                entry["members"] = [{
                    "member_id": m.member_id, "group_instance_id": m.instance_id,
                    "client_id": m.client_id, "client_host": m.client_host,
                    "member_metadata": m.metadata(g.protocol or ""),
                    "member_assignment": m.assignment} for m in g.members.values()]
        out.append(entry)
    return {"groups": out}


async def list_groups_api(session: Session, body: Any, version: int) -> dict[str, Any]:
    port = session.broker.port
    coordinator = session.broker.coordinator
    wanted = set(getattr(body, "states_filter", ()) or ())
    out = []
    for name, cfg in sorted(port.groups().items()):
        if cfg.handler is not None:
            state = _handler_state(session, name)[0]
        else:
            state = coordinator.state(name).value
        if wanted and state not in wanted:
            continue
        out.append({"group_id": name, "protocol_type": "consumer", "group_state": state})
    return {"error_code": 0, "groups": out}
