"""`runner run` resource options: memory and disk budgets, one daemon per data dir."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.e2e.conftest import RUNNER, Daemon

pytestmark = pytest.mark.e2e

TOPOLOGY = """\
version: 1
name: e2e-budgets
exchanges:
  x: {type: fanout}
queues:
  q: {}
bindings:
  - {exchange: x, queue: q}
"""


def run_cli(workdir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(RUNNER), *args], cwd=workdir, capture_output=True, text=True,
                          timeout=60, check=False)


def test_an_exhausted_disk_budget_refuses_publishes_with_429(
    start_daemon: Callable[..., Daemon]
) -> None:
    d = start_daemon(TOPOLOGY, args=["--disk-budget", "16KiB", "--memory-budget", "1MiB"])
    assert "memory_budget_bytes=1048576 disk_budget_bytes=16384" in d.log()
    body = "p" * 1000
    refused = None
    for _ in range(40):
        got = d.post("/v1/exchanges/x/messages",
                     {"messages": [{"routing_key": "", "body": body}] * 4})
        if got.status != 202:
            refused = got
            break
    assert refused is not None, "the disk budget never refused a publish"
    assert refused.status == 429
    assert refused.headers["Retry-After"] == "1"
    assert re.fullmatch(
        r"disk budget exhausted: queue logs use \d+ bytes of 16384; "
        r"publish refused until consumers catch up",
        refused.body["error"],
    ), refused.body
    assert refused.body["accepted"] == 0 and refused.body["routed"] == []


@pytest.mark.parametrize("args,message", [
    (["--disk-budget", "lots"],
     "argument --disk-budget: invalid size \"lots\"; use bytes or a number with a unit"),
    (["--memory-budget", "unlimited"],
     "argument --memory-budget: \"unlimited\" is not allowed for the memory budget; "
     "give a size such as \"256MiB\""),
    (["--memory-budget", "64KiB"],
     "argument --memory-budget: the memory budget must be at least 1MiB, got 65536 bytes"),
])
def test_bad_budgets_are_usage_errors(tmp_path: Path, args: list[str], message: str) -> None:
    (tmp_path / "t.yaml").write_text(TOPOLOGY)
    done = run_cli(tmp_path, "run", "t.yaml", "--listen", "127.0.0.1:0", *args)
    assert done.returncode == 2
    assert message in done.stderr
    assert "Traceback" not in done.stderr


def test_a_second_daemon_on_the_same_data_dir_exits_1_naming_the_first(
    start_daemon: Callable[..., Daemon]
) -> None:
    first = start_daemon(TOPOLOGY)
    assert first.proc is not None
    done = run_cli(first.workdir, "run", str(first.topology), "--data-dir", str(first.data_dir),
                   "--listen", "127.0.0.1:0", "--no-watch")
    assert done.returncode == 1
    assert (f"runner run: data directory {first.data_dir} is in use by another runner "
            f"(pid {first.proc.pid})\n") in done.stderr
    assert "Traceback" not in done.stderr
    assert first.get("/readyz").status == 200  # the first one is untouched
    first.stop()
    first.start()  # the lock went with the first daemon: the data dir opens again
    first.stop()
