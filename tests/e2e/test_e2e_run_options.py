"""`runner run` from another directory (`--pythonpath`), on a port already taken, and with a
handler module that is not importable: the real console script, real sockets."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.e2e.conftest import RUNNER, Daemon, make_daemon, wait_for

pytestmark = pytest.mark.e2e

TOPOLOGY = """\
version: 1
name: elsewhere
topics:
  done: {partitions: 1}
queues:
  jobs: {}
consumers:
  worker: {queue: jobs, handler: "far_handlers:handle"}
"""

HANDLER = """\
def handle(msg, ctx):
    ctx.append("done", {"seen": msg.body})
"""


def runner(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(RUNNER), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=60, check=False)


def test_pythonpath_imports_handlers_from_another_directory(
    tmp_path: Path, start_daemon: Callable[..., Daemon],
) -> None:
    code = tmp_path / "code"
    code.mkdir()
    (code / "far_handlers.py").write_text(HANDLER)
    d = start_daemon(TOPOLOGY, args=["--pythonpath", str(code)])
    d.ok("POST", "/v1/queues/jobs/messages", {"body": 7}, 202)
    records = wait_for(
        lambda: d.ok("GET", "/v1/topics/done/partitions/0/records?offset=0")["records"])
    assert records[0]["value"] == {"seen": 7}
    # validate --check-handlers and test take it too
    (tmp_path / "t.yaml").write_text(TOPOLOGY)
    checked = runner(tmp_path, "validate", "--check-handlers", "--pythonpath", str(code),
                     "t.yaml")
    assert checked.returncode == 0, checked.stdout


def test_a_handler_module_not_found_says_where_it_was_looked_for(tmp_path: Path) -> None:
    d = make_daemon(tmp_path / "d", TOPOLOGY)
    other = tmp_path / "other"
    other.mkdir()
    done = runner(d.workdir, "run", str(d.topology), "--data-dir", str(d.data_dir),
                  "--listen", "127.0.0.1:0", "--pythonpath", str(other))
    assert done.returncode == 1
    first = next(line for line in done.stderr.splitlines() if ": error: " in line)
    assert first.startswith(
        f"{d.topology}:8:34: error: consumer 'worker': handler 'far_handlers:handle': cannot "
        "import module 'far_handlers': ModuleNotFoundError: No module named 'far_handlers' "
        f"(searched sys.path: {d.workdir}, {other}, ")  # the working directory first
    assert first.endswith("; run from the directory that holds it or pass --pythonpath DIR) "
                          "(at consumers.worker.handler)")
    assert done.stderr.splitlines()[-1] == "runner run: handlers could not be imported"
    assert not d.data_dir.exists()


def test_a_missing_pythonpath_directory_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "t.yaml").write_text(TOPOLOGY)
    done = runner(tmp_path, "run", "t.yaml", "--pythonpath", "nowhere")
    assert (done.returncode, done.stderr) == (
        2, "runner run: --pythonpath nowhere: no such directory\n")
    assert not (tmp_path / "data").exists()


def test_a_taken_port_is_refused_before_the_data_dir_is_made(tmp_path: Path) -> None:
    (tmp_path / "t.yaml").write_text("version: 1\nqueues:\n  q: {}\n")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for option in ("--listen", "--kafka-listen"):
            args = ["--listen", f"127.0.0.1:{port}"] if option == "--listen" else [
                "--listen", "127.0.0.1:0", "--kafka-listen", f"127.0.0.1:{port}"]
            done = runner(tmp_path, "run", "t.yaml", "--data-dir", "fresh", *args)
            assert done.returncode == 1, done.stderr
            assert done.stderr.splitlines()[-1] == (
                f"runner run: cannot listen on 127.0.0.1:{port}: address already in use; is "
                f"another daemon running there? Choose another address with {option} "
                "HOST:PORT")
            assert "Traceback" not in done.stderr
            assert not (tmp_path / "fresh").exists()


def test_a_port_just_left_is_not_taken(tmp_path: Path,
                                       start_daemon: Callable[..., Daemon]) -> None:
    """A daemon restarted on the port it just left (connections in TIME_WAIT) starts:
    the check binds with SO_REUSEADDR, as the HTTP server does."""
    d = start_daemon("version: 1\nqueues:\n  q: {}\n")
    port = d.port
    with socket.create_connection(("127.0.0.1", port)) as conn:
        conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert conn.recv(100).startswith(b"HTTP/1.1 200")
    d.stop()
    again = make_daemon(tmp_path / "again", "version: 1\nqueues:\n  q: {}\n",
                        args=["--listen", f"127.0.0.1:{port}"])
    again.start()
    try:
        assert again.port == port
    finally:
        again.stop()
