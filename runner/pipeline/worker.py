"""A worker: one consumer's (or group's) handler calls, outcomes and shared plumbing.

`Worker` holds what queue consumers and consumer groups share: the resolved
handler, the retry policy, the idempotency window, counters, the wake-ups
and the stop flag. `QueueWorker` (queue_worker.py) and `GroupWorker`
(group_worker.py) add how messages arrive and how they are settled. Every
backend call happens on the loop thread; only sync handlers leave it.

Workers talk to the backend only through `runner.engine.contract`. They
never poll: an idle task awaits a `Waiter` fed by the backend's events
(queue-ready, records-appended, assignment-changed, seek) and by `notify`;
a retry in place and a rate limit's pause sleep on the injected `Clock`
(`clock.sleep`), so a test drives them with a `ManualClock`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import inspect
import logging
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runner import jsontext
from runner.clock import Clock
from runner.datapath import entity_path
from runner.engine.contract import (
    Backend,
    Event,
    FsyncPolicy,
    KeyWindow,
    SharedKeys,
    Step,
    Ticket,
    Waiter,
)
from runner.errors import Conflict, EngineError
from runner.fs import LOCAL, FileSystem
from runner.pipeline.deadletter import error_type
from runner.pipeline.failures import FailureLog
from runner.pipeline.handler import Handler, HandlerTimeout
from runner.pipeline.idempotency import IdempotencyStore, key_of
from runner.pipeline.message import JSON_CONTENT_TYPE, Context, Message, Outputs, Requester
from runner.pipeline.otel import Spans
from runner.pipeline.pacing import Pacer
from runner.pipeline.replies import Replies, reply_message
from runner.pipeline.retry import Retrier
from runner.pipeline.spans import CallSpans
from runner.pipeline.stats import HandlerCounters
from runner.pipeline.sync_batch import SyncBatch
from runner.topology.model import Delivery, DlqPolicy, Idempotency, Topology

log = logging.getLogger(__name__)



@dataclass(frozen=True, slots=True)
class WorkerEnv:
    """What every worker of one Pipeline shares."""

    backend: Backend
    executor: concurrent.futures.ThreadPoolExecutor
    clock: Clock
    data_dir: Path
    hostname: str
    random: Callable[[], float]
    fsync: FsyncPolicy
    fs: FileSystem = LOCAL  # the file-system seam the idempotency stores write through
    replies: Replies = field(default_factory=Replies)  # requests waiting in this daemon
    spans: Spans | None = None  # OpenTelemetry spans (the otel extra), else None
    requester: Requester | None = None  # sends ctx.request's requests


class Worker:
    """The shared half of a queue consumer or a consumer group runner."""

    def __init__(
        self, env: WorkerEnv, topology: Topology, *, name: str, handler_ref: str,
        delivery: Delivery, timeout_s: float, policy_name: str | None,
        idempotency: Idempotency | None, counters: HandlerCounters,
        handler: Handler | None = None, rate_limit: float | None = None,
    ) -> None:
        self.env = env
        self.topology = topology
        self.name = name
        # `handler`: already resolved (a simulation's stand-in), else imported from the ref
        self.handler = handler or Handler.load(handler_ref, consumer=name)
        self.delivery = delivery
        self.timeout_s = timeout_s
        self.policy: DlqPolicy | None = (
            topology.policy_map().get(policy_name) if policy_name else None
        )
        self.retrier = Retrier(self.policy, delivery, random=env.random)
        self.idempotency = idempotency
        self.idem_store: IdempotencyStore | None = None
        # a backend whose processes share the window keeps it (RabbitMQ: a keys stream)
        self.shared_keys: KeyWindow | None = None
        if idempotency is not None and isinstance(env.backend, SharedKeys):
            self.shared_keys = env.backend.key_window(name, idempotency.window_s)
        elif idempotency is not None:
            self.idem_store = IdempotencyStore(
                entity_path(env.data_dir / "idempotency", name, ".keys"),
                window_s=idempotency.window_s,
                clock=env.clock, fsync=env.fsync is FsyncPolicy.ALWAYS, fs=env.fs,
            )
        self.counters = counters
        self.failures = FailureLog(name, env.clock)
        self.stopping = False
        self._stopped = asyncio.Event()
        self.waiters: list[Waiter] = []  # one per task that waits for events
        self.busy = 0  # handler calls in flight
        self.tasks: list[asyncio.Task[None]] = []
        # `rate_limit`: one bucket for every instance of this consumer or group
        self.pacer: Pacer | None = None
        if rate_limit is not None:
            self.pacer = Pacer(rate_limit, now=env.clock.monotonic, sleep=self.pause)

    # ---------------------------------------------------------------- calls
    async def run_handler(self, message: Message) -> tuple[Exception | None, Outputs]:
        """One call: (None, staged outputs) on success, (exception, nothing) on failure."""
        if not self.handler.is_async:  # a batch of one: one future, no per-call scopes
            return (await self.run_sync_batch([message], stoppable=False))[0]
        if self.pacer is not None and not self.pacer.take():
            await self.pacer.admit()  # stopping meanwhile: this one call still runs
        ctx = self._context(message)
        start = self.env.clock.monotonic()
        self.busy += 1
        try:
            result = await self.handler.call(
                message, ctx, timeout_s=self.timeout_s, executor=self.env.executor
            )
        except asyncio.CancelledError:
            ctx.close()
            raise
        except Exception as exc:  # the handler failed: any exception is a failure
            return self._outcome(ctx, exc, self.env.clock.monotonic() - start)
        finally:
            self.busy -= 1
        return self._outcome(ctx, None, self.env.clock.monotonic() - start, result)

    async def run_sync_batch(
        self, messages: list[Message], *, stoppable: bool = True,
    ) -> list[tuple[Exception | None, Outputs]]:
        """Calls of the sync handler over `messages`, back to back in one pool thread:
        an outcome (as from run_handler) for each of the first k; the rest were not
        started (a call timed out, or the worker is stopping and `stoppable`) and
        are the caller's."""
        pacer = self.pacer
        if (pacer is not None and not pacer.take(len(messages))
                and not await pacer.admit(len(messages)) and stoppable):
            return []  # stopped while paced: none started
        calls = [(m, self._context(m)) for m in messages]
        batch = SyncBatch(self.handler, calls, clock=self.env.clock,
                          stopping=(lambda: self.stopping) if stoppable else (lambda: False))
        loop = asyncio.get_running_loop()
        work = loop.run_in_executor(self.env.executor, batch.run)
        timed_out: float | None = None  # clock seconds the overrunning call ran
        self.busy += 1
        try:
            wait_s = self.timeout_s
            while True:
                done, _ = await asyncio.wait((work,), timeout=wait_s)
                if done:
                    work.result()  # re-raises what escaped the batch (not an Exception)
                    break
                overran, wait_s = batch.overran(self.timeout_s)
                if overran:
                    timed_out = wait_s
                    break
        except asyncio.CancelledError:
            work.cancel()  # not started yet: it never will be
            batch.abandon()
            for _, ctx in calls:
                ctx.close()
            raise
        finally:
            self.busy -= 1
        results: list[tuple[Exception | None, Outputs]] = []
        for (_, ctx), outcome in zip(calls, list(batch.outcomes), strict=False):
            exc, value = outcome.error, outcome.result
            if exc is None and inspect.isawaitable(value):
                exc, value = await self._await_result(value, outcome.elapsed_s)
            results.append(self._outcome(ctx, exc, outcome.elapsed_s, value))
        if timed_out is not None:
            _, ctx = calls[len(results)]
            exc = HandlerTimeout(
                f"handler {self.handler.ref!r} did not finish within {self.timeout_s:g}s")
            results.append(self._outcome(ctx, exc, timed_out))
        return results

    async def _await_result(
        self, result: Any, elapsed_s: float,
    ) -> tuple[Exception | None, Any]:
        """A sync callable returned an awaitable: await it for what is left of the
        timeout; (error, None) or (None, its value)."""
        try:
            async with asyncio.timeout(max(0.0, self.timeout_s - elapsed_s)) as deadline:
                return None, await result
        except TimeoutError as exc:
            if deadline.expired():
                return HandlerTimeout(
                    f"handler {self.handler.ref!r} did not finish within {self.timeout_s:g}s"
                ), None
            return exc, None
        except Exception as exc:  # the handler failed: any exception is a failure
            return exc, None

    def _outcome(
        self, ctx: Context, exc: Exception | None, elapsed_s: float, result: Any = None,
    ) -> tuple[Exception | None, Outputs]:
        """Count one finished call; its staged outputs (and its reply, when the
        message asked for one) only when it succeeded."""
        if exc is None:
            try:
                ctx.stage_reply(result)
            except TypeError as bad:  # a return value JSON cannot encode fails the call
                exc = bad
        outputs = ctx.close()
        self.counters.observe(elapsed_s)
        if ctx.call is not None:
            ctx.call.handled(exc)
        if exc is None:
            outputs.call = ctx.call
            return None, outputs
        self.counters.error(error_type(exc))
        self.failures.report("handler", exc, ctx.message)
        return exc, Outputs(call=ctx.call)

    def _context(self, message: Message) -> Context:
        """A call's context; with tracing, its deliver and handle spans are started."""
        incoming = message.trace
        spans = self.env.spans
        if spans is None:
            return Context(self.name, message, self.env.requester,
                           incoming.child() if incoming is not None else None)
        call = CallSpans(spans, self.name, message, incoming)
        ctx = Context(self.name, message, self.env.requester, call.outgoing)
        ctx.call = call
        return ctx

    def traced_settle(self, outputs: Outputs, how: str, error: BaseException | None = None,
                      event: Mapping[str, Any] | None = None) -> None:
        """The call's message was settled (`ack`, `retry`, `dead_letter`, `drop`): its
        settle span (with `event` as a span event named `how`), then the end of its
        deliver span (with tracing only)."""
        if outputs.call is not None:
            outputs.call.settled(how, error, event)

    def send(self, outputs: Outputs) -> Ticket:
        """Publish staged outputs straight away (at-most-once / at-least-once); the
        ticket that covers them all (await it before acking the input)."""
        backend = self.env.backend
        ticket = Ticket.DONE
        for exchange, msgs in outputs.grouped_publishes():
            ticket = ticket.max(backend.publish(exchange, msgs).ticket)
        for queue, msgs in outputs.grouped_puts():
            ticket = ticket.max(backend.put(queue, msgs).ticket)
        for topic, recs in outputs.grouped_appends():
            ticket = ticket.max(backend.append(topic, recs).ticket)
        return ticket

    def step_of(self, outputs: Outputs) -> Step:
        """The staged outputs as (the output half of) an exactly-once step."""
        return Step(
            publishes=tuple((ex, tuple(ms)) for ex, ms in outputs.grouped_publishes()),
            puts=tuple((q, tuple(ms)) for q, ms in outputs.grouped_puts()),
            appends=tuple((t, tuple(rs)) for t, rs in outputs.grouped_appends()),
        )

    def commit_steps(self, steps: list[Step], *,
                     runs: Sequence[Hashable | None] | None = None) -> list[EngineError | Ticket]:
        """Commit `steps` as one merged step (one journal record and one fsync of each
        touched log for all); when the backend refuses the merged step (a full
        reject-publish queue, the fanout cap, a stale member's fence, ...) nothing of
        it was applied, and each step is committed alone so only the refused ones
        fail. Per step: the ticket to await before it counts as done, else the error
        that refused it. `runs`: steps with the same run key are consecutive records
        of one partition; committed alone, the ones after a refused one are not
        committed (Conflict: they would commit past it). The one owner of step
        batching: queue consumers and group members use it."""
        backend = self.env.backend
        if len(steps) > 1:
            merged = Step()
            for step in steps:
                merged = merged + step
            try:
                ticket = backend.commit_step(merged)
            except EngineError:
                pass  # one by one below
            else:
                return [ticket] * len(steps)
        results: list[EngineError | Ticket] = []
        refused: set[Hashable] = set()
        for i, step in enumerate(steps):
            run = runs[i] if runs is not None else None
            if run is not None and run in refused:
                results.append(Conflict("a record before it in its partition was refused"))
                continue
            try:
                results.append(backend.commit_step(step))
            except EngineError as exc:
                results.append(exc)
                if run is not None:
                    refused.add(run)
        return results

    def hand_over(self, outputs: Outputs) -> None:
        """After the call is settled: replies to requests waiting in this daemon."""
        for address, reply in outputs.replies:
            self.env.replies.deliver(address, reply)

    def send_error_reply(self, message: Message, exc: BaseException) -> None:
        """The message's handler failed for good: tell the requester (when it asked for
        a reply) with `{"error": {"type", "message"}}` and `x-reply-error: true`. Best
        effort beside the dead letter: a reply that cannot be sent is logged."""
        address = message.reply_to
        if address is None:
            return
        body = jsontext.dumps({"error": {"type": error_type(exc), "message": str(exc)}})
        outputs = Outputs()
        reply = reply_message(body, JSON_CONTENT_TYPE, message.correlation_id, error=True)
        trace = message.trace
        if trace is not None:
            headers = dict(reply.headers)
            trace.child().write(headers)
            reply = dataclasses.replace(reply, headers=headers)
        outputs.add_reply(address, reply)
        try:
            self.send(outputs)
        except EngineError as send_exc:
            log.warning("consumer %s: the error reply to %s could not be sent: %s",
                        self.name, address, send_exc)
            return
        self.hand_over(outputs)

    # ---------------------------------------------------------------- idempotency
    def idem_key(self, message: Message) -> str | None:
        if self.idempotency is None:
            return None
        return key_of(message, self.idempotency)

    def is_duplicate(self, key: str | None) -> bool:
        if key is None or not self.seen(key):
            return False
        self.counters.skipped += 1
        log.debug("consumer %s: skipped duplicate %r", self.name, key)
        return True

    def seen(self, key: str) -> bool:
        if self.shared_keys is not None:
            return self.shared_keys.seen(key)
        return self.idem_store is not None and self.idem_store.seen(key)

    async def catch_up_keys(self, key: str | None) -> None:
        """Before trusting the window for a redelivery of `key`: with a shared window,
        read every key the other processes recorded so far (one of them may have
        handled it and died before its ack reached the broker)."""
        if self.shared_keys is not None and key is not None and not self.shared_keys.seen(key):
            await self.shared_keys.catch_up()

    def remember(self, key: str | None) -> Ticket:
        """Record `key` as processed: the ticket to await before acking its message
        (DONE for the local store: durable on return)."""
        if key is None:
            return Ticket.DONE
        if self.shared_keys is not None:
            return self.shared_keys.record(key)
        if self.idem_store is not None:
            self.idem_store.record(key)
        return Ticket.DONE

    # ---------------------------------------------------------------- dead letters
    def dlq_target(self) -> tuple[str | None, str | None]:
        """(to_queue, to_topic) of the policy's dead_letter_queue, if any."""
        target = self.policy.dead_letter_queue if self.policy else None
        if target is None:
            return None, None
        if target in self.topology.topic_map():
            return None, target
        return target, None

    # ---------------------------------------------------------------- waiting
    def waiter(self, events: list[Event]) -> Waiter:
        """A wake-up for one task: the backend's `events`, `notify` and stop."""
        waiter = Waiter(self.env.backend, events)
        self.waiters.append(waiter)
        return waiter

    @property
    def wakeups(self) -> int:
        """Events that reached this worker's waiters (the idle-cost tests count them)."""
        return sum(w.fired for w in self.waiters)

    async def pause(self, seconds: float) -> bool:
        """Sleep `seconds` on the clock unless stopped first; False when stopped."""
        if self.stopping:
            return False
        sleep = asyncio.ensure_future(self.env.clock.sleep(seconds))
        stopped = asyncio.ensure_future(self._stopped.wait())
        try:
            await asyncio.wait((sleep, stopped), return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleep.cancel()
            stopped.cancel()
        return not self.stopping

    def notify(self) -> None:
        """Wake every waiting task (something may have changed)."""
        for waiter in self.waiters:
            waiter.set()

    async def _overran_grace(self, grace_s: float) -> None:
        """Handler calls still running when the grace ran out: logged
        (`event=drain_timeout`). An async call is cancelled (its message stays
        unsettled and comes back). A sync call cannot be stopped and the process
        cannot exit before its thread ends anyway, so it is waited for (at most
        its `timeout`) and settled like any other call: no duplicate later."""
        running = self.busy
        sync = not self.handler.is_async
        log.warning(
            "consumer %s: %d handler call(s) still running after the %gs grace; %s",
            self.name, running, grace_s,
            f"waiting up to {self.timeout_s:g}s to settle them (sync handlers cannot be "
            "stopped)" if sync else "cancelled: their messages come back later",
            extra={"event": "drain_timeout", "consumer": self.name, "in_flight": running,
                   "abandoned": 0 if sync else running},
        )
        if not sync:
            return
        loop = asyncio.get_running_loop()
        late = loop.time() + self.timeout_s + 1.0
        while self.busy and loop.time() < late:
            await asyncio.sleep(0.01)
        log.info("consumer %s: %d of %d late handler call(s) settled after the grace",
                 self.name, running - self.busy, running,
                 extra={"event": "drain_late_settled", "consumer": self.name,
                        "settled": running - self.busy, "abandoned": self.busy})

    async def stop_tasks(self, grace_s: float) -> None:
        """Stop taking work, let handler calls in flight finish up to `grace_s`, then cancel."""
        self.stopping = True
        self._stopped.set()
        self.notify()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace_s
        while self.busy and loop.time() < deadline:
            await asyncio.sleep(0.01)
        if self.busy:
            await self._overran_grace(grace_s)
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            try:
                await task
            except asyncio.CancelledError:
                pass
            except Exception:
                log.exception("consumer %s: worker task failed", self.name)
        self.tasks.clear()
        for waiter in self.waiters:
            waiter.close()
        self.waiters.clear()
        if self.idem_store is not None:
            self.idem_store.close()
