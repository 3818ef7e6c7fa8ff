"""`--pythonpath DIR`: where handler modules are imported from, for commands that import them.

Handler references (`module:callable`) are imported with the current directory
on `sys.path`; running from another directory needs the handlers' directory
named: `--pythonpath DIR` (repeatable, or several joined with `os.pathsep`)
puts DIR first on `sys.path`, as `PYTHONPATH` would.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def add_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--pythonpath", action="append", default=[], metavar="DIR",
        help="import handler modules from DIR too (first on sys.path; repeatable)",
    )


def apply(args: argparse.Namespace, command: str) -> str | None:
    """Put every `--pythonpath` directory first on sys.path, in the order given;
    an error sentence for a directory that does not exist (nothing changed then)."""
    dirs: list[str] = []
    for value in getattr(args, "pythonpath", []):
        for part in value.split(os.pathsep):
            if not part:
                continue
            if not Path(part).is_dir():
                return f"runner {command}: --pythonpath {part}: no such directory"
            dirs.append(str(Path(part).resolve()))
    for directory in reversed(dirs):
        if directory in sys.path:
            sys.path.remove(directory)
        sys.path.insert(0, directory)
    return None
