"""`runner route`: where one message would land and what would happen to it.

    runner route PATH (--exchange EX --key RK [--header K=V]... | --topic T --key K)
                 [--body JSON] [--fail N] [--format text|json]

The answer comes from runner.simulate.dryrun (the engine's own routing,
partitioner, retry policy and dead-letter code on a throw-away simulation).
Exit 0 when the message lands somewhere, 1 when it lands nowhere or the
exchange refuses it (internal), 2 usage: bad arguments, a topology that does
not load, an exchange or topic the topology does not have.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import time
from typing import Any

from runner.cli import report

USAGE = 2


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "route",
        help="where a message would land and what would happen to it",
        description="Run one message through the topology's real routing (in memory, "
        "nothing persisted): the exchanges it passes, the queues and topic partitions it "
        "lands in, who consumes it and their DLQ policy; with --fail N, each retry with its "
        "delay and the dead letter it would end as. Exit 0 lands somewhere, 1 nowhere, "
        "2 usage.",
    )
    p.add_argument("path", metavar="PATH")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--exchange", metavar="EX", help="publish through this exchange")
    where.add_argument("--topic", metavar="T", help="append to this topic")
    p.add_argument("--key", metavar="K", default=None,
                   help="routing key (--exchange) or record key (--topic)")
    p.add_argument("--header", metavar="K=V", action="append", default=[],
                   help="a message header (repeatable); values are strings")
    p.add_argument("--body", metavar="JSON", default=None,
                   help="the body as JSON (a topic's `key` field is taken from it)")
    p.add_argument("--fail", metavar="N", type=int, default=None,
                   help="show the timeline when each handler fails N times")
    p.add_argument("--format", choices=("text", "json"), default="text")
    p.set_defaults(func=route_command)


def _usage(message: str) -> int:
    print(f"runner route: {message}", file=sys.stderr)
    return USAGE


def route_command(args: argparse.Namespace) -> int:
    from runner.errors import Forbidden, NotFound
    from runner.simulate.dryrun import dry_run
    from runner.topology.load import load
    from runner.topology.suggest import did_you_mean

    if not os.path.exists(args.path):
        return _usage(f"{args.path}: no such file or directory")
    if args.exchange is not None and args.key is None:
        args.key = ""
    if args.fail is not None and args.fail < 0:
        return _usage("--fail must be 0 or more")
    headers: dict[str, str] = {}
    for item in args.header:
        name, sep, value = item.partition("=")
        if not sep or not name:
            return _usage(f"--header {item!r}: give it as NAME=VALUE")
        headers[name] = value
    body: Any = None
    if args.body is not None:
        try:
            body = json.loads(args.body)
        except ValueError as exc:
            return _usage(f"--body is not JSON: {exc}")
    loaded = load(args.path)
    errors = [p for p in loaded.problems if p.is_error]
    if loaded.topology is None or errors:
        sys.stderr.write(report.problems_text(errors))
        return _usage(f"{args.path} is not a valid topology")
    topology = loaded.topology
    if args.exchange is not None and args.exchange not in topology.exchange_map():
        hint = did_you_mean(args.exchange, topology.exchange_map())
        return _usage(f"the topology has no exchange '{args.exchange}'{hint}")
    if args.topic is not None and args.topic not in topology.topic_map():
        hint = did_you_mean(args.topic, topology.topic_map())
        return _usage(f"the topology has no topic '{args.topic}'{hint}")
    logging.getLogger("runner").addHandler(logging.NullHandler())
    logging.getLogger("runner").propagate = False
    try:
        with contextlib.redirect_stdout(sys.stderr):
            result = dry_run(topology, exchange=args.exchange, routing_key=args.key or "",
                             headers=headers, topic=args.topic, key=args.key, body=body,
                             fail=args.fail, start_time=time.time())
    except Forbidden as exc:
        print(f"runner route: {exc}", file=sys.stderr)
        return 1
    except NotFound as exc:  # pragma: no cover - names are checked above
        return _usage(str(exc))
    if args.format == "json":
        sys.stdout.write(json.dumps(result, indent=2, default=str) + "\n")
    else:
        sys.stdout.write(text(result))
    return 1 if result["nowhere"] else 0


# ---------------------------------------------------------------- text


def _dur(seconds: float) -> str:
    return "0s" if seconds == 0 else report.human_duration(seconds)


def _policy_text(policy: dict[str, Any] | None) -> str:
    if policy is None:
        return "external (consumed over HTTP)"
    name = policy["name"] or "defaults (no dlq_policy)"
    backoff = policy["backoff"]
    shown = ("[" + ", ".join(backoff) + "]" if isinstance(backoff, list)
             else ", ".join(f"{k} {v}" for k, v in backoff.items()))
    dlq = policy["dead_letter_queue"]
    where = f"{dlq['kind']} {dlq['name']}" if dlq else "the queue's dead_letter exchange, if any"
    extra = f", no_retry_on {policy['no_retry_on']}" if policy["no_retry_on"] else ""
    return (f"policy {name}: {policy['max_retries']} retries, backoff {shown}{extra}, "
            f"then {where}")


def _timeline_lines(timeline: dict[str, Any]) -> list[str]:
    lines = []
    for e in timeline["events"]:
        head = f"        +{_dur(e['at'])}  attempt {e['attempt']} "
        if e["result"] == "succeeded":
            lines.append(head + "succeeds")
            continue
        then = (f"retry in {_dur(e['retry_in'])}" if "retry_in" in e
                else f"gives up ({e.get('gave_up', '')})")
        lines.append(head + f"fails ({e['error']}): {then}")
    for d in timeline["dead_letters"]:
        where = f"{d['kind']} {d['name']}" + (f" [{d['partition']}]" if "partition" in d else "")
        lines.append(f"        dead letter -> {where}, header x-dead-letter:")
        header = {k: v for k, v in d["header"].items() if k != "error"}
        error = d["header"].get("error") or {}
        header["error"] = {k: v for k, v in error.items() if k != "stack_trace"}
        for line in json.dumps(header, indent=2, default=str).splitlines():
            lines.append(f"          {line}")
    if timeline["outcome"] == "dropped":
        lines.append("        dropped: no dlq_policy dead_letter_queue and no dead_letter "
                     "on the queue (logged and counted)")
    return lines


def text(result: dict[str, Any]) -> str:
    given = result["input"]
    if "exchange" in given:
        lines = [f"message: exchange {given['exchange']}, routing key "
                 f"{json.dumps(given.get('routing_key', ''))}"
                 + (f", headers {json.dumps(given['headers'])}" if given.get("headers") else "")]
    else:
        lines = [f"record: topic {given['topic']}"
                 + (f", key {json.dumps(given['key'])}" if given.get("key") is not None else "")]
    for hop in result["path"]:
        via = {"publish": "published to", "binding": f"bound from {hop['from']}:",
               "alternate": f"alternate of {hop['from']} (nothing matched there):"}[hop["via"]]
        matched = ", ".join(
            f"{m['kind']} {m['name']}"
            + (f" (binding {', '.join(json.dumps(k) for k in m['bindings'])})"
               if any(m["bindings"]) else "")
            for m in hop["matched"]) or "no binding matches"
        lines.append(f"  {via} exchange {hop['exchange']} ({hop['type']}) -> {matched}")
    if result["nowhere"]:
        lines.append("lands nowhere: the message is unroutable (counted in "
                     "runner_exchange_unroutable_total)")
        return "\n".join(lines) + "\n"
    lines.append("lands in:")
    for d in result["destinations"]:
        if d["kind"] == "queue":
            settings = ", ".join(f"{k} {v}" if not isinstance(v, dict) else
                                 f"{k} {v['exchange']}" for k, v in d["settings"].items())
            lines.append(f"  queue {d['name']}" + (f" ({settings})" if settings else ""))
            for e in d.get("expires_into", ()):
                lines.append(f"    unconsumed, it expires into {e['kind']} {e['name']} "
                             "(reason expired)")
        else:
            how = (f"key {json.dumps(d['key'])}" if d["key"] is not None
                   else f"key from the body's {d['key_field']} field" if d["keyed"]
                   else "no key")
            lines.append(f"  topic {d['name']} partition {d['partition']} of {d['partitions']} "
                         f"({'murmur2' if d['keyed'] else 'round robin'}, {how})")
        if not d["handlers"]:
            lines.append("    no consumer in this topology" + (
                ": read it over HTTP" if d["kind"] == "queue" else ""))
        for h in d["handlers"]:
            who = f"{h['kind']} {h['name']}"
            ref = h["handler"] or "no handler"
            lines.append(f"    {who}: {ref}, {h['delivery']}; {_policy_text(h['dlq_policy'])}")
            if "timeline" in h:
                lines.extend(_timeline_lines(h["timeline"]))
    return "\n".join(lines) + "\n"
