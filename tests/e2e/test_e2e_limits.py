"""Limits against hostile input, against the real daemon (leftovers of issue 17):
the first topology load is bounded by --load-timeout like a reload's."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.e2e.conftest import RUNNER, Daemon, wait_for

pytestmark = pytest.mark.e2e


def run_cli(workdir: Path, *args: str, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "RUNNER_TOKEN"}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return subprocess.run([str(RUNNER), *args], cwd=workdir, capture_output=True, text=True,
                          timeout=timeout_s, check=False, env=env)


# ---------------------------------------------------------------- start-up load


def test_a_handler_module_that_blocks_at_import_stops_the_start_after_the_load_timeout(
    tmp_path: Path,
) -> None:
    (tmp_path / "sleepy.py").write_text(
        "import time\ntime.sleep(600)\n\ndef handle(msg):\n    pass\n")
    (tmp_path / "t.yaml").write_text(
        "version: 1\nname: e2e-slow-import\nqueues:\n  q: {}\n"
        "consumers:\n  c: {queue: q, handler: 'sleepy:handle'}\n")
    started = time.monotonic()
    done = run_cli(tmp_path, "run", "t.yaml", "--listen", "127.0.0.1:0", "--load-timeout", "1s")
    took = time.monotonic() - started
    assert done.returncode == 1, done.stderr
    assert done.stderr.splitlines()[-1] == (
        "runner run: loading t.yaml did not finish within 1s (--load-timeout): importing "
        "the handler modules hangs (a hung file system, or a handler module that blocks "
        "at import?); not started"
    )
    assert took < 30, took  # 1 s and the interpreter's start, not the module's 600 s
    assert not (tmp_path / "data").exists()  # given up before the data dir was touched


def test_a_handler_module_that_imports_within_the_load_timeout_starts(
    start_daemon: Callable[..., Daemon],
) -> None:
    """The limit bounds the load only: a module taking 0.5 s of a 10 s limit starts and
    its handler runs."""
    d = start_daemon(
        "version: 1\nname: e2e-slowish-import\nqueues:\n  q: {}\n"
        "consumers:\n  c: {queue: q, handler: 'slowish:handle'}\n",
        modules={"slowish": "import time\ntime.sleep(0.5)\n\n"
                            "def handle(msg):\n    open('seen', 'w').write(str(msg.body))\n"},
        args=["--load-timeout", "10s"],
    )
    assert d.post("/v1/queues/q/messages", {"body": 7}).status == 202
    wait_for(lambda: (d.workdir / "seen").exists() and (d.workdir / "seen").read_text(), 20)
