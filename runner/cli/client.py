"""Client commands over HTTP: `publish`, `status`, `dlq list|show|replay`, and the
plumbing the other client commands share (`consume`, the lists, `groups`).

They talk to a running daemon (`--url`, else RUNNER_URL, default
http://127.0.0.1:8080; bearer token from `--token` or RUNNER_TOKEN) with the
standard library's urllib.
Exit 0 when the daemon accepted, 1 when it refused (its error is printed),
2 on usage errors.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import re
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

DEFAULT_URL = "http://127.0.0.1:8080"


class Refusal(Exception):
    """The daemon answered with an error (or could not be reached: `status` None)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class Usage(Exception):
    """The command line is wrong."""


class Client:
    """A tiny JSON-over-HTTP client for the daemon API."""

    def __init__(self, url: str, token: str | None, timeout_s: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.timeout_s = timeout_s

    def call(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                return json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                message = json.loads(raw).get("error", raw.decode(errors="replace"))
            except (ValueError, AttributeError):
                message = raw.decode(errors="replace") or exc.reason
            raise Refusal(f"{message} (HTTP {exc.code})", exc.code) from exc
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise Refusal(f"cannot reach the daemon at {self.url}: {reason}") from exc


def quote_name(name: str) -> str:
    return urllib.parse.quote(name, safe="")


def daemon_url(given: str | None) -> str:
    """The daemon's base URL: `--url`, else $RUNNER_URL, else the default; a URL
    without a scheme (`localhost:8090`) is taken as http://."""
    url = (given or os.environ.get("RUNNER_URL") or DEFAULT_URL).strip()
    if "://" not in url:
        url = "http://" + url
    scheme = url.split("://", 1)[0].lower()
    if scheme not in ("http", "https"):
        raise Usage(f"--url must be an http:// or https:// URL, got {url!r}")
    return url


def client_for(args: argparse.Namespace) -> Client:
    return Client(daemon_url(args.url), args.token or os.environ.get("RUNNER_TOKEN"))


def common_options(parser: argparse.ArgumentParser, *, keep_outer: bool = False) -> None:
    """`--url` and `--token`; `keep_outer` for a subcommand whose parent has them too
    (a value given before the subcommand is kept)."""
    default = argparse.SUPPRESS if keep_outer else None
    parser.add_argument(
        "--url", default=default, help=f"daemon URL (default: $RUNNER_URL, else "
        f"{DEFAULT_URL}; http:// may be left out)"
    )
    parser.add_argument("--token", default=default,
                        help="bearer token (default: $RUNNER_TOKEN)")


def run_client(func: Any) -> Any:
    def wrapped(args: argparse.Namespace) -> int:
        try:
            code: int = func(args)
            return code
        except (Refusal, Usage) as exc:
            print(f"runner {args.command}: {exc}", file=sys.stderr)
            return 1 if isinstance(exc, Refusal) else 2  # refused: 1, usage error: 2
        except BrokenPipeError:
            return _reader_left()

    return wrapped


def _reader_left() -> int:
    """The reader of stdout went away (`runner status | head`): stop quietly.

    Later writes (the interpreter's final flush) go to /dev/null, so no
    traceback; the exit code is the shell's for a SIGPIPE death, 128 + 13."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    return 141


# ------------------------------------------------------------------ publish


def _payload(text: str, name: str) -> dict[str, Any]:
    """`BODY` as the request's `name` (JSON) or `name_b64` (raw bytes from a file)."""
    if text == "-" or text.startswith("@"):
        if text == "-":
            raw = sys.stdin.buffer.read()
        else:
            try:
                with open(text[1:], "rb") as fh:
                    raw = fh.read()
            except OSError as exc:
                raise Usage(f"cannot read {text[1:]}: {exc.strerror}") from exc
        try:
            return {name: json.loads(raw)}
        except ValueError:
            return {f"{name}_b64": base64.b64encode(raw).decode()}
    try:
        return {name: json.loads(text)}
    except ValueError as exc:
        raise Usage(
            f"BODY is not valid JSON: {text!r}; quote a string as '\"text\"', "
            "or pass @FILE or - (stdin) for raw bytes"
        ) from exc


def _headers(items: list[str] | None) -> dict[str, str]:
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise Usage(f"--header expects NAME=VALUE, got {item!r}")
        out[key] = value
    return out


def cmd_publish(args: argparse.Namespace) -> int:
    client = client_for(args)
    targets = [t for t in (args.exchange, args.queue, args.topic) if t is not None]
    if len(targets) != 1:
        raise Usage("give exactly one of --exchange, --queue or --topic")
    headers = _headers(args.header)
    if args.topic is not None:
        if args.routing_key is not None or args.priority is not None:
            raise Usage("--routing-key and --priority are for exchanges and queues, not topics")
        if args.wait is not None:
            raise Usage("--wait is for exchanges and queues, not topics")
        record: dict[str, Any] = {**_payload(args.body, "value"), "headers": headers}
        if args.key is not None:
            record["key"] = args.key
        if args.partition is not None:
            record["partition"] = args.partition
        answer = client.call("POST", f"/v1/topics/{quote_name(args.topic)}/records", record)
        for item in answer["offsets"]:
            print(f"{args.topic} partition {item['partition']} offset {item['offset']}")
        return 0
    if args.key is not None or args.partition is not None:
        raise Usage("--key and --partition are for topics")
    msg: dict[str, Any] = {**_payload(args.body, "body"), "headers": headers}
    for name in ("priority", "ttl", "message_id", "reply_to", "correlation_id"):
        value = getattr(args, name)
        if value is not None:
            msg[name] = value
    if args.exchange is not None:
        if args.routing_key is None:
            raise Usage("--exchange needs --routing-key (use \"\" for none)")
        msg["routing_key"] = args.routing_key
        path = f"/v1/exchanges/{quote_name(args.exchange)}/messages"
    else:
        if args.routing_key is not None:
            msg["routing_key"] = args.routing_key
        path = f"/v1/queues/{quote_name(args.queue)}/messages"
    if args.wait is not None:
        return _request(client, path, msg, args.wait)
    answer = client.call("POST", path, msg)
    routed = answer["routed"]
    print("routed to: " + (", ".join(routed) if routed else "(nowhere: unroutable)"))
    return 0


def _request(client: Client, path: str, msg: dict[str, Any], wait: str) -> int:
    """`--wait`: publish as a request and print its reply's body (JSON on one line, or
    the raw bytes); the daemon's 504 (no reply in time) or 502 (error reply) is a refusal."""
    if "reply_to" in msg:
        raise Usage("--wait gets a private reply address; leave out --reply-to")
    seconds = _seconds(wait)
    client.timeout_s = max(client.timeout_s, seconds + 10.0)
    answer = client.call("POST", f"{path}?wait={urllib.parse.quote(wait)}", msg)
    if "body_b64" in answer:
        sys.stdout.flush()
        sys.stdout.buffer.write(base64.b64decode(answer["body_b64"]))
        sys.stdout.buffer.flush()
    else:
        print(json.dumps(answer.get("body"), ensure_ascii=False))
    return 0


def _seconds(text: str) -> float:
    """Roughly how long a `--wait` is (the daemon checks it exactly): for the client's
    own timeout, which must outlast the wait."""
    total = 0.0
    units = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    for number, unit in re.findall(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)", text):
        total += float(number) * units[unit]
    return total


# ------------------------------------------------------------------ status


def render_table(headers: list[str], rows: list[list[Any]]) -> str:
    cells = [headers] + [[("-" if v is None else str(v)) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
             for row in cells]
    return "\n".join(lines)


def render_status(status: dict[str, Any]) -> str:
    topo = status["topology"]
    out = [
        f"topology {topo.get('name') or '(unnamed)'}  hash {topo['hash'][:12]}  "
        f"generation {topo['generation']}",
    ]
    if topo.get("last_reload_error"):
        out.append(f"last reload {topo.get('last_reload_result')}: {topo['last_reload_error']}")
    if status["topics"]:
        rows = [
            [t["name"], p["partition"], p["log_start_offset"], p["log_end_offset"], p["size_bytes"]]
            for t in status["topics"] for p in t["partitions"]
        ]
        out += ["", "TOPICS", render_table(["topic", "partition", "start", "end", "bytes"], rows)]
    if status["queues"]:
        rows = [
            [q["name"], q["ready"], q["unacked"], q["delayed"], f"{q['oldest_ready_age_s']:.1f}s"]
            for q in status["queues"]
        ]
        headers = ["queue", "ready", "unacked", "delayed", "oldest"]
        out += ["", "QUEUES", render_table(headers, rows)]
    if status["groups"]:
        rows = [
            [g["name"], ",".join(g["topics"]), len(g["members"]), g["lag"],
             g["handler"] or "(external)"]
            for g in status["groups"]
        ]
        out += ["", "GROUPS", render_table(["group", "topics", "members", "lag", "handler"], rows)]
    if status["consumers"]:
        rows = [
            [c["name"], c["queue"], c["concurrency"], c["delivery"], c["errors"], c["retries"]]
            for c in status["consumers"]
        ]
        out += ["", "CONSUMERS", render_table(
            ["consumer", "queue", "concurrency", "delivery", "errors", "retries"], rows)]
    return "\n".join(out)


def cmd_status(args: argparse.Namespace) -> int:
    status = client_for(args).call("GET", "/v1/status")
    if args.json:
        print(json.dumps(status, indent=2, sort_keys=True))
    else:
        print(render_status(status))
    return 0


# ------------------------------------------------------------------ dlq


def render_dead_letter(msg: dict[str, Any]) -> str:
    """A dead letter with its `x-dead-letter` header laid out for a person."""
    headers = dict(msg.get("headers") or {})
    death = headers.pop("x-dead-letter", None)
    if isinstance(death, str):
        with contextlib.suppress(ValueError):
            death = json.loads(death)
    body = json.dumps(msg["body"]) if "body" in msg else f"(raw, base64) {msg.get('body_b64', '')}"
    lines = [f"--- message {msg.get('message_id') or msg.get('delivery_id')}"]
    if isinstance(death, dict):
        error = death.get("error") or {}
        origin = death.get("original_queue")
        if origin is not None:
            where = f"queue {origin}"
            if death.get("original_exchange"):
                where += (f" (exchange {death['original_exchange']}, routing key "
                          f"{death.get('original_routing_key')!r})")
        elif death.get("original_topic") is not None:
            where = (f"topic {death['original_topic']} partition "
                     f"{death.get('original_partition')} offset {death.get('original_offset')}")
        else:
            where = "unknown"
        lines += [
            f"reason:        {death.get('reason')}",
            f"error:         {error.get('type', '-')}: {error.get('message', '-')}",
            f"retries:       {death.get('retry_count', 0)}"
            + (f"  (deaths: {death['death_count']})" if death.get("death_count") else ""),
            f"first attempt: {death.get('first_attempt') or '-'}",
            f"last attempt:  {death.get('last_attempt') or '-'}",
            f"origin:        {where}",
            f"consumer:      {death.get('consumer_id') or '-'}",
        ]
        trace = error.get("stack_trace")
        if trace:
            lines.append("stack trace:")
            lines += ["    " + line for line in str(trace).rstrip().splitlines()]
    else:
        lines.append("(no x-dead-letter header: not a dead letter)")
    if headers:
        lines.append(f"headers:       {json.dumps(headers, sort_keys=True)}")
    lines.append(f"body:          {body}")
    return "\n".join(lines)


def _topic_names(client: Client) -> dict[str, bool]:
    """The daemon's topics: name -> is a dead-letter topic."""
    return {t["name"]: bool(t.get("dead_letter_topic")) for t in
            client.call("GET", "/v1/topics")["topics"]}


def _age(seconds: float) -> str:
    return f"{seconds:.1f}s"


def _holds_dead_letters(client: Client, queue: str) -> bool:
    """Whether the first ready message of `queue` has an `x-dead-letter` header; False
    when the daemon will not peek at it (409: a RabbitMQ quorum queue, where a peek
    would count as a delivery)."""
    try:
        peek = client.call("GET", f"/v1/queues/{quote_name(queue)}/peek?n=1")
    except Refusal as exc:
        if exc.status == 409:
            return False
        raise
    return any("x-dead-letter" in (m.get("headers") or {}) for m in peek["messages"])


def cmd_dlq(args: argparse.Namespace) -> int:
    client = client_for(args)
    if args.dlq_command == "list":
        status = client.call("GET", "/v1/status")
        rows = []
        for q in status["queues"]:
            dead = q.get("dead_letter_queue", False)
            if not dead and q["ready"] > 0:
                dead = _holds_dead_letters(client, q["name"])
            if dead:
                rows.append([q["name"], "queue", q["ready"], _age(q["oldest_ready_age_s"])])
        for name, dead in sorted(_topic_names(client).items()):
            if dead:
                t = client.call("GET", f"/v1/topics/{quote_name(name)}/dead-letters?n=1")
                rows.append([name, "topic", t["depth"], _age(t["age_s"])])
        if rows:
            print(render_table(["name", "kind", "depth", "oldest"], rows))
        else:
            print("no dead-letter queue or topic is declared or holds messages")
        return 0
    topics = _topic_names(client)
    if args.queue in topics:
        return _dlq_topic(client, args)
    if getattr(args, "record", None):
        raise Usage(f"--record names dead letters of a dead-letter topic; {args.queue} is no "
                    "topic")
    if args.dlq_command == "show":
        answer = client.call("GET", f"/v1/queues/{quote_name(args.queue)}/peek?n={args.n}")
        if not answer["messages"]:
            print(f"queue {args.queue} is empty")
        for msg in answer["messages"]:
            print(render_dead_letter(msg))
        return 0
    if args.dlq_command == "purge":
        answer = client.call("DELETE", f"/v1/queues/{quote_name(args.queue)}/messages")
        print(f"purged {answer['purged']} message(s) from {args.queue}")
        return 0
    replayed, skipped, reasons = _replay_pages(client, args.queue, args.max, args.to)
    _print_replay(args, replayed, skipped, reasons)
    return 0


def _print_replay(args: argparse.Namespace, replayed: int, skipped: int,
                  reasons: dict[str, int]) -> None:
    where = f" into {args.to}" if args.to else ""
    print(f"replayed {replayed} message(s) from {args.queue}{where}")
    if skipped:
        print(f"kept {skipped} message(s) in {args.queue}:")
        for reason, count in sorted(reasons.items()):
            print(f"  {count}: {reason}")


def _dlq_topic(client: Client, args: argparse.Namespace) -> int:
    """`dlq show|replay|purge` on a dead-letter topic: its pending records (from
    each partition's replay position); replay and purge advance that position."""
    path = f"/v1/topics/{quote_name(args.queue)}"
    if args.dlq_command == "show":
        answer = client.call("GET", f"{path}/dead-letters?n={args.n}")
        if not answer["records"]:
            print(f"topic {args.queue} has no pending dead letters")
        for rec in answer["records"]:
            item = dict(rec)
            item["message_id"] = f"{args.queue}/{rec['partition']}@{rec['offset']}"
            if "value" in rec:
                item["body"] = rec["value"]
            elif "value_b64" in rec:
                item["body_b64"] = rec["value_b64"]
            print(render_dead_letter(item))
        return 0
    if args.record:
        return _dlq_topic_records(client, args, path)
    if args.dlq_command == "purge":
        answer = client.call("DELETE", f"{path}/dead-letters")
        print(f"purged {answer['purged']} record(s) from {args.queue} (the replay position "
              "moved past them; the log keeps them until retention)")
        return 0
    replayed, skipped, reasons = 0, 0, {}
    while args.max is None or replayed < args.max:
        page = REPLAY_PAGE if args.max is None else min(REPLAY_PAGE, args.max - replayed)
        body: dict[str, Any] = {"max": page} if args.to is None else {"max": page, "to": args.to}
        answer = client.call("POST", f"{path}/replay", body)
        replayed += answer["replayed"]
        skipped, reasons = answer.get("skipped", 0), answer.get("skipped_reasons", {})
        if answer["replayed"] == 0 or answer.get("remaining", 0) <= skipped:
            break
    _print_replay(args, replayed, skipped, reasons)
    return 0


REPLAY_PAGE = 10_000  # the daemon's limit per replay request


def _dlq_topic_records(client: Client, args: argparse.Namespace, path: str) -> int:
    """`dlq replay|purge TOPIC --record P:O...`: just these dead letters."""
    records = [{"partition": p, "offset": o} for p, o in args.record]
    if args.dlq_command == "purge":
        answer = client.call("POST", f"{path}/dead-letters/purge", {"records": records})
        print(f"purged {answer['purged']} record(s) from {args.queue} (marked handled; the "
              "log keeps them until retention)")
        return 0
    if args.max is not None:
        raise Usage("give --record or --max, not both")
    body: dict[str, Any] = {"records": records}
    if args.to is not None:
        body["to"] = args.to
    answer = client.call("POST", f"{path}/replay", body)
    _print_replay(args, answer["replayed"], answer.get("skipped", 0),
                  answer.get("skipped_reasons", {}))
    return 0


def record_ref(text: str) -> tuple[int, int]:
    """`--record P:O` -> (partition, offset)."""
    head, _, tail = text.partition(":")
    if not (head.isdigit() and tail.isdigit()):
        raise argparse.ArgumentTypeError(
            f"expected PARTITION:OFFSET (e.g. 0:42), got {text!r}")
    return int(head), int(tail)


def _replay_pages(
    client: Client, queue: str, most: int | None, to: str | None = None
) -> tuple[int, int, dict[str, int]]:
    """Replay in pages of at most REPLAY_PAGE until `most` are replayed, the queue
    is empty, a page moves nothing, or as many as the queue first held have moved
    (dead letters that return to this queue are not replayed twice). The skipped
    counts are the last page's: they describe what stays in the queue."""
    replayed, skipped, reasons = 0, 0, {}
    depth: int | None = None
    while most is None or replayed < most:
        page = REPLAY_PAGE if most is None else min(REPLAY_PAGE, most - replayed)
        body: dict[str, Any] = {"max": page} if to is None else {"max": page, "to": to}
        answer = client.call("POST", f"/v1/queues/{quote_name(queue)}/replay", body)
        moved, remaining = answer["replayed"], answer.get("remaining", 0)
        if depth is None:
            depth = moved + remaining
        replayed += moved
        if replayed < depth and moved and remaining and (most is None or replayed < most):
            goal = depth if most is None else min(depth, most)
            print(f"replayed {replayed} of {goal}...", file=sys.stderr, flush=True)
        skipped, reasons = answer.get("skipped", 0), answer.get("skipped_reasons", {})
        if moved == 0 or remaining == 0 or replayed >= depth:
            break
    return replayed, skipped, reasons


# ------------------------------------------------------------------ registration


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    pub = sub.add_parser("publish", help="publish a message or append a record")
    common_options(pub)
    pub.add_argument("--exchange", help="publish through this exchange")
    pub.add_argument("--queue", help="publish straight into this queue")
    pub.add_argument("--topic", help="append to this topic")
    pub.add_argument("--routing-key", help="routing key (exchanges; queues default to the name)")
    pub.add_argument("--key", help="record key (topics)")
    pub.add_argument("--partition", type=int, help="explicit partition (topics)")
    pub.add_argument("--priority", type=int)
    pub.add_argument("--ttl", help="per-message TTL, e.g. 30s")
    pub.add_argument("--message-id")
    pub.add_argument("--header", action="append", metavar="NAME=VALUE")
    pub.add_argument("--reply-to", metavar="ADDRESS",
                     help="ask for a reply: a queue, or EXCHANGE/ROUTING_KEY")
    pub.add_argument("--correlation-id", metavar="ID", help="echoed on the reply")
    pub.add_argument("--wait", metavar="DURATION",
                     help="request-reply: wait up to DURATION (e.g. 5s) for the handler's "
                     "reply and print it (exit 1 when none comes or it is an error)")
    pub.add_argument("body", metavar="BODY", help="JSON, @FILE or - (stdin)")
    pub.set_defaults(func=run_client(cmd_publish))

    st = sub.add_parser("status", help="topics, queues, groups and consumers of a daemon")
    common_options(st)
    st.add_argument("--json", action="store_true", help="print the raw status document")
    st.set_defaults(func=run_client(cmd_status))

    dlq = sub.add_parser("dlq", help="dead-letter queues: list, show, replay, purge")
    dlq_sub = dlq.add_subparsers(dest="dlq_command", metavar="list|show|replay|purge",
                                 required=True)
    lst = dlq_sub.add_parser("list", help="dead-letter queues and topics with their depth and age")
    common_options(lst)
    show = dlq_sub.add_parser("show", help="dead letters of a queue or topic, with why they died")
    common_options(show)
    show.add_argument("queue")
    show.add_argument("-n", type=int, default=10, help="how many (default 10)")
    rep = dlq_sub.add_parser("replay", help="dead letters back to where they died")
    common_options(rep)
    rep.add_argument("queue")
    rep.add_argument("--max", type=int, help="at most N dead letters (default: all)")
    rep.add_argument("--to", metavar="DEST",
                     help="into queue or topic DEST instead of where they died")
    rep.add_argument("--record", metavar="P:O", type=record_ref, action="append",
                     help="a dead-letter topic: just the record at partition P offset O "
                     "(repeatable)")
    pur = dlq_sub.add_parser("purge", help="remove every ready message of a queue (a topic: "
                             "move its replay position to the log end)")
    common_options(pur)
    pur.add_argument("queue")
    pur.add_argument("--record", metavar="P:O", type=record_ref, action="append",
                     help="a dead-letter topic: just the record at partition P offset O "
                     "(repeatable)")
    for p in (lst, show, rep, pur):
        p.set_defaults(func=run_client(cmd_dlq))
