"""The Pipeline: every consumer and handled group of a topology, run on one loop.

The daemon builds one `Pipeline` per backend (`runner.engine.contract`),
`start()`s it on its running loop (workers then wait on the backend's events),
may call `notify()` to wake every worker, `apply()` after `engine.apply()` on a
reload, `drain()` at shutdown, and reads `stats()` at scrape time.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import random
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner.clock import Clock
from runner.engine.contract import Backend, FsyncPolicy, OutMessage
from runner.fs import LOCAL, FileSystem
from runner.pipeline.group_worker import GroupWorker
from runner.pipeline.handler import resolve
from runner.pipeline.message import decode_body, encode_body
from runner.pipeline.otel import Spans
from runner.pipeline.queue_worker import QueueWorker
from runner.pipeline.replies import (
    CORRELATION_HEADER,
    REPLY_TO_HEADER,
    NoRoute,
    Replies,
    ReplyError,
    error_of,
)
from runner.pipeline.spans import request_span
from runner.pipeline.stats import HandlerCounters, PipelineStats
from runner.pipeline.worker import WorkerEnv
from runner.topology.model import Topology

AnyWorker = QueueWorker | GroupWorker


def _consumer_spec(topology: Topology, name: str) -> object:
    """What a queue consumer's behaviour depends on (a change restarts it)."""
    c = topology.consumer_map()[name]
    policy = topology.policy_map().get(c.dlq_policy) if c.dlq_policy else None
    queue = topology.queue_map().get(c.queue)
    dlq = policy.dead_letter_queue if policy else None
    return (c, policy, queue.dead_letter if queue else None, dlq in topology.topic_map())


def _group_spec(topology: Topology, name: str) -> object:
    g = topology.group_map()[name]
    policy = topology.policy_map().get(g.dlq_policy) if g.dlq_policy else None
    dlq = policy.dead_letter_queue if policy else None
    return (g, policy, dlq in topology.topic_map())


def _specs(topology: Topology) -> dict[str, object]:
    specs: dict[str, object] = {
        f"consumer:{name}": _consumer_spec(topology, name) for name, _ in topology.consumers
    }
    for name, g in topology.consumer_groups:
        if g.handler is not None:
            specs[f"group:{name}"] = _group_spec(topology, name)
    return specs


@dataclass(frozen=True, slots=True)
class WorkerChanges:
    """What `Pipeline.apply` did, as worker keys (`consumer:NAME`, `group:NAME`).

    The daemon logs its consumer_/group_ started, stopped and restarted lines
    from this, so a restart the pipeline does for its own reasons (a dead-letter
    policy or a handler's source changed) is logged too, and only once."""

    started: tuple[str, ...] = ()
    stopped: tuple[str, ...] = ()
    restarted: tuple[str, ...] = ()


def plan(old: Topology, new: Topology) -> WorkerChanges:
    """The workers a reload from `old` to `new` starts, stops and restarts
    (by behaviour spec; `Pipeline.apply` also restarts on handler code changes)."""
    before, after = _specs(old), _specs(new)
    return WorkerChanges(
        started=tuple(k for k in after if k not in before),
        stopped=tuple(k for k in before if k not in after),
        restarted=tuple(k for k in after if k in before and before[k] != after[k]),
    )


def _handler_ref(topology: Topology, key: str) -> None:
    """Import the handler of `key` now (raises HandlerImportError)."""
    kind, _, name = key.partition(":")
    if kind == "consumer":
        resolve(topology.consumer_map()[name].handler, consumer=name)
    else:
        resolve(topology.group_map()[name].handler or "", consumer=name)


class Pipeline:
    """Runs the handlers of a topology against a Backend."""

    def __init__(
        self, backend: Backend, topology: Topology, *, data_dir: Path, clock: Clock,
        executor: concurrent.futures.ThreadPoolExecutor, instance_id: str,
        random_source: Callable[[], float] | None = None, hostname: str | None = None,
        fsync: FsyncPolicy = FsyncPolicy.ALWAYS, fs: FileSystem = LOCAL,
        replies: Replies | None = None, spans: Spans | None = None,
    ) -> None:
        self.backend = backend
        self.topology = topology
        self.instance_id = instance_id
        self.replies = replies if replies is not None else Replies()
        self._env = WorkerEnv(
            backend=backend, executor=executor, clock=clock, data_dir=data_dir,
            hostname=hostname or socket.gethostname(),
            random=random_source or random.Random().random, fsync=fsync, fs=fs,
            replies=self.replies, requester=self.request, spans=spans,
        )
        self._workers: dict[str, AnyWorker] = {}
        self._counters: dict[str, HandlerCounters] = {}
        self._specs: dict[str, object] = {}
        self._started = False

    # ---------------------------------------------------------------- lifecycle
    def _build(self, topology: Topology, key: str) -> AnyWorker:
        kind, _, name = key.partition(":")
        counters = self._counters.setdefault(name, HandlerCounters())
        if kind == "consumer":
            return QueueWorker(self._env, topology, topology.consumer_map()[name], counters)
        return GroupWorker(self._env, topology, topology.group_map()[name], counters)

    async def start(self) -> None:
        """Start every consumer and handled group (handlers are imported first: a
        reference that does not resolve raises HandlerImportError, nothing started)."""
        specs = _specs(self.topology)
        for key in specs:
            _handler_ref(self.topology, key)
        built = {key: self._build(self.topology, key) for key in specs}
        for key, worker in built.items():
            worker.start()
            self._workers[key] = worker
        self._specs = specs
        self._started = True

    async def apply(self, new: Topology) -> WorkerChanges:
        """Start added consumers, drain removed ones, restart changed ones.

        New handlers are imported before anything stops, so a reference that
        does not resolve raises HandlerImportError and the old workers keep running."""
        new_specs = _specs(new)
        changed = [k for k in new_specs if k in self._specs and self._specs[k] != new_specs[k]]
        changed += [k for k in new_specs if k in self._specs and k not in changed
                    and self._code_changed(new, k)]
        added = [k for k in new_specs if k not in self._specs]
        removed = [k for k in self._specs if k not in new_specs]
        for key in changed + added:
            _handler_ref(new, key)
        for key in removed + changed:
            old = self._workers.pop(key)
            await old.drain(old.timeout_s)
        for key in removed:
            self._counters.pop(key.partition(":")[2], None)
        for kept in self._workers.values():
            kept.topology = new  # unchanged behaviour; names resolve in the new topology
        for key in changed + added:
            worker = self._build(new, key)
            worker.start()
            self._workers[key] = worker
        self.topology = new
        self._specs = new_specs
        return WorkerChanges(started=tuple(added), stopped=tuple(removed), restarted=tuple(changed))

    def _code_changed(self, topology: Topology, key: str) -> bool:
        """True when the handler of `key` resolves to another callable now (its
        module's source changed and was re-imported): the worker restarts."""
        worker = self._workers.get(key)
        if worker is None:
            return False
        kind, _, name = key.partition(":")
        ref = (topology.consumer_map()[name].handler if kind == "consumer"
               else topology.group_map()[name].handler or "")
        return bool(resolve(ref, consumer=name) != worker.handler.fn)

    async def drain(self, grace_s: float) -> None:
        """Stop taking work; in-flight handler calls get up to `grace_s` to finish
        and are settled; unfinished ones stay unacked and come back later."""
        workers = list(self._workers.values())
        self._workers.clear()
        await asyncio.gather(*(w.drain(grace_s) for w in workers))
        self._started = False

    async def request(
        self, exchange: str, routing_key: str, body: Any, *,
        headers: Mapping[str, Any] | None = None, timeout_s: float,
    ) -> Any:
        """`ctx.request`: publish now with a private reply address, wait for the reply;
        its body (JSON value or bytes), or ReplyError / ReplyTimeout / NoRoute."""
        payload, ctype = encode_body(body)
        waiting = self.replies.open()
        out = dict(headers or {})
        out[REPLY_TO_HEADER] = waiting.address
        out[CORRELATION_HEADER] = waiting.correlation_id
        spans = self._env.spans
        span = None
        if spans is not None:
            span = request_span(spans, exchange, routing_key, out, waiting.correlation_id,
                                timeout_s)
        error: Exception | None = None
        try:
            routed = self.backend.publish(exchange, [OutMessage(
                body=payload, routing_key=routing_key, headers=out,
                content_type=ctype)]).routes[0]
            if not routed:
                raise NoRoute(f"the request to exchange {exchange!r} with routing key "
                              f"{routing_key!r} was routed nowhere: no reply can come")
            self.notify()
            reply = await self.replies.wait(waiting, timeout_s)
            if spans is not None:
                spans.event(span, "reply", {"messaging.runner.reply.error": reply.is_error,
                                            "messaging.message.body.size": len(reply.body)})
            if reply.is_error:
                raise ReplyError(*error_of(reply.body))
            return decode_body(reply.body)
        except Exception as exc:
            error = exc
            raise
        finally:
            self.replies.close(waiting)
            if spans is not None:
                spans.end(span, error)

    def wakeups(self) -> int:
        """Backend events that reached the workers so far (the idle-cost tests)."""
        return sum(w.wakeups for w in self._workers.values())

    def notify(self) -> None:
        """Wake every idle worker now (call on the loop thread); the backend's
        events do this for every write it sees."""
        for worker in self._workers.values():
            worker.notify()

    def stats(self) -> PipelineStats:
        return PipelineStats(
            consumers={name: c.snapshot() for name, c in self._counters.items()}
        )
