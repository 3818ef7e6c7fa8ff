"""A step with an output a full `reject-publish` queue would refuse is refused
whole, before anything is written: no topic record, no ack, no journal entry."""

from __future__ import annotations

from pathlib import Path

import pytest

from runner.engine import Engine, FsyncPolicy, OutMessage, OutRecord, Step, TopicPartition
from runner.errors import Refused
from runner.topology.model import (
    Binding,
    ConsumerGroup,
    Exchange,
    ExchangeType,
    Overflow,
    Queue,
    Topic,
    Topology,
)

FULL = ("queue 'small' has no room for this step's 1 message(s) (max_length 1, overflow "
        "reject-publish): step refused, nothing stored")


def _engine(tmp_path: Path, overflow: Overflow = Overflow.REJECT_PUBLISH) -> Engine:
    topo = Topology(
        topics=(("src", Topic("src")), ("t", Topic("t"))),
        exchanges=(("x", Exchange("x", ExchangeType.FANOUT)),),
        queues=(("in", Queue("in")),
                ("small", Queue("small", max_length=1, overflow=overflow))),
        bindings=(Binding("x", queue="small"), Binding("x", topic="t")),
        consumer_groups=(("g", ConsumerGroup("g", ("src",))),),
    )
    e = Engine.open(topo, tmp_path, fsync=FsyncPolicy.NEVER)
    e.publish_to_queue("small", [OutMessage(b"filler")])
    e.publish_to_queue("in", [OutMessage(b"input")])
    e.append("src", [OutRecord(b"r")])
    return e


def test_a_refused_output_leaves_nothing_written(tmp_path: Path) -> None:
    e = _engine(tmp_path)
    try:
        (d,) = e.pull("in", 1, lease_s=60, consumer_id="c")
        sid = e.journal_next_id()
        step = Step(acks=[("in", d.delivery_id)], commits=[("g", TopicPartition("src", 0), 1)],
                    publishes=[("x", [OutMessage(b"out")])],
                    appends=[("t", [OutRecord(b"audit")])])
        with pytest.raises(Refused) as err:
            e.commit_step(step)
        assert str(err.value) == FULL
        assert e.read("t", 0, 0)[0] == []
        assert e.position("g", TopicPartition("src", 0)) == 0
        assert e.queue_info("in").unacked == 1
        assert e.journal_next_id() == sid
        # room again: the same step goes through once
        (f,) = e.pull("small", 1, lease_s=60, consumer_id="c")
        e.ack("small", [f.delivery_id])
        e.commit_step(step)
        assert [r.value for r in e.read("t", 0, 0)[0]] == [b"out", b"audit"]
        assert e.position("g", TopicPartition("src", 0)) == 1
        assert e.queue_info("in").unacked == 0 and e.queue_info("small").ready == 1
    finally:
        e.close()


def test_a_queues_only_step_is_refused_whole_too(tmp_path: Path) -> None:
    e = _engine(tmp_path, Overflow.REJECT_PUBLISH_DLX)
    try:
        (d,) = e.pull("in", 1, lease_s=60, consumer_id="c")
        with pytest.raises(Refused, match=r"overflow reject-publish-dlx\): step refused"):
            e.commit_step(Step(acks=[("in", d.delivery_id)],
                               queue_puts=[("small", [OutMessage(b"o")])]))
        assert e.queue_info("in").unacked == 1
        assert e.queue_info("small").ready == 1
        assert e.stats().queues["small"].rejected_publishes == 0
    finally:
        e.close()


def test_a_drop_head_queue_takes_the_step(tmp_path: Path) -> None:
    e = _engine(tmp_path, Overflow.DROP_HEAD)
    try:
        (d,) = e.pull("in", 1, lease_s=60, consumer_id="c")
        e.commit_step(Step(acks=[("in", d.delivery_id)], publishes=[("x", [OutMessage(b"o")])]))
        assert [m.body for m in e.peek("small", 5)] == [b"o"]
    finally:
        e.close()
