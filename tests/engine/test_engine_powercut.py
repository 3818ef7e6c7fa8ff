"""The engine under power cuts: the daemon's real workload (first start, appends,
publishes through an exchange, pulls and acks, exactly-once steps, group
commits, compaction, retention, segment rolls, restart) runs on a simulated disk
(`tests.faultfs.SimDisk`) that loses power at a chosen changing file call.
After each cut, recovery starts and finds everything acknowledged before it
(only synced bytes and synced directory entries survive, or a torn mix)."""

from __future__ import annotations

import collections
import contextlib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from runner.clock import ManualClock
from runner.engine import Engine, FsyncPolicy, OutMessage, OutRecord, Step, TopicPartition
from runner.topology.model import (
    Binding,
    ConsumerGroup,
    Exchange,
    ExchangeType,
    Queue,
    Retention,
    Topic,
    Topology,
)
from tests.faultfs import SimDisk

D = Path("/srv/data")
MAKE_TEST_CUTS = 100  # spread evenly over the changing file calls; torture: 600


def _topology() -> Topology:
    return Topology(
        topics=(
            ("t", Topic("t", partitions=2, segment_bytes=1200,
                        retention=Retention(time_s=None, bytes=4000))),
            ("c", Topic("c", compact=True, delete=False, segment_bytes=900)),
            ("audit", Topic("audit", segment_bytes=1500)),
        ),
        exchanges=(("fan", Exchange("fan", ExchangeType.FANOUT)),),
        queues=(("q", Queue("q")), ("in", Queue("in")), ("q2", Queue("q2"))),
        bindings=(Binding("fan", queue="q2"), Binding("fan", topic="t")),
        consumer_groups=(("g", ConsumerGroup("g", ("t",))),),
    )


@dataclass
class Acked:
    records: dict[tuple[int, int], bytes] = field(default_factory=dict)  # topic t
    published: set[bytes] = field(default_factory=set)  # queue q
    settled: set[bytes] = field(default_factory=set)  # acked in q
    settling: set[bytes] = field(default_factory=set)  # an ack in flight: may take effect
    steps: set[bytes] = field(default_factory=set)  # exactly-once inputs applied
    fanned: set[bytes] = field(default_factory=set)  # into q2 through the exchange
    latest: dict[bytes, int] = field(default_factory=dict)  # topic c: key -> newest n
    committed: dict[int, int] = field(default_factory=dict)  # group g, topic t


def _open(disk: SimDisk, clock: ManualClock) -> Engine:
    return Engine.open(_topology(), D, fsync=FsyncPolicy.ALWAYS, clock=clock, fs=disk)


def _workload(disk: SimDisk, acked: Acked) -> None:
    clock = ManualClock()
    engine = _open(disk, clock)
    try:
        for i in range(24):
            if i == 12:  # restart
                engine.close()
                engine = _open(disk, clock)
            body = f"t-{i}".encode() * 12
            for (p, off), v in zip(engine.append("t", [OutRecord(value=body)]), [body],
                                   strict=True):
                acked.records[(p, off)] = v
            qb = [f"q-{i}-{j}".encode() * 10 for j in range(2)]
            engine.publish_to_queue("q", [OutMessage(body=b) for b in qb])
            acked.published.update(qb)
            fb = f"f-{i}".encode()
            engine.publish("fan", [OutMessage(body=fb)])
            acked.fanned.add(fb)
            if i % 2 == 1:
                for d in engine.pull("q", 1, lease_s=60.0, consumer_id="c"):
                    acked.settling.add(d.body)
                    assert engine.ack("q", [d.delivery_id]) == []
                    acked.settled.add(d.body)
            if i % 3 == 0:
                inb = f"in-{i}".encode()
                engine.publish_to_queue("in", [OutMessage(body=inb)])
                for d in engine.pull("in", 1, lease_s=60.0, consumer_id="s"):
                    step = Step(publishes=[("fan", [OutMessage(body=b"out-" + d.body)])],
                                appends=[("audit", [OutRecord(value=b"out-" + d.body)])])
                    step.acks.append(("in", d.delivery_id))
                    engine.commit_step(step)
                    acked.steps.add(d.body)
            key = f"k{i % 4}".encode()
            engine.append("c", [OutRecord(key=key, value=str(i).encode() * 20)])
            acked.latest[key] = i
            ends = {p.partition: p.log_end_offset for p in engine.partitions("t")}
            engine.commit("g", {TopicPartition("t", p): e for p, e in ends.items()})
            acked.committed.update(ends)
            clock.advance(1.0)
            engine.tick()
            cleaner = engine.store.cleaner
            if cleaner is not None:
                cleaner.idle()
    finally:
        with contextlib.suppress(Exception):
            engine.close()


def _bodies(engine: Engine, queue: str) -> collections.Counter[bytes]:
    return collections.Counter(d.body for d in engine.peek(queue, 100_000))


def _values(engine: Engine, topic: str) -> list[tuple[int, int, bytes | None, bytes | None]]:
    out = []
    for p in engine.partitions(topic):
        off = p.log_start_offset
        while off < p.log_end_offset:
            recs, off = engine.read(topic, p.partition, off, max_records=1000)
            out += [(r.partition, r.offset, r.key, r.value) for r in recs]
    return out


def _verify(disk: SimDisk, acked: Acked, why: str) -> None:
    engine = _open(disk, ManualClock())
    try:
        starts = {p.partition: p.log_start_offset for p in engine.partitions("t")}
        got = {(p, off): v for p, off, _k, v in _values(engine, "t")}
        for (p, off), v in acked.records.items():
            if off >= starts[p]:
                assert got.get((p, off)) == v, (why, "t", p, off)
        q = _bodies(engine, "q")
        assert max(q.values(), default=1) == 1, (why, "q duplicates")
        assert acked.published - acked.settled - acked.settling <= set(q), (why, "q lost")
        assert not acked.settled & set(q), (why, "q settled came back")
        inq = _bodies(engine, "in")
        assert not acked.steps & set(inq), (why, "step input came back")
        q2 = _bodies(engine, "q2")
        assert max(q2.values(), default=1) == 1, (why, "q2 duplicates")
        assert {b"out-" + b for b in acked.steps} | acked.fanned <= set(q2), (why, "q2 lost")
        audit = collections.Counter(v for _p, _o, _k, v in _values(engine, "audit"))
        assert {b"out-" + b for b in acked.steps} <= set(audit), (why, "audit lost")
        assert max(audit.values(), default=1) == 1, (why, "audit duplicates")
        newest: dict[bytes, int] = {}
        for _p, _o, k, v in _values(engine, "c"):
            assert k is not None and v is not None
            newest[k] = int(v[: len(v) // 20])
        for k, n in acked.latest.items():
            assert newest.get(k, -1) >= n, (why, "c", k)
        for p, off in acked.committed.items():
            assert engine.position("g", TopicPartition("t", p)) >= off, (why, "g", p)
        # the recovered engine goes on
        engine.append("t", [OutRecord(value=b"after")])
    finally:
        engine.close()


def _run(cut: int | None) -> SimDisk:
    disk = SimDisk(cut_at=cut)
    acked = Acked()
    try:
        _workload(disk, acked)
    except Exception:
        if not disk.dead:
            raise
    if cut is not None:
        _verify(disk.crash(), acked, f"cut {cut}")
        _verify(disk.crash(torn=True, seed=cut), acked, f"cut {cut} torn")
    return disk


def _cuts(count: int) -> list[int]:
    total = _run(None).changes
    assert total > 1000  # the workload reaches rolls, compaction, retention, restart
    return sorted({1 + (total - 1) * i // (count - 1) for i in range(count)})


def test_the_workload_without_a_cut_is_verified() -> None:
    disk = SimDisk()
    acked = Acked()
    _workload(disk, acked)
    assert acked.steps and acked.settled and acked.committed
    files = disk.tree(D)
    assert sum(1 for f in files if f.startswith("/topics/t-0/") and f.endswith(".log")) > 1
    _verify(disk.crash(), acked, "no cut")


def test_acknowledged_work_survives_a_power_cut_at_sampled_cut_points() -> None:
    for cut in _cuts(MAKE_TEST_CUTS):
        _run(cut)


@pytest.mark.torture
@pytest.mark.timeout(3600)
def test_acknowledged_work_survives_a_power_cut_at_many_cut_points() -> None:
    for cut in _cuts(600):
        _run(cut)
