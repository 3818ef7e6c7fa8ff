"""`runner run --event-loop`: the daemon runs on uvloop when it is installed (auto, the
default), on asyncio's own loop when asked, and says which at start; asking for uvloop
where it is not installed is a usage error (exit 2) naming the way out."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.conftest import Daemon, make_daemon

TOPOLOGY = """\
version: 1
queues:
  jobs: {durable: true}
"""


def _shadowed(daemon: Daemon, tmp_path: Path) -> Daemon:
    """`daemon` on a Python where `import uvloop` fails (a module in front of it)."""
    shadow = tmp_path / "no-uvloop"
    shadow.mkdir()
    (shadow / "uvloop.py").write_text("raise ImportError('no uvloop here')\n")
    daemon.env["PYTHONPATH"] = str(shadow)
    return daemon


def _serves(daemon: Daemon) -> None:
    answer = daemon.post("/v1/queues/jobs/messages", {"messages": [{"body": "x"}]})
    assert answer.status == 202, answer
    pulled = daemon.post("/v1/queues/jobs/pull", {"max": 10})
    assert [m["body"] for m in pulled.body["messages"]] == ["x"], pulled


@pytest.mark.parametrize(("args", "loop"), [([], "uvloop"),
                                            (["--event-loop", "uvloop"], "uvloop"),
                                            (["--event-loop", "asyncio"], "asyncio")])
def test_the_daemon_runs_on_the_loop_asked_for_and_says_which(
    tmp_path: Path, args: list[str], loop: str,
) -> None:
    daemon = make_daemon(tmp_path / "d", TOPOLOGY, args=args)
    daemon.start()
    try:
        assert f"event loop: {loop}" in daemon.log()
        _serves(daemon)
    finally:
        daemon.stop()


def test_without_uvloop_auto_falls_back_to_asyncio(tmp_path: Path) -> None:
    daemon = _shadowed(make_daemon(tmp_path / "d", TOPOLOGY), tmp_path)
    daemon.start()
    try:
        assert "event loop: asyncio" in daemon.log()
        _serves(daemon)
    finally:
        daemon.stop()


def test_asking_for_uvloop_where_it_is_not_installed_is_a_usage_error(
    tmp_path: Path,
) -> None:
    daemon = _shadowed(make_daemon(tmp_path / "d", TOPOLOGY,
                                   args=["--event-loop", "uvloop"]), tmp_path)
    daemon.start(expect_ready=False)
    assert daemon.wait() == 2
    assert daemon.log().strip() == (
        "runner run: --event-loop uvloop: uvloop is not installed "
        "(pip install uvloop, or --event-loop asyncio)")
    assert not (tmp_path / "d" / "data").exists()  # refused before opening anything


def test_an_unknown_event_loop_is_a_usage_error(tmp_path: Path) -> None:
    daemon = make_daemon(tmp_path / "d", TOPOLOGY, args=["--event-loop", "trio"])
    daemon.start(expect_ready=False)
    assert daemon.wait() == 2
    assert "argument --event-loop: invalid choice: 'trio'" in daemon.log()
