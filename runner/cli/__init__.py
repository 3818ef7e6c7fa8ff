"""The `runner` command line: parse arguments, build library objects, run, exit code.

Each group of commands lives in its own module with `register(subparsers)`;
a registered command sets `func(args) -> int` on its parser. Only `cli/`
writes to the terminal.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from runner import __version__

# Modules that register subcommands, in help order.
_COMMAND_MODULES = (
    "runner.cli.validate",  # validate, schema, plan, graph
    "runner.cli.daemon",  # run, alerts
    "runner.cli.client",  # publish, status, dlq
    "runner.cli.consume",  # consume
    "runner.cli.lists",  # queues, exchanges, bindings, topics, groups
    "runner.cli.bench",  # bench
    "runner.cli.topotest",  # test
    "runner.cli.route",  # route
    "runner.cli.completion",  # completion
    "runner.cli.backend",  # apply
)


class Parser(argparse.ArgumentParser):
    """Never reads an abbreviation as a longer option (`--to` is not `--token`); the
    subcommand parsers are of this class too."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["allow_abbrev"] = False
        super().__init__(*args, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = Parser(
        prog="runner",
        description="Declarative pipeline runner for Kafka-style topics and "
        "RabbitMQ-style exchanges and queues.",
    )
    parser.add_argument("--version", action="version", version=f"runner {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on usage errors, 0 on --help
        return int(exc.code or 0)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return 2
    result: int = func(args)
    return result


def entry() -> None:
    sys.exit(main())
