"""promtool for the tests: required, never skipped (install Debian's `prometheus`)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path


def promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("promtool")
    assert exe is not None, (
        "promtool is missing: install it with "
        "`apt-get update -qq && apt-get install -y prometheus`"
    )
    return subprocess.run(
        [exe, *args], input=stdin, capture_output=True, text=True, timeout=60, check=False
    )


def check_rules(path: Path) -> subprocess.CompletedProcess[str]:
    return promtool("check", "rules", str(path))


def check_metrics(text: str) -> subprocess.CompletedProcess[str]:
    return promtool("check", "metrics", stdin=text)
