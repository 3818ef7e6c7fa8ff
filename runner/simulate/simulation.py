"""A simulation: one topology on a throw-away engine, its real workers driven by hand.

`Simulation.open(topology, handlers=...)` opens the embedded engine in a
temporary data directory (fsync never; removed by `close`) on a
`ManualClock`, and builds the daemon's own `QueueWorker` / `GroupWorker` for
every consumer and handled group. Instead of their loops, `settle()` drives
them: pull and process what is ready, then move the clock straight to the
next TTL expiry or retry coming due, until nothing is left to do. Delays cost
no wall time, and what happens is what the daemon does -- routing, the
murmur2 partitioner, retries from the DLQ policy, dead letters with their
`x-dead-letter` header, TTL expiry, onward publishes -- because it is the
daemon's code.

Each handler is the real one (or a stand-in given by the caller), wrapped to
record every call (`Call`) with what it staged through its context, and to
fail on purpose the first N times (`Stand`). Every failure's fate (retry
after a delay, or give up and why) is recorded as a `Fate`. Groups run one
member each; workers take turns, so a group retrying in place (its partition
waits, as in Kafka) holds the others back in simulated time.
"""

from __future__ import annotations

import asyncio
import builtins
import concurrent.futures
import dataclasses
import inspect
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runner.clock import ManualClock
from runner.engine import Engine, FsyncPolicy, OutMessage, OutRecord, QueueDelivery, Record
from runner.engine.contract import GroupMember
from runner.engine.contract import QueueDelivery as Delivered
from runner.engine.embedded import EmbeddedBackend
from runner.errors import EngineError
from runner.pipeline.deadletter import error_type
from runner.pipeline.group_worker import GroupWorker
from runner.pipeline.handler import Handler
from runner.pipeline.message import Context, Message, QueueMessage, decode_body
from runner.pipeline.queue_worker import QueueWorker
from runner.pipeline.retry import Decision, Retrier
from runner.pipeline.stats import HandlerCounters
from runner.pipeline.worker import WorkerEnv
from runner.topology.model import Topology

HOST = "simulation"
MAX_PASSES = 100_000
PULL_BATCH = 100
DEFAULT_HORIZON_S = 30 * 86400.0


# ---------------------------------------------------------------- records


@dataclass(frozen=True, slots=True)
class Output:
    """One publish or append a handler staged through its context."""

    kind: str  # "publish" | "append"
    target: str  # exchange or topic
    key: str | None  # routing key, or record key (text)
    body: Any
    headers: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Call:
    """One handler call."""

    worker: str  # consumer or group name
    at_s: float  # simulated seconds since the simulation started
    source: str  # "queue NAME" or "TOPIC[P]@OFFSET"
    delivery_count: int
    error_type: str | None  # None: it returned normally
    error: str | None
    injected: bool  # the failure was a stand's, not the handler's
    outputs: tuple[Output, ...]  # staged; applied only when the call succeeded


@dataclass(frozen=True, slots=True)
class Fate:
    """What the worker decided after a failure: retry after `delay_s`, or give up."""

    worker: str
    at_s: float
    failures: int  # failed attempts so far (>= 1)
    error_type: str
    error: str
    retry: bool
    delay_s: float
    reason: str  # why it gave up ("3 retries exhausted", ...); "" for a retry
    injected: bool = False  # the failure was a stand's
    engine_error: bool = False  # the call succeeded but the engine refused its outputs


@dataclass(frozen=True, slots=True)
class Stand:
    """How a worker's handler behaves in a simulation: fail the first `fail` calls
    with an exception of class `error` (a builtin name, or a dotted
    `module.QualName` made up on the spot), then call `handler` -- when None,
    the worker's real handler (imported), or, with `real=False`, nothing (the
    call succeeds without output)."""

    handler: Handler | None = None
    fail: int = 0
    error: str = "RuntimeError"
    message: str = "simulated failure"
    real: bool = True


def make_error(name: str, message: str) -> Exception:
    """An exception whose class is called `name` (so `no_retry_on` sees that name)."""
    found = getattr(builtins, name, None)
    if isinstance(found, type) and issubclass(found, Exception):
        exc = found(message)
    else:
        module, _, qualname = name.rpartition(".")
        cls = type(qualname, (Exception,), {"__module__": module or "simulation"})
        cls.__qualname__ = qualname
        exc = cls(message)
    setattr(exc, _INJECTED, True)
    return exc


_INJECTED = "__runner_simulated__"


def _source(message: Message) -> str:
    if isinstance(message, QueueMessage):
        return f"queue {message.queue}"
    return f"{message.topic}[{message.partition}]@{message.offset}"


class _RecordingContext:
    """The real context, with what the handler stages noted on the way through."""

    __slots__ = ("_ctx", "outputs", "consumer", "message")

    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx
        self.outputs: list[Output] = []
        self.consumer = ctx.consumer
        self.message = ctx.message

    def publish(
        self, exchange: str, routing_key: str, body: Any,
        headers: Mapping[str, Any] | None = None, priority: int | None = None,
    ) -> None:
        self._ctx.publish(exchange, routing_key, body, headers=headers, priority=priority)
        self.outputs.append(Output("publish", exchange, routing_key, body, dict(headers or {})))

    def append(
        self, topic: str, value: Any, key: Any = None, headers: Mapping[str, Any] | None = None,
    ) -> None:
        self._ctx.append(topic, value, key=key, headers=headers)
        shown = key.decode(errors="replace") if isinstance(key, bytes) else key
        self.outputs.append(Output("append", topic, None if shown is None else str(shown),
                                   value, dict(headers or {})))


# ---------------------------------------------------------------- workers


class _RecordingRetrier(Retrier):
    __slots__ = ("_note",)

    def __init__(self, base: Retrier, note: Callable[[BaseException, int, Decision], None]) -> None:
        super().__init__(base.policy if base.explicit else None, base.delivery,
                         random=base._random)
        self._note = note

    def decide(self, exc: BaseException, failures: int) -> Decision:
        decision = super().decide(exc, failures)
        self._note(exc, failures, decision)
        return decision


class _SimQueueWorker(QueueWorker):
    sim: Simulation

    def _dead_letter(self, d: Delivered, msg: QueueMessage, death: dict[str, Any]) -> None:
        if death.get("reason") == "delivery_limit":
            self.sim._gave_up(self.name, f"delivery_limit reached ({d.delivery_count} "
                                         "deliveries)")
        super()._dead_letter(d, msg, death)

    async def step(self) -> bool:
        got = self.env.backend.fetch(self.queue, PULL_BATCH, lease_s=self.lease_s,
                                     consumer_id=self.puller_id)
        for d in got:
            self.outstanding += 1
            try:
                await self._process(d, f"{self.name}-1@{HOST}")
            except EngineError as exc:
                self._settle_failed(d, exc)
            finally:
                self._finished()
        self.flush_acks()
        return bool(got)


class _SimGroupWorker(GroupWorker):
    sim: Simulation
    member: GroupMember
    positions: dict[Any, int]
    follows: dict[Any, int]
    pending: dict[Any, int]

    async def pause(self, seconds: float) -> bool:
        # a retry in place: the partition waits, in simulated time
        self.sim.advance(seconds)
        return True

    async def step(self) -> bool:
        busy = await self._replays(self.member)
        version = self.seeks
        for tp in self.member.assignment():
            if tp not in self.positions:
                self.positions[tp] = self.follows[tp] = self.member.position(tp)
            busy |= await self._partition(self.member, tp, self.positions, self.follows,
                                          self.pending, version)
            await self._flush(self.member, self.pending, self.positions, version)
        return busy


# ---------------------------------------------------------------- the simulation


@dataclass(frozen=True, slots=True)
class Landing:
    """Where one published message or appended record went."""

    queues: tuple[str, ...] = ()
    partitions: tuple[tuple[str, int], ...] = ()  # (topic, partition)

    @property
    def nowhere(self) -> bool:
        return not self.queues and not self.partitions


@dataclass(slots=True)
class _Log:
    calls: list[Call] = field(default_factory=list)
    fates: list[Fate] = field(default_factory=list)


class Simulation:
    """A topology on a throw-away embedded engine with a manual clock; see the module.

    `stands[name]` says how the consumer or group `name` behaves; without one,
    `default(name)` (when given) or its real handler (imported:
    HandlerImportError when it cannot be). Always `close()` it."""

    def __init__(
        self, topology: Topology, *, stands: Mapping[str, Stand] | None = None,
        default: Callable[[str], Stand] | None = None, start_time: float = 1_700_000_000.0,
    ) -> None:
        self.topology = topology
        self.clock = ManualClock(start_time)
        self.start = start_time
        self.log = _Log()
        self._dir = Path(tempfile.mkdtemp(prefix="runner-simulation-"))
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="sim")
        self._queue_workers: list[_SimQueueWorker] = []
        self._group_workers: list[_SimGroupWorker] = []
        self._engine: Engine | None = None
        try:
            self._engine = Engine.open(topology, self._dir / "data", fsync=FsyncPolicy.NEVER,
                                       clock=self.clock)
            env = WorkerEnv(backend=EmbeddedBackend(self._engine), executor=self._executor,
                            clock=self.clock,
                            data_dir=self._dir / "data", hostname=HOST, random=lambda: 0.5,
                            fsync=FsyncPolicy.NEVER)
            self._build(env, stands or {}, default)
        except BaseException:
            self.close()
            raise

    @classmethod
    def open(
        cls, topology: Topology, *, stands: Mapping[str, Stand] | None = None,
        default: Callable[[str], Stand] | None = None,
    ) -> Simulation:
        return cls(topology, stands=stands, default=default)

    @property
    def engine(self) -> Engine:
        assert self._engine is not None
        return self._engine

    @property
    def backend(self) -> EmbeddedBackend:
        """The simulation's engine through the contract (a RouteExplainer too)."""
        return EmbeddedBackend(self.engine)

    def _stand(
        self, name: str, ref: str, stands: Mapping[str, Stand],
        default: Callable[[str], Stand] | None,
    ) -> Handler:
        stand = stands.get(name)
        if stand is None:
            stand = default(name) if default is not None else Stand()
        if stand.handler is None and stand.real:
            stand = dataclasses.replace(stand, handler=Handler.load(ref, consumer=name))
        return self._wrap(name, stand)

    def _build(
        self, env: WorkerEnv, stands: Mapping[str, Stand],
        default: Callable[[str], Stand] | None,
    ) -> None:
        for name, c in self.topology.consumers:
            qw = _SimQueueWorker(env, self.topology, c, HandlerCounters(),
                                 handler=self._stand(name, c.handler, stands, default))
            qw.sim = self
            self._record_fates(qw)
            self._queue_workers.append(qw)
        for name, g in self.topology.consumer_groups:
            if g.handler is None:
                continue  # external: read over HTTP, not by this runner
            gw = _SimGroupWorker(env, self.topology, g, HandlerCounters(),
                                 handler=self._stand(name, g.handler, stands, default))
            gw.sim = self
            gw.member = env.backend.open_member(name, f"{name}-1@{HOST}")
            gw.positions = {}
            gw.follows = {}
            gw.pending = {}
            self._record_fates(gw)
            self._group_workers.append(gw)

    def _record_fates(self, worker: _SimQueueWorker | _SimGroupWorker) -> None:
        name = worker.name

        def note(exc: BaseException, failures: int, d: Decision) -> None:
            self.log.fates.append(Fate(
                name, self.now(), failures, error_type(exc), str(exc), d.retry,
                d.delay_s if d.retry else 0.0, d.reason,
                injected=bool(getattr(exc, _INJECTED, False)),
                engine_error=isinstance(exc, EngineError)))

        worker.retrier = _RecordingRetrier(worker.retrier, note)

    def _gave_up(self, worker: str, reason: str) -> None:
        """The last fate of `worker` said retry, but the worker dead-lettered instead."""
        for i in range(len(self.log.fates) - 1, -1, -1):
            fate = self.log.fates[i]
            if fate.worker == worker:
                self.log.fates[i] = dataclasses.replace(fate, retry=False, delay_s=0.0,
                                                        reason=reason)
                return

    def _wrap(self, name: str, stand: Stand) -> Handler:
        """The stand as the handler the worker calls: records, fails, then delegates."""
        real = stand.handler
        count = [0]

        def before(msg: Message) -> Exception | None:
            count[0] += 1
            if count[0] <= stand.fail:
                exc = make_error(stand.error, stand.message)
                self._note_call(name, msg, exc, injected=True, outputs=())
                return exc
            return None

        def args(msg: Message, ctx: _RecordingContext) -> tuple[Any, ...]:
            assert real is not None
            return (msg, ctx) if real.wants_context else (msg,)

        if real is not None and real.is_async:

            async def call_async(msg: Message, ctx: Context) -> Any:
                failed = before(msg)
                if failed is not None:
                    raise failed
                rec = _RecordingContext(ctx)
                try:
                    result = await real.fn(*args(msg, rec))
                except Exception as exc:
                    self._note_call(name, msg, exc, injected=False, outputs=rec.outputs)
                    raise
                self._note_call(name, msg, None, injected=False, outputs=rec.outputs)
                return result

            return Handler(real.ref, call_async, is_async=True, wants_context=True)

        def call(msg: Message, ctx: Context) -> Any:
            failed = before(msg)
            if failed is not None:
                raise failed
            rec = _RecordingContext(ctx)
            result = None
            try:
                if real is not None:
                    result = real.fn(*args(msg, rec))
                    if inspect.isawaitable(result):
                        raise TypeError(f"handler {real.ref!r} returned an awaitable from "
                                        "a plain function")
            except Exception as exc:
                self._note_call(name, msg, exc, injected=False, outputs=rec.outputs)
                raise
            self._note_call(name, msg, None, injected=False, outputs=rec.outputs)
            return result

        return Handler(real.ref if real else f"<stand-in for {name}>", call, is_async=False,
                       wants_context=True)

    def _note_call(
        self, name: str, msg: Message, exc: BaseException | None, *, injected: bool,
        outputs: list[Output] | tuple[Output, ...],
    ) -> None:
        self.log.calls.append(Call(
            name, self.now(), _source(msg), msg.delivery_count,
            None if exc is None else error_type(exc), None if exc is None else str(exc),
            injected, tuple(outputs),
        ))

    # ------------------------------------------------------------ time
    def now(self) -> float:
        """Simulated seconds since the simulation started."""
        return self.clock.time() - self.start

    def advance(self, seconds: float) -> None:
        """Move the clock on and let the engine do what came due."""
        if seconds > 0:
            self.clock.advance(seconds)
        self.engine.tick()

    # ------------------------------------------------------------ input
    def _ends(self) -> dict[tuple[str, int], int]:
        return {(t, p.partition): p.log_end_offset
                for t, _ in self.topology.topics for p in self.engine.partitions(t)}

    def publish(self, exchange: str, message: OutMessage) -> Landing:
        """Publish through `exchange` (errors are the engine's: NotFound, Forbidden, ...)."""
        before = self._ends()
        dests = self.engine.publish(exchange, [message])[0]
        after = self._ends()
        grown = tuple(tp for tp, end in after.items() if end > before.get(tp, 0))
        return Landing(tuple(d for d in dests if d not in self.engine.topology.topic_map()),
                       grown)

    def publish_to_queue(self, queue: str, message: OutMessage) -> Landing:
        self.engine.publish_to_queue(queue, [message])
        return Landing((queue,), ())

    def append(self, topic: str, record: OutRecord) -> Landing:
        partition, _ = self.engine.append(topic, [record])[0]
        return Landing((), ((topic, partition),))

    # ------------------------------------------------------------ running
    async def settle(self, *, horizon_s: float = DEFAULT_HORIZON_S) -> bool:
        """Run the workers until nothing is left to do; False when something still
        waited on time `horizon_s` simulated seconds after the start."""
        end = self.start + horizon_s
        for _ in range(MAX_PASSES):
            busy = False
            for qw in self._queue_workers:
                busy |= await qw.step()
            for gw in self._group_workers:
                busy |= await gw.step()
            if busy:
                continue
            due = self.engine.next_due()
            if due is None:
                return True
            if due > end:
                return False
            self.advance(max(0.0, due - self.clock.time()))
        return False

    def run(self, *, horizon_s: float = DEFAULT_HORIZON_S) -> bool:
        """`settle` on a fresh event loop (for callers without one)."""
        return asyncio.run(self.settle(horizon_s=horizon_s))

    # ------------------------------------------------------------ reading
    def queue_messages(self, queue: str) -> list[QueueDelivery]:
        """What `queue` holds ready, in delivery order."""
        return self.engine.peek(queue, 100_000)

    def topic_records(self, topic: str) -> list[Record]:
        """Every record of `topic`, partition by partition."""
        out: list[Record] = []
        for p in self.engine.partitions(topic):
            offset = p.log_start_offset
            while offset < p.log_end_offset:
                got, offset = self.engine.read(topic, p.partition, offset, max_records=1000)
                out.extend(got)
                if not got:
                    break
        return out

    # ------------------------------------------------------------ lifecycle
    def close(self) -> None:
        """Close the engine and remove its data directory: nothing is kept."""
        try:
            for w in [*self._group_workers, *self._queue_workers]:
                if w.idem_store is not None:
                    w.idem_store.close()
            if self._engine is not None:
                self._engine.close()
        finally:
            self._executor.shutdown(wait=True)
            shutil.rmtree(self._dir, ignore_errors=True)


def body_value(payload: bytes | None) -> Any:
    """A stored body as a test compares it: the JSON value, else the bytes."""
    return decode_body(payload)
