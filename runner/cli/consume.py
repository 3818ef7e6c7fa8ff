"""`runner consume`: read a topic like kcat / kafka-console-consumer, or look into a queue.

Topics: every partition (or `--partition P`), from the log end by default (only
what arrives: with `--follow`), `--from-beginning`, `--offset N`, or the
positions of an external consumer group (`--group G`, which then commits
what was printed). Without `--follow` it stops at the log end; with it, it
waits for new records until `--max` records or Ctrl-C. One JSON line per
record (with its partition and offset).

Queues: `--queue Q` peeks by default (the messages stay ready and visible to
everyone); `--ack` pulls and acknowledges (removes) them; `--lease D` without
`--ack` pulls under a lease (they come back when it ends).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.parse
from typing import Any

from runner.cli.client import Client, Usage, client_for, common_options, quote_name, run_client

POLL_S = 0.25  # --follow: wait between two passes that found nothing
PAGE = 1000  # records asked for per read


def _start_offsets(client: Client, args: argparse.Namespace,
                   partitions: list[dict[str, Any]]) -> dict[int, int]:
    if args.group is not None:
        doc = client.call("GET", f"/v1/groups/{quote_name(args.group)}")
        known = {p["partition"]: p["position"] for p in doc["partitions"]
                 if p["topic"] == args.topic}
        if not known:
            raise Usage(f"consumer group {args.group} does not read topic {args.topic}")
        return {p["partition"]: known[p["partition"]] for p in partitions}
    if args.offset is not None:
        if args.partition is not None:
            return {p["partition"]: args.offset for p in partitions}
        # one offset for every partition: within each one's log
        return {p["partition"]: min(max(args.offset, p["log_start_offset"]),
                                    p["log_end_offset"]) for p in partitions}
    key = "log_start_offset" if args.from_beginning else "log_end_offset"
    return {p["partition"]: p[key] for p in partitions}


def consume_topic(client: Client, args: argparse.Namespace) -> int:
    if args.ack or args.lease is not None:
        raise Usage("--ack and --lease are for queues")
    starts = [args.from_beginning, args.offset is not None, args.group is not None]
    if sum(starts) > 1:
        raise Usage("give at most one of --from-beginning, --offset and --group")
    topic = client.call("GET", f"/v1/topics/{quote_name(args.topic)}")
    partitions = topic["partition_offsets"]
    if args.partition is not None:
        partitions = [p for p in partitions if p["partition"] == args.partition]
        if not partitions:
            raise Usage(f"topic {args.topic} has no partition {args.partition} "
                        f"(it has {topic['partitions']}: 0..{topic['partitions'] - 1})")
    positions = _start_offsets(client, args, partitions)
    if args.follow:  # says when it listens, like kcat: what is appended from now on is printed
        start = " ".join(f"{p}:{off}" for p, off in sorted(positions.items()))
        print(f"following {args.topic} from (partition:offset) {start}; Ctrl-C stops",
              file=sys.stderr, flush=True)
    left = args.max
    printed = 0
    base = f"/v1/topics/{quote_name(args.topic)}/partitions"
    try:
        while left is None or left > 0:
            found = 0
            for p in sorted(positions):
                limit = PAGE if left is None else min(PAGE, left)
                if limit <= 0:
                    break
                query = urllib.parse.urlencode({"offset": positions[p], "limit": limit})
                answer = client.call("GET", f"{base}/{p}/records?{query}")
                for rec in answer["records"]:
                    print(json.dumps(rec, sort_keys=True))
                n = len(answer["records"])
                found, printed = found + n, printed + n
                if left is not None:
                    left -= n
                if answer["next_offset"] != positions[p]:
                    positions[p] = answer["next_offset"]
                    if args.group is not None:
                        sys.stdout.flush()  # printed before committed: at-least-once
                        client.call("POST", f"/v1/groups/{quote_name(args.group)}/commit", {
                            "offsets": [{"topic": args.topic, "partition": p,
                                         "offset": positions[p]}]})
            if found == 0:
                if not args.follow:
                    break
                sys.stdout.flush()
                time.sleep(POLL_S)
    except KeyboardInterrupt:
        pass
    where = " ".join(f"{p}:{off}" for p, off in sorted(positions.items()))
    note = ""
    if printed == 0 and not (args.follow or args.from_beginning or args.group is not None
                             or args.offset is not None):
        note = " (at the log end: --from-beginning reads what is there, --follow waits)"
    print(f"{printed} record(s) from {args.topic}; next offsets (partition:offset) "
          f"{where}{note}", file=sys.stderr)
    return 0


def consume_queue(client: Client, args: argparse.Namespace) -> int:
    for flag, on in (("--partition", args.partition is not None),
                     ("--offset", args.offset is not None), ("--group", args.group is not None),
                     ("--from-beginning", args.from_beginning), ("--follow", args.follow)):
        if on:
            raise Usage(f"{flag} is for topics")
    n = 1 if args.max is None else args.max
    path = f"/v1/queues/{quote_name(args.queue)}"
    if not args.ack and args.lease is None:
        answer = client.call("GET", f"{path}/peek?n={n}")
        for msg in answer["messages"]:
            print(json.dumps(msg, sort_keys=True))
        count = len(answer["messages"])
        print(f"peeked {count} message(s) of queue {args.queue}; they stay ready (--ack "
              "takes them)" if count else f"queue {args.queue} has no ready message",
              file=sys.stderr)
        return 0
    answer = client.call("POST", f"{path}/pull", {"max": n, "lease": args.lease or "30s"})
    messages = answer["messages"]
    for msg in messages:
        print(json.dumps(msg, sort_keys=True))
    if args.ack and messages:
        client.call("POST", f"{path}/ack", {"delivery_ids": [m["delivery_id"] for m in messages]})
        print(f"acked {len(messages)} message(s)", file=sys.stderr)
    elif messages:
        print(f"pulled {len(messages)} message(s) under a {args.lease} lease; not acked, they "
              "come back when it ends", file=sys.stderr)
    else:
        print(f"queue {args.queue} has no ready message", file=sys.stderr)
    return 0


def cmd_consume(args: argparse.Namespace) -> int:
    if (args.queue is None) == (args.topic is None):
        raise Usage("give exactly one of --queue or --topic")
    if args.max is not None and args.max < 1:
        raise Usage(f"--max must be at least 1, got {args.max}")
    client = client_for(args)
    if args.topic is not None:
        return consume_topic(client, args)
    return consume_queue(client, args)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    con = sub.add_parser(
        "consume", allow_abbrev=False, help="read a topic (like kcat) or look into a queue",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    common_options(con)
    con.add_argument("--topic", help="read this topic (all partitions unless --partition)")
    con.add_argument("--queue", help="peek into this queue (--ack: take the messages)")
    con.add_argument("--partition", type=int, help="only this partition (topics)")
    con.add_argument("--offset", type=int, help="start at this offset (topics)")
    con.add_argument("--from-beginning", action="store_true",
                     help="start at the log start (topics; default: the log end)")
    con.add_argument("--group", metavar="G",
                     help="start at external group G's positions and commit what is printed")
    con.add_argument("-f", "--follow", action="store_true",
                     help="keep waiting for new records (topics; Ctrl-C stops)")
    con.add_argument("--max", type=int,
                     help="stop after N records / messages (topics: all; queues: 1)")
    con.add_argument("--ack", action="store_true", help="pull and ack: take messages (queues)")
    con.add_argument("--lease", help="pull under this lease without acking (queues), e.g. 30s")
    con.set_defaults(func=run_client(cmd_consume))
