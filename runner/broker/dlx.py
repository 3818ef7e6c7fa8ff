"""Dead-letter delivery: republishing a dead message, and replaying it back.

`DeadLetterPublisher` owns no queues: it routes through the broker's router,
admits into the broker's queues, hands topic destinations to the topic sink,
and reports the queues it wrote to so the broker journals them (targets
before sources: a crash never loses a dead letter, at worst duplicates it).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Mapping
from typing import Any

from runner.broker.deadletter import (
    DEATH_HEADER,
    ReplayTarget,
    build_death,
    death_path,
    is_cycle,
    replay_target,
    replayed_headers,
    with_death,
)
from runner.broker.message import Message, QueuedMessage
from runner.broker.queue import MessageQueue
from runner.broker.results import ReplayResult, TopicLetter
from runner.broker.routing import Route, Router
from runner.clock import Clock
from runner.errors import Refused

log = logging.getLogger(__name__)

TopicSink = Callable[[str, Message], None]

# at most this many dead-letter hops (republishes of a dead letter) follow from one
# publish or one other death: the guard behind cycle detection (TOPOLOGY.md 1.1)
MAX_HOPS = 1000


class Cascade:
    """The dead-letter hops one publish (or one death) caused so far: shared by every
    dead letter that followed from it within one broker operation."""

    __slots__ = ("hops", "tripped")

    def __init__(self) -> None:
        self.hops = 0
        self.tripped = False


class DeadLetterPublisher:
    """Republishes dead letters through dead-letter exchanges, queues or topics."""

    def __init__(
        self, router: Router, queues: Mapping[str, MessageQueue], *, clock: Clock,
        topic_sink: TopicSink | None,
    ) -> None:
        self.router = router
        self.queues = queues
        self.clock = clock
        self.topic_sink = topic_sink
        self.touched: dict[str, MessageQueue] = {}  # queues written to since the last take
        self.dropped = 0  # dead letters that reached no destination at all
        self.cycles = 0  # destinations skipped to break a dead-letter cycle
        self.loops = 0  # dead letters dropped by the hop guard
        # the cascade each pending dead letter belongs to (cleared by `end_operation`)
        self.cascades: dict[QueuedMessage, Cascade] = {}

    def take_touched(self) -> dict[str, MessageQueue]:
        touched, self.touched = self.touched, {}
        return touched

    def adopt(self, queue: MessageQueue, start: int, cascade: Cascade | None) -> Cascade:
        """The dead letters `queue` gained from `start` on follow from `cascade` (a new
        one when None); returns it."""
        if cascade is None:
            cascade = Cascade()
        cascades = self.cascades
        for msg, _ in queue.dead[start:]:
            cascades[msg] = cascade
        return cascade

    def end_operation(self) -> None:
        """Every dead letter of the operation was sent: forget the cascades."""
        self.cascades.clear()

    def _loop(self, source: MessageQueue, msg: QueuedMessage, cascade: Cascade) -> Route:
        """The hop guard: drop `msg`, count it, and say so once per cascade."""
        self.loops += 1
        source.dead_letter_loops += 1
        if not cascade.tripped:
            cascade.tripped = True
            log.warning(
                "dead-letter loop: a message from queue %s (id %s) was dropped after %d "
                "dead-letter hops caused by one publish; further letters of that publish are "
                "dropped too (runner_queue_dead_letter_loops_total)",
                source.name, msg.message_id, MAX_HOPS)
        return Route((), ())

    def send(
        self, source: MessageQueue, msg: QueuedMessage, reason: str, *, body: bytes,
        given: Mapping[str, Any] | None = None, to_queue: str | None = None,
        to_topic: str | None = None,
    ) -> Route:
        """Dead-letter `msg` (already out of `source`); returns where it went.

        One hop of the cascade `msg` belongs to (a new one if none): past `MAX_HOPS`
        it is dropped instead. Dead letters the targets produce on admitting it (dropped
        on arrival, refused, heads dropped for room) join the same cascade."""
        cascade = self.cascades.pop(msg, None) or Cascade()
        if cascade.hops >= MAX_HOPS:
            return self._loop(source, msg, cascade)
        cascade.hops += 1
        death = build_death(msg, queue=source.name, reason=reason, given=given)
        path = death_path(msg, queue=source.name, reason=str(death["reason"]))
        headers = with_death(msg.headers, death)
        rk = msg.routing_key
        exchange = ""
        if to_queue is not None:
            route = Route((to_queue,), ())
        elif to_topic is not None:
            route = Route((), (to_topic,))
        elif source.spec.dead_letter is not None:
            exchange = source.spec.dead_letter.exchange
            rk = source.spec.dead_letter.routing_key or rk
            if not self.router.has_exchange(exchange):
                log.warning("queue %s: dead-letter exchange %s is missing; message dropped",
                            source.name, exchange)
                route = Route((), ())
            else:
                route = self.router.route(exchange, rk, headers)
        else:
            route = Route((), ())
        letter = Message(body, rk, headers, msg.priority or None, None, msg.message_id,
                         msg.content_type)
        now = self.clock.time()
        ts = int(now * 1000)
        went: list[str] = []
        for qname in route.queues:
            target = self.queues.get(qname)
            if target is None:
                continue
            if is_cycle(path, qname):
                self.cycles += 1
                log.info("dead-letter cycle: message from %s not returned to %s",
                         source.name, qname)
                continue
            start = len(target.dead)
            self.touched[qname] = target  # also when refused: it may dead-letter it
            try:
                target.admit(letter, exchange=exchange, routing_key=rk, now=now, ts_ms=ts,
                             headers=headers, death_queues=path)
            except Refused as exc:
                log.warning("dead letter from %s refused by %s: %s", source.name, qname, exc)
            else:
                went.append(qname)
            if len(target.dead) > start:
                self.adopt(target, start, cascade)
        topics: list[str] = []
        for topic in route.topics:
            if self.topic_sink is None:
                log.warning("dead letter from %s to topic %s: no topic sink", source.name, topic)
                continue
            self.topic_sink(topic, letter)
            topics.append(topic)
        if not went and not topics:
            self.dropped += 1
        return Route(tuple(went), tuple(topics))

    def replay(
        self, source: MessageQueue, max_messages: int | None,
        only: Collection[int] | None = None,
    ) -> ReplayResult:
        """Dead letters in `source` back where they died: into their original queue
        (no death header, `x-replay-count` + 1), or, for topic records, returned."""
        replayed = 0
        letters: list[TopicLetter] = []
        now = self.clock.time()
        ts = int(now * 1000)
        todo: list[tuple[QueuedMessage, ReplayTarget]] = []
        full: dict[str, str] = {}  # queue -> why it refused: later letters wait too (order)
        refused: dict[str, int] = {}
        for msg in source.iter_ready():  # collected first: a letter may go back to `source`
            if max_messages is not None and len(todo) >= max_messages:
                break
            if only is not None and msg.uid not in only:
                continue
            target = replay_target(msg.headers)
            if target is not None:
                todo.append((msg, target))
        for msg, target in todo:
            headers = replayed_headers(msg.headers)
            again = Message(source.body_of(msg), target.routing_key, headers,
                            msg.priority or None, None, msg.message_id, msg.content_type)
            if target.queue is None:
                letters.append(TopicLetter(target, again, msg.headers[DEATH_HEADER]))
            else:
                dest = self.queues.get(target.queue)
                if dest is None:
                    continue
                # checked before admitting: a refused replay must not be dead-lettered
                # (reject-publish-dlx) or dropped on arrival, it stays where it is
                why = full.get(target.queue) or dest.refusal(len(again.body))
                if why is None:
                    try:
                        dest.admit(again, exchange=target.exchange,
                                   routing_key=target.routing_key, now=now, ts_ms=ts,
                                   headers=headers)
                    except Refused as exc:
                        why = str(exc)
                if why is not None:
                    full[target.queue] = why
                    refused[why] = refused.get(why, 0) + 1
                    continue
                self.touched[target.queue] = dest
                replayed += 1
            source.remove_ready(msg)
        return ReplayResult(replayed, tuple(letters), refused)
