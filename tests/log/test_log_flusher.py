"""Flusher: the interval policy's background fsync."""

from __future__ import annotations

import time
from pathlib import Path

from runner.clock import SystemClock
from runner.log.flusher import Flusher
from runner.log.record import Fsync
from runner.log.segment import SegmentedLog
from runner.log.store import AppendRecord, Store
from runner.topology.model import Topic


def wait_until(cond: object, timeout: float = 5.0) -> bool:
    assert callable(cond)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.002)
    return False


def test_flusher_syncs_interval_logs_within_milliseconds(tmp_path: Path) -> None:
    log = SegmentedLog(tmp_path / "l", fsync=Fsync.INTERVAL, clock=SystemClock(),
                       fsync_interval_ms=5)
    flusher = Flusher(interval_ms=5)
    try:
        log.append([(None, b"v", (), 1)])
        assert log.unsynced_bytes > 0  # append itself did not sync
        flusher.add(log)
        assert wait_until(lambda: log.unsynced_bytes == 0)
        assert flusher.failures == 0
        flusher.remove(log)
        log.append([(None, b"v", (), 1)])
        time.sleep(0.05)
        assert log.unsynced_bytes > 0  # removed: no longer synced
    finally:
        flusher.close()
        log.close()


def test_store_with_interval_policy_runs_a_flusher(tmp_path: Path) -> None:
    store = Store(tmp_path / "d", fsync=Fsync.INTERVAL, clock=SystemClock())
    try:
        store.apply({"t": Topic("t")})
        store.append("t", [AppendRecord(b"v")])
        log = store.partition("t", 0).log
        assert wait_until(lambda: log.unsynced_bytes == 0)
    finally:
        store.close()
