"""ApiVersions, Metadata, FindCoordinator, InitProducerId: the one-node cluster.

The runner is a cluster of one node (id 0) that leads every partition of
every declared topic; topics are never auto-created. Metadata advertises
`--kafka-advertise` when given (a proxy, NAT or container address: Kafka's
advertised.listeners), else the address the client's connection reached, so a
listener on 0.0.0.0 hands each client an address it can reach.
FindCoordinator names the same node for declared consumer groups; an
undeclared group is refused with GROUP_AUTHORIZATION_FAILED and a message
saying why.
"""

from __future__ import annotations

import logging
from typing import Any

from runner.daemon.kafka.port import MAX_EPOCH
from runner.daemon.kafka.protocol import ErrorCode, api_versions, topic_id
from runner.daemon.kafka.session import CLUSTER_ID, NODE_ID, Session

log = logging.getLogger(__name__)


async def api_versions_api(session: Session, body: Any, version: int) -> dict[str, Any]:
    return {"error_code": 0, "api_keys": api_versions()}


def _node(session: Session) -> dict[str, Any]:
    host, port = session.broker.advertise or (session.host, session.port)
    return {"node_id": NODE_ID, "host": host, "port": port, "rack": None}


async def metadata_api(session: Session, body: Any, version: int) -> dict[str, Any]:
    topics = session.broker.port.topics()
    wanted = body.topics
    if wanted is None or (version == 0 and not wanted):
        names = sorted(topics)
    else:
        names = [t.name for t in wanted]
    out = []
    for name in names:
        count = topics.get(name) if name is not None else None
        if count is None:
            out.append({"error_code": ErrorCode.unknown_topic_or_partition,
                        "name": name or "", "topic_id": topic_id(name or ""),
                        "is_internal": False, "partitions": []})
            continue
        out.append({
            "error_code": 0, "name": name, "topic_id": topic_id(name), "is_internal": False,
            "topic_authorized_operations": -2147483648,
            "partitions": [{"error_code": 0, "partition_index": p, "leader_id": NODE_ID,
                            "leader_epoch": 0, "replica_nodes": [NODE_ID],
                            "isr_nodes": [NODE_ID], "offline_replicas": []}
                           for p in range(count)],
        })
    return {"brokers": [_node(session)], "cluster_id": CLUSTER_ID,
            "controller_id": NODE_ID, "topics": out,
            "cluster_authorized_operations": -2147483648}


def coordinator_error(session: Session, group: str) -> tuple[int, str | None]:
    """(error code, message) for coordinating `group` here."""
    if session.broker.port.group(group) is None:
        return (ErrorCode.group_authorization_failed,
                f"consumer group {group!r} is not declared in the topology (declare it "
                f"under consumer_groups without a handler)")
    return ErrorCode.none, None


async def find_coordinator_api(session: Session, body: Any, version: int) -> dict[str, Any]:
    if version >= 4:
        entries = []
        for key in body.coordinator_keys:
            entries.append(_coordinator_entry(session, key, body.key_type))
        return {"coordinators": entries}
    entry = _coordinator_entry(session, body.key, getattr(body, "key_type", 0))
    return {k: v for k, v in entry.items() if k != "key"}


def _coordinator_entry(session: Session, key: str, key_type: int) -> dict[str, Any]:
    code: int
    message: str | None
    if key_type != 0:
        code, message = (ErrorCode.coordinator_not_available,
                         "transactions are not supported by this listener")
    else:
        code, message = coordinator_error(session, key)
    if code:
        log.info("kafka: no coordinator for %r: %s", key, message,
                 extra={"event": "kafka_refused", "peer": session.peer})
        return {"key": key, "error_code": code, "error_message": message, "node_id": -1,
                "host": "", "port": -1}
    return {"key": key, "error_code": 0, "error_message": None, **_node(session)}


async def init_producer_id_api(session: Session, body: Any, version: int) -> dict[str, Any]:
    """A producer id and epoch for an idempotent producer (no transactions: a
    transactional id is refused). A new producer gets a new id, epoch 0; ids are
    unique across restarts: the clock's milliseconds shifted left, plus a counter.

    A producer that sends its id and epoch (v3+, KIP-360: it recovers from an
    error) gets the same id with the next epoch when that epoch is the newest
    this listener knows for the id, so the batches its old epoch still has in
    flight are refused (INVALID_PRODUCER_EPOCH) instead of stored after newer
    ones. Otherwise (a stale epoch, an id not seen since the start, the last
    epoch) it gets a new id, epoch 0, as Kafka gives every idempotent producer."""
    if body.transactional_id:
        return {"error_code": ErrorCode.transactional_id_authorization_failed,
                "producer_id": -1, "producer_epoch": -1}
    broker = session.broker
    pid = int(getattr(body, "producer_id", -1))
    epoch = int(getattr(body, "producer_epoch", -1))
    if pid >= 0 and 0 <= epoch < MAX_EPOCH and broker.producer_epochs.get(pid) == epoch:
        broker.note_epoch(pid, epoch + 1)
        log.info("kafka: producer %d bumps its epoch to %d", pid, epoch + 1,
                 extra={"event": "kafka_producer_epoch", "peer": session.peer})
        return {"error_code": 0, "producer_id": pid, "producer_epoch": epoch + 1}
    base = int(broker.clock.time() * 1000) << 12
    broker.next_producer_id = max(broker.next_producer_id + 1, base)
    broker.note_epoch(broker.next_producer_id, 0)
    return {"error_code": 0, "producer_id": broker.next_producer_id, "producer_epoch": 0}
