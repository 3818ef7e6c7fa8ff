"""StepJournal: durable write-ahead steps, done marks, replay after restart."""

from __future__ import annotations

from pathlib import Path

from runner.clock import ManualClock
from runner.log.journal import StepJournal
from runner.log.record import Fsync


def test_pending_lists_written_but_not_done_steps(tmp_path: Path) -> None:
    j = StepJournal(tmp_path / "j", clock=ManualClock())
    a = j.write(b"step a")
    b = j.write(b"step b")
    c = j.write(b"step c")
    j.mark_done(b)
    assert j.pending() == [(a, b"step a"), (c, b"step c")]
    j.close()
    again = StepJournal(tmp_path / "j", clock=ManualClock())
    assert again.pending() == [(a, b"step a"), (c, b"step c")]
    again.mark_done(a, c)
    assert again.pending() == []
    d = again.write(b"")
    assert d > c  # step ids never repeat
    again.close()
    third = StepJournal(tmp_path / "j", clock=ManualClock())
    assert third.pending() == [(d, b"")]
    third.close()


def test_done_steps_are_trimmed(tmp_path: Path) -> None:
    j = StepJournal(tmp_path / "j", clock=ManualClock(), fsync=Fsync.NEVER, segment_bytes=2000)
    keep = j.write(b"x" * 100)
    for _ in range(100):
        j.mark_done(j.write(b"y" * 100))
    big = j.size_bytes
    assert big > 10_000  # the pending step pins everything after it
    j.mark_done(keep)
    assert j.size_bytes < 2500
    assert j.pending() == []
    j.close()
    again = StepJournal(tmp_path / "j", clock=ManualClock())
    assert again.pending() == []
    again.close()


def test_next_id_is_what_write_returns(tmp_path: Path) -> None:
    j = StepJournal(tmp_path / "j", clock=ManualClock(), fsync=Fsync.NEVER)
    expected = j.next_id
    assert j.write(b"a") == expected
    j.mark_done(expected)
    assert j.write(b"b") == j.next_id - 1
    j.close()
