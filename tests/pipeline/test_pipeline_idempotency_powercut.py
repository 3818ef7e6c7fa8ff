"""The idempotency store under power cuts: a consumer's processed keys (first
start, records, rewrites of a mostly stale file, a restart) on a simulated disk
(`tests.faultfs.SimDisk`) that loses power at a chosen changing file call.
After each cut the store reopens and knows every key whose `record` returned
(and has not expired): only synced bytes and synced directory entries survive,
or a torn mix of the rest."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

from runner.clock import ManualClock
from runner.errors import StorageError
from runner.fs import read_bytes
from runner.pipeline.idempotency import IdempotencyStore
from tests.faultfs import PowerCut, SimDisk

PATH = Path("/srv/data/idempotency/billing.keys")
WINDOW_S = 40.0
RECORDS = 1500  # past 1024 lines with most keys stale: the file is rewritten
MAKE_TEST_CUTS = 120  # spread evenly over the changing file calls; torture: all


def _open(disk: SimDisk, clock: ManualClock, *, fsync: bool = True) -> IdempotencyStore:
    return IdempotencyStore(PATH, window_s=WINDOW_S, clock=clock, fsync=fsync, fs=disk)


def _workload(disk: SimDisk, acked: dict[str, float], clock: ManualClock) -> None:
    store = _open(disk, clock)
    try:
        for i in range(RECORDS):
            if i == RECORDS // 2:  # restart
                store.close()
                store = _open(disk, clock)
            store.record(f"order-{i}")
            acked[f"order-{i}"] = clock.time() + WINDOW_S
            clock.advance(0.1)
    finally:
        store.close()


def _verify(disk: SimDisk, acked: dict[str, float], now: float, why: str) -> None:
    clock = ManualClock(now)
    store = _open(disk, clock)
    try:
        for key, expires in acked.items():
            if expires > now:
                assert store.seen(key), (why, key)
        store.record("after")  # the recovered store goes on
    finally:
        store.close()
    again = _open(disk, clock)
    try:
        assert again.seen("after"), why
    finally:
        again.close()


def _run(cut: int | None) -> SimDisk:
    disk = SimDisk(cut_at=cut)
    acked: dict[str, float] = {}
    clock = ManualClock(1000.0)
    try:
        _workload(disk, acked, clock)
    except (PowerCut, StorageError):
        if not disk.dead:
            raise
    if cut is not None:
        _verify(disk.crash(), acked, clock.time(), f"cut {cut}")
        _verify(disk.crash(torn=True, seed=cut), acked, clock.time(), f"cut {cut} torn")
    return disk


def _cuts(count: int | None) -> list[int]:
    total = _run(None).changes
    assert total > 2 * RECORDS  # a write and an fsync per record, the rewrites, the start
    if count is None:
        return list(range(1, total + 1))
    return sorted({1 + (total - 1) * i // (count - 1) for i in range(count)})


def test_the_workload_rewrites_the_file_and_restarts() -> None:
    disk = SimDisk()
    acked: dict[str, float] = {}
    clock = ManualClock(1000.0)
    _workload(disk, acked, clock)
    lines = read_bytes(disk, PATH).count(b"\n")
    assert lines < RECORDS - 400  # rewritten without the stale keys
    _verify(disk.crash(), acked, clock.time(), "no cut")


def test_recorded_keys_survive_a_power_cut_at_sampled_cut_points() -> None:
    for cut in _cuts(MAKE_TEST_CUTS):
        _run(cut)


def test_the_first_start_makes_the_directory_and_file_durable() -> None:
    # every cut point of the first open and the first records, synced only
    total = 40
    for cut in range(1, total + 1):
        _run(cut)


@pytest.mark.torture
@pytest.mark.timeout(3600)
def test_recorded_keys_survive_a_power_cut_at_every_cut_point() -> None:
    for cut in _cuts(None):
        _run(cut)


def test_without_fsync_a_power_cut_keeps_a_prefix_of_the_keys() -> None:
    """`--fsync interval|never`: nothing is promised for the keys of the last
    moments, but what survives is a prefix of what was recorded (no key recorded
    after one that was lost) and the store opens."""
    clock = ManualClock(1000.0)
    disk = SimDisk()
    store = _open(disk, clock, fsync=False)
    keys = [f"k{i}" for i in range(300)]
    try:
        for k in keys:
            store.record(k)
    finally:
        store.close()
    for seed in range(20):
        reopened = _open(disk.crash(torn=True, seed=seed), clock, fsync=False)
        try:
            seen = [reopened.seen(k) for k in keys]
        finally:
            reopened.close()
        kept = seen.count(True)
        assert seen == [True] * kept + [False] * (len(keys) - kept), seed


def test_a_write_refused_by_a_full_disk_leaves_the_file_as_before() -> None:
    clock = ManualClock(1000.0)
    disk = SimDisk()
    store = _open(disk, clock)
    try:
        for i in range(100):
            store.record(f"k{i}")
        disk.capacity = disk._used()  # full: the next page cannot be had
        with pytest.raises(StorageError, match=r"idempotency store .*billing.keys: "):
            for i in range(100, 400):
                store.record(f"k{i}")
        assert not store.seen("k399")
        disk.capacity = None
        store.record("later")
    finally:
        with contextlib.suppress(OSError):
            store.close()
    reopened = _open(disk.crash(), clock)
    try:
        assert all(reopened.seen(f"k{i}") for i in range(100)) and reopened.seen("later")
    finally:
        reopened.close()
