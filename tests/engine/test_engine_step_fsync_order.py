"""The order of a step's fsyncs under `--fsync interval` (runner/engine/steps.py).

Three power cuts the cut-point torture test (`test_engine_powercut_relaxed.py`,
`-m torture`) hit by chance, made deterministic: the background flusher
threads are stopped and the test plays the flusher where it matters (it
syncs a log at any moment, in any order).

1. A journaled step survived while an earlier unsynced append to the same
   partition was lost: the replayed step's record landed on the hole (at the
   lost record's offset: not a prefix of what was written). Failed at cut 383
   (and 251, torn) with the journal synced before the partition.
2. The flusher synced a step's output while neither its journal record nor its
   input's ack was synced: the input came back with its output stored (half a
   step; cut 176, torn).
3. The step's done mark reached the disk (synced with the journal) and its
   input's ack too, but not its output: the output was lost for good.

And every cut point inside one step, which fails when any one of the three
orders in `StepLog.commit` is taken out (checked by hand: without the logs
before the record, without the record before the outputs; the done-mark
order fails test 3).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

from runner.clock import ManualClock
from runner.engine import Engine, FsyncPolicy, OutMessage, OutRecord, Step
from tests.engine.test_engine_powercut import _bodies, _topology, _values
from tests.faultfs import SimDisk

D = Path("/srv/data")


def _open(disk: SimDisk, clock: ManualClock) -> Engine:
    return Engine.open(_topology(), D, fsync=FsyncPolicy.INTERVAL, clock=clock, fs=disk)


def _quiet(engine: Engine) -> Engine:
    """No background fsync: only the engine's own calls and the test's sync."""
    assert engine.store.flusher is not None and engine.broker.flusher is not None
    engine.store.flusher.close()
    engine.broker.flusher.close()
    return engine


def _synced_now(engine: Engine, disk: SimDisk, clock: ManualClock) -> None:
    """A flush point: every log synced."""
    clock.advance(1.0)
    engine.flush()
    engine.tick()  # the step journal's interval sync
    assert not [p for p in disk.unsynced() if p.endswith(".log")]


def _step(engine: Engine, appends: list[tuple[str, list[OutRecord]]]) -> bytes:
    (d,) = engine.pull("in", 1, lease_s=60.0, consumer_id="s")
    step = Step(appends=appends)
    step.acks.append(("in", d.delivery_id))
    engine.commit_step(step)
    return d.body


def _partition(engine: Engine, topic: str, p: int) -> list[bytes]:
    return [v for q, _o, _k, v in _values(engine, topic) if q == p and v is not None]


@pytest.mark.parametrize("torn", [False, True], ids=["synced", "torn"])
def test_a_replayed_step_never_lands_on_a_lost_append_of_its_partition(torn: bool) -> None:
    disk = SimDisk()
    clock = ManualClock()
    engine = _quiet(_open(disk, clock))
    try:
        engine.append("t", [OutRecord(value=b"kept", partition=0)])
        engine.append("audit", [OutRecord(value=b"kept")])
        engine.publish_to_queue("in", [OutMessage(body=b"in-1")])
        _synced_now(engine, disk, clock)
        # acknowledged at offset 1 after the last flush: a power cut may lose it
        (off,) = [o for _p, o in engine.append("t", [OutRecord(value=b"late", partition=0)])]
        assert off == 1
        _step(engine, [("t", [OutRecord(value=b"out-in-1", partition=0)])])
        written = [b"kept", b"late", b"out-in-1"]
        survived = disk.crash(torn=torn, seed=3)
    finally:
        with contextlib.suppress(Exception):
            engine.close()
    again = _open(survived, ManualClock())
    try:
        # the step's record was durable when commit_step returned, and only
        # after the append before it: all of it, in place (before the fix:
        # [kept, out-in-1], the step's record on the lost one's offset)
        assert _partition(again, "t", 0) == written
        assert b"in-1" not in _bodies(again, "in")
    finally:
        again.close()


@pytest.mark.parametrize("torn", [False, True], ids=["synced", "torn"])
def test_the_flusher_never_makes_a_step_output_durable_before_the_step(torn: bool) -> None:
    disk = SimDisk()
    clock = ManualClock()
    engine = _quiet(_open(disk, clock))
    try:
        engine.publish_to_queue("in", [OutMessage(body=b"in-1"), OutMessage(body=b"in-2")])
        _step(engine, [("audit", [OutRecord(value=b"out-in-1")])])
        _synced_now(engine, disk, clock)
        assert _step(engine, [("audit", [OutRecord(value=b"out-in-2")])]) == b"in-2"
        # the store's flusher reaches the topic before the broker's reaches the
        # queue (two threads, in any order)
        engine.store.partition("audit", 0).log.sync()
        survived = disk.crash(torn=torn, seed=1)
    finally:
        with contextlib.suppress(Exception):
            engine.close()
    again = _open(survived, ManualClock())
    try:
        audit = [v for _p, _o, _k, v in _values(again, "audit")]
        assert b"out-in-2" in audit
        # the step is whole: its input is not back (before the fix: back, with
        # its output stored)
        assert b"in-2" not in _bodies(again, "in")
        assert audit.count(b"out-in-2") == 1
    finally:
        again.close()


@pytest.mark.parametrize("torn", [False, True], ids=["synced", "torn"])
def test_a_step_is_marked_done_only_after_its_outputs_are_durable(torn: bool) -> None:
    disk = SimDisk()
    clock = ManualClock()
    engine = _quiet(_open(disk, clock))
    try:
        engine.publish_to_queue("in", [OutMessage(body=b"in-1")])
        engine.append("audit", [OutRecord(value=b"kept")])
        _synced_now(engine, disk, clock)
        _step(engine, [("audit", [OutRecord(value=b"out-in-1")])])
        clock.advance(1.0)
        # the broker's flusher syncs the input's queue, the tick the journal
        # (record and done mark); the store's flusher has not reached the topic
        engine.broker.journals["in"].log.sync()
        engine.tick()
        survived = disk.crash(torn=torn, seed=7)
    finally:
        with contextlib.suppress(Exception):
            engine.close()
    again = _open(survived, ManualClock())
    try:
        # before the fix: in-1 settled, its step done, and out-in-1 gone for good
        assert b"in-1" not in _bodies(again, "in")
        assert [v for _p, _o, _k, v in _values(again, "audit")] == [b"kept", b"out-in-1"]
    finally:
        again.close()


def _one_step(disk: SimDisk, marks: list[int]) -> None:
    """Plain writes after the last flush, then one step touching their logs;
    `marks` gets the disk's change count before and after the step."""
    clock = ManualClock()
    engine = _quiet(_open(disk, clock))
    try:
        engine.append("t", [OutRecord(value=b"kept", partition=0)])
        engine.append("audit", [OutRecord(value=b"kept")])
        engine.publish_to_queue("in", [OutMessage(body=b"in-1")])
        _synced_now(engine, disk, clock)
        engine.append("t", [OutRecord(value=b"late", partition=0)])
        engine.append("audit", [OutRecord(value=b"late")])
        marks.append(disk.changes)
        _step(engine, [("t", [OutRecord(value=b"out-in-1", partition=0)]),
                       ("audit", [OutRecord(value=b"out-in-1")])])
        marks.append(disk.changes)
    finally:
        with contextlib.suppress(Exception):
            engine.close()


def test_a_power_cut_anywhere_in_a_step_keeps_it_whole_and_in_place() -> None:
    """Every cut point inside one step (the three orders at once)."""
    marks: list[int] = []
    _one_step(SimDisk(), marks)
    before, after = marks
    assert after - before > 5
    written = [b"kept", b"late", b"out-in-1"]
    for cut in range(before + 1, after + 2):
        disk = SimDisk(cut_at=cut)
        with contextlib.suppress(Exception):  # the cut: PowerCut, LogFailed
            _one_step(disk, [])
        assert disk.dead
        for torn in (False, True):
            why = (cut, torn)
            again = _open(disk.crash(torn=torn, seed=cut), ManualClock())
            try:
                t0 = _partition(again, "t", 0)
                audit = _partition(again, "audit", 0)
                assert t0 == written[:len(t0)], (why, t0)  # in place, no hole
                assert audit == written[:len(audit)], (why, audit)
                back = b"in-1" in _bodies(again, "in")
                assert back == (b"out-in-1" not in t0) == (b"out-in-1" not in audit), (
                    why, "half a step", back, t0, audit)
            finally:
                again.close()
