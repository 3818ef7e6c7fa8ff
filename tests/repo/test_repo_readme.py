"""The README's quick start is one working scenario, run here exactly as written: its
topology is the shipped file, its handler is the shipped code, and its shell lines
(against a real `runner run topologies/`) print what the `#>` lines say."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text()
RUNNER = REPO / ".venv" / "bin" / "runner"

pytestmark = pytest.mark.e2e


def section(title: str) -> str:
    start = README.index(f"\n## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start:end if end != -1 else None]


def block(text: str, lang: str) -> str:
    match = re.search(rf"```{lang}\n(.*?)```\n", text, re.S)
    assert match is not None, f"no ```{lang} block"
    return match.group(1)


def test_the_readme_topology_is_the_shipped_file() -> None:
    shipped = (REPO / "topologies" / "order-events.yaml").read_text()
    assert block(section("A topology"), "yaml") == shipped


def test_the_readme_handler_is_the_shipped_code() -> None:
    code = block(section("Handlers and chaining pipeline stages"), "python")
    first, _, rest = code.partition("\n")
    assert first == "# examples/shop/orders.py"
    assert rest in (REPO / "examples" / "shop" / "orders.py").read_text()


def shell_steps(text: str) -> list[tuple[str, list[str]]]:
    """(command, expected output lines) for each command of the block; a trailing
    backslash continues a command."""
    steps: list[tuple[str, list[str]]] = []
    pending = ""
    for line in text.splitlines():
        if line.startswith("#>"):
            steps[-1][1].append(line[3:] if line.startswith("#> ") else line[2:])
        elif line.startswith("#") or not line.strip():
            continue
        elif line.endswith("\\"):
            pending += line[:-1] + " "
        else:
            steps.append((pending + line, []))
            pending = ""
    return steps


def matches(expected: list[str], output: str) -> bool:
    """The output against the `#>` lines, where `...` stands for anything."""
    pattern = ".*?".join(re.escape(part) for part in "\n".join(expected).split("..."))
    return re.fullmatch(pattern, output.rstrip("\n"), re.S) is not None


@pytest.fixture
def shop(tmp_path: Path) -> Iterator[int]:
    log = tmp_path / "daemon.log"
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("RUNNER_TOKEN", None)
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(RUNNER), "run", "topologies/", "--data-dir", str(tmp_path / "data"),
             "--listen", "127.0.0.1:0", "--no-watch"],
            cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        while not (found := re.search(r"listening on http://[^:\s]+:(\d+)", log.read_text())):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        yield int(found.group(1))
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, log.read_text()
        assert "Traceback" not in log.read_text(), log.read_text()


def test_the_quick_start_lines_do_what_the_readme_says(shop: int) -> None:
    steps = shell_steps(block(section("Running the daemon"), "sh"))
    assert len(steps) == 7 and sum(1 for _, out in steps if out) == 5
    env = {**os.environ, "RUNNER_URL": f"http://127.0.0.1:{shop}"}
    env.pop("RUNNER_TOKEN", None)
    for command, expected in steps:
        line = command.replace("localhost:8080", f"127.0.0.1:{shop}")
        deadline = time.monotonic() + 20
        while True:  # handlers run asynchronously: what they write shows up shortly
            done = subprocess.run(["bash", "-c", line], cwd=REPO, env=env, capture_output=True,
                                  text=True, timeout=60, check=False)
            assert done.returncode == 0, (command, done.stderr)
            if matches(expected, done.stdout) if expected else done.stdout:
                break
            assert time.monotonic() < deadline, (command, expected, done.stdout)
            time.sleep(0.2)
