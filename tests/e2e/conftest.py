"""End-to-end fixtures: the REAL daemon (`.venv/bin/runner run`) as a subprocess.

`start_daemon(...)` writes a topology to a tmp dir, starts `runner run` on a
free port (`--listen 127.0.0.1:0`, the bound port read from its log), waits
for /readyz, and hands back a `Daemon` that talks real HTTP. On teardown every
daemon still running gets SIGTERM and must exit 0 without a traceback.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
RUNNER = REPO / ".venv" / "bin" / "runner"
_LISTENING = re.compile(r"listening on http://[^:\s]+:(\d+)")


@dataclass
class Answer:
    status: int
    body: Any
    headers: dict[str, str]
    raw: bytes = b""


@dataclass
class Daemon:
    """A running `runner run` subprocess and a small HTTP client for it."""

    topology: Path
    data_dir: Path
    workdir: Path
    args: list[str]
    env: dict[str, str]
    token: str | None = None
    proc: subprocess.Popen[bytes] | None = None
    port: int = 0
    log_path: Path = field(default_factory=lambda: Path("/dev/null"))
    starts: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # ---------------------------------------------------------------- process
    def start(self, *, expect_ready: bool = True, timeout_s: float = 30.0) -> None:
        self.starts += 1
        self.log_path = self.workdir / f"daemon-{self.starts}.log"
        cmd = [str(RUNNER), "run", str(self.topology), "--data-dir", str(self.data_dir),
               "--listen", "127.0.0.1:0", *self.args]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                cmd, cwd=self.workdir, env=self.env, stdout=log, stderr=subprocess.STDOUT
            )
        if not expect_ready:
            return
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            match = _LISTENING.search(self.log())
            if match:
                self.port = int(match.group(1))
                break
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited {self.proc.returncode}:\n{self.log()}")
            time.sleep(0.05)
        else:
            raise AssertionError(f"daemon did not listen within {timeout_s}s:\n{self.log()}")
        while time.monotonic() < deadline:
            if self.get("/readyz").status == 200:
                return
            time.sleep(0.05)
        raise AssertionError(f"daemon never became ready:\n{self.log()}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout_s: float = 60.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout_s)

    def stop(self, timeout_s: float = 60.0) -> int:
        """SIGTERM, wait, and check the clean-stop promise: exit 0, no traceback."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=timeout_s)
        output = self.log()
        assert code == 0, f"daemon exited {code}:\n{output}"
        assert "Traceback" not in output, output
        self.proc = None
        return code

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=30)
        self.proc = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # ---------------------------------------------------------------- HTTP
    def request(
        self, method: str, path: str, body: Any = None, *, raw: bytes | None = None,
        token: str | None | bool = True, headers: dict[str, str] | None = None,
    ) -> Answer:
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        req = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        use = self.token if token is True else (token or None)
        if use:
            req.add_header("Authorization", f"Bearer {use}")
        for k, v in (headers or {}).items():
            req.add_header(k, v)
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                payload = resp.read()
                status, hdrs = resp.status, dict(resp.headers)
        except urllib.error.HTTPError as exc:
            payload, status, hdrs = exc.read(), exc.code, dict(exc.headers)
        try:
            parsed = json.loads(payload) if payload else None
        except ValueError:
            parsed = None
        return Answer(status, parsed, hdrs, payload)

    def get(self, path: str, **kw: Any) -> Answer:
        return self.request("GET", path, **kw)

    def post(self, path: str, body: Any = None, **kw: Any) -> Answer:
        return self.request("POST", path, body, **kw)

    def ok(self, method: str, path: str, body: Any = None, status: int = 200) -> Any:
        answer = self.request(method, path, body)
        assert answer.status == status, (answer.status, answer.body)
        return answer.body

    def drain(self, queue: str, most: int = 1000) -> list[Any]:
        """The bodies of up to `most` messages pulled from `queue` and acked."""
        got = self.ok("POST", f"/v1/queues/{queue}/pull", {"max": most})["messages"]
        if got:
            self.ok("POST", f"/v1/queues/{queue}/ack",
                    {"delivery_ids": [m["delivery_id"] for m in got]})
        return [m["body"] for m in got]

    def metrics(self) -> str:
        answer = self.get("/metrics")
        assert answer.status == 200
        return answer.raw.decode()

    def cli(self, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
        env = dict(self.env)
        if self.token:
            env["RUNNER_TOKEN"] = self.token
        return subprocess.run(
            [str(RUNNER), *args, "--url", self.url], cwd=self.workdir, env=env,
            input=stdin.decode() if stdin is not None else None, capture_output=True,
            text=True, timeout=60, check=False,
        )


def make_daemon(
    workdir: Path, topology: str | dict[str, str], *, args: list[str] | None = None,
    token: str | None = None, modules: dict[str, str] | None = None,
) -> Daemon:
    """A not-yet-started daemon: topology (text, or {filename: text} for a directory)."""
    workdir.mkdir(parents=True, exist_ok=True)
    if isinstance(topology, str):
        path = workdir / "topology.yaml"
        path.write_text(topology)
    else:
        path = workdir / "topology"
        path.mkdir(exist_ok=True)
        for name, text in topology.items():
            (path / name).write_text(text)
    for name, source in (modules or {}).items():
        (workdir / f"{name}.py").write_text(source)
    env = {k: v for k, v in os.environ.items() if k != "RUNNER_TOKEN"}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    extra = list(args or [])
    if token is not None:
        (workdir / "token").write_text(token + "\n")
        (workdir / "token").chmod(0o600)  # a group/other-readable token file is warned about
        extra += ["--token-file", str(workdir / "token")]
    return Daemon(topology=path, data_dir=workdir / "data", workdir=workdir, args=extra,
                  env=env, token=token)


@pytest.fixture
def start_daemon(tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    """Start real daemons for one test; each must stop cleanly at teardown."""
    started: list[Daemon] = []

    def start(topology: str | dict[str, str], **kw: Any) -> Daemon:
        daemon = make_daemon(tmp_path / f"d{len(started)}", topology, **kw)
        started.append(daemon)
        daemon.start()
        return daemon

    yield start
    for daemon in started:
        if daemon.running:
            daemon.stop()


def module_daemon(workdir: Path, topology: str, **kw: Any) -> Iterator[Daemon]:
    """One daemon shared by a test module (yield from it in a module-scoped fixture);
    it must stop without a traceback or an unexpected error in its log."""
    d = make_daemon(workdir, topology, **kw)
    d.start()
    yield d
    d.stop()
    assert "Traceback" not in d.log() and "unexpected error" not in d.log()


def error_of(
    d: Daemon, method: str, path: str, body: object = None, **kw: Any
) -> tuple[int, str]:
    """(status, sentence) of a refused request: a 4xx or 5xx JSON `{"error": ...}`."""
    answer = d.request(method, path, body, **kw)
    assert answer.status >= 400, (answer.status, answer.body)
    assert answer.headers.get("Content-Type", "").startswith("application/json"), answer
    assert set(answer.body) >= {"error"}
    return answer.status, answer.body["error"]


def wait_for(check: Callable[[], Any], timeout_s: float = 15.0, every_s: float = 0.05) -> Any:
    """Poll `check` until it returns something truthy; fail with its last value."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(every_s)
    raise AssertionError(f"condition not met within {timeout_s}s (last: {last!r})")


def python() -> str:
    return sys.executable
