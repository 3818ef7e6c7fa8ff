"""A queue consumer: `concurrency` competing tasks fed by one prefetching puller.

The puller keeps at most `prefetch` messages leased (buffered + in flight).
Each message is settled by its delivery mode:

* at-most-once: acked before the handler runs; a failure is dead-lettered
  straight away by publishing a copy (there is nothing left to settle).
* at-least-once: staged outputs are published, then the message is acked.
* exactly-once: outputs + ack are one `backend.commit_step`.

The puller fetches when there is room and otherwise awaits the queue's
QUEUE_READY event (or a handler finishing); it never polls. A failure is
retried by settling it `Retry(delay)` (the queue keeps flowing; the backend's
timer makes it ready again), then dead-lettered to the policy's dead_letter_queue, else through
the queue's `dead_letter` exchange, else dropped (logged and counted).
"""

from __future__ import annotations

import asyncio
import logging
import math
from typing import Any

from runner.engine.contract import (
    Ack,
    DeadLetter,
    Event,
    EventKind,
    OutMessage,
    OutRecord,
    QueueDelivery,
    Requeue,
    Retry,
    Step,
    Ticket,
    Waiter,
)
from runner.errors import EngineError, NotFound
from runner.pipeline.deadletter import (
    DEAD_LETTER_HEADER,
    build_death,
    dead_letter_id,
    error_type,
)
from runner.pipeline.handler import Handler
from runner.pipeline.message import Outputs, QueueMessage
from runner.pipeline.spans import dead_letter_event, retry_event
from runner.pipeline.stats import HandlerCounters
from runner.pipeline.worker import Worker, WorkerEnv
from runner.topology.model import Consumer, Delivery, Topology

log = logging.getLogger(__name__)

LEASE_MARGIN_S = 30.0
ACK_BATCH = 64  # successful deliveries acked in one call...
ACK_FLUSH_S = 0.005  # ...or after this long
SYNC_BATCH_MAX = 64  # deliveries one pool thread takes at once for a sync handler


class QueueWorker(Worker):
    """Runs one `consumers:` entry."""

    def __init__(
        self, env: WorkerEnv, topology: Topology, consumer: Consumer, counters: HandlerCounters,
        *, handler: Handler | None = None,
    ) -> None:
        super().__init__(
            env, topology, name=consumer.name, handler_ref=consumer.handler,
            delivery=consumer.delivery, timeout_s=consumer.timeout_s,
            policy_name=consumer.dlq_policy, idempotency=consumer.idempotency,
            counters=counters, handler=handler, rate_limit=consumer.rate_limit,
        )
        self.consumer = consumer
        self.queue = consumer.queue
        # A buffered message waits for the ones ahead of it: lease long enough
        # for every call before it to time out, so a live lease never expires.
        per_task = math.ceil(max(1, consumer.prefetch) / max(1, consumer.concurrency)) + 1
        self.lease_s = consumer.timeout_s * per_task + LEASE_MARGIN_S
        self.buffer: asyncio.Queue[QueueDelivery] = asyncio.Queue()
        self.outstanding = 0  # leased by us: buffered + in flight
        self.puller_id = f"{consumer.name}@{env.hostname}"
        self.pending_acks: list[int] = []
        # at-most-once: the ack's ticket, awaited before the handler runs (a remote
        # backend sends the ack later; a lost one would run the handler twice)
        self.acked_before: dict[int, Ticket] = {}
        # at-least-once: the outputs' ticket, awaited before the input is acked, its
        # key remembered and its replies handed over
        self.unconfirmed: dict[int, tuple[Ticket, Outputs, str | None]] = {}
        self.ready: Waiter | None = None  # the puller's wake-up
        # exactly-once, async handlers: steps committed together (_commit_together)
        self.steps_waiting: list[tuple[Step, asyncio.Future[None]]] = []
        self.durable_tasks: set[asyncio.Task[None]] = set()  # steps awaiting durability

    def start(self) -> None:
        self.ready = self.waiter([Event(EventKind.QUEUE_READY, self.queue)])
        self.tasks.append(asyncio.create_task(self._pull(), name=f"pull:{self.name}"))
        batched = not self.handler.is_async
        for n in range(1, self.consumer.concurrency + 1):
            cid = f"{self.name}-{n}@{self.env.hostname}"
            work = self._work_batches(cid) if batched else self._work(cid)
            self.tasks.append(asyncio.create_task(work, name=f"work:{cid}"))

    async def drain(self, grace_s: float) -> None:
        await self.stop_tasks(grace_s)
        if self.durable_tasks:  # steps written by calls that are gone: let them resolve
            await asyncio.wait(set(self.durable_tasks), timeout=grace_s)
        self.flush_acks()
        # Buffered messages never reached a handler: give them back now.
        ids = []
        while not self.buffer.empty():
            ids.append(self.buffer.get_nowait().delivery_id)
        if ids:
            try:
                self.env.backend.settle(self.queue, [Requeue(i) for i in ids])
            except EngineError as exc:
                log.warning("consumer %s: could not requeue %d buffered: %s",
                            self.name, len(ids), exc)

    # ---------------------------------------------------------------- loops
    async def _pull(self) -> None:
        refill = max(1, self.consumer.prefetch // 2)
        ready = self.ready
        assert ready is not None
        if self.shared_keys is not None:  # the keys other daemons recorded, before any
            await self.shared_keys.catch_up()
        while not self.stopping:
            self.flush_acks()
            room = self.consumer.prefetch - self.outstanding
            got: list[QueueDelivery] = []
            if room >= refill or (room > 0 and self.buffer.empty()):
                try:
                    got = self.env.backend.fetch(
                        self.queue, room, lease_s=self.lease_s, consumer_id=self.puller_id
                    )
                except NotFound:
                    log.warning("consumer %s: queue %r is gone", self.name, self.queue)
                except EngineError as exc:
                    log.warning("consumer %s: pull failed: %s", self.name, exc)
            for d in got:
                self.outstanding += 1
                self.buffer.put_nowait(d)
            if got:
                await asyncio.sleep(0)
            else:  # until the queue may have more, a handler finished, or acks are due
                await ready.wait(ACK_FLUSH_S if self.pending_acks else None)

    def flush_acks(self) -> None:
        """Ack what succeeded since the last flush, in one engine call."""
        if not self.pending_acks:
            return
        ids, self.pending_acks = self.pending_acks, []
        try:
            unknown = self.env.backend.settle(self.queue, [Ack(i) for i in ids]).unknown
        except EngineError as exc:
            log.error("consumer %s: ack of %d failed: %s", self.name, len(ids), exc)
            return
        if unknown:
            log.warning("consumer %s: acks of %s came too late (lease expired)",
                        self.name, unknown)

    async def _work(self, consumer_id: str) -> None:
        while not self.stopping:
            d = await self.buffer.get()
            try:
                await self._process(d, consumer_id)
            except EngineError as exc:
                self._settle_failed(d, exc)
            finally:
                self._finished()

    def _settle_failed(self, d: QueueDelivery, exc: EngineError) -> None:
        # left unsettled: the lease runs out and the message comes back
        log.error("consumer %s: settling delivery %d failed: %s",
                  self.name, d.delivery_id, exc)

    def _finished(self) -> None:
        """One leased delivery is settled (or given up on): wake the puller when due."""
        self.outstanding -= 1
        if (len(self.pending_acks) >= ACK_BATCH or self.buffer.empty()
                or self.outstanding <= self.consumer.prefetch // 2) and self.ready is not None:
            self.ready.set()

    async def _process(self, d: QueueDelivery, consumer_id: str) -> None:
        await self._caught_up(d)
        prepared = self._prepare(d)
        if prepared is None or not await self._acked(d):
            return
        msg, key = prepared
        exc, outputs = await self.run_handler(msg)
        if exc is None and self.delivery is Delivery.EXACTLY_ONCE:
            exc = await self._commit_together(d, msg, outputs)
            if exc is None:
                self._committed(key, outputs)
                return
        self._settle(d, msg, key, exc, outputs, consumer_id)
        await self._ack_when_confirmed(d, msg, consumer_id)

    async def _commit_together(
        self, d: QueueDelivery, msg: QueueMessage, outputs: Outputs,
    ) -> EngineError | None:
        """Exactly-once, async handlers: commit this call's step (outputs + ack) together
        with the steps of the other workers that finished meanwhile -- one step journal
        write and its fsyncs for all of them (group commit of steps, as a Kafka
        transaction holds many records). None once committed; else the error that
        refused it (the call then fails: retried or dead-lettered)."""
        step = self.step_of(outputs) + Step(acks=((self.queue, d.delivery_id),))
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.steps_waiting.append((step, future))
        if len(self.steps_waiting) == 1:  # the first one schedules the commit
            asyncio.get_running_loop().call_soon(self._commit_waiting_steps)
        try:
            await asyncio.shield(future)
        except EngineError as exc:
            self.counters.error(error_type(exc))
            self.failures.report("outputs", exc, msg)
            return exc
        return None

    def _commit_waiting_steps(self) -> None:
        batch, self.steps_waiting = self.steps_waiting, []
        results = self.commit_steps([step for step, _ in batch])
        written: list[tuple[asyncio.Future[None], Ticket]] = []
        for (_, future), result in zip(batch, results, strict=True):
            if future.done():
                continue
            if isinstance(result, Ticket):
                written.append((future, result))
            else:
                future.set_exception(result)
        if written:
            task = asyncio.get_running_loop().create_task(self._resolve_when_durable(written))
            self.durable_tasks.add(task)
            task.add_done_callback(self.durable_tasks.discard)

    async def _resolve_when_durable(
        self, written: list[tuple[asyncio.Future[None], Ticket]],
    ) -> None:
        """Resolve each call's future once its step is durable, or with the error that
        failed it."""
        for future, ticket in written:
            try:
                await self.env.backend.durable(ticket)
            except EngineError as exc:
                if not future.done():
                    future.set_exception(exc)
            else:
                if not future.done():
                    future.set_result(None)

    async def _ack_when_confirmed(self, d: QueueDelivery, msg: QueueMessage,
                                  consumer_id: str) -> None:
        """At-least-once over a backend whose writes complete later: ack the input once
        its outputs are durable; when they failed, the call failed (retried or
        dead-lettered: its outputs may then be sent twice, never lost)."""
        unconfirmed = self.unconfirmed.pop(d.delivery_id, None)
        if unconfirmed is None:
            return
        ticket, outputs, key = unconfirmed
        try:
            await self.env.backend.durable(ticket)
        except EngineError as exc:
            self.counters.error(error_type(exc))
            self.failures.report("outputs", exc, msg)
            self._fail(d, msg, exc, consumer_id)
            return
        # never before the outputs are durable (a redelivery would be skipped as a
        # duplicate with them lost); the ack only once the key is (a shared window)
        await self._key_recorded(self.remember(key))
        self.hand_over(outputs)
        self.pending_acks.append(d.delivery_id)
        if self.ready is not None:
            self.ready.set()  # the puller flushes acks

    async def _key_recorded(self, ticket: Ticket) -> None:
        """Await the key's ticket before the ack. When it failed, the message is acked
        all the same (its handler ran and its outputs are stored): only a later copy
        of it may then be handled again."""
        try:
            await self.env.backend.durable(ticket)
        except EngineError as exc:
            log.warning("consumer %s: an idempotency key was not stored (%s); its message "
                        "is acked all the same", self.name, exc)

    async def _caught_up(self, d: QueueDelivery) -> None:
        """A redelivery, with a shared window: catch up on the others' keys first."""
        if self.shared_keys is not None and d.redelivered:
            await self.catch_up_keys(self.idem_key(QueueMessage.from_delivery(d)))

    async def _acked(self, d: QueueDelivery) -> bool:
        """At-most-once: True once the ack taken before the call is durable; False
        (the handler must not run: the backend delivers it again) when it failed."""
        ticket = self.acked_before.pop(d.delivery_id, None)
        if ticket is None:
            return True
        try:
            await self.env.backend.durable(ticket)
        except EngineError as exc:
            log.warning("consumer %s: the ack of delivery %d before the call failed (%s); "
                        "not calling the handler", self.name, d.delivery_id, exc)
            return False
        return True

    def _batch_cap(self) -> int:
        """How many buffered deliveries one sync batch may take: a fair share of the
        buffer; one at a time when that could change what the handler sees (an
        at-most-once ack happens before the call; duplicates are told apart by
        what the calls before them remembered)."""
        if self.delivery is Delivery.AT_MOST_ONCE or self.idempotency is not None:
            return 1
        share = math.ceil((self.buffer.qsize() + 1) / max(1, self.consumer.concurrency))
        return max(1, min(SYNC_BATCH_MAX, share))

    async def _work_batches(self, consumer_id: str) -> None:
        """A worker of a sync handler: runs of buffered deliveries, each run in one
        pool thread (SyncBatch); settled on the loop in order, as `_work` would."""
        carried: list[tuple[QueueDelivery, QueueMessage, str | None]] = []
        while not self.stopping:
            items = carried
            if not items:
                first = await self.buffer.get()
                taken = [first]
                cap = self._batch_cap()
                while len(taken) < cap and not self.buffer.empty():
                    taken.append(self.buffer.get_nowait())
                for d in taken:
                    await self._caught_up(d)
                items = []
                for item in self._prepare_all(taken):
                    if await self._acked(item[0]):
                        items.append(item)
                    else:
                        self._finished()
                if not items:
                    continue
            carried = []
            try:
                outcomes = await self.run_sync_batch([msg for _, msg, _ in items])
            except asyncio.CancelledError:
                for d, _, _ in items:  # unsettled: drain gives the unstarted back
                    self.buffer.put_nowait(d)
                raise
            committed = await self._commit_successes(items, outcomes)
            for (d, msg, key), (exc, outputs) in zip(items, outcomes, strict=False):
                try:
                    if d.delivery_id in committed:
                        exc = committed[d.delivery_id]
                        if exc is None:
                            self._committed(key, outputs)
                            continue
                        self.counters.error(error_type(exc))
                        self.failures.report("outputs", exc, msg)
                    self._settle(d, msg, key, exc, outputs, consumer_id)
                except EngineError as err:
                    self._settle_failed(d, err)
                finally:
                    self._finished()
            for d, msg, _ in items[:len(outcomes)]:
                try:
                    await self._ack_when_confirmed(d, msg, consumer_id)
                except EngineError as err:
                    self._settle_failed(d, err)
            rest = items[len(outcomes):]
            if self.stopping:
                for d, _, _ in rest:  # never started: drain gives them back
                    self.buffer.put_nowait(d)
            else:
                carried = rest  # after a timeout: first thing in the next batch

    async def _commit_successes(
        self, items: list[tuple[QueueDelivery, QueueMessage, str | None]],
        outcomes: list[tuple[Exception | None, Outputs]],
    ) -> dict[int, EngineError | None]:
        """Exactly-once, a sync batch: the steps of its successful calls committed
        together (`commit_steps`) and awaited until durable; by delivery id, None or
        the error that refused or failed it."""
        if self.delivery is not Delivery.EXACTLY_ONCE:
            return {}
        ok = [(d, outputs) for (d, _, _), (exc, outputs) in zip(items, outcomes, strict=False)
              if exc is None]
        steps = [self.step_of(outputs) + Step(acks=((self.queue, d.delivery_id),))
                 for d, outputs in ok]
        out: dict[int, EngineError | None] = {}
        for (d, _), result in zip(ok, self.commit_steps(steps), strict=True):
            if isinstance(result, Ticket):
                try:
                    await self.env.backend.durable(result)
                except EngineError as exc:
                    result = exc
                else:
                    out[d.delivery_id] = None
                    continue
            out[d.delivery_id] = result
        return out

    def _committed(self, key: str | None, outputs: Outputs) -> None:
        """An exactly-once call's step is committed: what follows it."""
        self.remember(key)
        self.hand_over(outputs)
        self.counters.succeeded += 1
        self.traced_settle(outputs, "ack")

    def _prepare_all(
        self, taken: list[QueueDelivery],
    ) -> list[tuple[QueueDelivery, QueueMessage, str | None]]:
        items = []
        for d in taken:
            try:
                prepared = self._prepare(d)
            except EngineError as exc:
                self._settle_failed(d, exc)
                self._finished()
                continue
            if prepared is None:
                self._finished()
                continue
            items.append((d, prepared[0], prepared[1]))
        return items

    def _prepare(self, d: QueueDelivery) -> tuple[QueueMessage, str | None] | None:
        """Before the call: (message, idempotency key), or None when `d` is a
        duplicate (settled here). At-most-once acks here, before the call."""
        backend = self.env.backend
        msg = QueueMessage.from_delivery(d)
        key = self.idem_key(msg)
        if self.delivery is Delivery.AT_MOST_ONCE:
            ticket = backend.settle(self.queue, [Ack(d.delivery_id)]).ticket
            if self.is_duplicate(key):
                return None
            if ticket != Ticket.DONE:
                self.acked_before[d.delivery_id] = ticket
        elif self.is_duplicate(key):
            backend.settle(self.queue, [Ack(d.delivery_id)])
            return None
        return msg, key

    def _settle(
        self, d: QueueDelivery, msg: QueueMessage, key: str | None, exc: Exception | None,
        outputs: Outputs, consumer_id: str,
    ) -> None:
        """After the call: apply its outputs and ack, or retry / dead-letter it."""
        if exc is None:
            try:
                self._succeed(d, outputs, key)
            except EngineError as send_exc:
                exc = send_exc
                self.counters.error(error_type(send_exc))
                self.failures.report("outputs", send_exc, msg)
            else:
                self.counters.succeeded += 1
                self.traced_settle(outputs, "ack")
                return
        how, event = self._fail(d, msg, exc, consumer_id)
        self.traced_settle(outputs, how, exc, event)

    def _succeed(self, d: QueueDelivery, outputs: Outputs, key: str | None) -> None:
        if self.delivery is Delivery.EXACTLY_ONCE:
            self.env.backend.commit_step(
                self.step_of(outputs) + Step(acks=((self.queue, d.delivery_id),)))
            self.remember(key)
            self.hand_over(outputs)
            return
        ticket = self.send(outputs)
        if self.delivery is Delivery.AT_LEAST_ONCE and ticket != Ticket.DONE:
            # acked (key remembered, replies handed over) once the outputs are durable
            self.unconfirmed[d.delivery_id] = (ticket, outputs, key)
            return
        recorded = self.remember(key)
        if self.delivery is Delivery.AT_LEAST_ONCE and recorded != Ticket.DONE:
            # acked (replies handed over) once the key is durable (a shared window)
            self.unconfirmed[d.delivery_id] = (recorded, outputs, None)
            return
        if self.delivery is Delivery.AT_LEAST_ONCE:
            self.pending_acks.append(d.delivery_id)  # acked by the next flush_acks
        self.hand_over(outputs)

    def _fail(self, d: QueueDelivery, msg: QueueMessage, exc: Exception, consumer_id: str,
              ) -> tuple[str, dict[str, Any]]:
        """Retry or dead-letter a failed call: ("retry" | "dead_letter", the attributes
        of its span event: attempt, delay or reason)."""
        failures = d.delivery_count if self.delivery is not Delivery.AT_MOST_ONCE else 1
        decision = self.retrier.decide(exc, failures)
        reason = "handler_error"
        if decision.retry and self._at_delivery_limit(d):
            # the broker would dead-letter it at the next pull without the error:
            # the pipeline does it now, with the error, to the policy's target
            reason = "delivery_limit"
        elif decision.retry:
            self.counters.retries += 1
            self.env.backend.settle(self.queue, [Retry(d.delivery_id, decision.delay_s)])
            return "retry", retry_event(failures, decision.delay_s)
        now = self.env.clock.time()
        death = build_death(
            msg, exc, retry_count=failures - 1, first_attempt=now, last_attempt=now,
            consumer_id=consumer_id, reason=reason,
        )
        if self.delivery is not Delivery.AT_MOST_ONCE:
            # the broker tracks each message's first and last delivery across
            # retries and restarts, and counts its deaths: let it fill those
            for name in ("first_attempt", "last_attempt", "death_count"):
                del death[name]
        target = self._dead_letter(d, msg, death)
        self.send_error_reply(msg, exc)
        event = dead_letter_event(failures, reason, decision.reason, target)
        return ("dead_letter" if target is not None else "drop"), event

    def _at_delivery_limit(self, d: QueueDelivery) -> bool:
        """True when the queue's `delivery_limit` allows no further delivery of `d`."""
        if self.delivery is Delivery.AT_MOST_ONCE:
            return False
        queue = self.topology.queue_map().get(self.queue)
        limit = queue.delivery_limit if queue is not None else None
        return limit is not None and d.delivery_count >= limit

    def _dead_letter(self, d: QueueDelivery, msg: QueueMessage, death: dict[str, Any],
                     ) -> str | None:
        """Dead-letter `d`; where to (`queue Q`, `topic T`, `exchange X`), None: dropped."""
        backend = self.env.backend
        to_queue, to_topic = self.dlq_target()
        queue = self.topology.queue_map().get(self.queue)
        dlx = queue.dead_letter if queue is not None else None
        if to_queue is None and to_topic is None and dlx is None:
            self.counters.dropped += 1
            log.warning("consumer %s: dropped message %s after %s (no dlq_policy and no "
                        "dead_letter on queue %r)", self.name, d.message_id or d.delivery_id,
                        death["error"]["type"], self.queue)
            if self.delivery is not Delivery.AT_MOST_ONCE:
                backend.settle(self.queue, [Ack(d.delivery_id)])
            return None
        self.counters.dead_lettered += 1
        target = (f"queue {to_queue}" if to_queue is not None else
                  f"topic {to_topic}" if to_topic is not None else
                  f"exchange {dlx.exchange}" if dlx is not None else "")
        if self.delivery is not Delivery.AT_MOST_ONCE:
            backend.settle(self.queue, [DeadLetter(
                d.delivery_id, reason=str(death["reason"]), death=death, to_queue=to_queue,
                to_topic=to_topic)])
            return target
        # at-most-once: already acked; dead-letter a copy of the message
        headers = dict(d.headers)
        headers[DEAD_LETTER_HEADER] = death
        # its own id: another consumer's dead letter of the same message is not a duplicate
        mid = dead_letter_id(self.name, d.message_id, death.get("death_count"))
        key = d.routing_key
        if (to_queue is None and to_topic is None and dlx is not None
                and dlx.routing_key is not None):
            key = dlx.routing_key
        copy = OutMessage(body=d.body, routing_key=key, headers=headers,
                          priority=d.priority or None, message_id=mid,
                          content_type=d.content_type)
        if to_queue is not None:
            backend.put(to_queue, [copy])
        elif to_topic is not None:
            backend.append(to_topic, [OutRecord(value=d.body, headers=headers)])
        elif dlx is not None:
            backend.publish(dlx.exchange, [copy])
        return target
