"""Set-up on a fresh machine: `make test` installs promtool when it may, else its tests
skip with one clear line (and fail under CI)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ENSURE = REPO / "tools" / "ensure-promtool"


def fake_bin(tmp_path: Path, scripts: dict[str, str]) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(parents=True)
    for name, body in scripts.items():
        path = bin_dir / name
        path.write_text("#!/bin/sh\n" + textwrap.dedent(body))
        path.chmod(0o755)
    return bin_dir


def ensure(bin_dir: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["/bin/sh", str(ENSURE)], env={"PATH": str(bin_dir), **env},
                          capture_output=True, text=True, timeout=60, check=False)


def test_make_test_runs_the_promtool_check_first() -> None:
    makefile = (REPO / "Makefile").read_text()
    recipe = makefile.split("\ntest:", 1)[1].split("\n\n", 1)[0]
    assert recipe.index("tools/ensure-promtool") < recipe.index("pytest")


def test_nothing_to_do_when_promtool_is_there(tmp_path: Path) -> None:
    bin_dir = fake_bin(tmp_path, {"promtool": "exit 0\n", "id": "echo 1000\n"})
    done = ensure(bin_dir, CI="1")
    assert (done.returncode, done.stderr) == (0, "")


def test_root_with_apt_installs_prometheus(tmp_path: Path) -> None:
    log = tmp_path / "apt.log"
    tool = tmp_path / "bin" / "promtool"
    bin_dir = fake_bin(tmp_path, {
        "id": "echo 0\n",
        "apt-get": f"""\
            echo "$@" >> {log}
            case "$*" in *install*) printf '#!/bin/sh\\n' > {tool}; /bin/chmod +x {tool};; esac
        """,
    })
    done = ensure(bin_dir)
    assert done.returncode == 0, done.stderr
    assert log.read_text().splitlines() == ["update -qq", "install -y -qq prometheus"]
    assert done.stderr == (
        "make test: promtool is missing; installing it (apt-get install prometheus)\n"
    )


def test_without_permission_one_line_says_how_to_install(tmp_path: Path) -> None:
    bin_dir = fake_bin(tmp_path, {"id": "echo 1000\n", "apt-get": "exit 99\n"})
    done = ensure(bin_dir)
    assert done.returncode == 0
    assert done.stderr.splitlines() == [
        "make test: promtool is missing, so the tests that check metrics and alert rules with"
        " it will skip; install it with `sudo apt-get install prometheus` (Debian/Ubuntu) or"
        " from https://prometheus.io/download/"
    ]
    # root who said no, and a machine without apt-get: the same line, nothing installed
    root = fake_bin(tmp_path / "root", {"id": "echo 0\n", "apt-get": "exit 99\n"})
    assert ensure(root, RUNNER_INSTALL_TOOLS="0").stderr == done.stderr
    assert ensure(fake_bin(tmp_path / "noapt", {"id": "echo 0\n"})).stderr == done.stderr


def test_under_ci_a_missing_promtool_fails(tmp_path: Path) -> None:
    bin_dir = fake_bin(tmp_path, {"id": "echo 1000\n"})
    done = ensure(bin_dir, CI="true")
    assert done.returncode == 1
    assert done.stderr.splitlines()[-1] == "make test: CI is set, where promtool is required"


PROBE = """\
from tests.daemon.promtool import check_metrics


def test_one() -> None:
    check_metrics("x 1\\n")


def test_two() -> None:
    check_metrics("y 1\\n")
"""


def run_probe(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    probe = REPO / "tests" / "repo" / f"probe_{os.getpid()}_{tmp_path.name}.py"
    probe.write_text(PROBE)
    try:
        python_dir = str(Path(sys.executable).parent)
        return subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", str(probe)],
            cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
            env={**{k: v for k, v in os.environ.items() if k != "CI"}, "PATH": python_dir,
                 **env},
        )
    finally:
        probe.unlink()


def test_tests_needing_promtool_skip_with_one_line(tmp_path: Path) -> None:
    done = run_probe(tmp_path)
    assert done.returncode == 0, done.stdout
    skipped = [line for line in done.stdout.splitlines() if line.startswith("SKIPPED")]
    assert len(skipped) == 1, done.stdout
    assert skipped[0].startswith("SKIPPED [2] ")
    assert skipped[0].endswith(
        "promtool is missing: install it with `sudo apt-get install prometheus` "
        "(Debian/Ubuntu) or from https://prometheus.io/download/"
    )


def test_tests_needing_promtool_fail_under_ci(tmp_path: Path) -> None:
    done = run_probe(tmp_path, CI="1")
    assert done.returncode == 1, done.stdout
    assert "2 failed" in done.stdout and "(CI is set: required)" in done.stdout
