"""`runner completion bash|zsh|fish` in the real shells, and the pre-commit hooks the
repository declares, run the way pre-commit runs them."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.cli.console import RUNNER, run, write

REPO = Path(__file__).resolve().parents[2]


def shell(name: str) -> str:
    """The shell's path: skipped with one line without it locally, failed under CI."""
    exe = shutil.which(name)
    if exe is None:
        missing = f"{name} is missing: install it with `sudo apt-get install {name}`"
        if os.environ.get("CI"):
            pytest.fail(f"{missing} (CI is set: required)", pytrace=False)
        pytest.skip(missing)
    return exe


def script(tmp_path: Path, name: str) -> Path:
    done = run(tmp_path, "completion", name)
    assert done.returncode == 0, done.stderr
    path = tmp_path / f"runner.{name}"
    path.write_text(done.stdout)
    return path


def bash_complete(tmp_path: Path, line: str) -> list[str]:
    """What the sourced bash script offers for `line` (the cursor at its end)."""
    words = shlex.split(line) + ([""] if line.endswith(" ") else [])
    program = (f"source {shlex.quote(str(script(tmp_path, 'bash')))}\n"
               f"COMP_WORDS=({' '.join(shlex.quote(w) for w in words)})\n"
               f"COMP_CWORD={len(words) - 1}\n"
               '_runner\nprintf "%s\\n" "${COMPREPLY[@]}"\n')
    done = subprocess.run([shell("bash"), "--norc", "-c", program], cwd=tmp_path,
                          capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    return [w for w in done.stdout.splitlines() if w]


def test_bash_completes_commands_nested_commands_options_choices_and_files(
    tmp_path: Path,
) -> None:
    assert {"validate", "run", "dlq", "groups", "completion"} <= set(
        bash_complete(tmp_path, "runner "))
    assert bash_complete(tmp_path, "runner va") == ["validate"]
    assert bash_complete(tmp_path, "runner dlq ") == ["list", "show", "replay", "purge",
                                                      "--help"]
    assert bash_complete(tmp_path, "runner dlq re") == ["replay"]
    assert bash_complete(tmp_path, "runner groups describe --") == [
        "--help", "--url", "--token", "--format"]
    assert bash_complete(tmp_path, "runner run topo.yaml --fsync ") == [
        "always", "interval", "never"]
    assert bash_complete(tmp_path, "runner validate --format g") == ["github"]
    assert "--pythonpath" in bash_complete(tmp_path, "runner run x.yaml --py")
    write(tmp_path / "shop.yaml", "version: 1\n")
    assert bash_complete(tmp_path, "runner validate sh") == ["shop.yaml"]
    assert bash_complete(tmp_path, "runner run --data-dir sh") == ["shop.yaml"]
    assert bash_complete(tmp_path, "runner run --listen ") == []  # a free value


def test_zsh_loads_the_script_through_bashcompinit(tmp_path: Path) -> None:
    program = (f"source {shlex.quote(str(script(tmp_path, 'zsh')))}\n"
               "setopt ksharrays\nCOMP_WORDS=(runner run x.yaml --fsync '')\nCOMP_CWORD=4\n"
               '_runner\nprint -l "${COMPREPLY[@]}"\n')
    done = subprocess.run([shell("zsh"), "-f", "-c", program], cwd=tmp_path,
                          capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["always", "interval", "never"]


def test_fish_completes_through_its_own_complete_command(tmp_path: Path) -> None:
    path = script(tmp_path, "fish")

    def complete(line: str) -> list[str]:
        program = f"source {shlex.quote(str(path))}; complete -C {shlex.quote(line)}"
        done = subprocess.run([shell("fish"), "--no-config", "-c", program], cwd=tmp_path,
                              capture_output=True, text=True, timeout=30, check=False)
        assert done.returncode == 0 and done.stderr == "", done.stderr
        return [w.split("\t")[0] for w in done.stdout.splitlines()]

    assert complete("runner dlq re") == ["replay"]
    assert complete("runner gr") == ["graph", "groups"]
    assert complete("runner groups d") == ["describe"]
    assert complete("runner run x.yaml --fsync ") == ["always", "interval", "never"]
    assert "--lag-threshold" in complete("runner alerts x.yaml --lag")


def test_an_unknown_shell_is_a_usage_error(tmp_path: Path) -> None:
    done = run(tmp_path, "completion", "powershell")
    assert done.returncode == 2
    assert "invalid choice: 'powershell' (choose from 'bash', 'zsh', 'fish')" in done.stderr


# ---------------------------------------------------------------- pre-commit hooks


def hook_run(hook: dict[str, object], staged: list[str], cwd: Path,
             ) -> subprocess.CompletedProcess[str] | None:
    """Run `hook` as pre-commit does: the staged files its `files`/`exclude`/`types`
    select appended to `entry` + `args` (unless `pass_filenames: false`); None when
    it selects nothing (pre-commit then skips it)."""
    files = [f for f in staged
             if re.search(str(hook.get("files", "")), f)
             and not (hook.get("exclude") and re.search(str(hook["exclude"]), f))
             and ("yaml" not in str(hook.get("types", [])) or f.endswith((".yaml", ".yml")))]
    if not files:
        return None
    entry = shlex.split(str(hook["entry"]))
    assert entry[0] == "runner" and hook["language"] == "python"  # the package's script
    argv = [RUNNER, *entry[1:], *hook.get("args", [])]  # type: ignore[misc]
    if hook.get("pass_filenames", True):
        argv += files
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=60,
                          check=False)


def test_the_pre_commit_hooks_validate_what_is_staged(tmp_path: Path) -> None:
    hooks = {h["id"]: h for h in yaml.safe_load((REPO / ".pre-commit-hooks.yaml").read_text())}
    assert set(hooks) == {"runner-validate", "runner-validate-dir"}
    write(tmp_path / "topologies" / "a.yaml", "version: 1\nqueues:\n  jobs: {}\n")
    write(tmp_path / "topologies" / "b.yaml",
          "version: 1\nconsumers:\n  w: {queue: jobs, handler: 'x:y'}\n")
    write(tmp_path / "single.yaml", "version: 1\nqueues:\n  q: {max_lenght: 3}\n")
    write(tmp_path / "shop_test.yaml", "topology: single.yaml\ncases: []\n")
    # per file: a bad file fails the commit with its line; test files are left alone
    per_file = hooks["runner-validate"]
    done = hook_run(per_file, ["single.yaml", "shop_test.yaml", "README.md"], tmp_path)
    assert done is not None and done.returncode == 1
    assert "single.yaml:3:" in done.stdout and "max_lenght" in done.stdout
    assert "shop_test.yaml" not in done.stdout
    assert hook_run(per_file, ["README.md", "shop_test.yaml"], tmp_path) is None
    # the directory hook validates the merged directory (b.yaml alone would not be valid)
    by_dir = hooks["runner-validate-dir"]
    done = hook_run(by_dir, ["topologies/b.yaml"], tmp_path)
    assert done is not None and done.returncode == 0, done.stdout
    assert done.stdout.endswith("0 errors, 1 warning in 1 topology (valid)\n")
    write(tmp_path / "topologies" / "b.yaml",
          "version: 1\nconsumers:\n  w: {queue: job, handler: 'x:y'}\n")
    done = hook_run(by_dir, ["topologies/b.yaml"], tmp_path)
    assert done is not None and done.returncode == 1
    assert done.stdout.startswith('topologies/b.yaml:3:14: error: queue "job" of consumer "w" '
                                  'does not exist; did you mean "jobs"?')
