"""Exactly-once handlers through the Pipeline survive SIGKILL: every input is
handled and each output exists exactly once."""

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
from tests.pipeline.pipeline_crash_child import crash_topology

ROOT = Path(__file__).resolve().parents[2]


def _child(data_dir: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.pipeline.pipeline_crash_child", str(data_dir)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def _run(tmp_path: Path, *, rounds: int, n: int, seed: int) -> None:
    rng = random.Random(seed)
    engine = Engine.open(crash_topology(), tmp_path, fsync=FsyncPolicy.NEVER)
    expected = {f"q-{i}".encode() for i in range(n)} | {f"t-{i}".encode() for i in range(n)}
    engine.publish_to_queue("in", [OutMessage(b) for b in sorted(expected) if b[:1] == b"q"])
    engine.append("src", [OutRecord(b, key=b) for b in sorted(expected) if b[:1] == b"t"])
    engine.close()
    for _ in range(rounds):
        proc = _child(tmp_path)
        assert proc.stdout is not None
        assert proc.stdout.readline() == "ready\n"
        time.sleep(rng.uniform(0.0, 0.3))
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=30)
    proc = _child(tmp_path)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert out == "ready\ndone\n"
    engine = Engine.open(crash_topology(), tmp_path, fsync=FsyncPolicy.NEVER)
    try:
        queued = collections.Counter(d.body for d in engine.peek("outq", 100_000))
        assert set(queued) == expected and max(queued.values()) == 1
        for topic in ("out", "audit"):
            got: collections.Counter[bytes] = collections.Counter()
            for p in engine.partitions(topic):
                got.update(r.value or b"" for r in engine.read(
                    topic, p.partition, 0, max_records=100_000, max_bytes=1 << 30)[0])
            assert set(got) == expected, topic
            assert max(got.values()) == 1, (topic, got.most_common(3))
    finally:
        engine.close()


def test_exactly_once_handlers_survive_sigkill(tmp_path: Path) -> None:
    _run(tmp_path, rounds=6, n=300, seed=3)


@pytest.mark.torture
@pytest.mark.parametrize("seed", range(3))
def test_exactly_once_handlers_survive_sigkill_long(tmp_path: Path, seed: int) -> None:
    _run(tmp_path, rounds=40, n=3000, seed=seed)
