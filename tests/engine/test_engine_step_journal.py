"""The one step journal: what an exactly-once step costs in fsyncs, replay of a step
cut short, and the old broker journal of a data dir written before it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from runner import jsontext
from runner.clock import ManualClock
from runner.engine import Engine, FsyncPolicy, OutMessage, OutRecord, Step, TopicPartition
from runner.engine.steps import encode_message
from runner.fs import LOCAL
from runner.log.record import Fsync
from runner.log.segment import SegmentedLog
from runner.topology.model import (
    Binding,
    ConsumerGroup,
    Exchange,
    ExchangeType,
    Queue,
    Topic,
    Topology,
)

TOPO = Topology(
    topics=(("src", Topic("src")), ("out", Topic("out"))),
    exchanges=(("onward", Exchange("onward", ExchangeType.DIRECT)),),
    queues=(("in", Queue("in")), ("outq", Queue("outq"))),
    bindings=(Binding("onward", queue="outq", routing_key="k"),),
    consumer_groups=(("g", ConsumerGroup("g", ("src",))),),
)


class CountingFs:
    """The real file system; counts fdatasyncs (`sync`) by file."""

    def __init__(self) -> None:
        self.synced: list[str] = []
        self._paths: dict[int, str] = {}

    def open(self, path: Path, *, create: bool = False, truncate: bool = False) -> int:
        fd = LOCAL.open(path, create=create, truncate=truncate)
        self._paths[fd] = str(path)
        return fd

    def sync(self, fd: int) -> None:
        self.synced.append(self._paths.get(fd, "?"))
        LOCAL.sync(fd)

    def __getattr__(self, name: str) -> Any:
        return getattr(LOCAL, name)


@pytest.fixture()
def counted(tmp_path: Path) -> Iterator[tuple[Engine, CountingFs]]:
    fs = CountingFs()
    engine = Engine.open(TOPO, tmp_path, fsync=FsyncPolicy.ALWAYS, clock=ManualClock(),
                         fs=fs)  # type: ignore[arg-type]
    yield engine, fs
    engine.close()


def _log_dirs(synced: list[str], root: Path) -> list[str]:
    return [str(Path(p).parent.relative_to(root)) for p in synced]


def test_a_queue_to_queue_step_costs_three_fsyncs_one_per_log(
        counted: tuple[Engine, CountingFs], tmp_path: Path) -> None:
    engine, fs = counted
    engine.publish_to_queue("in", [OutMessage(b"a"), OutMessage(b"b")])
    for body in (b"a", b"b"):
        (d,) = engine.pull("in", 1, lease_s=60, consumer_id="c")
        fs.synced.clear()
        engine.commit_step(Step(acks=[("in", d.delivery_id)],
                                publishes=[("onward", [OutMessage(body, routing_key="k")])]))
        # the journal record, then the output queue and the input queue once each (it
        # was 4: the broker journaled the step again inside the engine's step)
        assert _log_dirs(fs.synced, tmp_path) == ["engine_steps", "queues/outq", "queues/in"]
    assert [m.body for m in engine.peek("outq", 5)] == [b"a", b"b"]
    assert engine.queue_info("in").unacked == 0


def test_outputs_and_ack_in_one_queue_share_its_fsync(
        counted: tuple[Engine, CountingFs], tmp_path: Path) -> None:
    engine, fs = counted
    engine.publish_to_queue("in", [OutMessage(b"a")])
    (d,) = engine.pull("in", 1, lease_s=60, consumer_id="c")
    fs.synced.clear()
    engine.commit_step(Step(acks=[("in", d.delivery_id)],
                            queue_puts=[("in", [OutMessage(b"again"), OutMessage(b"more")])]))
    assert _log_dirs(fs.synced, tmp_path) == ["engine_steps", "queues/in"]
    assert [m.body for m in engine.peek("in", 5)] == [b"again", b"more"]


def test_a_step_across_topics_and_queues_syncs_each_log_once(
        counted: tuple[Engine, CountingFs], tmp_path: Path) -> None:
    engine, fs = counted
    engine.append("src", [OutRecord(value=b"r")])
    engine.publish_to_queue("in", [OutMessage(b"m")])
    (d,) = engine.pull("in", 1, lease_s=60, consumer_id="c")
    fs.synced.clear()
    engine.commit_step(Step(
        acks=[("in", d.delivery_id)], commits=[("g", TopicPartition("src", 0), 1)],
        publishes=[("onward", [OutMessage(b"o", routing_key="k")])],
        appends=[("out", [OutRecord(value=b"x"), OutRecord(value=b"y")])]))
    # journal; then the topic, the queues, the offsets: each once (it was 6)
    assert _log_dirs(fs.synced, tmp_path) == [
        "engine_steps", "topics/out-0", "queues/outq", "queues/in", "__consumer_offsets"]
    assert engine.position("g", TopicPartition("src", 0)) == 1


def test_a_journaled_step_not_applied_is_applied_once_at_open(tmp_path: Path) -> None:
    engine = Engine.open(TOPO, tmp_path, fsync=FsyncPolicy.ALWAYS)
    engine.publish_to_queue("in", [OutMessage(b"m")])
    (d,) = engine.pull("in", 1, lease_s=60, consumer_id="c")
    step = Step(acks=[("in", d.delivery_id)],
                publishes=[("onward", [OutMessage(b"o", routing_key="k",
                                                  headers={"bin": b"\x01", "t": [2]})])],
                appends=[("out", [OutRecord(value=b"x")])])
    # the step is journaled, then the process dies before applying it
    sid = engine.journal.next_id
    engine.journal.write(jsontext.dumps(engine.steps._document(sid, step)))  # noqa: SLF001
    engine.close()
    for _ in range(2):  # applied at the first open, not again at the second
        engine = Engine.open(TOPO, tmp_path, fsync=FsyncPolicy.ALWAYS)
        (got,) = engine.peek("outq", 5)
        assert (got.body, got.headers["bin"], got.headers["t"]) == (b"o", b"\x01", [2])
        assert engine.queue_info("in").ready == engine.queue_info("in").unacked == 0
        records, _ = engine.read("out", 0, 0)
        assert [r.value for r in records] == [b"x"]
        assert engine.journal.pending() == []
        engine.close()


def test_a_pending_step_of_the_old_broker_journal_is_applied_once_and_the_journal_removed(
        tmp_path: Path) -> None:
    engine = Engine.open(TOPO, tmp_path, fsync=FsyncPolicy.ALWAYS)
    engine.publish_to_queue("in", [OutMessage(b"m")])
    (d,) = engine.pull("in", 1, lease_s=60, consumer_id="c")
    engine.close()
    # what the broker's own journal (`steps/`) held after a crash mid-step
    old = SegmentedLog(tmp_path / "steps", fsync=Fsync.ALWAYS, clock=ManualClock())
    doc = {"a": [["in", d.delivery_id]],
           "x": [["onward", [encode_message(OutMessage(b"o", routing_key="k",
                                                       message_id="__step-0-0"))]]],
           "q": [["gone", []]]}
    old.append([(b"T", jsontext.dumps(doc), (), 0)])
    old.close()
    for _ in range(2):
        engine = Engine.open(TOPO, tmp_path, fsync=FsyncPolicy.ALWAYS)
        assert [m.body for m in engine.peek("outq", 5)] == [b"o"]
        assert engine.queue_info("in").ready == engine.queue_info("in").unacked == 0
        assert not (tmp_path / "steps").exists()
        engine.close()

