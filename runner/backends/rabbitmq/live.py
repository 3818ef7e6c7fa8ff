"""The live broker: one vhost's definitions and queue depths over the management API.

`read(target)` asks `GET /api/definitions/{vhost}` and `GET /api/queues/{vhost}`
(port 15672, plugin rabbitmq_management) and returns `Live`: the vhost's
exchanges, queues and bindings as `mapping` values, and each queue's message
count. Built-in objects (the default exchange, `amq.*`) are left out. Errors
are `Unreachable` (no answer, or an HTTP error, with the status and body).
"""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from runner.backends.rabbitmq.mapping import (
    Arguments,
    BindingDef,
    Definitions,
    ExchangeDef,
    QueueDef,
)
from runner.backends.rabbitmq.url import Target


class Unreachable(RuntimeError):
    """The management API did not answer, or answered with an error."""


@dataclass(frozen=True, slots=True)
class Live:
    definitions: Definitions
    messages: Mapping[str, int]  # queue -> ready + unacked messages


def request(target: Target, method: str, path: str, body: object = None) -> Any:
    """One management API call; the decoded JSON answer (None when empty)."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(target.management_url + path, data=data, method=method)
    auth = base64.b64encode(f"{target.user}:{target.password}".encode()).decode()
    req.add_header("Authorization", f"Basic {auth}")
    req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=10) as answer:
            raw = answer.read()
    except urllib.error.HTTPError as exc:
        text = exc.read().decode(errors="replace").strip()
        where = f"{method} {target.management_url}{path}"
        raise Unreachable(f"{where}: HTTP {exc.code} {text}") from exc
    except OSError as exc:
        raise Unreachable(
            f"the management API at {target.management_url} does not answer ({exc}); "
            "is the rabbitmq_management plugin enabled?"
        ) from exc
    return json.loads(raw) if raw else None


def vhost_path(vhost: str) -> str:
    return quote(vhost, safe="")


def _args(raw: Mapping[str, Any] | None) -> Arguments:
    return tuple(sorted((raw or {}).items()))


def definitions_of(document: Mapping[str, Any]) -> Definitions:
    """The `mapping` values of a management API definitions document."""
    exchanges = [
        ExchangeDef(e["name"], e["type"], bool(e["durable"]), bool(e["internal"]),
                    _args(e.get("arguments")))
        for e in document.get("exchanges", [])
        if e["name"] and not e["name"].startswith("amq.")
    ]
    queues = [
        QueueDef(q["name"], bool(q["durable"]), _args(q.get("arguments")))
        for q in document.get("queues", [])
    ]
    bindings = [
        BindingDef(b["source"], b["destination"], b["destination_type"], b["routing_key"],
                   _args(b.get("arguments")))
        for b in document.get("bindings", [])
        if b["source"]
    ]
    return Definitions(
        tuple(sorted(exchanges, key=lambda e: e.name)),
        tuple(sorted(queues, key=lambda q: q.name)),
        tuple(sorted(bindings, key=lambda b: (b.source, b.destination_type, b.destination,
                                              b.routing_key, repr(b.arguments)))),
    )


def read(target: Target) -> Live:
    """The vhost's definitions and message counts; Unreachable when the API fails."""
    vhost = vhost_path(target.vhost)
    document = request(target, "GET", f"/api/definitions/{vhost}")
    queues = request(target, "GET", f"/api/queues/{vhost}?columns=name,messages")
    messages = {q["name"]: int(q.get("messages") or 0) for q in queues}
    return Live(definitions_of(document), messages)
