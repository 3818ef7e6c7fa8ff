"""Crash tests: kill -9 a child appending with fsync=always, then check every ack survived."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from runner.clock import ManualClock
from runner.log.record import BATCH, BatchHeader, Fsync
from runner.log.segment import SegmentedLog
from tests.log.crash_writer import value_for

WRITER = Path(__file__).with_name("crash_writer.py")
ROOT = Path(__file__).resolve().parents[2]


def crash_once(directory: Path, seed: int, rnd: random.Random) -> list[tuple[int, int, str]]:
    """Run the writer until a random moment, kill -9 it, return its acks."""
    child = subprocess.Popen(
        [sys.executable, str(WRITER), str(directory), str(seed), str(rnd.choice([1, 4]))],
        stdout=subprocess.PIPE, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert child.stdout is not None
    try:
        assert child.stdout.readline() == b"ready\n"
        time.sleep(rnd.uniform(0.0, 0.15))
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    acks = []
    for line in child.stdout.read().decode().splitlines():
        first, count, tag = line.split()
        acks.append((int(first), int(count), tag))
    child.stdout.close()
    return acks


def verify(directory: Path, acks: list[tuple[int, int, str]]) -> int:
    log = SegmentedLog(directory, fsync=Fsync.NEVER, clock=ManualClock(),
                       segment_bytes=32 * 1024, index_interval_bytes=512)
    try:
        records = []
        offset = 0
        while offset < log.end_offset:
            got = log.read(offset, max_records=10_000, max_bytes=1 << 30)
            records.extend(got)
            offset = got[-1].offset + 1
        assert [r.offset for r in records] == list(range(log.end_offset)), "offsets not contiguous"
        for first, count, tag in acks:
            for i in range(count):
                rec = records[first + i]
                assert rec.key == tag.encode() and rec.value == value_for(tag, i), (first, i)
                assert rec.headers == (("i", b"%d" % i),)
        return log.end_offset
    finally:
        log.close()


def tear_tail(directory: Path, acked_end: int, rnd: random.Random) -> bool:
    """Simulate a power cut on top of the kill: cut the last segment somewhere after
    the last acknowledged batch, sometimes leaving junk (a half-written page).
    Returns True when bytes were actually cut or added."""
    last = sorted(directory.glob("*.log"))[-1]
    data = last.read_bytes()
    pos = safe = 0
    while pos + BATCH.size <= len(data):
        header = BatchHeader(data, pos)
        if header.length <= 0 or pos + header.size > len(data):
            break
        pos += header.size
        if header.base_offset < acked_end:
            safe = pos
    cut = rnd.randint(safe, len(data))
    # nothing cut (the kill came right after an fsync: no bytes past the last
    # acknowledged batch, as on a slow machine): the junk of a half-written page then
    junk = rnd.randbytes(rnd.randint(1, 300)) if rnd.random() < 0.5 or cut == len(data) \
        else b""
    last.write_bytes(data[:cut] + junk)
    return cut < len(data) or bool(junk)


def run_rounds(tmp_path: Path, rounds: int, seed: int) -> None:
    rnd = random.Random(seed)
    all_acks: list[tuple[int, int, str]] = []
    acked_rounds = torn = 0
    for r in range(rounds):
        directory = tmp_path / f"crash{r // 25}"  # a fresh log every 25 rounds
        if r % 25 == 0:
            all_acks = []
        acks = crash_once(directory, seed * 1000 + r, rnd)
        acked_rounds += bool(acks)
        all_acks.extend(acks)
        if rnd.random() < 0.5:
            torn += tear_tail(directory, max((f + c for f, c, _ in all_acks), default=0), rnd)
        end = verify(directory, all_acks)
        assert end >= max((f + c for f, c, _ in all_acks), default=0)
    assert acked_rounds >= rounds // 2  # the test did kill writers mid-stream
    assert torn >= rounds // 5  # and recovered from torn tails


def test_every_acknowledged_record_survives_kill_9(tmp_path: Path) -> None:
    run_rounds(tmp_path, rounds=20, seed=1)


@pytest.mark.torture
@pytest.mark.timeout(1800)
def test_every_acknowledged_record_survives_many_kills(tmp_path: Path) -> None:
    run_rounds(tmp_path, rounds=300, seed=2)
