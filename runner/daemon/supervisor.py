"""The supervisor: builds, runs, reloads and drains one daemon on one asyncio loop.

The loop owns the engine: HTTP handlers, the tick task, reloads and the
pipeline all run on it, so the engine needs no locks. Life of a daemon:

    open engine (recovering the data dir) -> pipeline.start -> HTTP listen
    -> tick when the engine's next timer is due (`backend.next_due()`, woken
       early by its TIMERS event; never while nothing waits on time),
       reload on file change / SIGHUP / admin call
    -> SIGTERM or SIGINT: readyz 503, pipeline.drain(grace), HTTP closed,
       engine.flush + close, exit 0 (a second signal exits at once).

A reload is all-or-nothing: load -> validate -> check handlers -> diff
(unsafe changes refuse the whole reload) -> backend.apply -> pipeline.apply.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import os
import signal
import socket
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from runner.clock import Clock, SystemClock
from runner.daemon import codec, logs
from runner.daemon.connections import ConnectionLimits
from runner.daemon.console import ConsoleMode, install_console
from runner.daemon.fastlane import FastLane, LaneCollector
from runner.daemon.http import HttpServer, Served, build_app
from runner.daemon.metrics import (
    HandlerView,
    RepliesCollector,
    build_registry,
    handler_view_from,
    render,
)
from runner.daemon.ratelimit import PublishLimiter, ThrottleCollector
from runner.daemon.recorded import holds_nothing, open_checked, write_record
from runner.daemon.reload import (
    ReloadCounters,
    ReloadEntry,
    ReloadResult,
    changes_json,
)
from runner.daemon.reloading import Loaded as Loaded
from runner.daemon.reloading import Reloads, switch_topology
from runner.daemon.status import TopologyState, status_json
from runner.daemon.watch import TopologyWatcher, handler_files, sources_digest
from runner.engine import Engine, FsyncPolicy
from runner.engine.contract import BackendStats, Event, EventKind
from runner.engine.embedded import EmbeddedBackend
from runner.errors import EngineError, StorageError
from runner.pipeline import otel
from runner.pipeline.replies import Replies, ShuttingDown
from runner.pipeline.runtime import WorkerChanges
from runner.pipeline.stats import PipelineStats
from runner.topology.model import Topology

if TYPE_CHECKING:
    from runner.daemon.kafka.server import KafkaListener

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class DaemonConfig:
    """Everything `runner run` was told."""

    path: Path
    data_dir: Path = Path("data")
    host: str = "127.0.0.1"
    port: int = 8080
    fsync: FsyncPolicy = FsyncPolicy.ALWAYS
    token: str | None = None
    metrics_token: str | None = None  # None: /metrics is open
    max_message_bytes: int = 1024 * 1024
    max_request_bytes: int = 64 * 1024 * 1024
    max_fanout: int = 100_000
    load_timeout_s: float = 30.0  # a reload's read of the topology files
    grace_s: float = 30.0
    tick_s: float = 0.05
    debounce_s: float = 0.1
    watch: bool = True
    memory_budget_bytes: int = 256 * 1024 * 1024
    disk_budget_bytes: int | None = None  # None: unlimited
    kafka_listen: tuple[str, int] | None = None  # None: no Kafka listener
    kafka_advertise: tuple[str, int] | None = None  # None: the address each client reached
    console: ConsoleMode = ConsoleMode.READ_WRITE
    connections: ConnectionLimits = field(default_factory=ConnectionLimits)
    allow_unsafe: bool = False  # start although the plan against the data dir is unsafe


class PipelineLike(Protocol):
    async def start(self) -> None: ...

    async def apply(self, new: Topology) -> WorkerChanges: ...

    async def drain(self, grace_s: float) -> None: ...

    def notify(self) -> None: ...

    def stats(self) -> PipelineStats: ...


@dataclass(slots=True)
class Parts:
    """The seams the supervisor is built from (real ones in `real_parts`)."""

    load: Callable[[str], Loaded]
    check_handlers: Callable[[Topology], list[tuple[str, str, str]]]
    diff: Callable[..., Any]
    open_engine: Callable[[Topology, DaemonConfig, Clock], Engine]
    # the pipeline runs on the daemon's one backend (the supervisor's, also the HTTP
    # API's and the console's): one set of group members, one fanout cap
    make_pipeline: Callable[
        [EmbeddedBackend, Topology, DaemonConfig, Clock, concurrent.futures.ThreadPoolExecutor,
         Replies],
        PipelineLike,
    ]
    clock: Clock = field(default_factory=SystemClock)


def real_parts(*, follow_symlinks: bool = True) -> Parts:
    """The composition root's parts: the real loader (refusing topology files that are
    symbolic links unless `follow_symlinks`), diff, engine and pipeline."""
    from runner.pipeline.handler import check_handlers
    from runner.pipeline.runtime import Pipeline
    from runner.topology.diff import diff
    from runner.topology.load import load

    def open_engine(topology: Topology, config: DaemonConfig, clock: Clock) -> Engine:
        return Engine.open(
            topology, config.data_dir, fsync=config.fsync, clock=clock,
            memory_budget_bytes=config.memory_budget_bytes,
            disk_budget_bytes=config.disk_budget_bytes,
        )

    def make_pipeline(
        backend: EmbeddedBackend,
        topology: Topology,
        config: DaemonConfig,
        clock: Clock,
        executor: concurrent.futures.ThreadPoolExecutor,
        replies: Replies,
    ) -> PipelineLike:
        pipeline: PipelineLike = Pipeline(
            backend,
            topology,
            data_dir=config.data_dir,
            clock=clock,
            executor=executor,
            instance_id=f"{socket.gethostname()}:{os.getpid()}",
            fsync=config.fsync,
            fs=backend.engine.fs,
            replies=replies,
            spans=otel.from_environment(),
        )
        return pipeline

    return Parts(
        load=functools.partial(load, follow_symlinks=follow_symlinks),
        check_handlers=check_handlers,
        diff=diff,
        open_engine=open_engine,
        make_pipeline=make_pipeline,
    )


class Supervisor:
    """One daemon: engine, pipeline, HTTP server, watcher, reloads, shutdown."""

    def __init__(self, config: DaemonConfig, loaded: Loaded, parts: Parts) -> None:
        if loaded.topology is None:
            raise ValueError("the supervisor needs a valid topology")
        self.config = config
        self._parts = parts
        self._topology: Topology = loaded.topology
        self._hash = loaded.content_hash
        self._handler_files = handler_files(handler_refs(loaded.topology))
        self._reloading = Reloads(
            config.path, load_timeout_s=config.load_timeout_s, load=parts.load,
            check_handlers=parts.check_handlers, clock=parts.clock,
            seen=(self._hash, sources_digest(self._handler_files)),
        )
        self._watcher: TopologyWatcher | None = None
        self._generation = 1
        self._started_s = parts.clock.time()
        self._backend: EmbeddedBackend | None = None  # the engine through the contract
        self._pipeline: PipelineLike | None = None
        self._accepting = False
        self._stopping = False
        self._stop = asyncio.Event()
        self._registry = build_registry(self)
        self._limiter = PublishLimiter(parts.clock)
        self._registry.register(ThrottleCollector(self._limiter, lambda: self._topology))
        self._tick_failures = 0
        self._kafka_wake: Callable[[], None] | None = None
        self._kafka: KafkaListener | None = None
        self._replies = Replies()  # requests waiting for a reply (HTTP ?wait=, ctx.request)
        self._registry.register(RepliesCollector(self._replies))
        self.lane: FastLane | None = None  # the HTTP fast lane, once serving

    # ------------------------------------------------------------ state for HTTP/metrics
    def _served(self) -> EmbeddedBackend:
        """The open backend with its optional parts (Flushable, WireTopics)."""
        assert self._backend is not None, "the engine is not open"
        return self._backend

    @property
    def backend(self) -> Served:
        """The engine through the contract: what the HTTP API and the daemon's modules use."""
        assert self._backend is not None, "the engine is not open"
        return self._backend

    @property
    def clock(self) -> Clock:
        """The injected clock (the engine's)."""
        return self._parts.clock

    @property
    def topology(self) -> Topology:
        return self._topology

    @property
    def content_hash(self) -> str:
        return self._hash

    @property
    def replies(self) -> Replies:
        return self._replies

    @property
    def reloads(self) -> ReloadCounters:
        return self._reloading.counters

    @property
    def accepting(self) -> bool:
        return self._accepting

    @property
    def generation(self) -> int:
        return self._generation

    @property
    def started_s(self) -> float:
        """When the daemon started (seconds since the epoch, the injected clock)."""
        return self._started_s

    def reload_log(self) -> list[ReloadEntry]:
        """The last counted reload attempts, newest last."""
        return list(self._reloading.entries)

    async def live_stats(self) -> BackendStats:
        """The console's live numbers: the engine's counters (in memory, on the loop)."""
        return self.backend.stats()

    async def off_loop(self, read: Callable[[], T]) -> T:
        """The console's backend calls run inline: the loop owns the engine."""
        return read()

    def notify(self) -> None:
        if self._pipeline is not None:
            self._pipeline.notify()
        if self._kafka_wake is not None:
            self._kafka_wake()

    def engine_stats(self) -> BackendStats:
        stats = self.backend.stats()
        if self._kafka is not None:  # Kafka clients are members of their groups too
            for group, n in self._kafka.member_counts().items():
                if group in stats.group_members:
                    stats.group_members[group] += n
        return stats

    def handler_view(self) -> HandlerView:
        if self._pipeline is None:
            return HandlerView()
        return handler_view_from(self._pipeline.stats())

    def status(self) -> dict[str, Any]:
        state = TopologyState(
            self._topology, self._hash, self._generation, self._reloading.last_error,
            self._reloading.last_result,
        )
        out = status_json(self.backend, state, self.handler_view())
        for group in out["groups"]:
            group["members"] = self.group_members(group["name"], group["members"])
        return out

    def group_members(self, group: str, engine_members: list[str]) -> list[str]:
        """A group's members: the engine's (handler workers), then Kafka clients'."""
        if self._kafka is None:
            return engine_members
        return [*engine_members, *self._kafka.members(group)]

    def render_metrics(self) -> bytes:
        return render(self._registry)

    # ------------------------------------------------------------ lifecycle
    async def serve(self, *, ready: Callable[[str, int], None] | None = None) -> int:
        """Run until SIGTERM/SIGINT (or `stop()`); 0 after a clean stop."""
        loop = asyncio.get_running_loop()
        config = self.config
        clock = self._parts.clock
        workers = sum(c.concurrency for _, c in self._topology.consumers)
        workers += sum(g.instances for _, g in self._topology.consumer_groups)
        executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=max(8, workers + 4), thread_name_prefix="handler"
        )
        log.info(
            "opening engine", extra={"event": "engine_opening", "data_dir": str(config.data_dir)}
        )
        self._backend = open_checked(
            self._topology, config.data_dir, allow_unsafe=config.allow_unsafe,
            open_backend=lambda t: EmbeddedBackend(self._parts.open_engine(t, config, clock),
                                                   max_fanout=config.max_fanout),
            diff=self._parts.diff,
        )
        log.info(
            "engine opened",
            extra={
                "event": "engine_opened",
                "fsync": config.fsync.value,
                "memory_budget_bytes": config.memory_budget_bytes,
                "disk_budget_bytes": config.disk_budget_bytes or "unlimited",
            },
        )
        app = build_app(
            self,
            token=config.token,
            metrics_token=config.metrics_token,
            limits=codec.Limits(max_message_bytes=config.max_message_bytes,
                                max_fanout=config.max_fanout),
            max_request_bytes=config.max_request_bytes,
            connection_limits=config.connections,
            limiter=self._limiter,
            spans=otel.from_environment(),
        )
        install_console(app, self, token=config.token, mode=config.console, clock=clock)
        self.lane = FastLane(app)
        self._registry.register(LaneCollector(self.lane))
        server = HttpServer(app, self.lane)
        kafka: KafkaListener | None = None
        try:
            # bind first (not ready yet): a taken port fails before any handler runs
            port = await server.start(config.host, config.port)
            if config.kafka_listen is not None:
                kafka = await self._start_kafka(config.kafka_listen)
            self._pipeline = self._parts.make_pipeline(
                self._backend, self._topology, config, clock, executor, self._replies
            )
            await self._pipeline.start()
            write_record(config.data_dir, self._topology, self._hash)
        except BaseException:
            if kafka is not None:
                await kafka.stop()
            await server.stop()
            try:
                self._backend.close()
            except StorageError as exc:  # the start failure is the one to report
                log.error("%s", exc, extra={"event": "close_failed"})
            executor.shutdown(wait=False, cancel_futures=True)
            raise
        log.info("pipeline started", extra={"event": "pipeline_started"})
        logs.log_event_loop(log, loop)
        for kind, name, spec in _workers(self._topology):
            _log_worker("started", kind, name, spec)
        self._accepting = True
        log.info(
            "listening on http://%s:%d",
            config.host,
            port,
            extra={"event": "listening", "host": config.host, "port": port},
        )
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_stop_signal, sig)
        loop.add_signal_handler(signal.SIGHUP, self._on_sighup)
        watcher: TopologyWatcher | None = None
        if config.watch:
            watcher = TopologyWatcher(
                config.path, loop, self._on_files_changed, debounce_s=config.debounce_s
            )
            watcher.watch_files(self._handler_files)
            watcher.start()
            self._watcher = watcher
        ticker = asyncio.create_task(self._tick_forever())
        ticker.add_done_callback(self._ticker_done)
        if ready is not None:
            ready(config.host, port)
        try:
            await self._stop.wait()
        finally:
            self._accepting = False
            log.info("draining", extra={"event": "draining", "grace_s": config.grace_s})
            if watcher is not None:
                watcher.stop()
            await self._pipeline.drain(config.grace_s)
            log.info("pipeline drained", extra={"event": "pipeline_drained"})
            self._replies.fail_all(ShuttingDown("the daemon stopped before the reply came"))
            otel.flush()
            ticker.cancel()
            await asyncio.gather(ticker, return_exceptions=True)
            died = None if ticker.cancelled() else ticker.exception()
            if kafka is not None:
                await kafka.stop()
            await server.stop()
            failure: StorageError | None = None
            try:
                self._backend.flush()
            except StorageError as exc:
                failure = exc
            try:  # closes (and releases the lock) even after a failed flush
                self._backend.close()
            except StorageError as exc:
                failure = failure or exc
            executor.shutdown(wait=False, cancel_futures=True)
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            if failure is not None:
                # not a clean stop: unsynced data may be lost; `runner run` exits 1
                log.error("stopped, but the last fsync failed: %s", failure,
                          extra={"event": "stopped_unsynced"})
                raise failure
            if died is not None:  # stopped by _ticker_done: not a clean stop either
                raise EngineError(
                    f"the engine's timer task failed ({type(died).__name__}: {died}); "
                    "the daemon stopped"
                ) from died
            log.info("stopped", extra={"event": "stopped"})
        return 0

    async def _start_kafka(self, listen: tuple[str, int]) -> KafkaListener:
        from runner.daemon.kafka import build_listener

        listener, signal_ = build_listener(
            self._served, notify=self.notify, clock=self._parts.clock,
            token=self.config.token, max_request_bytes=self.config.max_request_bytes,
            max_message_bytes=self.config.max_message_bytes,
            advertise=self.config.kafka_advertise,
        )
        port = await listener.start(*listen)
        self._kafka_wake = signal_.wake
        self._kafka = listener
        log.info("listening on kafka://%s:%d", listen[0], port,
                 extra={"event": "kafka_listening", "host": listen[0], "port": port})
        return listener

    def stop(self) -> None:
        self._stopping = True
        self._stop.set()

    def _on_stop_signal(self, sig: signal.Signals) -> None:
        if self._stopping:
            log.warning("second %s: exiting now", sig.name, extra={"event": "forced_exit"})
            try:
                if self._backend is not None:
                    self._backend.flush()
            finally:
                os._exit(130)
        log.info("%s received: stopping", sig.name, extra={"event": "signal", "signal": sig.name})
        self.stop()

    def _on_sighup(self) -> None:
        if self._stopping:
            return
        log.info("SIGHUP received: reloading", extra={"event": "signal", "signal": "SIGHUP"})
        self._reloading.background(self.reload("sighup"))

    def _on_files_changed(self) -> None:
        if not self._stopping:
            self._reloading.background(self.reload("watch"))

    def _ticker_done(self, task: asyncio.Task[None]) -> None:
        """The timer task only ends by cancellation; if anything else ends it, leases,
        retries and TTLs would silently never come due again: stop the daemon
        (`serve` raises the failure, `runner run` exits 1)."""
        if task.cancelled() or task.exception() is None:
            return
        log.critical("the engine's timer task failed; stopping", exc_info=task.exception(),
                     extra={"event": "ticker_failed"})
        self.stop()

    async def _tick_forever(self) -> None:
        """Tick the engine when its next timer is due, on the injected clock; a
        TIMERS event (a write made a timer due earlier) wakes it to look again.
        While nothing waits on time this task sleeps and costs nothing."""
        backend = self.backend
        clock = self._parts.clock
        loop = asyncio.get_running_loop()
        timers = asyncio.Event()
        sub = backend.subscribe([Event(EventKind.TIMERS)], lambda _event: timers.set())
        last = loop.time() - self.config.tick_s
        try:
            while True:
                timers.clear()  # before reading the due time: a later TIMERS is seen
                due = backend.next_due()
                left = None if due is None else due - clock.time()
                if left is None or left > 0:
                    await _first(timers.wait(), None if left is None else clock.sleep(left))
                    if timers.is_set():
                        continue  # something changed: read the due time again
                # at most one tick per tick_s: work a tick leaves due never spins
                await asyncio.sleep(max(0.0, last + self.config.tick_s - loop.time()))
                last = loop.time()
                try:
                    backend.tick()
                except Exception:
                    self._tick_failures += 1
                    if self._tick_failures in (1, 10) or self._tick_failures % 1000 == 0:
                        log.exception("engine tick failed (%d times)", self._tick_failures)
        finally:
            sub.close()

    # ------------------------------------------------------------ reload
    async def reload(self, trigger: str) -> ReloadResult:
        """Load, validate, check, diff and apply the topology files (one at a time)."""
        return await self._reloading.run(trigger, self._reload)

    async def _reload(self, trigger: str) -> ReloadResult:
        read = await self._reloading.read(trigger, self._generation, self._handler_files)
        if isinstance(read, ReloadResult):
            return read
        loaded, new = read.loaded, read.topology
        plan = self._parts.diff(self._topology, new, is_empty=self._is_empty)
        old = self._topology
        assert self._pipeline is not None

        async def apply(topology: Topology, restore: bool) -> None:
            self.backend.apply(topology, force=restore)

        def show(topology: Topology) -> None:
            self._topology = topology  # the HTTP API sees what the engine now has

        changes_done = await switch_topology(
            plan, self._generation, old, new, apply=apply, start=self._pipeline.apply,
            show=show, where="in the engine")
        if isinstance(changes_done, ReloadResult):
            return changes_done
        changes = changes_json(plan.changes)
        log_worker_changes(old, new, changes_done)
        self._handler_files = handler_files(handler_refs(new))
        self._reloading.seen = (loaded.content_hash, sources_digest(self._handler_files))
        if self._watcher is not None:
            self._watcher.watch_files(self._handler_files)
        if loaded.content_hash != self._hash:
            self._hash = loaded.content_hash
            self._generation += 1
        try:
            write_record(self.config.data_dir, new, self._hash)
        except StorageError as exc:
            log.error("%s; the next start plans against the previous record", exc,
                      extra={"event": "record_failed"})
        return ReloadResult("applied", self._generation, changes=changes)

    def _is_empty(self, kind: str, name: str) -> bool:
        """Whether a queue or topic holds nothing (removing it is then safe)."""
        return holds_nothing(self.backend, kind, name)


async def _first(*waits: Coroutine[Any, Any, Any] | None) -> None:
    """Until the first of `waits` (None: not waited on) returns; the rest are cancelled."""
    tasks = [asyncio.ensure_future(w) for w in waits if w is not None]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()


def handler_refs(topology: Topology | None) -> list[str]:
    """The handler references (`module:callable`) of every consumer and group."""
    if topology is None:
        return []
    refs = [c.handler for _, c in topology.consumers if c.handler]
    refs += [g.handler for _, g in topology.consumer_groups if g.handler]
    return refs


def _workers(topology: Topology) -> list[tuple[str, str, Any]]:
    """(kind, name, spec) of every consumer and handler-driven consumer group."""
    out: list[tuple[str, str, Any]] = [("consumer", n, c) for n, c in topology.consumers]
    out += [("group", n, g) for n, g in topology.consumer_groups if g.handler is not None]
    return out


def _log_worker(what: str, kind: str, name: str, spec: Any) -> None:
    """One lifecycle line for a consumer or group: event=consumer_started, group_stopped..."""
    fields: dict[str, Any] = {"event": f"{kind}_{what}", kind: name}
    if kind == "consumer":
        fields.update(queue=spec.queue, handler=spec.handler, concurrency=spec.concurrency)
    else:
        fields.update(
            topics=",".join(spec.topics), handler=spec.handler, instances=spec.instances
        )
    log.info("%s %s %s", kind, name, what, extra=fields)


def log_worker_changes(old: Topology, new: Topology, done: WorkerChanges) -> None:
    """Lifecycle lines after a reload: the workers the pipeline started, stopped
    or restarted (one line each; the pipeline itself logs none)."""
    before = {f"{k}:{n}": (k, n, spec) for k, n, spec in _workers(old)}
    after = {f"{k}:{n}": (k, n, spec) for k, n, spec in _workers(new)}
    for what, keys, side in (
        ("stopped", done.stopped, before), ("started", done.started, after),
        ("restarted", done.restarted, after),
    ):
        for key in keys:
            _log_worker(what, *side[key])
