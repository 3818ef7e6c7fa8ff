"""promtool for the tests: `make test` installs it when it may (tools/ensure-promtool);
without it these tests skip with one line saying how to install it, except under CI
(the `CI` variable set), where they fail."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

MISSING = (
    "promtool is missing: install it with `sudo apt-get install prometheus` "
    "(Debian/Ubuntu) or from https://prometheus.io/download/"
)


def promtool_path() -> str:
    """promtool's path; skips the test without it (fails it when CI is set)."""
    exe = shutil.which("promtool")
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail(f"{MISSING} (CI is set: required)", pytrace=False)
        pytest.skip(MISSING)
    return exe


def promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    exe = promtool_path()
    return subprocess.run(
        [exe, *args], input=stdin, capture_output=True, text=True, timeout=60, check=False
    )


def check_rules(path: Path) -> subprocess.CompletedProcess[str]:
    return promtool("check", "rules", str(path))


def check_metrics(text: str) -> subprocess.CompletedProcess[str]:
    return promtool("check", "metrics", stdin=text)
