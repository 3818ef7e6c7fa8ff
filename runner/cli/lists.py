"""`runner queues|exchanges|bindings|topics|groups`: what the running daemon has.

Like `rabbitmqadmin list queues` or `kafka-consumer-groups --list`: one table
row per entity (`--format json` prints the daemon's list document as is).
`runner groups describe|reset` are the consumer-group tools (cli/groups.py).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

from runner.cli.client import Client, client_for, common_options, render_table, run_client
from runner.cli.groups import add_group_tools

Row = list[Any]


def _age(seconds: float) -> str:
    return f"{seconds:.1f}s"


def _queue_rows(doc: dict[str, Any]) -> tuple[list[str], list[Row]]:
    rows = []
    for q in doc["queues"]:
        notes = []
        if q["dead_letter_queue"]:
            notes.append("dead letters")
        if q["internal"]:
            notes.append("internal replay queue")
        if q["dead_letter_exchange"]:
            notes.append(f"dlx={q['dead_letter_exchange']}")
        if q["max_length"] is not None:
            notes.append(f"max_length={q['max_length']} ({q['overflow']})")
        rows.append([q["name"], q["ready"], q["unacked"], q["delayed"],
                     _age(q["oldest_ready_age_s"]), ",".join(q["consumers"]) or None,
                     ", ".join(notes) or None])
    return ["queue", "ready", "unacked", "delayed", "oldest", "consumers", "notes"], rows


def _exchange_rows(doc: dict[str, Any]) -> tuple[list[str], list[Row]]:
    rows = []
    for x in doc["exchanges"]:
        notes = []
        if x["internal"]:
            notes.append("internal")
        if x["alternate_exchange"]:
            notes.append(f"alternate={x['alternate_exchange']}")
        rows.append([x["name"], x["type"], x["bindings"], x["published"], x["unroutable"],
                     ", ".join(notes) or None])
    return ["exchange", "type", "bindings", "published", "unroutable", "notes"], rows


def _binding_rows(doc: dict[str, Any]) -> tuple[list[str], list[Row]]:
    rows = []
    for b in doc["bindings"]:
        match = None
        if b["headers"]:
            pairs = ",".join(f"{k}={v}" for k, v in sorted(b["headers"].items()))
            match = f"{b['match']}: {pairs}"
        rows.append([b["exchange"], b["destination_kind"], b["destination"],
                     repr(b["routing_key"]), match])
    return ["exchange", "to", "destination", "routing_key", "headers"], rows


def _retention(t: dict[str, Any]) -> str:
    parts = []
    if t["retention_s"] is not None:
        parts.append(f"{t['retention_s']:g}s")
    if t["retention_bytes"] is not None:
        parts.append(f"{t['retention_bytes']}B")
    return ", ".join(parts) or "forever"


def _topic_rows(doc: dict[str, Any]) -> tuple[list[str], list[Row]]:
    rows = [
        [t["name"], t["partitions"], t["records"], t["size_bytes"],
         ",".join(t["cleanup_policy"]), _retention(t), ",".join(t["groups"]) or None]
        for t in doc["topics"]
    ]
    return ["topic", "partitions", "records", "bytes", "cleanup", "retention", "groups"], rows


def _group_rows(doc: dict[str, Any]) -> tuple[list[str], list[Row]]:
    rows = [
        [g["name"], ",".join(g["topics"]), len(g["members"]), g["partitions"], g["lag"],
         g["handler"] or "(external)"]
        for g in doc["groups"]
    ]
    return ["group", "topics", "members", "partitions", "lag", "handler"], rows


KINDS: dict[str, tuple[str, Callable[[dict[str, Any]], tuple[list[str], list[Row]]]]] = {
    "queues": ("queues and their depth", _queue_rows),
    "exchanges": ("exchanges and their counts", _exchange_rows),
    "bindings": ("bindings: exchange to queue, exchange or topic", _binding_rows),
    "topics": ("topics, their records and size", _topic_rows),
    "groups": ("consumer groups and their lag (describe, reset: see -h)", _group_rows),
}


def render_list(kind: str, doc: dict[str, Any]) -> str:
    """A list document of the daemon as a table (or a line saying it is empty)."""
    headers, rows = KINDS[kind][1](doc)
    if not rows:
        return f"no {kind}"
    return render_table(headers, rows)


def fetch_list(client: Client, kind: str) -> dict[str, Any]:
    doc: dict[str, Any] = client.call("GET", f"/v1/{kind}")
    return doc


def cmd_list(args: argparse.Namespace) -> int:
    doc = fetch_list(client_for(args), args.kind)
    if args.format == "json":
        print(json.dumps(doc, indent=2, sort_keys=True))
    else:
        print(render_list(args.kind, doc))
    return 0


def add_format(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", choices=("table", "json"), default="table",
                        help="table (default) or the daemon's JSON document")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the five list commands, and `groups describe|reset`."""
    parsers = {}
    for kind, (help_text, _) in KINDS.items():
        p = sub.add_parser(kind, help=f"list {help_text}", allow_abbrev=False)
        common_options(p)
        add_format(p)
        p.set_defaults(func=run_client(cmd_list), kind=kind)
        parsers[kind] = p
    add_group_tools(parsers["groups"])
