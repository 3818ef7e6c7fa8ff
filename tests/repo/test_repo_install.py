"""What an installed wheel holds and says: runtime dependencies, `runner bench` outside a
checkout, the README's install lines."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_pika_is_an_extra_and_only_the_rabbitmq_backend_imports_it() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert not any(dep.startswith("pika") for dep in project["dependencies"])
    for extra in ("bench", "rabbitmq", "test"):
        assert any(dep.startswith("pika") for dep in project["optional-dependencies"][extra])
    importers = {
        path.relative_to(REPO).as_posix() for path in (REPO / "runner").rglob("*.py")
        if "import pika" in path.read_text() or "from pika" in path.read_text()
    }
    # only the RabbitMQ backend package and the daemon over it (runner.daemon.remote*)
    # may import pika; the CLI reaches them lazily (next test)
    assert importers
    assert all(path.startswith(("runner/backends/rabbitmq/", "runner/daemon/remote"))
               for path in importers), importers
    assert "'.[test,lint,bench]'" in (REPO / "Makefile").read_text()


def test_runner_bench_from_an_installed_package_says_it_needs_a_checkout(
    tmp_path: Path,
) -> None:
    # the package as a wheel installs it: `runner/` alone in site-packages, no benchmarks
    site = tmp_path / "site-packages"
    shutil.copytree(REPO / "runner", site / "runner",
                    ignore=shutil.ignore_patterns("__pycache__"))
    elsewhere = tmp_path / "project"
    elsewhere.mkdir()
    code = (f"import sys; sys.path.insert(0, {str(site)!r}); "
            "from runner.cli import main; sys.exit(main(['bench']))")
    done = subprocess.run([sys.executable, "-c", code], cwd=elsewhere, capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 1
    assert done.stderr == (
        "runner bench: the benchmarks run from a source checkout of topology-runner "
        f"(benchmarks/bench_*.py beside pyproject.toml), and there is none in {elsewhere} "
        "or its parents; clone the repository and run `make bench` there\n"
    )


def test_readme_installs_from_the_repository_not_an_index() -> None:
    readme = (REPO / "README.md").read_text()
    for doc in [REPO / "README.md", *(REPO / "docs").glob("*.md")]:
        assert "pip install topology-runner" not in doc.read_text(), doc
    assert "- run: pip install ./topology-runner" in readme
    assert "pip wheel --no-deps -w dist ." in readme


def test_the_cli_and_the_embedded_daemon_run_without_pika() -> None:
    code = ("import sys; import runner.cli, runner.cli.daemon, runner.daemon.supervisor; "
            "sys.exit(1 if 'pika' in sys.modules else 0)")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr or "importing the CLI imported pika"
