"""`runner apply PATH --backend amqp://... [--prune]`: declare a topology on a broker.

Exit codes: 0 applied (or nothing to do), 1 refused (nothing declared; the
unsafe changes and the broker's reasons on stderr), 2 usage -- a bad URL, an
invalid topology, an unreachable broker.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from runner.cli import report
from runner.cli.validate import USAGE, load_valid


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "apply", help="declare the topology on a RabbitMQ vhost (idempotent)",
        description="Declare PATH's exchanges, queues, streams and bindings on the broker. "
        "Unsafe changes are refused with the reason and nothing is declared.",
    )
    p.add_argument("path", metavar="PATH")
    p.add_argument("--backend", metavar="URL", required=True,
                   help="amqp://user:pass@host[:port]/vhost")
    p.add_argument("--prune", action="store_true",
                   help="also delete what the topology no longer declares")
    p.set_defaults(func=apply_command)


def apply_command(args: argparse.Namespace) -> int:
    from runner.backends.rabbitmq import live
    from runner.backends.rabbitmq.url import BadURL, parse

    try:
        target = parse(args.backend)
    except BadURL as exc:
        print(f"runner apply: --backend {exc}", file=sys.stderr)
        return USAGE
    topology = load_valid("apply", args.path)
    if topology is None:
        return USAGE
    try:
        from runner.backends.rabbitmq.apply import Refused, apply
    except ModuleNotFoundError as exc:  # pika is an extra
        print(f"runner apply: {exc.name} is missing: pip install 'topology-runner[rabbitmq]'",
              file=sys.stderr)
        return USAGE
    try:
        done = apply(target, topology, prune=args.prune)
    except live.Unreachable as exc:
        print(f"runner apply: {exc}", file=sys.stderr)
        return USAGE
    except Refused as exc:
        print(f"runner apply: refused, nothing declared on {target}:", file=sys.stderr)
        for c in exc.changes:
            print("  " + report.change_line(c), file=sys.stderr)
        for reason in exc.reasons:
            print("  " + reason, file=sys.stderr)
        return 1
    sys.stdout.write("".join(line + "\n" for line in done.lines) or "no changes\n")
    return 0
