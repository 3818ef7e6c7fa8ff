"""Apply: declare a topology's definitions on a vhost with pika, idempotently.

`apply(target, topology, prune=False)`:

1. reads the live vhost (management API) and plans against it
   (`rabbitmq.plan`); what the backend cannot express, and every unsafe
   change it would make (a changed queue argument, exchange type, queue type;
   with `prune`, removing a queue that holds messages), refuses the apply;
2. asks the broker itself about every existing queue and exchange whose
   definition differs: a declare with the new arguments, which RabbitMQ
   refuses without changing anything (PRECONDITION_FAILED); its reason is
   reported with the entity;
3. only when nothing was refused: declares exchanges, then queues, then
   bindings (a declare of what exists is a no-op), and with `prune` deletes
   the bindings, queues and exchanges the topology no longer declares
   (the committed offsets of its consumer groups, `__runner.group.<g>.`, are
   kept while it has group g; a removed group's go with it; so is the keys
   stream `__runner.idem.<c>` of each consumer with `idempotency:`).

The keys streams (`mapping.keys_streams`) are declared after the rest, each
only when it does not exist yet: a stream's `x-max-age` cannot change in
place, so a changed idempotency window keeps the stream as it is (the window
itself is applied by the daemons when they read the keys back).

It returns a line per definition added or removed ("no changes" when none):
a second apply of the same topology reports nothing. `Refused` carries the
lines that say why, and nothing was declared.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import pika
import pika.exceptions

from runner.backends.rabbitmq import live as live_api
from runner.backends.rabbitmq.mapping import (
    GROUP_PREFIX,
    BindingDef,
    Definitions,
    ExchangeDef,
    QueueDef,
    definitions,
    keys_stream,
    keys_streams,
)
from runner.backends.rabbitmq.plan import plan
from runner.backends.rabbitmq.url import Target
from runner.engine.contract import dlq_position_group
from runner.topology.diff import Change
from runner.topology.model import Topology


class Refused(RuntimeError):
    """The apply was refused, nothing declared: the plan's unsafe `changes` and the
    broker's own refusals (`reasons`, a line each, naming the entity)."""

    def __init__(self, changes: list[Change], reasons: list[str]) -> None:
        super().__init__("; ".join([str(c) for c in changes] + reasons))
        self.changes = changes
        self.reasons = reasons


@dataclass(frozen=True, slots=True)
class Applied:
    lines: tuple[str, ...]  # a line per definition added or removed


def connect(target: Target) -> pika.BlockingConnection:
    params = pika.ConnectionParameters(
        host=target.host, port=target.port, virtual_host=target.vhost,
        credentials=pika.PlainCredentials(target.user, target.password),
        connection_attempts=1, blocked_connection_timeout=30,
    )
    try:
        return pika.BlockingConnection(params)
    except pika.exceptions.AMQPError as exc:
        raise live_api.Unreachable(f"{target}: cannot connect ({exc!r})") from exc


def _table(args: Iterable[tuple[str, object]]) -> dict[str, Any]:
    return dict(args)


def _declare_exchange(ch: Any, e: ExchangeDef) -> None:
    ch.exchange_declare(e.name, e.type, durable=e.durable, internal=e.internal,
                        arguments=_table(e.arguments))


def _declare_queue(ch: Any, q: QueueDef) -> None:
    ch.queue_declare(q.name, durable=q.durable, arguments=_table(q.arguments))


def _bind(ch: Any, b: BindingDef) -> None:
    if b.destination_type == "exchange":
        ch.exchange_bind(b.destination, b.source, b.routing_key, arguments=_table(b.arguments))
    else:
        ch.queue_bind(b.destination, b.source, b.routing_key, arguments=_table(b.arguments))


def _unbind(ch: Any, b: BindingDef) -> None:
    if b.destination_type == "exchange":
        ch.exchange_unbind(b.destination, b.source, b.routing_key, arguments=_table(b.arguments))
    else:
        ch.queue_unbind(b.destination, b.source, b.routing_key, arguments=_table(b.arguments))


def _binding_text(b: BindingDef) -> str:
    text = f"{b.source} -> {b.destination_type} {b.destination}"
    if b.routing_key:
        text += f' key "{b.routing_key}"'
    if b.arguments:
        text += " " + ", ".join(f"{k}={v}" for k, v in b.arguments)
    return text


def _broker_refusals(conn: pika.BlockingConnection, have: Definitions,
                     want: Definitions) -> list[str]:
    """Declare every existing entity whose definition differs; the broker's refusals."""
    reasons = []
    had_e, had_q = have.exchange_map(), have.queue_map()
    trials: list[tuple[str, str, Any]] = [
        ("exchange", e.name, lambda ch, e=e: _declare_exchange(ch, e))
        for e in want.exchanges if e.name in had_e and had_e[e.name] != e
    ] + [
        ("queue", q.name, lambda ch, q=q: _declare_queue(ch, q))
        for q in want.queues if q.name in had_q and had_q[q.name] != q
    ]
    for kind, name, declare in trials:
        ch = conn.channel()
        try:
            declare(ch)
        except pika.exceptions.ChannelClosedByBroker as exc:
            reasons.append(f"{kind} {name!r}: the broker refused it: "
                           f"{exc.reply_code} {exc.reply_text}")
            continue
        ch.close()
    return reasons


def _counted(conn: pika.BlockingConnection, live: live_api.Live,
             names: Iterable[str]) -> live_api.Live:
    """`live` with the broker's exact message counts of `names` (the management API's
    counts are sampled every few seconds: a queue just published to may show 0)."""
    messages = dict(live.messages)
    for name in names:
        ch = conn.channel()
        try:
            messages[name] = ch.queue_declare(name, passive=True).method.message_count
            ch.close()
        except pika.exceptions.ChannelClosedByBroker:
            messages.pop(name, None)  # gone meanwhile
    return live_api.Live(live.definitions, messages)


def declare_missing(conn: pika.BlockingConnection, queues: Iterable[QueueDef]) -> list[str]:
    """Declare each of `queues` that does not exist yet (an existing one is kept as it
    is, its arguments unchecked); a line per queue declared."""
    lines = []
    for q in queues:
        ch = conn.channel()
        try:
            ch.queue_declare(q.name, passive=True)
            ch.close()
            continue
        except pika.exceptions.ChannelClosedByBroker as exc:
            if exc.reply_code != 404:
                raise
        ch = conn.channel()
        _declare_queue(ch, q)
        ch.close()
        lines.append(f"+ queue {q.name} ({q.type})")
    return lines


def unbind(target: Target, bindings: Iterable[BindingDef]) -> list[str]:
    """Remove these bindings (a reload dropped them; unbinding what is not bound is
    a no-op); a line per binding."""
    conn = connect(target)
    try:
        ch = conn.channel()
        lines = []
        for b in bindings:
            _unbind(ch, b)
            lines.append(f"- binding {_binding_text(b)}")
        return lines
    finally:
        if conn.is_open:
            conn.close()


def apply(target: Target, topology: Topology, *, prune: bool = False) -> Applied:
    """Declare `topology` on `target` (see the module docstring); Refused, or Unreachable."""
    live = live_api.read(target)
    have, want = live.definitions, definitions(topology)
    conn = connect(target)
    try:
        if prune:
            wanted = want.queue_map()
            live = _counted(conn, live, [q.name for q in have.queues if q.name not in wanted])
        unsafe = [
            c for c in plan(live, topology).changes
            if not c.safe and (prune or c.kind != "removed")
        ]
        reasons = _broker_refusals(conn, have, want)
        if unsafe or reasons:
            raise Refused(unsafe, reasons)
        lines: list[str] = []
        ch = conn.channel()
        had_e, had_q, had_b = have.exchange_map(), have.queue_map(), set(have.bindings)
        for e in want.exchanges:
            _declare_exchange(ch, e)
            if e.name not in had_e:
                lines.append(f"+ exchange {e.name} ({e.type})")
        for q in want.queues:
            _declare_queue(ch, q)
            if q.name not in had_q:
                lines.append(f"+ queue {q.name} ({q.type})")
        for b in want.bindings:
            _bind(ch, b)
            if b not in had_b:
                lines.append(f"+ binding {_binding_text(b)}")
        lines += declare_missing(conn, keys_streams(topology))
        if prune:
            wanted_b = set(want.bindings)
            for b in have.bindings:
                if b not in wanted_b:
                    _unbind(ch, b)
                    lines.append(f"- binding {_binding_text(b)}")
            wanted_q, wanted_e = want.queue_map(), want.exchange_map()
            groups = [g for g, _ in topology.consumer_groups]
            groups += [dlq_position_group(t) for t in topology.dead_letter_topics()]
            kept = tuple(f"{GROUP_PREFIX}{g}." for g in groups)
            keys = {keys_stream(n) for n, c in topology.consumers if c.idempotency is not None}
            for q in have.queues:
                # the committed offsets (and replay queue) of a group the topology still
                # has are kept, and a dead-letter topic's replay positions and markers,
                # and the keys of a consumer with idempotency
                if (q.name not in wanted_q and q.name not in keys
                        and not q.name.startswith(kept or ("\0",))):
                    ch.queue_delete(q.name)
                    lines.append(f"- queue {q.name}")
            for e in have.exchanges:
                if e.name not in wanted_e:
                    ch.exchange_delete(e.name)
                    lines.append(f"- exchange {e.name}")
        ch.close()
        return Applied(tuple(lines))
    except pika.exceptions.AMQPError as exc:
        if isinstance(exc, pika.exceptions.ChannelClosedByBroker):
            raise Refused([], [f"the broker refused: {exc.reply_code} {exc.reply_text}"]) from exc
        raise live_api.Unreachable(f"{target}: {exc!r}") from exc
    finally:
        if conn.is_open:
            conn.close()
