"""Peeking at a queue and moving dead letters on RabbitMQ (`RabbitBackend.peek_ids`,
`replay`, `move`, `ready`).

Each call runs on a connection of its own and blocks (the daemon runs it off its
event loop). AMQP 0-9-1 has no "look without taking": a peek takes up to N
ready messages with basic.get (no ack) and gives them all back at once
(basic.nack, requeue). A classic queue puts them back where they were, with
`redelivered` set; a quorum queue counts the give-back as a delivery
(`x-delivery-count` + 1), so with a `delivery_limit` every peek would use up
one of their deliveries: refused (Conflict).

A replay or move is at-least-once and loses nothing: each message is taken
(basic.get, no ack), its copy published on the same confirm channel, and the
original acked only once the broker confirmed the copy. Killed in between, the
original goes back to its queue and the copy stays: a duplicate, never a loss.
What stays (not a dead letter, its queue gone or full) is held unacked during
the call and given back at the end, in its place.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol

import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel

from runner.backends.rabbitmq import live
from runner.backends.rabbitmq.mapping import replay_queue
from runner.broker.deadletter import ReplayTarget, replay_target, replayed_headers
from runner.deadletter_headers import (
    DEATH_HEADER,
    RECORD_OFFSET_HEADER,
    RECORD_PARTITION_HEADER,
    RECORD_TOPIC_HEADER,
)
from runner.engine.contract import QueueDelivery, ReplayOutcome
from runner.engine.deadletters import REPLAY_NOT_A_DEAD_LETTER, REPLAY_QUEUE_FULL
from runner.errors import Conflict, Refused, StorageError
from runner.topology.model import Topology

LOOK_AHEAD = 1000  # messages a replay looks past its `max` for dead letters (kept ones)
# RabbitMQ's own dead-lettering headers, left out of a replayed copy
BROKER_DEATH_HEADERS = ("x-death", "x-first-death-queue", "x-first-death-reason",
                        "x-first-death-exchange", "x-last-death-queue",
                        "x-last-death-reason", "x-last-death-exchange", "x-delivery-count")

Connect = Callable[[], pika.BlockingConnection]
# (queue, method, properties, body) -> the delivery as the contract shows it
Decode = Callable[[str, Any, Any, bytes], QueueDelivery]
# (delivery, headers, exchange, routing key) -> the properties of its copy
CopyProperties = Callable[[QueueDelivery, dict[str, Any], str, str], pika.BasicProperties]


class Publish(Protocol):
    @property
    def exchange(self) -> str: ...

    @property
    def routing_key(self) -> str: ...

    @property
    def body(self) -> bytes: ...

    @property
    def properties(self) -> pika.BasicProperties: ...


@contextlib.contextmanager
def _channel(connect: Connect, where: str) -> Iterator[BlockingChannel]:
    try:
        conn = connect()
    except live.Unreachable as exc:
        raise StorageError(str(exc)) from exc
    try:
        yield conn.channel()
    except pika.exceptions.AMQPError as exc:
        raise StorageError(f"{where} failed: {exc!r}") from exc
    finally:
        if conn.is_open:
            with contextlib.suppress(pika.exceptions.AMQPError):
                conn.close()


def _ready(ch: BlockingChannel, queue: str) -> int:
    return int(ch.queue_declare(queue, passive=True).method.message_count)


def ready(connect: Connect, queue: str) -> int:
    """How many messages of `queue` are ready on the broker right now (a passive
    declare: exact, unlike the management API's statistics)."""
    with _channel(connect, f"counting queue '{queue}'") as ch:
        return _ready(ch, queue)


def refuse_quorum_peek(topology: Topology, queue: str) -> None:
    """Conflict for a queue with a delivery_limit (a quorum queue): a peek's give-back
    would count as one of its deliveries."""
    spec = topology.queue_map().get(queue)
    if spec is not None and spec.delivery_limit is not None:
        raise Conflict(
            f"queue '{queue}' has a delivery_limit (a RabbitMQ quorum queue): the broker "
            "counts every message a peek gives back as a delivery, so peeking would use "
            "up their deliveries and dead-letter them; pull and nack instead")


def peek(connect: Connect, queue: str, n: int, decode: Decode) -> list[tuple[int, QueueDelivery]]:
    """The first `n` ready messages of `queue`, given back at once (see the module doc):
    (position from 1, delivery)."""
    out: list[tuple[int, QueueDelivery]] = []
    with _channel(connect, f"peeking at queue '{queue}'") as ch:
        try:
            while len(out) < n:
                method, props, body = ch.basic_get(queue, auto_ack=False)
                if method is None:
                    break
                out.append((len(out) + 1, decode(queue, method, props, body)))
        finally:
            if out and ch.is_open:
                ch.basic_nack(delivery_tag=0, multiple=True, requeue=True)
    return out


def broker_target(headers: Mapping[str, Any]) -> ReplayTarget | None:
    """Where a message dead-lettered by RabbitMQ itself died (its newest `x-death`
    entry: queue, exchange, first routing key); None when it has none."""
    deaths = headers.get("x-death")
    if not isinstance(deaths, list) or not deaths or not isinstance(deaths[0], Mapping):
        return None
    last = deaths[0]
    queue = last.get("queue")
    if not isinstance(queue, str) or not queue:
        return None
    keys = last.get("routing-keys")
    key = keys[0] if isinstance(keys, list) and keys and isinstance(keys[0], str) else queue
    exchange = last.get("exchange")
    return ReplayTarget(queue, key, exchange if isinstance(exchange, str) else "")


def full_text(topology: Topology, queue: str) -> str:
    """Why `queue` refused a copy, in the embedded engine's words."""
    spec = topology.queue_map()[queue]
    limits = []
    if spec.max_length is not None:
        limits.append(f"max_length {spec.max_length}")
    if spec.max_length_bytes is not None:
        limits.append(f"max_length_bytes {spec.max_length_bytes}")
    return f"queue '{queue}' is full ({', '.join(limits)}, overflow {spec.overflow.value})"


def replay(connect: Connect, topology: Topology, queue: str, n: int, decode: Decode,
           copy_properties: CopyProperties) -> ReplayOutcome:
    """Up to `n` dead letters of `queue` back into the queue they died in, as the
    embedded engine does (no `x-dead-letter`, `x-replay-count` + 1, the original
    exchange and routing key); RabbitMQ's own dead letters (`x-death`) too. What
    cannot go back stays, counted by reason."""
    reasons: dict[str, int] = {}
    full: dict[str, str] = {}  # queue -> why it refused: later letters to it stay too
    queues = topology.queue_map()
    replayed = refused = 0
    held: list[int] = []
    # dead letters of `queue` that died in `queue` itself: sent back after the scan, so
    # that it never meets their copies (as the embedded engine collects first)
    later: list[tuple[int, QueueDelivery, ReplayTarget]] = []

    def keep(tag: int, reason: str) -> None:
        held.append(tag)
        reasons[reason] = reasons.get(reason, 0) + 1

    def send(tag: int, d: QueueDelivery, target: ReplayTarget) -> int:
        """The copy into its queue, confirmed, then the dead letter acked: 1; 0 when
        the dead letter stays (kept, with the reason)."""
        nonlocal refused
        assert target.queue is not None
        if target.queue in full:
            keep(tag, REPLAY_QUEUE_FULL.format(why=full[target.queue]))
            refused += 1
            return 0
        headers = replayed_headers(d.headers)
        for name in BROKER_DEATH_HEADERS:
            headers.pop(name, None)
        copy = copy_properties(d, headers, target.exchange, target.routing_key)
        try:
            ch.basic_publish("", target.queue, d.body, copy, mandatory=True)
        except pika.exceptions.NackError:
            full[target.queue] = full_text(topology, target.queue)
            keep(tag, REPLAY_QUEUE_FULL.format(why=full[target.queue]))
            refused += 1
            return 0
        except pika.exceptions.UnroutableError:
            keep(tag, f"original queue '{target.queue}' no longer exists")
            return 0
        ch.basic_ack(tag)  # after the broker confirmed the copy
        return 1

    def to_group(tag: int, d: QueueDelivery, target: ReplayTarget) -> int:
        """A group's record into the group's replay queue (the embedded engine's
        `__replay.<group>`), with where it was read; confirmed, then acked: 1; 0 when
        it stays (the embedded engine's reasons)."""
        death = d.headers.get(DEATH_HEADER)
        group = death.get("original_group") if isinstance(death, Mapping) else None
        if not group:
            keep(tag, "a topic record without its consumer group")
            return 0
        if str(group) not in topology.group_map():
            keep(tag, f"consumer group '{group}' no longer exists")
            return 0
        headers = replayed_headers(d.headers)
        headers[RECORD_TOPIC_HEADER] = target.topic
        headers[RECORD_PARTITION_HEADER] = target.partition
        headers[RECORD_OFFSET_HEADER] = target.offset
        copy = copy_properties(d, headers, "", d.routing_key)
        try:
            ch.basic_publish("", replay_queue(str(group)), d.body, copy, mandatory=True)
        except (pika.exceptions.NackError, pika.exceptions.UnroutableError):
            keep(tag, f"consumer group '{group}' no longer exists")
            return 0
        ch.basic_ack(tag)  # after the broker confirmed the copy
        return 1

    with _channel(connect, f"replaying queue '{queue}'") as ch:
        ch.confirm_delivery()
        try:
            for _ in range(n + LOOK_AHEAD):
                if replayed + len(later) >= n:
                    break
                method, props, body = ch.basic_get(queue, auto_ack=False)
                if method is None:
                    break
                tag = method.delivery_tag
                d = decode(queue, method, props, body)
                target = replay_target(d.headers) or broker_target(d.headers)
                if target is None:
                    keep(tag, REPLAY_NOT_A_DEAD_LETTER)
                    continue
                if target.queue is None:
                    replayed += to_group(tag, d, target)
                    continue
                if target.queue not in queues:
                    keep(tag, f"original queue '{target.queue}' no longer exists")
                    continue
                if target.queue == queue:
                    later.append((tag, d, target))
                    continue
                replayed += send(tag, d, target)
            for tag, d, target in later:
                replayed += send(tag, d, target)
        finally:
            if ch.is_open:
                for tag in held:
                    ch.basic_nack(tag, requeue=True)
    return ReplayOutcome(replayed, sum(reasons.values()), reasons, refused)


def move(connect: Connect, source: str, n: int, decode: Decode,
         place: Callable[[QueueDelivery], list[Publish]]) -> int:
    """Up to `n` ready messages of `source` moved to where `place` sends each (its
    copies confirmed before the original is acked); how many. Refused (429) when the
    broker refuses a copy: that message and the rest stay."""
    moved = 0
    with _channel(connect, f"moving messages of queue '{source}'") as ch:
        ch.confirm_delivery()
        for _ in range(n):
            method, props, body = ch.basic_get(source, auto_ack=False)
            if method is None:
                break
            d = decode(source, method, props, body)
            try:
                for p in place(d):
                    ch.basic_publish(p.exchange, p.routing_key, p.body, p.properties,
                                     mandatory=True)
            except (pika.exceptions.NackError, pika.exceptions.UnroutableError) as exc:
                ch.basic_nack(method.delivery_tag, requeue=True)
                why = ("a queue it goes to is full with overflow reject-publish"
                       if isinstance(exc, pika.exceptions.NackError) else
                       "it was routed nowhere")
                raise Refused(f"the broker refused a message from queue '{source}' ({why}); "
                              f"the {moved} before it were moved, it and the rest stay",
                              accepted=moved) from None
            except BaseException:
                if ch.is_open:
                    ch.basic_nack(method.delivery_tag, requeue=True)
                raise
            ch.basic_ack(method.delivery_tag)
            moved += 1
    return moved

