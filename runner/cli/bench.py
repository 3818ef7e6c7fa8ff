"""`runner bench`: every benchmarks/bench_*.py, side by side with its floor.

Each script runs in its own subprocess with the current interpreter, from the
repository root, `--quick` unless `--full`; its output is passed through. The
benchmarks are not in the package: they run from a source checkout (the
working directory or one of its parents, or the checkout of an editable
install), and an installed wheel says so.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path


def _repo_root() -> Path:
    here = Path.cwd()
    for candidate in (here, *here.parents, Path(__file__).resolve().parents[2]):
        if (candidate / "benchmarks").is_dir() and (candidate / "pyproject.toml").is_file():
            return candidate
    return here


def cmd_bench(args: argparse.Namespace) -> int:
    root = _repo_root()
    scripts = sorted((root / "benchmarks").glob("bench_*.py"))
    if not scripts:
        print(
            f"runner bench: the benchmarks run from a source checkout of topology-runner "
            f"(benchmarks/bench_*.py beside pyproject.toml), and there is none in {root} "
            "or its parents; clone the repository and run `make bench` there",
            file=sys.stderr,
        )
        return 1
    if args.only:
        scripts = [s for s in scripts if any(o in s.stem for o in args.only)]
    if not scripts:
        names = ", ".join(s.stem for s in sorted((root / "benchmarks").glob("bench_*.py")))
        print(f"runner bench: no benchmarks/bench_*.py under {root} matches --only "
              f"{' '.join(args.only)} (there are: {names})", file=sys.stderr)
        return 1
    failed = []
    for script in scripts:
        cmd = [sys.executable, str(script.relative_to(root))]
        if not args.full:
            cmd.append("--quick")
        print(f"=== {script.name} ({'full' if args.full else 'quick'})", flush=True)
        done = subprocess.run(cmd, cwd=root, check=False)
        if done.returncode != 0:
            failed.append(f"{script.name} (exit {done.returncode})")
    if failed:
        print("runner bench: failed: " + ", ".join(failed), file=sys.stderr)
        return 1
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    bench = sub.add_parser("bench", help="run the side-by-side benchmarks")
    bench.add_argument("--full", action="store_true", help="full runs instead of --quick")
    bench.add_argument("--only", action="append", metavar="NAME",
                       help="only benchmarks whose name contains NAME (repeatable)")
    bench.set_defaults(func=cmd_bench)
