"""Crash safety: a child publishing and acking is SIGKILLed; nothing acknowledged is lost."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from runner.broker.broker import Broker
from runner.clock import SystemClock
from runner.topology.model import Queue

ROOT = Path(__file__).resolve().parents[2]


def _round(
    data: Path, start: int, rng: random.Random,
) -> tuple[list[int], set[int], set[int]]:
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.broker.crash_child", str(data), str(start)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        bufsize=0,  # unbuffered: what readline has not returned is left for communicate
    )
    # Kill after a random amount of the child's work (counted in the lines it printed),
    # then a random fraction of one more batch: a wall-clock delay alone let a loaded
    # machine kill the child before it had published much ("hardly published (14)").
    assert child.stdout is not None
    seen: list[bytes] = []
    for _ in range(rng.randint(20, 120)):
        line = child.stdout.readline()
        if not line:
            break
        seen.append(line)
    time.sleep(rng.uniform(0.0, 0.02))
    child.send_signal(signal.SIGKILL)
    rest, err = child.communicate(timeout=30)
    assert child.returncode == -signal.SIGKILL, err.decode()
    out = b"".join(seen) + rest
    published: list[int] = []
    acked: set[int] = set()
    delivered: set[int] = set()
    for line in out.decode().split("\n")[:-1]:  # the last piece may be cut
        kind, _, num = line.partition(" ")
        if kind == "P":
            published.append(int(num))
        else:
            (acked if kind == "A" else delivered).add(int(num))
    return published, acked, delivered


def _survivors(data: Path) -> list[int]:
    broker = Broker(data, fsync="never", clock=SystemClock(), segment_bytes=64 * 1024)
    try:
        broker.declare(queues=[Queue("jobs")])
        return [int(d.message_id or -1) for d in broker.peek("jobs", 1 << 30)]
    finally:
        broker.close()


def crash_rounds(tmp_path: Path, rounds: int, seed: int) -> None:
    rng = random.Random(seed)
    data = tmp_path / "data"
    must_have: set[int] = set()
    never: set[int] = set()
    total = 0
    for r in range(rounds):
        published, acked, delivered = _round(data, r * 1_000_000, rng)
        must_have |= set(published)
        total += len(published)
        never |= acked
        must_have -= delivered  # delivered: its ack may have landed just before the kill
        left = _survivors(data)
        assert left == sorted(left), f"round {r}: order lost"
        assert len(left) == len(set(left)), f"round {r}: duplicates"
        missing = must_have - set(left)
        assert not missing, f"round {r}: acknowledged publishes lost: {sorted(missing)[:10]}"
        back = never & set(left)
        assert not back, f"round {r}: acknowledged acks undone: {sorted(back)[:10]}"
        # what survived unacknowledged is now known to be there
        must_have |= set(left)
    assert total >= 20 * rounds, f"the child hardly published ({total}): the test proves little"


def test_sigkill_never_loses_acknowledged_work(tmp_path: Path) -> None:
    crash_rounds(tmp_path, rounds=20, seed=1)


@pytest.mark.torture
@pytest.mark.timeout(1800)
def test_sigkill_torture(tmp_path: Path) -> None:
    crash_rounds(tmp_path, rounds=200, seed=int(time.time()))


def _kill_after_pull(data: Path, ack_first: int) -> list[tuple[bytes, bool, int]]:
    """Run marks_child until it pulled (and acked `ack_first`), SIGKILL it, reopen."""
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.broker.marks_child", str(data), str(ack_first)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == b"ready\n"
    finally:
        child.send_signal(signal.SIGKILL)
        child.communicate(timeout=30)
    broker = Broker(data, fsync="always", clock=SystemClock())
    try:
        broker.declare(queues=[Queue("jobs")])
        got = broker.pull("jobs", 100, consumer_id="again")
        return [(d.body, d.redelivered, d.delivery_count) for d in got]
    finally:
        broker.close()


def test_crash_after_pull_loses_the_redelivered_hint_never_the_message(
    tmp_path: Path,
) -> None:
    got = _kill_after_pull(tmp_path / "data", ack_first=0)
    # the delivery marks waited for a later append that never came: every message is
    # back, in order, but the four pulled ones are not known to have been delivered
    assert got == [(b"m%d" % i, False, 1) for i in range(10)]


def test_delivery_marks_are_durable_with_the_next_ack(tmp_path: Path) -> None:
    got = _kill_after_pull(tmp_path / "data", ack_first=2)
    # the ack's append (synced before it returned) carried the marks of the whole pull
    assert got == [(b"m2", True, 2), (b"m3", True, 2)] + [
        (b"m%d" % i, False, 1) for i in range(4, 10)]
