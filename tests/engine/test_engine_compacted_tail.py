"""Engine.read moves past offsets compaction removed at the end of a partition
(through Store.read_from), so a reader at a compacted tail is not stuck."""

from __future__ import annotations

from pathlib import Path

from runner.clock import ManualClock, now_ms
from runner.engine import Engine, FsyncPolicy, OutRecord
from runner.log.compaction import compact
from runner.topology.model import Topic, Topology

DAY_MS = 86_400_000


def test_a_read_at_a_compacted_tail_returns_the_log_end(tmp_path: Path) -> None:
    clock = ManualClock()
    topo = Topology(topics=(("c", Topic("c", compact=True, delete=False, segment_bytes=1_000)),))
    e = Engine.open(topo, tmp_path, fsync=FsyncPolicy.NEVER, clock=clock)
    try:
        e.append("c", [OutRecord(b"v", key=b"keep")])
        e.append("c", [OutRecord(b"v" * 50, key=b"gone")])
        e.append("c", [OutRecord(None, key=b"gone")])
        wal = e.store.partition("c", 0).log
        wal.roll()
        for _ in range(2):  # a tombstone goes a delete retention after its first cleaning
            compact(wal, now_ms=now_ms(clock), delete_retention_ms=DAY_MS)
            clock.advance(DAY_MS / 1000 + 1)
        recs, nxt = e.read("c", 0, 0)
        assert ([r.key for r in recs], nxt) == ([b"keep"], 3)
        assert e.read("c", 0, 1) == ([], 3)
        e.append("c", [OutRecord(b"n", key=b"new")])
        recs, nxt = e.read("c", 0, 1)
        assert ([(r.offset, r.key) for r in recs], nxt) == ([(3, b"new")], 4)
    finally:
        e.close()
