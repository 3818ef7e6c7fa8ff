"""Life of the real daemon: refusing to start, clean stop with handlers in flight,
a second signal, JSON logs, data surviving a restart."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import RUNNER, Daemon, make_daemon, wait_for

pytestmark = pytest.mark.e2e

SLOW = '''\
import json
import time


def _log(name, body):
    with open(name, "a") as fh:
        fh.write(json.dumps(body) + "\\n")


def slow(msg):
    _log("start.log", msg.body)
    time.sleep(1.0)
    _log("done.log", msg.body)


def stuck(msg):
    _log("start.log", msg.body)
    time.sleep(60)
'''

TOPOLOGY = """\
version: 1
name: e2e-life
queues:
  jobs: {}
  stuck-q: {}
consumers:
  workers: {queue: jobs, handler: "slow_mod:slow", concurrency: 2}
  stuckers: {queue: stuck-q, handler: "slow_mod:stuck"}
"""


def run_cli(workdir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(RUNNER), *args], cwd=workdir, capture_output=True, text=True,
                          timeout=60, check=False)


def test_an_invalid_topology_does_not_start(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("version: 1\nqueues:\n  q:\n    max_lenght: 3\n")
    done = run_cli(tmp_path, "run", "bad.yaml", "--listen", "127.0.0.1:0")
    assert done.returncode == 1
    assert "bad.yaml:4:5: error:" in done.stderr
    assert "max_lenght" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_handler_that_does_not_import_does_not_start(tmp_path: Path) -> None:
    (tmp_path / "t.yaml").write_text(
        "version: 1\nqueues:\n  q: {}\nconsumers:\n  mailer: {queue: q, handler: 'nomod_x:send'}\n"
    )
    done = run_cli(tmp_path, "run", "t.yaml", "--listen", "127.0.0.1:0")
    assert done.returncode == 1
    assert "consumer 'mailer'" in done.stderr and "nomod_x:send" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_missing_path_is_a_usage_error(tmp_path: Path) -> None:
    done = run_cli(tmp_path, "run", "nope.yaml")
    assert done.returncode == 2 and "nope.yaml: no such file or directory" in done.stderr


def test_sigterm_lets_in_flight_handlers_finish_and_exits_0(
    start_daemon: Callable[..., Daemon],
) -> None:
    d = start_daemon(TOPOLOGY, modules={"slow_mod": SLOW}, args=["--log-format", "json"])
    d.ok("POST", "/v1/queues/jobs/messages", {"messages": [{"body": 1}, {"body": 2}]}, 202)
    wait_for(lambda: (d.workdir / "start.log").exists()
             and len((d.workdir / "start.log").read_text().split()) == 2)
    d.signal(signal.SIGTERM)
    time.sleep(0.2)
    assert d.get("/readyz").status == 503  # stopped accepting while draining
    assert d.wait(30) == 0
    assert sorted((d.workdir / "done.log").read_text().split()) == ["1", "2"]
    log = d.log()
    assert "Traceback" not in log
    events = [json.loads(line) for line in log.splitlines() if line.strip()]
    names = [e.get("event") for e in events]
    for event in ("engine_opened", "pipeline_started", "listening", "heap_frozen",
                  "draining", "stopped"):
        assert event in names, names
    # once serving, the start-up heap left the garbage collector's scans (gc.freeze)
    frozen = [e for e in events if e.get("event") == "heap_frozen"][0]
    assert frozen["objects"] > 10_000 and frozen["ms"] >= 0, frozen
    assert names.index("heap_frozen") > names.index("listening")
    # both were acked: a restart does not run them again
    d.start()
    time.sleep(1.0)
    assert len((d.workdir / "start.log").read_text().split()) == 2
    status = d.ok("GET", "/v1/status")
    jobs = [q for q in status["queues"] if q["name"] == "jobs"][0]
    assert (jobs["ready"], jobs["unacked"]) == (0, 0)


@pytest.fixture
def killable(tmp_path: Path) -> Iterator[list[Daemon]]:
    """Daemons that a test stops its own way; killed at teardown if still running."""
    daemons: list[Daemon] = []
    yield daemons
    for d in daemons:
        if d.running:
            d.kill()


def test_a_second_signal_exits_at_once_and_nothing_is_lost(
    tmp_path: Path, killable: list[Daemon]
) -> None:
    d = make_daemon(tmp_path / "d", TOPOLOGY, modules={"slow_mod": SLOW}, args=["--grace", "60s"])
    killable.append(d)
    d.start()
    d.ok("POST", "/v1/queues/stuck-q/messages", {"body": "stuck"}, 202)
    wait_for(lambda: (d.workdir / "start.log").exists()
             and "stuck" in (d.workdir / "start.log").read_text())
    d.signal(signal.SIGTERM)
    time.sleep(0.3)
    assert d.running  # draining: waiting for the stuck handler
    started = time.monotonic()
    d.signal(signal.SIGTERM)
    assert d.wait(10) == 130
    assert time.monotonic() - started < 5
    assert "second SIGTERM: exiting now" in d.log()
    # the unfinished message comes back after a restart (at-least-once)
    d.start()
    wait_for(lambda: (d.workdir / "start.log").read_text().count("stuck") == 2)
    d.kill()


def test_messages_survive_a_clean_restart(start_daemon: Callable[..., Daemon]) -> None:
    d = start_daemon("version: 1\nqueues:\n  keep: {}\ntopics:\n  log: {partitions: 1}\n",
                     args=["--fsync", "interval"])
    d.ok("POST", "/v1/queues/keep/messages", {"messages": [{"body": i} for i in range(10)]}, 202)
    d.ok("POST", "/v1/topics/log/records", {"records": [{"value": i} for i in range(10)]}, 202)
    d.stop()
    d.start()
    msgs = d.ok("POST", "/v1/queues/keep/pull", {"max": 100})["messages"]
    assert [m["body"] for m in msgs] == list(range(10))
    got = d.ok("GET", "/v1/topics/log/partitions/0/records?offset=0")
    assert [r["value"] for r in got["records"]] == list(range(10))


def test_a_taken_port_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "t.yaml").write_text("version: 1\nqueues:\n  q: {}\n")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = run_cli(tmp_path, "run", "t.yaml", "--listen", f"127.0.0.1:{port}",
                       "--data-dir", "data")
    assert done.returncode == 1
    assert "runner run: " in done.stderr and "address already in use" in done.stderr
    assert "Traceback" not in done.stderr


def test_validation_warnings_are_logged_at_start(start_daemon: Callable[..., Daemon]) -> None:
    d = start_daemon("version: 1\nqueues:\n  q: {max_priority: 50}\n")
    assert "topology.yaml:3:" in d.log() and "warning:" in d.log()
