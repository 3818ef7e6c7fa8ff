"""The offline topology commands: `validate`, `schema`, `plan` and `graph`.

Each parses its arguments, loads topologies with `runner.topology.load`, and
hands the result to a reporter (`cli/report.py`). Exit codes (INTERFACES.md):
0 fine, 1 invalid / unsafe, 2 usage -- including a path that does not exist,
and for `plan` an OLD or NEW topology that does not load.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.resources
import os
import sys
from typing import Any

from runner.cli import pythonpath, report
from runner.topology.graph import FORMATS, diagram, dot_of, mermaid_of
from runner.topology.graph_view import CLUSTER_BY, UnknownEntity, View, build
from runner.topology.model import Topology
from runner.topology.problems import Problem, Severity

USAGE = 2


def register(subparsers: Any) -> None:
    """Add `validate`, `schema`, `plan` and `graph` to the `runner` parser."""
    p = subparsers.add_parser(
        "validate",
        help="check topology files or directories",
        description="Validate topologies; each PATH (a file or a directory) is one topology.",
    )
    p.add_argument("paths", nargs="+", metavar="PATH")
    p.add_argument("--format", choices=sorted(report.REPORTERS), default="text")
    p.add_argument("--strict", action="store_true", help="warnings make the topology invalid")
    p.add_argument(
        "--check-handlers",
        action="store_true",
        help="import every handler (module:callable, the working directory on sys.path)",
    )
    p.add_argument(
        "--backend", metavar="URL",
        help="also refuse what this backend cannot express (amqp://user:pass@host[:port]/vhost; "
        "the broker is not contacted)",
    )
    pythonpath.add_option(p)
    p.set_defaults(func=validate_command)

    p = subparsers.add_parser("schema", help="print the JSON Schema of topology files")
    p.set_defaults(func=schema_command)

    p = subparsers.add_parser(
        "plan",
        help="changes from topology OLD to NEW, each safe or unsafe",
        description="Print the changes from OLD to NEW. Unsafe changes end with "
        "'! UNSAFE: reason'; the exit code is 1 when there is one.",
    )
    p.add_argument("old", metavar="OLD")
    p.add_argument("new", metavar="NEW", nargs="?")
    p.add_argument("--format", choices=("text", "json"), default="text")
    p.add_argument(
        "--against", metavar="URL",
        help="plan PATH against a live RabbitMQ vhost (amqp://user:pass@host[:port]/vhost, "
        "read through its management API) instead of OLD NEW",
    )
    p.set_defaults(func=plan_command)

    p = subparsers.add_parser(
        "graph", help="the topology as a Mermaid or Graphviz diagram",
        description="Draw the topology. Dead-letter edges of several queues into one "
        "exchange (and dlq_policy edges into one queue) meet in a junction first.",
    )
    p.add_argument("path", metavar="PATH")
    p.add_argument("--format", choices=FORMATS, default="mermaid")
    p.add_argument("--only", metavar="NAME",
                   help="draw only what feeds NAME and where its messages go")
    p.add_argument("--cluster", choices=CLUSTER_BY, default="none",
                   help="boxes per kind, or per name prefix (up to the first . - _)")
    p.add_argument("--legend", action="store_true", help="add a legend of shapes and edges")
    p.add_argument("--no-merge", action="store_true",
                   help="draw every dead-letter edge on its own (no junctions)")
    p.set_defaults(func=graph_command)


def _missing_paths(command: str, paths: list[str]) -> bool:
    missing = [p for p in paths if not os.path.exists(p)]
    for path in missing:
        print(f"runner {command}: {path}: no such file or directory", file=sys.stderr)
    return bool(missing)


def _load(path: str) -> tuple[Topology | None, list[Problem]]:
    topology, _, problems = _load_partial(path)
    return topology, problems


def _load_partial(path: str) -> tuple[Topology | None, Topology | None, list[Problem]]:
    """(the topology or None when invalid, the topology of its valid parts, problems)."""
    from runner.topology.load import load

    result = load(path)
    return result.topology, result.partial, list(result.problems)


# ---------------------------------------------------------------- validate


def validate_command(args: argparse.Namespace) -> int:
    paths: list[str] = args.paths
    if _missing_paths("validate", paths):
        return USAGE
    refused = pythonpath.apply(args, "validate")
    if refused is not None:
        print(refused, file=sys.stderr)
        return USAGE
    if args.backend is not None:
        from runner.backends.rabbitmq.url import BadURL, parse

        try:
            parse(args.backend)
        except BadURL as exc:
            print(f"runner validate: --backend {exc}", file=sys.stderr)
            return USAGE
    problems: list[Problem] = []
    for path in paths:
        _, readable, found = _load_partial(path)
        if args.backend is not None and readable is not None:
            from runner.backends.rabbitmq.mapping import problems as backend_problems

            found.extend(backend_problems(readable))
            found.sort(key=Problem.sort_key)
        if args.check_handlers and readable is not None:
            # also when the topology has errors: the handlers that could be read
            found.extend(check_handlers(readable))
            found.sort(key=Problem.sort_key)
        problems.extend(found)
    outcome = report.Outcome(tuple(problems), tuple(paths), strict=args.strict)
    sys.stdout.write(report.REPORTERS[args.format](outcome))
    return 0 if outcome.valid else 1


def check_handlers(topology: Topology) -> list[Problem]:
    """An error at every handler reference that does not resolve: the daemon's
    own check (`runner.pipeline.handler`: one rule, one message, rule `handler`)."""
    from runner.pipeline.handler import check_handlers as failures_of
    from runner.pipeline.handler import handler_problems

    importlib.invalidate_caches()
    # what handler modules print at import must not corrupt --format json output
    with contextlib.redirect_stdout(sys.stderr):
        failures = failures_of(topology)
    return handler_problems(topology, failures)


# ---------------------------------------------------------------- schema


def schema_command(args: argparse.Namespace) -> int:
    text = (
        importlib.resources.files("runner.topology")
        .joinpath("topology.schema.json")
        .read_text(encoding="utf-8")
    )
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
    return 0


# ---------------------------------------------------------------- plan


def plan_command(args: argparse.Namespace) -> int:
    from runner.topology.diff import diff

    if args.against is not None:
        return _plan_against(args)
    if args.new is None:
        print("runner plan: give OLD NEW, or PATH --against amqp://...", file=sys.stderr)
        return USAGE
    if _missing_paths("plan", [args.old, args.new]):
        return USAGE
    loaded = []
    broken = False
    for path in (args.old, args.new):
        topology, problems = _load(path)
        errors = [p for p in problems if p.severity is Severity.ERROR]
        if topology is None or errors:
            broken = True
            sys.stderr.write(report.problems_text(errors))
            print(f"runner plan: {path} is not a valid topology", file=sys.stderr)
        loaded.append(topology)
    if broken:
        return USAGE
    old, new = loaded
    assert old is not None and new is not None
    plan = diff(old, new)
    out = (report.plan_json(plan, old, new) if args.format == "json"
           else report.plan_text(plan, old, new))
    sys.stdout.write(out)
    return 1 if plan.unsafe else 0


def _plan_against(args: argparse.Namespace) -> int:
    from runner.backends.rabbitmq import live
    from runner.backends.rabbitmq.plan import plan
    from runner.backends.rabbitmq.url import BadURL, parse

    if args.new is not None:
        print("runner plan: --against takes one PATH (the topology), not OLD NEW",
              file=sys.stderr)
        return USAGE
    try:
        target = parse(args.against)
    except BadURL as exc:
        print(f"runner plan: --against {exc}", file=sys.stderr)
        return USAGE
    topology = load_valid("plan", args.old)
    if topology is None:
        return USAGE
    try:
        found = plan(live.read(target), topology)
    except live.Unreachable as exc:
        print(f"runner plan: {exc}", file=sys.stderr)
        return USAGE
    out = (report.plan_json(found) if args.format == "json"
           else report.plan_text(found, refuser="runner apply"))
    sys.stdout.write(out)
    return 1 if found.unsafe else 0


def load_valid(command: str, path: str) -> Topology | None:
    """The topology at `path`, or None after printing why it is not valid."""
    if _missing_paths(command, [path]):
        return None
    topology, problems = _load(path)
    errors = [p for p in problems if p.severity is Severity.ERROR]
    if topology is None or errors:
        sys.stderr.write(report.problems_text(errors))
        print(f"runner {command}: {path} is not a valid topology", file=sys.stderr)
        return None
    return topology


# ---------------------------------------------------------------- graph


def graph_command(args: argparse.Namespace) -> int:
    if _missing_paths("graph", [args.path]):
        return USAGE
    topology, problems = _load(args.path)
    errors = [p for p in problems if p.severity is Severity.ERROR]
    if topology is None or errors:
        sys.stderr.write(report.problems_text(errors))
        return 1
    view = View(only=args.only, merge=not args.no_merge, cluster=args.cluster)
    try:
        drawn = build(diagram(topology), view)
    except UnknownEntity as exc:
        print(f"runner graph: --only {args.only}: {exc}", file=sys.stderr)
        return USAGE
    if args.format == "dot":
        sys.stdout.write(dot_of(drawn, title=topology.name or "topology", legend=args.legend))
    else:
        sys.stdout.write(mermaid_of(drawn, legend=args.legend))
    return 0
