"""A full disk at start-up (the simulated disk): the committed-offsets store's
compaction at open needs new space; without it the start goes on uncompacted."""

from __future__ import annotations

from pathlib import Path

import pytest

from runner.clock import ManualClock
from runner.log.offsets import OffsetStore
from runner.log.partition import TopicPartition
from runner.log.record import Fsync
from tests.faultfs import SimDisk

D = Path("/data/__consumer_offsets")


def test_offsets_open_on_a_full_disk_without_compacting(caplog: pytest.LogCaptureFixture,
                                                        ) -> None:
    disk = SimDisk()
    store = OffsetStore(D, fsync=Fsync.ALWAYS, clock=ManualClock(), fs=disk,
                        compact_after=10**9)
    tp = TopicPartition("t", 0)
    for i in range(300):  # 300 records for one live key: compacted at the next open
        store.commit({("g", tp): i})
    store.close()
    disk.capacity = disk._used()  # noqa: SLF001 - full
    again = OffsetStore(D, fsync=Fsync.ALWAYS, clock=ManualClock(), fs=disk)
    assert again.committed == {("g", tp): 299}
    assert any(r.getMessage().startswith(f"not compacting {D} at open: ")
               for r in caplog.records)
    again.close()
    disk.capacity = None
    third = OffsetStore(D, fsync=Fsync.ALWAYS, clock=ManualClock(), fs=disk)
    assert third.committed == {("g", tp): 299}
    assert third.size_bytes < again.size_bytes  # compacted once there is room
    third.close()
