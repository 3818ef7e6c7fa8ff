"""The data dir lock: one Engine per data directory, released at close and by the
OS when the holder dies (even by SIGKILL)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from runner.engine import Engine
from runner.errors import StorageError
from runner.topology.model import Queue, Topology

REPO = Path(__file__).resolve().parents[2]


def _topo() -> Topology:
    return Topology(queues=(("q", Queue("q")),))


def test_second_open_on_one_dir_is_refused_naming_the_pid(tmp_path: Path) -> None:
    first = Engine.open(_topo(), tmp_path)
    try:
        with pytest.raises(StorageError) as err:
            Engine.open(_topo(), tmp_path)
        assert str(err.value) == (f"data directory {tmp_path} is in use by another runner "
                                  f"(pid {os.getpid()})")
    finally:
        first.close()
    again = Engine.open(_topo(), tmp_path)  # released at close
    again.close()


def test_a_killed_holder_releases_the_dir(tmp_path: Path) -> None:
    code = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from runner.engine import Engine
        from runner.topology.model import Queue, Topology
        e = Engine.open(Topology(queues=(("q", Queue("q")),)), Path({str(tmp_path)!r}))
        print("ready", flush=True)
        time.sleep(60)
    """)
    child = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE,
                             text=True)
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
        with pytest.raises(StorageError, match=rf"\(pid {child.pid}\)$"):
            Engine.open(_topo(), tmp_path)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
        if child.stdout is not None:
            child.stdout.close()
    engine = Engine.open(_topo(), tmp_path)
    engine.close()
