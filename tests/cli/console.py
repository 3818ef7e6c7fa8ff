"""Run the real `runner` console script in a subprocess (shared by the CLI tests)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

RUNNER = str(Path(sys.executable).parent / "runner")


def run(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [RUNNER, *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path
