"""Kafka consumer groups on the topology's handler-less groups, with real clients."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka import Consumer
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient
from kafka.errors import GroupAuthorizationFailedError

from tests.daemon.kafka.conftest import TOPOLOGY, KafkaDaemon, RawClient, request, response, until

pytestmark = [pytest.mark.e2e]

HANDLER_TOPOLOGY = TOPOLOGY + """\
  ledger-writer:
    topics: [ledger]
    handler: "handlers_k:noop"
"""
HANDLERS = "def noop(msg):\n    return None\n"


def _produce(d: KafkaDaemon, topic: str, n: int, tag: str) -> None:
    p = KafkaProducer(bootstrap_servers=d.bootstrap, acks="all")
    for i in range(n):
        p.send(topic, key=f"{tag}-{i}".encode(), value=f"{tag}-{i}".encode())
    p.flush()
    p.close()


class Member(threading.Thread):
    """One kafka-python consumer in the group, polling and committing in its thread."""

    def __init__(self, d: KafkaDaemon, group: str, seen: dict[str, list[int]], n: int,
                 **kw: Any) -> None:
        super().__init__(daemon=True)
        self.consumer = KafkaConsumer(bootstrap_servers=d.bootstrap, group_id=group,
                                      session_timeout_ms=6000, heartbeat_interval_ms=500,
                                      enable_auto_commit=False, max_poll_records=20, **kw)
        # Learn the topic's partitions before joining: kafka-python 3.0.12, joining first,
        # assigns nothing, rejoins when the metadata arrives and, now and then, stalls after
        # that second JoinGroup without ever sending its SyncGroup or a heartbeat (the daemon
        # log shows generation 2 formed, then the member timing out).
        assert self.consumer.partitions_for_topic("orders")
        self.consumer.subscribe(["orders"])
        self.seen, self.n = seen, n
        self.stop_now = False
        self.assigned: list[int] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.stop_now:
                batch = self.consumer.poll(timeout_ms=100)
                for recs in batch.values():
                    for r in recs:
                        self.seen.setdefault(r.value.decode(), []).append(self.n)
                if batch:
                    self.consumer.commit()
                self.assigned = sorted(tp.partition for tp in self.consumer.assignment())
        except BaseException as exc:  # reported by the test
            self.error = exc
        finally:
            self.consumer.close()

    def leave(self) -> None:
        self.stop_now = True
        self.join(30)


def _lag(d: KafkaDaemon, group: str) -> int:
    return int(d.ok("GET", f"/v1/groups/{group}")["lag"])


def test_three_consumers_share_partitions_and_rebalance_when_one_leaves(
        start_kafka_daemon: Callable[..., KafkaDaemon]) -> None:
    d = start_kafka_daemon()
    _produce(d, "orders", 90, "a")
    seen: dict[str, list[int]] = {}
    members = [Member(d, "billing", seen, i) for i in range(3)]
    try:
        for m in members:
            m.start()
        until(lambda: len(seen) == 90 and sorted(sum((m.assigned for m in members), []))
              == [0, 1, 2] and all(len(m.assigned) == 1 for m in members), 60)
        until(lambda: _lag(d, "billing") == 0)
        assert 'runner_consumer_group_members{group="billing"} 3.0' in d.metrics()
        status = {g["name"]: g for g in d.ok("GET", "/v1/status")["groups"]}
        assert status["billing"]["lag"] == 0
        kafka_members = sorted(status["billing"]["members"])
        assert len(kafka_members) == 3
        assert all(m.startswith("kafka-python") for m in kafka_members)  # client id - n - ms
        assert sorted(d.ok("GET", "/v1/groups/billing")["members"]) == kafka_members
        members[2].leave()
        _produce(d, "orders", 60, "b")
        until(lambda: sorted(members[0].assigned + members[1].assigned) == [0, 1, 2]
              and len(seen) == 150, 30)
        for m in members[:2]:
            m.leave()
    finally:
        for m in members:  # a failed wait must not leave clients polling a stopped daemon
            if m.is_alive():
                m.leave()
    assert [m.error for m in members] == [None, None, None]
    assert {v: owners for v, owners in seen.items() if len(owners) > 1} == {}
    until(lambda: _lag(d, "billing") == 0)
    metrics = d.metrics()
    for p in range(3):
        assert f'runner_consumer_group_lag{{group="billing",partition="{p}",topic="orders"}} 0.0' \
            in metrics
    assert "generation" in d.log() and "left the group" in d.log()


def test_committed_offsets_survive_a_restart(
        start_kafka_daemon: Callable[..., KafkaDaemon]) -> None:
    d = start_kafka_daemon()
    _produce(d, "orders", 30, "r")
    c = KafkaConsumer("orders", bootstrap_servers=d.bootstrap, group_id="billing",
                      enable_auto_commit=False, session_timeout_ms=6000)
    got: list[bytes] = []
    deadline = time.monotonic() + 30
    while len(got) < 30 and time.monotonic() < deadline:
        for recs in c.poll(timeout_ms=200).values():
            got.extend(r.value for r in recs)
    c.commit()
    committed = {p: c.committed(TopicPartition("orders", p)) for p in range(3)}
    c.close()
    assert len(got) == 30 and sum(committed.values()) == 30
    d.stop()
    d.start()
    _produce(d, "orders", 6, "after")
    c = KafkaConsumer("orders", bootstrap_servers=d.bootstrap, group_id="billing",
                      enable_auto_commit=False, session_timeout_ms=6000,
                      auto_offset_reset="earliest")
    assert {p: c.committed(TopicPartition("orders", p)) for p in range(3)} == committed
    again: list[bytes] = []
    deadline = time.monotonic() + 30
    while len(again) < 6 and time.monotonic() < deadline:
        for recs in c.poll(timeout_ms=200).values():
            again.extend(r.value for r in recs)
    c.close()
    assert sorted(again) == sorted(f"after-{i}".encode() for i in range(6))
    assert _lag(d, "billing") == 6  # read, not committed


def test_the_group_offset_reset_decides_where_a_new_group_starts(
        start_kafka_daemon: Callable[..., KafkaDaemon]) -> None:
    d = start_kafka_daemon()  # group `audit` reads `events` with offset_reset: latest
    _produce(d, "events", 5, "old")
    # the group's reset position was fixed at the log end when the daemon first saw it
    c = KafkaConsumer("events", bootstrap_servers=d.bootstrap, group_id="audit",
                      auto_offset_reset="earliest", enable_auto_commit=False)
    c.poll(timeout_ms=1000)
    _produce(d, "events", 3, "new")
    got: list[bytes] = []
    deadline = time.monotonic() + 20
    while len(got) < 8 and time.monotonic() < deadline:
        for recs in c.poll(timeout_ms=200).values():
            got.extend(r.value for r in recs)
        if len(got) >= 3 and time.monotonic() > deadline - 18:
            break
    c.close()
    assert got == [b"old-0", b"old-1", b"old-2", b"old-3", b"old-4", b"new-0", b"new-1",
                   b"new-2"][-len(got):]
    assert b"new-2" in got


def test_a_handler_group_and_an_undeclared_group_refuse_kafka_members(
        start_kafka_daemon: Callable[..., KafkaDaemon]) -> None:
    d = start_kafka_daemon(HANDLER_TOPOLOGY, modules={"handlers_k": HANDLERS})
    for group in ("ledger-writer", "nobody-declared-this"):
        c = KafkaConsumer("ledger", bootstrap_servers=d.bootstrap, group_id=group,
                          enable_auto_commit=False)
        with pytest.raises(GroupAuthorizationFailedError):
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                c.poll(timeout_ms=200)
        c.close()
    log = d.log()
    assert ("consumer group 'ledger-writer' is run by this daemon's handler handlers_k:noop; "
            "Kafka clients cannot be its members") in log
    assert "consumer group 'nobody-declared-this' is not declared in the topology" in log


def test_confluent_kafka_cooperative_sticky_members_split_and_commit(
        start_kafka_daemon: Callable[..., KafkaDaemon]) -> None:
    d = start_kafka_daemon()
    tag = uuid.uuid4().hex[:6]
    _produce(d, "orders", 60, tag)
    conf = {"bootstrap.servers": d.bootstrap, "group.id": "billing",
            "partition.assignment.strategy": "cooperative-sticky",
            "auto.offset.reset": "earliest", "session.timeout.ms": 6000,
            "heartbeat.interval.ms": 500, "auto.commit.interval.ms": 200}
    consumers = [Consumer(conf), Consumer(conf)]
    for c in consumers:
        c.subscribe(["orders"])
    values: list[bytes] = []
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline:
        for c in consumers:
            for m in c.consume(50, timeout=0.1):
                assert m.error() is None, m.error()
                values.append(m.value())
        parts = [sorted(tp.partition for tp in c.assignment()) for c in consumers]
        if len(values) >= 60 and sorted(sum(parts, [])) == [0, 1, 2] and all(parts):
            break
    until(lambda: [c.poll(0.05) for c in consumers] and _lag(d, "billing") == 0)
    assert sorted(values) == sorted(f"{tag}-{i}".encode() for i in range(60))
    assert all(parts) and sorted(sum(parts, [])) == [0, 1, 2]
    for c in consumers:
        c.close()


def test_admin_client_lists_and_describes_groups(
        start_kafka_daemon: Callable[..., KafkaDaemon]) -> None:
    d = start_kafka_daemon(HANDLER_TOPOLOGY, modules={"handlers_k": HANDLERS})
    seen: dict[str, list[int]] = {}
    m = Member(d, "billing", seen, 0)
    m.start()
    try:
        until(lambda: m.error is not None or m.assigned == [0, 1, 2], 60)
        assert m.error is None, repr(m.error)
        admin = KafkaAdminClient(bootstrap_servers=d.bootstrap)
        try:
            listed = {g["group_id"]: g for g in admin.list_groups()}
            assert {"billing", "audit", "ledger-writer"} <= set(listed)
            stable = {g["group_id"] for g in admin.list_groups(states_filter=["Stable"])}
            assert "billing" in stable and "audit" not in stable
            desc = admin.describe_groups(["billing"])["billing"]
            assert desc["group_state"] == "Stable" and desc["protocol_data"] == "range"
            assert len(desc["members"]) == 1
            offsets = admin.list_group_offsets({"billing": None})
        finally:
            admin.close()
    finally:
        m.leave()
    assert m.error is None
    assert offsets, offsets


def _commit(kd: KafkaDaemon, group: str, offsets: dict[tuple[str, int], int], *,
            generation: int = -1, member: str = "") -> dict[tuple[str, int], int]:
    """A raw OffsetCommit v8; the error code per partition."""
    from kio.schema.offset_commit.v8.request import (
        OffsetCommitRequest,
        OffsetCommitRequestPartition,
        OffsetCommitRequestTopic,
    )
    from kio.schema.offset_commit.v8.response import OffsetCommitResponse

    topics: dict[str, list[OffsetCommitRequestPartition]] = {}
    for (t, p), off in offsets.items():
        topics.setdefault(t, []).append(OffsetCommitRequestPartition(
            partition_index=p, committed_offset=off, committed_metadata=None))
    body = OffsetCommitRequest(group_id=group, generation_id_or_member_epoch=generation,
                               member_id=member, group_instance_id=None,
                               topics=tuple(OffsetCommitRequestTopic(name=t, partitions=tuple(ps))
                                            for t, ps in topics.items()))
    raw = RawClient(kd.kafka_port)
    raw.send(request(8, 8, body))
    answer = response(raw.receive() or b"", OffsetCommitResponse, flexible_header=True)
    raw.close()
    return {(t.name, p.partition_index): int(p.error_code)
            for t in answer.topics for p in t.partitions}


def test_bad_commits_are_refused_with_kafka_errors_and_log_lines(kd: KafkaDaemon) -> None:
    codes = _commit(kd, "billing", {("events", 0): 0, ("orders", 0): 10**9, ("orders", 1): 0})
    assert codes == {("events", 0): 3, ("orders", 0): 1, ("orders", 1): 0}
    assert _commit(kd, "billing", {("orders", 1): 0}, generation=5, member="ghost") == {
        ("orders", 1): 25}  # UNKNOWN_MEMBER_ID
    assert _commit(kd, "ledger-nope", {("orders", 1): 0}) == {("orders", 1): 30}
    log = kd.log()
    assert "group billing cannot commit events/0: the group does not read it" in log
    assert "cannot commit offset 1000000000 on orders/0: outside 0.." in log
    assert "consumer group 'ledger-nope' is not declared in the topology" in log
