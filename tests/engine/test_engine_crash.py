"""commit_step survives SIGKILL at any moment: no input lost, no output duplicated."""

from __future__ import annotations

import collections
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from runner.engine import Engine, FsyncPolicy, OutMessage, OutRecord
from tests.engine.engine_crash_child import crash_topology, queues_only

ROOT = Path(__file__).resolve().parents[2]


def _seed(data_dir: Path, n: int) -> set[bytes]:
    engine = Engine.open(crash_topology(), data_dir, fsync=FsyncPolicy.NEVER)
    qs = [f"q-{i}".encode() for i in range(n)]
    ts = [f"t-{i}".encode() for i in range(n)]
    engine.publish_to_queue("in", [OutMessage(body=b) for b in qs])
    engine.append("src", [OutRecord(value=b, key=b) for b in ts])
    engine.flush()
    engine.close()
    return set(qs) | set(ts)


def _child(data_dir: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.engine.engine_crash_child", str(data_dir)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        bufsize=0,  # unbuffered: what readline has not returned is left for communicate
    )


def _round(data_dir: Path, rng: random.Random, max_steps: int) -> bool:
    """Start a child, kill -9 it at a random moment of its work; True when it finished first.

    The moment is counted in committed steps (the child reports each), plus a random
    fraction of one step, so a loaded machine cannot make the child finish before
    the kill and the rounds always interrupt real work.
    """
    proc = _child(data_dir)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line == b"ready\n", proc.stderr.read() if proc.stderr else line
    last = b""
    for _ in range(rng.randint(0, max_steps)):
        last = proc.stdout.readline()
        if last != b"step\n":
            break
    time.sleep(rng.uniform(0.0, 0.01))
    os.kill(proc.pid, signal.SIGKILL)
    out, err = proc.communicate(timeout=30)
    if proc.returncode == 0:
        assert (last + out).endswith(b"done\n")
        return True
    assert proc.returncode == -signal.SIGKILL, err.decode()
    return False


def _verify(data_dir: Path, expected: set[bytes]) -> None:
    engine = Engine.open(crash_topology(), data_dir, fsync=FsyncPolicy.NEVER)
    try:
        info = engine.queue_info("in")
        assert (info.ready, info.unacked) == (0, 0)
        for p in engine.partitions("src"):
            assert engine.group_info("g").partitions[p.partition].lag == 0
        queued = collections.Counter(d.body for d in engine.peek("outq", 100_000))
        assert set(queued) == expected
        assert max(queued.values()) == 1
        for topic in ("out", "audit"):
            got: collections.Counter[bytes] = collections.Counter()
            for p in engine.partitions(topic):
                records, _ = engine.read(topic, p.partition, 0, max_records=100_000,
                                         max_bytes=1 << 30)
                got.update(r.value or b"" for r in records)
            assert set(got) == {b for b in expected if not queues_only(b)}, topic
            assert max(got.values()) == 1, (topic, got.most_common(3))
    finally:
        engine.close()


def _torture(tmp_path: Path, *, rounds: int, n: int, seed: int) -> None:
    rng = random.Random(seed)
    expected = _seed(tmp_path, n)
    kills = 0
    for _ in range(rounds):
        if _round(tmp_path, rng, max_steps=max(1, 2 * n // rounds)):
            break
        kills += 1
    proc = _child(tmp_path)  # finish the work without interruption
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err.decode()
    assert out.endswith(b"done\n")
    assert kills >= min(rounds, 3)
    _verify(tmp_path, expected)


def test_commit_step_survives_sigkill_short(tmp_path: Path) -> None:
    _torture(tmp_path, rounds=10, n=150, seed=7)


@pytest.mark.torture
@pytest.mark.parametrize("seed", range(5))
def test_commit_step_survives_sigkill_long(tmp_path: Path, seed: int) -> None:
    _torture(tmp_path, rounds=60, n=1000, seed=seed)
