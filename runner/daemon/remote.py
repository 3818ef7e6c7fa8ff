"""`runner run PATH --backend amqp://...`: the pipeline over a RabbitMQ vhost.

The same handlers (runner.pipeline, written against the engine contract) run
over `runner.backends.rabbitmq.runtime.RabbitBackend` instead of the embedded
engine. Several daemons on one vhost share its queues (competing consumers).

The HTTP API here serves what goes through the contract on this backend:

    POST /v1/exchanges/{name}/messages   publish (answered 202 once confirmed)
    POST /v1/queues/{name}/messages      put straight into a queue
    ... ?wait=5s (both)                  request-reply: 200 the reply, 502 an error reply,
                                         504 none in time (runner.daemon.remote_replies)
    POST /v1/queues/runner.reply-to.../messages
                                         a reply to a waiting request (of any daemon)
    DELETE /v1/queues/{name}/messages    purge the ready messages
    POST /v1/queues/{name}/pull|ack|nack as on the embedded engine (leases kept by the
                                         runtime; a first pull waits up to 1 s)
    POST /v1/topics/{name}/records       append (the embedded checks; 202 once confirmed,
                                         offsets null: a confirm carries none)
    GET  /v1/queues/{name}/peek          basic.get and give back (moves.py); 409 quorum
    POST /v1/queues/{name}/replay        dead letters back (or into `to`), at least once
    GET|DELETE /v1/topics/{name}/dead-letters, POST .../dead-letters/purge,
    POST /v1/topics/{name}/replay        a dead-letter topic's tools (runner.daemon.remote_dlq)
    GET  /v1/status                      the embedded document from the broker's view
    GET  /, /v1/queues, /v1/exchanges,   as on the embedded engine; queue counts from the
         /v1/bindings                    broker, no exchange counters
    GET  /v1/groups, /v1/groups/{group} members, owners and committed offsets from the
                                         broker (runner.backends.rabbitmq.groups)
    POST /v1/groups/{group}/offsets      seek: committed, the owner (any daemon) told
    POST /v1/groups/{group}/commit       an HTTP client's commit (a group without a handler)
    POST /v1/groups/{group}/reset        as on the embedded engine: seeks, clamped, dry_run
    GET  /healthz, /readyz               readyz 503 while the broker is unreachable
    GET  /metrics                        queue depths and counters from the broker,
                                         handler and topology metrics from the pipeline

    POST /v1/admin/reload (and SIGHUP,   validate, plan against the live broker, declare
         file events)                    what is new, start/stop handlers; refuse what
                                         RabbitMQ cannot change in place

    GET /, /ui/, /ui/api/...             the web console (runner.daemon.console), as on the
                                         embedded daemon (--console, the token, sessions);
                                         its backend reads run off the loop, its live feed
                                         samples the broker only while a page listens

Every other route of the embedded daemon (`runner.daemon.http.build_app`)
answers 501 naming the route and the backend.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import signal
import socket
from collections.abc import Callable
from typing import Any, TypeVar, cast

from aiohttp import web

from runner.backends.rabbitmq.live import Unreachable
from runner.backends.rabbitmq.live import read as read_live
from runner.backends.rabbitmq.plan import reload_plan
from runner.backends.rabbitmq.runtime import RabbitBackend, open_rabbitmq
from runner.backends.rabbitmq.url import Target
from runner.clock import Clock, SystemClock
from runner.daemon import codec, dlq_ops, fanout, lists, logs, remote_dlq
from runner.daemon.backpressure import check_lag
from runner.daemon.console import install_console
from runner.daemon.http import (
    CONNECTION_LIMITS_KEY,
    HOST_KEY,
    LIMITER_KEY,
    LIMITS_KEY,
    MAX_REQUEST_KEY,
    Host,
    HttpServer,
    _limit,
    _reply_over_http,
    _request_reply,
    _wait,
    admin_reload,
    answer,
    append_args,
    build_app,
    commit_args,
    error,
    group_json,
    make_auth_middleware,
    make_error_middleware,
    moved_json,
    offsets_json,
    peek_json,
    pull_args,
    queue_exists,
    read_json,
    records_json,
    replay_args,
    replayed_json,
    reset_json,
    seek_json,
    settled_answer,
)
from runner.daemon.metrics import (
    HandlerView,
    RepliesCollector,
    build_registry,
    handler_view_from,
    render,
)
from runner.daemon.ratelimit import PublishLimiter, ThrottleCollector
from runner.daemon.recorded import holds_nothing
from runner.daemon.reload import ReloadCounters, ReloadEntry, ReloadResult, changes_json
from runner.daemon.reloading import Loaded, Reloads, switch_topology
from runner.daemon.remote_replies import BrokerReplies, ForwardedCollector
from runner.daemon.status import TopologyState, status_json
from runner.daemon.supervisor import DaemonConfig, handler_refs, log_worker_changes
from runner.daemon.traced import SPANS_KEY, Traced
from runner.daemon.watch import TopologyWatcher, handler_files, sources_digest
from runner.engine import EngineStats, OutRecord, contract
from runner.engine import OutMessage as Message
from runner.errors import NotFound, StorageError
from runner.pipeline import otel
from runner.pipeline.handler import check_handlers
from runner.pipeline.replies import Replies, ShuttingDown, is_private
from runner.pipeline.runtime import Pipeline
from runner.topology.diff import Plan
from runner.topology.load import load as load_topology
from runner.topology.model import Topology

log = logging.getLogger(__name__)

T = TypeVar("T")

PULL_WAIT_S = 1.0  # a pull that finds nothing buffered waits this long for deliveries
# ... and, woken by the first, up to this long for the rest of its burst while it has
# fewer than it asked for (the I/O thread buffers deliveries one by one: a pull of 2
# answered on the first wake-up would get 1)
PULL_LINGER_S = 0.02
# /metrics: the topic and group series cost a read of every partition's stream; they
# are read off the loop at most once in STREAM_SERIES_S (a scrape finding them older
# starts a refresh and answers with the last ones), the first scrape waits for them
# up to STREAM_SERIES_FIRST_S
STREAM_SERIES_S = 5.0
STREAM_SERIES_FIRST_S = 10.0

# the routes this daemon serves itself (method, path); the rest of build_app's are 501
SERVED = frozenset({
    ("GET", "/"),
    ("POST", "/v1/exchanges/{name}/messages"),
    ("POST", "/v1/queues/{name}/messages"),
    ("GET", "/v1/queues"),
    ("DELETE", "/v1/queues/{name}/messages"),
    ("POST", "/v1/queues/{name}/pull"),
    ("POST", "/v1/queues/{name}/ack"),
    ("POST", "/v1/queues/{name}/nack"),
    ("GET", "/v1/exchanges"),
    ("GET", "/v1/topics"),
    ("GET", "/v1/topics/{name}"),
    ("GET", "/v1/topics/{name}/partitions/{p}/records"),
    ("GET", "/v1/bindings"),
    ("GET", "/v1/groups"),
    ("GET", "/v1/groups/{group}"),
    ("POST", "/v1/groups/{group}/offsets"),
    ("POST", "/v1/groups/{group}/commit"),
    ("POST", "/v1/groups/{group}/reset"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("POST", "/v1/topics/{name}/records"),
    ("GET", "/v1/queues/{name}/peek"),
    ("POST", "/v1/queues/{name}/replay"),
    ("GET", "/v1/status"),
    ("POST", "/v1/admin/reload"),
}) | remote_dlq.ROUTES


def embedded_routes() -> list[tuple[str, str]]:
    """Every (method, path) of the embedded daemon's HTTP API."""
    app = build_app(None, token=None, limits=codec.Limits(),  # type: ignore[arg-type]
                    max_request_bytes=1)
    out = []
    for route in app.router.routes():
        if route.method in ("HEAD", "OPTIONS"):
            continue
        out.append((route.method, route.resource.canonical if route.resource else ""))
    return out


def not_served(method: str, path: str, target: Target) -> str:
    return (f"{method} {path} is not served over the RabbitMQ backend ({target}) yet; "
            "docs/rabbitmq.md lists what is")


async def fetch_burst(backend: contract.Backend, queue: str, n: int, *, lease_s: float,
                      consumer_id: str, wait_s: float = PULL_WAIT_S,
                      linger_s: float = PULL_LINGER_S) -> list[contract.QueueDelivery]:
    """Up to `n` deliveries of `queue` (a pull): what is buffered; with nothing buffered,
    the first to arrive within `wait_s` and, woken by it, what else arrives within
    `linger_s` while there are fewer than `n` (each delivery wakes it)."""
    waiter = contract.Waiter(backend, [contract.Event(contract.EventKind.QUEUE_READY, queue)])
    try:
        got = list(backend.fetch(queue, n, lease_s=lease_s, consumer_id=consumer_id))
        if got or not await waiter.wait(wait_s):
            return got
        loop = asyncio.get_running_loop()
        until = loop.time() + linger_s
        while True:  # woken: take what came, then wait for more while the linger lasts
            got += backend.fetch(queue, n - len(got), lease_s=lease_s, consumer_id=consumer_id)
            left = until - loop.time()
            if len(got) >= n or left <= 0 or not await waiter.wait(left):
                return got
    finally:
        waiter.close()


class RemoteDaemon:
    """One `runner run --backend amqp://...` process: backend, pipeline, HTTP."""

    def __init__(self, config: DaemonConfig, topology: Topology, content_hash: str,
                 target: Target, *, clock: Clock | None = None,
                 load: Callable[[str], Loaded] | None = None) -> None:
        self.config = config
        self.target = target
        self._topology = topology
        self._hash = content_hash
        self._clock = clock or SystemClock()
        self._started_s = self._clock.time()
        self._backend: RabbitBackend | None = None
        self._pipeline: Pipeline | None = None
        self._accepting = False
        self._stop = asyncio.Event()
        self._replies = BrokerReplies(target)
        self._generation = 1
        self._handler_files = handler_files(handler_refs(topology))
        self._reloading = Reloads(
            config.path, load_timeout_s=config.load_timeout_s,
            load=load or load_topology, check_handlers=check_handlers, clock=self._clock,
            seen=(content_hash, sources_digest(self._handler_files)),
        )
        self._watcher: TopologyWatcher | None = None
        self._stats = EngineStats()
        self._series: EngineStats | None = None  # RabbitBackend.stream_stats, cached
        self._series_at = 0.0
        self._series_task: asyncio.Task[None] | None = None
        self._registry = build_registry(self)
        self._limiter = PublishLimiter(self._clock)  # publish_rate, per daemon
        self._registry.register(ThrottleCollector(self._limiter, lambda: self._topology))
        self._registry.register(RepliesCollector(self._replies))
        self._registry.register(ForwardedCollector(self._replies))
        self._spans: otel.Spans | None = None  # read from the environment in serve()

    # ------------------------------------------------------------ MetricsSource
    @property
    def topology(self) -> Topology:
        return self._topology

    @property
    def content_hash(self) -> str:
        return self._hash

    @property
    def reloads(self) -> ReloadCounters:
        return self._reloading.counters

    @property
    def generation(self) -> int:
        return self._generation

    def engine_stats(self) -> EngineStats:
        return self._stats

    def handler_view(self) -> HandlerView:
        if self._pipeline is None:
            return HandlerView()
        return handler_view_from(self._pipeline.stats())

    @property
    def replies(self) -> Replies:
        return self._replies

    def notify(self) -> None:
        """The broker's deliveries wake the workers; nothing to do after a publish."""

    @property
    def accepting(self) -> bool:
        return self._accepting

    @property
    def backend(self) -> RabbitBackend:
        assert self._backend is not None, "the backend is not open"
        return self._backend

    # ------------------------------------------------------------ ConsoleHost
    @property
    def started_s(self) -> float:
        """When the daemon started (seconds since the epoch, the injected clock)."""
        return self._started_s

    def reload_log(self) -> list[ReloadEntry]:
        """The last counted reload attempts, newest last."""
        return list(self._reloading.entries)

    async def off_loop(self, read: Callable[[], T]) -> T:
        """The console's backend calls: blocking calls to the broker, on a thread."""
        return await asyncio.get_running_loop().run_in_executor(None, read)

    async def live_stats(self) -> EngineStats:
        """The console's live numbers: the queues' counts from the broker (off the loop)
        and the topic and group series as /metrics has them (at most STREAM_SERIES_S
        old)."""
        loop = asyncio.get_running_loop()
        stats = await loop.run_in_executor(None, self.backend.stats)
        return await self._with_series(stats)

    # ------------------------------------------------------------ HTTP
    def build_app(self) -> web.Application:
        config = self.config
        app = web.Application(
            middlewares=[make_error_middleware(),
                         make_auth_middleware(config.token, config.metrics_token)],
            client_max_size=config.max_request_bytes,
        )
        app[MAX_REQUEST_KEY] = config.max_request_bytes
        # the error middleware's "did you mean" reads only the host's topology
        app[HOST_KEY] = cast(Host, self)
        app[CONNECTION_LIMITS_KEY] = config.connections
        app[LIMITER_KEY] = self._limiter
        if self._spans is not None:
            app[SPANS_KEY] = self._spans
        limits = codec.Limits(max_message_bytes=config.max_message_bytes,
                              max_fanout=config.max_fanout)
        app[LIMITS_KEY] = limits
        r = app.router

        async def publish_exchange(request: web.Request) -> web.Response:
            return await self._publish(request, limits, to_queue=False)

        async def publish_queue(request: web.Request) -> web.Response:
            return await self._publish(request, limits, to_queue=True)

        r.add_post("/v1/exchanges/{name}/messages", publish_exchange)
        r.add_post("/v1/queues/{name}/messages", publish_queue)
        r.add_get("/", self._index)
        r.add_get("/v1/queues", self._list_queues)
        r.add_delete("/v1/queues/{name}/messages", self._purge)
        r.add_post("/v1/queues/{name}/pull", self._pull)
        r.add_post("/v1/queues/{name}/ack", self._ack)
        r.add_post("/v1/queues/{name}/nack", self._nack)
        r.add_get("/v1/exchanges", self._list_exchanges)
        r.add_get("/v1/topics", self._list_topics)
        r.add_get("/v1/topics/{name}", self._get_topic)
        r.add_get("/v1/topics/{name}/partitions/{p}/records", self._read_records)
        r.add_get("/v1/bindings", self._list_bindings)
        r.add_get("/v1/groups", self._list_groups)
        r.add_get("/v1/groups/{group}", self._get_group)
        r.add_post("/v1/groups/{group}/offsets", self._seek)
        r.add_post("/v1/groups/{group}/commit", self._commit)
        r.add_post("/v1/groups/{group}/reset", self._reset)
        r.add_get("/healthz", self._healthz)
        r.add_get("/readyz", self._readyz)
        r.add_get("/metrics", self._metrics)
        r.add_post("/v1/topics/{name}/records", self._append)
        r.add_get("/v1/queues/{name}/peek", self._peek)
        r.add_post("/v1/queues/{name}/replay", self._replay)
        r.add_get("/v1/status", self._status)
        r.add_post("/v1/admin/reload", admin_reload)
        remote_dlq.add_routes(r, lambda: self._topology, lambda: self.backend, self._clock)
        install_console(app, self, token=config.token, mode=config.console, clock=self._clock,
                        idle_sampling=False)
        for method, path in embedded_routes():
            if (method, path) not in SERVED:
                r.add_route(method, path, self._not_served_handler(method, path))
        return app

    def _not_served_handler(
        self, method: str, path: str,
    ) -> Callable[[web.Request], Any]:
        async def handler(request: web.Request) -> web.Response:
            return error(501, not_served(method, path, self.target))

        return handler

    async def _publish(self, request: web.Request, limits: codec.Limits, *,
                       to_queue: bool) -> web.Response:
        if not self._accepting:
            raise web.HTTPServiceUnavailable(reason="the daemon is shutting down")
        name = request.match_info["name"]
        wait_s = _wait(request)
        body = await read_json(request)
        msgs, batch = codec.messages(body, limits=limits,
                                     default_key=name if to_queue else None)
        if to_queue and is_private(name):  # a reply, to this daemon or through the broker
            if (why := self._replies.refusal(name)) is not None:
                return error(503, why)
            return _reply_over_http(cast(Host, self), name, msgs, batch)
        _limit(request, "queue" if to_queue else "exchange", name, len(msgs))
        backend = self.backend
        if to_queue:
            queue_exists(cast(Host, self), name)
        fanout.check([1] * len(msgs), limits.max_fanout,
                     f"queue '{name}'" if to_queue else f"exchange '{name}'")
        if wait_s is not None and batch:
            raise codec.BadInput("'wait' takes one message, not a batch: send each request "
                                 "on its own")
        confirmed = _Confirmed(backend, to_queue)
        with Traced(request, "queue" if to_queue else "exchange", name, msgs) as traced:
            if wait_s is not None:
                return await _request_reply(cast(Host, self), name, msgs[0],
                                            traced.wrap(confirmed.publish), wait_s,
                                            confirmed)  # type: ignore[arg-type]
            routed = traced.wrap(confirmed.publish)(name, msgs)
            await confirmed.wait()  # confirmed by the broker before 202
        return answer({"routed": routed if batch else routed[0]}, 202)

    async def _pull(self, request: web.Request) -> web.Response:
        """As on the embedded engine; the first pull of a queue starts consuming it, so
        a pull that finds nothing buffered waits up to PULL_WAIT_S for deliveries, and
        once woken up to PULL_LINGER_S more for the rest of their burst while it has
        fewer than it asked for."""
        name = request.match_info["name"]
        n, lease, consumer = pull_args(await read_json(request, empty_ok=True))
        got = await fetch_burst(self.backend, name, n, lease_s=lease, consumer_id=consumer)
        return answer({"messages": [codec.delivery_json(d) for d in got]})

    async def _purge(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        queue_exists(cast(Host, self), name)
        backend = self.backend
        loop = asyncio.get_running_loop()
        return answer({"purged": await loop.run_in_executor(None, backend.purge, name)})

    async def _ack(self, request: web.Request) -> web.Response:
        return await self._settle(request, "acked")

    async def _nack(self, request: web.Request) -> web.Response:
        return await self._settle(request, "nacked")

    async def _settle(self, request: web.Request, verb: str) -> web.Response:
        name = request.match_info["name"]
        body = await read_json(request)
        ids = codec.delivery_ids(body)
        outcomes: list[contract.Outcome]
        if verb == "acked":
            outcomes = [contract.Ack(i) for i in ids]
        elif codec.bool_field(body, "requeue", default=True):
            outcomes = [contract.Requeue(i) for i in ids]
        else:  # a plain reject: the queue's own dead-lettering (x-death)
            outcomes = [contract.DeadLetter(i) for i in ids]
        queue_exists(cast(Host, self), name)
        settled = self.backend.settle(name, outcomes)
        await self.backend.durable(settled.ticket)
        return settled_answer(cast(Host, self), name, ids, list(settled.unknown), verb)

    async def _append(self, request: web.Request) -> web.Response:
        """As on the embedded daemon (the same checks and errors), answered once the
        broker confirmed every record; `offset` is null: a confirm does not say where
        the stream put the record (docs/rabbitmq.md)."""
        name, recs = await append_args(request)
        if not recs:
            return answer(offsets_json([]), 202)
        backend, topology = self.backend, self._topology
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, lambda: check_lag(backend, topology, name))

        def append(topic: str, records: list[OutRecord]) -> contract.Appended:
            return backend.append(topic, [contract.OutRecord(r.value, r.key, r.headers,
                                                             r.partition, r.timestamp_ms)
                                          for r in records])

        with Traced(request, "topic", name, recs) as traced:  # as the embedded daemon
            appended = traced.wrap(append)(name, recs)
            await backend.durable(appended.ticket)
        return answer(offsets_json(appended.positions), 202)

    async def _peek(self, request: web.Request) -> web.Response:
        """basic.get then give back (runner.backends.rabbitmq.moves), off the loop."""
        name, query = request.match_info["name"], request.query
        loop = asyncio.get_running_loop()
        return answer(await loop.run_in_executor(
            None, lambda: peek_json(cast(Host, self), name, query)))

    async def _replay(self, request: web.Request) -> web.Response:
        """Dead letters back where they died, or into `to`: at least once, off the loop;
        `remaining` is the broker's exact count of ready messages afterwards."""
        name = request.match_info["name"]
        n, dest = replay_args(await read_json(request, empty_ok=True))
        queue_exists(cast(Host, self), name)
        backend = self.backend

        def run() -> dict[str, Any]:
            if dest is not None:
                moved = backend.move(name, dest, n)
                return moved_json(moved, backend.ready(name), dest)
            return replayed_json(backend.replay(name, n), backend.ready(name))

        if dest is not None:
            dlq_ops.check_replay_to(self._topology, name, dest)
        loop = asyncio.get_running_loop()
        return answer(await loop.run_in_executor(None, run))

    async def _status(self, request: web.Request) -> web.Response:
        """The embedded daemon's document from the broker's view (queue counts from the
        management API, topic offsets from the streams: off the loop), the pipeline's
        consumers, and `backend`."""
        state = TopologyState(self._topology, self._hash, self._generation,
                              self._reloading.last_error, self._reloading.last_result)
        view = self.handler_view()
        backend = self.backend
        loop = asyncio.get_running_loop()
        out = await loop.run_in_executor(None, lambda: status_json(backend, state, view))
        out["backend"] = str(self.target)
        return answer(out)

    async def _index(self, request: web.Request) -> web.Response:
        return answer(lists.index_json())

    async def _list_queues(self, request: web.Request) -> web.Response:
        """The embedded daemon's list, counts from the broker (management API, off the
        loop: its statistics lag by up to 5 s)."""
        loop = asyncio.get_running_loop()
        backend, topology = self.backend, self._topology
        return answer(await loop.run_in_executor(
            None, lambda: lists.queues_json(backend, topology)))

    async def _list_topics(self, request: web.Request) -> web.Response:
        """Topics as streams: offsets from the streams themselves, off the loop (each
        partition is read on a connection of its own)."""
        loop = asyncio.get_running_loop()
        backend, topology = self.backend, self._topology
        return answer(await loop.run_in_executor(
            None, lambda: lists.topics_json(backend, topology)))

    async def _get_topic(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in self._topology.topic_map():
            raise NotFound(f"topic '{name}' not found")
        loop = asyncio.get_running_loop()
        backend, topology = self.backend, self._topology
        return answer(await loop.run_in_executor(
            None, lambda: lists.topic_json(backend, topology, name)))

    async def _read_records(self, request: web.Request) -> web.Response:
        name, part, query = request.match_info["name"], request.match_info["p"], request.query
        loop = asyncio.get_running_loop()
        return answer(await loop.run_in_executor(
            None, lambda: records_json(cast(Host, self), name, part, query)))

    async def _list_exchanges(self, request: web.Request) -> web.Response:
        loop = asyncio.get_running_loop()
        backend, topology = self.backend, self._topology
        return answer(await loop.run_in_executor(
            None, lambda: lists.exchanges_json(backend, topology)))

    async def _list_groups(self, request: web.Request) -> web.Response:
        """Members, owners and offsets from the broker (off the loop: each partition's
        log end costs a read of its stream)."""
        loop = asyncio.get_running_loop()
        backend, topology = self.backend, self._topology
        return answer(await loop.run_in_executor(
            None, lambda: lists.groups_json(backend, topology)))

    async def _get_group(self, request: web.Request) -> web.Response:
        group = request.match_info["group"]
        if group not in self._topology.group_map():
            raise NotFound(f"consumer group '{group}' not found")
        loop = asyncio.get_running_loop()
        backend = self.backend
        return answer(await loop.run_in_executor(None, lambda: group_json(backend, group)))

    async def _seek(self, request: web.Request) -> web.Response:
        """As on the embedded daemon (one code path, off the loop): the offset is
        committed on the broker and the partition's owner, on any daemon, reads it
        again from there."""
        group, body = request.match_info["group"], await read_json(request)
        loop = asyncio.get_running_loop()
        return answer(await loop.run_in_executor(
            None, lambda: seek_json(cast(Host, self), group, body)))

    async def _commit(self, request: web.Request) -> web.Response:
        """As on the embedded daemon (one parser, `http.commit_args`), off the loop: each
        offset checked against its stream and written into its partition's offset
        queue, confirmed before the answer (a group without a handler: HTTP clients)."""
        group, body = request.match_info["group"], await read_json(request)
        backend = self.backend

        def run() -> int:
            offsets = commit_args(cast(Host, self), group, body)
            if offsets:
                backend.commit(group, offsets)
            return len(offsets)

        loop = asyncio.get_running_loop()
        return answer({"committed": await loop.run_in_executor(None, run)})

    async def _reset(self, request: web.Request) -> web.Response:
        """As on the embedded daemon (one code path, `runner.daemon.groups.reset`), off
        the loop: each partition's bounds read from its stream, the new positions
        written as seeks (the owners, on any daemon, read again from there)."""
        group, body = request.match_info["group"], await read_json(request)
        loop = asyncio.get_running_loop()
        return answer(await loop.run_in_executor(
            None, lambda: reset_json(cast(Host, self), group, body)))

    async def _list_bindings(self, request: web.Request) -> web.Response:
        return answer(lists.bindings_json(self._topology))

    async def _healthz(self, request: web.Request) -> web.Response:
        return answer({"status": "ok"})

    async def _readyz(self, request: web.Request) -> web.Response:
        if not self._accepting:
            return answer({"status": "shutting down"}, 503)
        if not self.backend.connected:
            return answer({"status": "broker unreachable", "backend": str(self.target)}, 503)
        return answer({"status": "ready", "backend": str(self.target)})

    async def _metrics(self, request: web.Request) -> web.Response:
        loop = asyncio.get_running_loop()
        try:
            self._stats = await loop.run_in_executor(None, self.backend.stats)
        except StorageError as exc:  # the last counts stay; the handler metrics still help
            log.warning("metrics: the broker's counts are unavailable: %s", exc)
        self._stats = await self._with_series(self._stats)
        text = render(self._registry)
        return web.Response(body=text, headers={"Content-Type": "text/plain; version=0.0.4"})

    async def _with_series(self, stats: EngineStats) -> EngineStats:
        """`stats` with the topic and group series of `_stream_series` (when read)."""
        series = await self._stream_series()
        if series is not None:
            stats.partitions = series.partitions
            stats.group_committed = series.group_committed
            stats.group_lag = series.group_lag
            stats.group_members = series.group_members
            stats.dlq_settled = series.dlq_settled
            stats.dlq_oldest_pending_ms = series.dlq_oldest_pending_ms
        return stats

    async def _stream_series(self) -> EngineStats | None:
        """The topic and group series (`stream_stats`), at most STREAM_SERIES_S old
        plus one refresh: a stale cache starts a refresh off the loop and is answered
        as it is; only the first scrape waits (up to STREAM_SERIES_FIRST_S)."""
        stale = self._clock.monotonic() - self._series_at >= STREAM_SERIES_S
        if (self._series is None or stale) and self._series_task is None:
            self._series_task = asyncio.get_running_loop().create_task(self._refresh_series())
        task = self._series_task
        if self._series is None and task is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(task), STREAM_SERIES_FIRST_S)
        return self._series

    async def _refresh_series(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            self._series = await loop.run_in_executor(None, self.backend.stream_stats)
        except StorageError as exc:  # the last series stay; tried again after the pause
            log.warning("metrics: the streams' offsets are unavailable: %s", exc)
        finally:
            self._series_at = self._clock.monotonic()
            self._series_task = None

    # ------------------------------------------------------------ life
    def stop(self) -> None:
        self._stop.set()

    def _on_sighup(self) -> None:
        if not self._accepting:
            return
        log.info("SIGHUP received: reloading", extra={"event": "signal", "signal": "SIGHUP"})
        self._reloading.background(self.reload("sighup"))

    def _on_files_changed(self) -> None:
        if self._accepting:
            self._reloading.background(self.reload("watch"))

    # ------------------------------------------------------------ reload
    async def reload(self, trigger: str) -> ReloadResult:
        """As the embedded daemon (runner.daemon.reloading), planned against the live
        broker: additions declared, dropped bindings unbound, handlers started and
        stopped; what RabbitMQ cannot change in place refused, the old topology
        still serving."""
        return await self._reloading.run(trigger, self._reload)

    async def _reload(self, trigger: str) -> ReloadResult:
        generation = self._generation
        read = await self._reloading.read(trigger, generation, self._handler_files)
        if isinstance(read, ReloadResult):
            return read
        loaded, new = read.loaded, read.topology
        backend, old = self.backend, self._topology
        loop = asyncio.get_running_loop()

        def planned() -> Plan:
            return reload_plan(read_live(self.target), old, new,
                               lambda kind, name: holds_nothing(backend, kind, name))

        try:
            plan = await loop.run_in_executor(None, planned)
        except Unreachable as exc:
            return ReloadResult("refused", generation, error=f"engine refused: {exc}")
        assert self._pipeline is not None

        async def apply(topology: Topology, restore: bool) -> None:
            await loop.run_in_executor(None, backend.apply, topology)

        def show(topology: Topology) -> None:
            self._topology = topology  # the HTTP API sees what the broker now has

        done = await switch_topology(
            plan, generation, old, new, apply=apply, start=self._pipeline.apply, show=show,
            where="on the broker")
        if isinstance(done, ReloadResult):
            return done
        changes = changes_json(plan.changes)
        read_now = {c.queue for _, c in new.consumers}
        backend.stop_consuming([c.queue for _, c in old.consumers if c.queue not in read_now])
        log_worker_changes(old, new, done)
        self._handler_files = handler_files(handler_refs(new))
        self._reloading.seen = (loaded.content_hash, sources_digest(self._handler_files))
        if self._watcher is not None:
            self._watcher.watch_files(self._handler_files)
        if loaded.content_hash != self._hash:
            self._hash = loaded.content_hash
            self._generation += 1
        return ReloadResult("applied", self._generation, changes=changes)

    async def serve(self, *, ready: Callable[[str, int], None] | None = None) -> int:
        loop = asyncio.get_running_loop()
        config = self.config
        # pika logs a line per channel, and each failed connection attempt at ERROR with a
        # traceback several times over while a broker restarts; the I/O threads say it
        # once, plainly ("connection lost (...); reconnecting in N s")
        logging.getLogger("pika").setLevel(logging.CRITICAL)
        log.info("connecting to %s", self.target,
                 extra={"event": "backend_opening", "backend": str(self.target)})
        self._backend = await loop.run_in_executor(
            None, lambda: open_rabbitmq(self._topology, self.target, clock=self._clock))
        log.info("connected to %s", self.target,
                 extra={"event": "backend_opened", "backend": str(self.target)})
        workers = sum(c.concurrency for _, c in self._topology.consumers)
        executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=max(8, workers + 4), thread_name_prefix="handler")
        config.data_dir.mkdir(parents=True, exist_ok=True)  # idempotency keys live here
        self._spans = otel.from_environment()
        server = HttpServer(self.build_app())
        try:
            port = await server.start(config.host, config.port)
            self._pipeline = Pipeline(
                self._backend, self._topology, data_dir=config.data_dir, clock=self._clock,
                executor=executor, instance_id=f"{socket.gethostname()}:{os.getpid()}",
                # several daemons of one host share a vhost: member ids must differ
                hostname=f"{socket.gethostname()}:{os.getpid()}",
                fsync=config.fsync, replies=self._replies, spans=self._spans,
            )
            await self._replies.start()
            await self._pipeline.start()
        except BaseException:
            await server.stop()
            await loop.run_in_executor(None, self._backend.close)
            executor.shutdown(wait=False, cancel_futures=True)
            raise
        log.info("pipeline started", extra={"event": "pipeline_started"})
        logs.log_event_loop(log, loop)
        self._accepting = True
        log.info("listening on http://%s:%d", config.host, port,
                 extra={"event": "listening", "host": config.host, "port": port})
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)
        loop.add_signal_handler(signal.SIGHUP, self._on_sighup)
        if config.watch:
            self._watcher = TopologyWatcher(config.path, loop, self._on_files_changed,
                                            debounce_s=config.debounce_s)
            self._watcher.watch_files(self._handler_files)
            self._watcher.start()
        if ready is not None:
            ready(config.host, port)
        try:
            await self._stop.wait()
        finally:
            self._accepting = False
            log.info("draining", extra={"event": "draining", "grace_s": config.grace_s})
            if self._watcher is not None:
                self._watcher.stop()
            await self._pipeline.drain(config.grace_s)
            log.info("pipeline drained", extra={"event": "pipeline_drained"})
            self._replies.fail_all(ShuttingDown("the daemon stopped before the reply came"))
            await loop.run_in_executor(None, self._replies.stop)
            otel.flush()
            await server.stop()
            # the last acks and requeues reach the broker before the connection closes
            await loop.run_in_executor(None, self._backend.close)
            executor.shutdown(wait=False, cancel_futures=True)
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            log.info("stopped", extra={"event": "stopped"})
        return 0


class _Confirmed:
    """A request-reply's publish and its `wait()` for the broker's confirm (the
    `_Writes` of runner.daemon.http, over this backend's tickets)."""

    def __init__(self, backend: RabbitBackend, to_queue: bool) -> None:
        self.backend = backend
        self.to_queue = to_queue
        self.ticket: contract.Ticket | None = None

    def publish(self, name: str, msgs: list[Message]) -> list[list[str]]:
        b = self.backend
        out = [contract.OutMessage(m.body, m.routing_key, m.headers, m.priority, m.ttl_s,
                                   m.message_id, m.content_type) for m in msgs]
        published = b.put(name, out) if self.to_queue else b.publish(name, out)
        self.ticket = published.ticket
        return [list(r) for r in published.routes]

    async def wait(self) -> None:
        if self.ticket is not None:
            await self.backend.durable(self.ticket)
