"""What the daemon trusts, against the real daemon (issue 17 items 8, 9, 10): topology
files that are not regular files (a FIFO) or are symbolic links, blank tokens, token
files others can read, and the token of /metrics."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.e2e import conftest
from tests.e2e.conftest import RUNNER, Daemon, make_daemon

pytestmark = pytest.mark.e2e

TOPOLOGY = """\
version: 1
name: e2e-trust
queues:
  q: {}
"""
MORE = TOPOLOGY + "  r: {}\n"
FIFO_SENTENCE = (
    "not a regular file but a FIFO (named pipe); a topology is read from regular files only"
)


def run_cli(workdir: Path, *args: str, env: dict[str, str] | None = None,
            timeout_s: float = 30) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k != "RUNNER_TOKEN"}
    return subprocess.run([str(RUNNER), *args], cwd=workdir, capture_output=True, text=True,
                          timeout=timeout_s, check=False, env={**base, **(env or {})})


# ---------------------------------------------------------------- item 8: FIFOs


def test_a_fifo_in_place_of_the_topology_file_fails_reload_and_sighup_without_jamming(
    start_daemon: Callable[..., Daemon],
) -> None:
    d = start_daemon(TOPOLOGY)
    d.topology.unlink()
    os.mkfifo(d.topology)  # nobody ever writes to it: an open() without O_NONBLOCK hangs
    got = d.post("/v1/admin/reload")
    assert got.status == 422
    assert got.body["error"] == f"invalid topology: {d.topology}:0:0: error: {FIFO_SENTENCE}"
    assert [p["rule"] for p in got.body["problems"]] == ["not-a-regular-file"]
    d.signal(signal.SIGHUP)  # finishes too (the reload lock is free)
    conftest.wait_for(lambda: "reload invalid (sighup)" in d.log())
    d.topology.unlink()
    d.topology.write_text(MORE)  # the file is back: reload works again
    got = d.post("/v1/admin/reload")
    assert got.status == 200, got.body
    assert [c["name"] for c in got.body["changes"]] == ["r"]
    d.stop()  # one SIGTERM is enough (the fixture's promise: exit 0, no traceback)


def test_runner_run_on_a_fifo_exits_1_at_once(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "t.yaml")
    started = time.monotonic()
    done = run_cli(tmp_path, "run", "t.yaml", "--listen", "127.0.0.1:0")
    assert time.monotonic() - started < 20
    assert done.returncode == 1
    assert done.stderr.splitlines()[-2:] == [
        f"t.yaml:0:0: error: {FIFO_SENTENCE}",
        "runner run: t.yaml is invalid (1 error(s))",
    ]


def test_a_fifo_among_the_topology_files_is_named_not_skipped(
    start_daemon: Callable[..., Daemon],
) -> None:
    d = start_daemon({"a.yaml": TOPOLOGY})
    os.mkfifo(d.topology / "b.yaml")
    got = d.post("/v1/admin/reload")
    assert got.status == 422
    assert got.body["problems"][0]["file"] == f"{d.topology}/b.yaml"
    assert got.body["problems"][0]["message"] == FIFO_SENTENCE
    assert d.get("/readyz").status == 200  # the running topology is untouched


# ---------------------------------------------------------------- item 10: symlinks


def queue_names(d: Daemon) -> list[str]:
    return [q["name"] for q in d.ok("GET", "/v1/status")["queues"]]


def _linked(tmp_path: Path) -> Path:
    """A topology directory whose b.yaml is a symbolic link out of the directory."""
    topo = tmp_path / "topo"
    topo.mkdir()
    (topo / "a.yaml").write_text(TOPOLOGY)
    (tmp_path / "outside.yaml").write_text("version: 1\nqueues:\n  from_outside: {}\n")
    (topo / "b.yaml").symlink_to("../outside.yaml")
    return topo


def test_no_follow_symlinks_refuses_a_linked_topology_file_at_start(tmp_path: Path) -> None:
    topo = _linked(tmp_path)
    done = run_cli(tmp_path, "run", "topo", "--listen", "127.0.0.1:0", "--no-follow-symlinks",
                   "--data-dir", "data")
    assert done.returncode == 1
    assert done.stderr.splitlines()[-2:] == [
        "topo/b.yaml:0:0: error: the file is a symbolic link (to '../outside.yaml') and "
        "symbolic links are not followed (--no-follow-symlinks); put the file itself here",
        "runner run: topo is invalid (1 error(s))",
    ]
    assert (topo / "b.yaml").is_symlink()


def test_symlinks_are_followed_by_default_and_refused_at_reload_with_the_flag(
    tmp_path: Path, start_daemon: Callable[..., Daemon],
) -> None:
    _linked(tmp_path)
    d = make_daemon(tmp_path / "w", {"a.yaml": TOPOLOGY})
    d.topology = tmp_path / "topo"
    d.start()
    try:
        assert "from_outside" in queue_names(d)
    finally:
        d.stop()
    strict = start_daemon({"a.yaml": TOPOLOGY}, args=["--no-follow-symlinks"])
    (strict.topology / "b.yaml").symlink_to(tmp_path / "outside.yaml")
    got = strict.post("/v1/admin/reload")
    assert got.status == 422
    assert got.body["problems"][0]["rule"] == "symlink"
    assert "from_outside" not in queue_names(strict)


# ---------------------------------------------------------------- item 9: tokens


@pytest.mark.parametrize("value", ["", "  \t"])
def test_a_blank_runner_token_is_refused(tmp_path: Path, value: str) -> None:
    (tmp_path / "t.yaml").write_text(TOPOLOGY)
    done = run_cli(tmp_path, "run", "t.yaml", "--listen", "127.0.0.1:0",
                   env={"RUNNER_TOKEN": value})
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == (
        "runner run: RUNNER_TOKEN is set but blank; set it to the token, or unset it to run "
        "without authentication"
    )


def test_a_token_file_others_can_read_is_warned_about(
    start_daemon: Callable[..., Daemon],
) -> None:
    d = start_daemon(TOPOLOGY, token="s3cret")
    assert "chmod" not in d.log()  # 0600: no warning
    d.stop()
    token_file = d.workdir / "token"
    token_file.chmod(0o644)
    d.start()
    line = next(x for x in d.log().splitlines() if "chmod" in x)
    assert (
        f"WARNING runner.daemon: --token-file {token_file} can be read or changed by other "
        "users (mode 0644); "
        f"anyone who can read it has the token: chmod 600 {token_file} "
        "event=token_file_mode"
    ) in line
    assert "s3cret" not in d.log()
    assert d.get("/v1/status").status == 200 and d.get("/v1/status", token=False).status == 401


def test_the_metrics_token_guards_metrics_and_healthz_stays_open(
    start_daemon: Callable[..., Daemon], tmp_path: Path,
) -> None:
    open_metrics = start_daemon(TOPOLOGY, token="api")
    assert open_metrics.get("/metrics", token=False).status == 200  # the default (INTERFACES)
    open_metrics.stop()
    scrape = tmp_path / "scrape-token"
    scrape.write_text("scrape-only\n")
    scrape.chmod(0o600)
    d = start_daemon(TOPOLOGY, token="api", args=["--metrics-token-file", str(scrape)])
    got = d.get("/metrics", token=False)
    assert got.status == 401
    assert got.body == {"error": "missing or wrong bearer token for /metrics (Authorization: "
                                 "Bearer TOKEN, the token of --metrics-token-file)"}
    assert d.get("/metrics", token="wrong").status == 401
    scraped = d.get("/metrics", token="scrape-only")
    assert scraped.status == 200 and b"runner_topology_info" in scraped.raw
    assert d.get("/metrics", token="api").status == 200  # the API token is good here too
    assert d.get("/v1/status", token="scrape-only").status == 401  # but not the reverse
    for path in ("/healthz", "/readyz"):
        assert d.get(path, token=False).status == 200


def test_an_empty_metrics_token_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "t.yaml").write_text(TOPOLOGY)
    (tmp_path / "m").write_text("\n")
    done = run_cli(tmp_path, "run", "t.yaml", "--listen", "127.0.0.1:0",
                   "--metrics-token-file", "m")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == "runner run: --metrics-token-file m is empty"
