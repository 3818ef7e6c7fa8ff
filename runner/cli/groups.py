"""`runner groups describe G` and `runner groups reset G ...`: kafka-consumer-groups' tools.

`describe` prints per partition the group's current (committed) offset, the
log end, the lag and the member that owns it. `reset` moves the group's
positions (`--to-earliest`, `--to-latest`, `--to-offset N`, `--to-datetime T`,
`--shift-by N`), for all its topics or one (`--topic`); `--dry-run` prints
the plan without moving anything. Offsets are clamped to the log, as Kafka does.
"""

from __future__ import annotations

import argparse
import json
from datetime import datetime
from typing import Any

from runner.cli.client import (
    Usage,
    client_for,
    common_options,
    quote_name,
    render_table,
    run_client,
)


def render_describe(doc: dict[str, Any]) -> str:
    members = doc.get("members") or []
    head = f"group {doc['group']}: {len(members)} member(s), total lag {doc['lag']}"
    rows = [
        [p["topic"], p["partition"], p["committed"], p["log_end_offset"], p["lag"], p["member"]]
        for p in doc["partitions"]
    ]
    table = render_table(
        ["topic", "partition", "current-offset", "log-end-offset", "lag", "member"], rows)
    return f"{head}\n{table}"


def cmd_describe(args: argparse.Namespace) -> int:
    doc = client_for(args).call("GET", f"/v1/groups/{quote_name(args.group)}")
    if args.format == "json":
        print(json.dumps(doc, indent=2, sort_keys=True))
    else:
        print(render_describe(doc))
    return 0


def parse_datetime(text: str) -> int:
    """An ISO 8601 date-time as epoch milliseconds; without a zone it is local time
    (as kafka-consumer-groups reads it)."""
    try:
        when = datetime.fromisoformat(text)
    except ValueError as exc:
        raise Usage(f"--to-datetime {text!r} is not an ISO 8601 date-time "
                    "(try 2024-01-15T10:00:00Z or 2024-01-15T10:00:00+01:00)") from exc
    return int(when.timestamp() * 1000)


def reset_body(args: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any]
    if args.to_earliest:
        body = {"to": "earliest"}
    elif args.to_latest:
        body = {"to": "latest"}
    elif args.to_offset is not None:
        body = {"to": "offset", "offset": args.to_offset}
    elif args.shift_by is not None:
        body = {"to": "shift", "by": args.shift_by}
    else:
        body = {"to": "timestamp", "timestamp": parse_datetime(args.to_datetime)}
    if args.topic is not None:
        body["topic"] = args.topic
    body["dry_run"] = args.dry_run
    return body


def render_reset(doc: dict[str, Any]) -> str:
    rows = [[p["topic"], p["partition"], p["old"], p["new"], p.get("note")]
            for p in doc["partitions"]]
    table = render_table(["topic", "partition", "old", "new", "note"], rows)
    moved = sum(1 for p in doc["partitions"] if p["old"] != p["new"])
    if doc["dry_run"]:
        last = f"dry run: group {doc['group']} not changed ({moved} partition(s) would move)"
    else:
        last = f"group {doc['group']} reset: {moved} partition(s) moved"
    return f"{table}\n{last}"


def cmd_reset(args: argparse.Namespace) -> int:
    doc = client_for(args).call(
        "POST", f"/v1/groups/{quote_name(args.group)}/reset", reset_body(args))
    if args.format == "json":
        print(json.dumps(doc, indent=2, sort_keys=True))
    else:
        print(render_reset(doc))
    return 0


def add_group_tools(groups: argparse.ArgumentParser) -> None:
    """`describe` and `reset` under `runner groups` (which alone lists the groups)."""
    sub = groups.add_subparsers(dest="group_command", metavar="describe|reset")
    describe = sub.add_parser("describe", allow_abbrev=False,
                              help="per partition: current offset, log end, lag, member")
    describe.add_argument("group")
    reset = sub.add_parser("reset", allow_abbrev=False,
                           help="move a group's offsets (--dry-run to see the plan)")
    reset.add_argument("group")
    where = reset.add_mutually_exclusive_group(required=True)
    where.add_argument("--to-earliest", action="store_true", help="the log start")
    where.add_argument("--to-latest", action="store_true", help="the log end")
    where.add_argument("--to-offset", type=int, metavar="N", help="offset N (clamped)")
    where.add_argument("--to-datetime", metavar="T",
                       help="the first record at or after T (ISO 8601; no zone: local time)")
    where.add_argument("--shift-by", type=int, metavar="N",
                       help="move each position by N (negative: back)")
    reset.add_argument("--topic", help="only this topic of the group")
    reset.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    for parser, func in ((describe, cmd_describe), (reset, cmd_reset)):
        common_options(parser, keep_outer=True)
        parser.add_argument("--format", choices=("table", "json"), default=argparse.SUPPRESS,
                            help="table (default) or JSON")
        parser.set_defaults(func=run_client(func))
