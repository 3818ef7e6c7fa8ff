"""The dead-letter topic routes of the RabbitMQ daemon (runner.daemon.remote).

The same parsing, checks, errors and answers as the embedded daemon
(`runner.daemon.http.*_json`, over `runner.daemon.dlq_ops`), with the daemon's
`RabbitBackend` as the backend. Every call reads streams and queues on
connections of their own (blocking), so each request runs off the loop.

    GET    /v1/topics/{name}/dead-letters          summary and the first `n` pending
    DELETE /v1/topics/{name}/dead-letters          purge: the replay positions to the end
    POST   /v1/topics/{name}/dead-letters/purge    chosen records (settle markers)
    POST   /v1/topics/{name}/replay                back to where they died, or into `to`

On RabbitMQ a replay position is the committed offset of the hidden group
`__dlq.<topic>` (the durable offset queues of runner.backends.rabbitmq.groups),
markers are messages of the durable queue `__runner.group.__dlq.<topic>.settled`,
and a record replayed back to its group goes to the group's replay queue
`__runner.group.<group>.replay`. A replay or purge writes the records, then (once
confirmed) the positions, then the markers' acks: at least once, not one atomic
step as on the embedded engine (docs/rabbitmq.md).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from runner.clock import Clock, now_ms
from runner.daemon.dlq_ops import DlqBackend
from runner.daemon.http import (
    answer,
    purge_topic_json,
    purge_topic_records_json,
    read_json,
    replay_topic_json,
    topic_dead_letters_json,
)
from runner.topology.model import Topology

__all__ = ["ROUTES", "add_routes"]

ROUTES = frozenset({
    ("GET", "/v1/topics/{name}/dead-letters"),
    ("DELETE", "/v1/topics/{name}/dead-letters"),
    ("POST", "/v1/topics/{name}/dead-letters/purge"),
    ("POST", "/v1/topics/{name}/replay"),
})

Handler = Callable[[web.Request], Awaitable[web.Response]]


def add_routes(router: web.UrlDispatcher, topology: Callable[[], Topology],
               backend: Callable[[], DlqBackend], clock: Clock) -> None:
    """Add the four routes (ROUTES) to `router`; `topology` and `backend` are read at
    each request (a reload changes them)."""

    async def off_loop(work: Callable[[Topology, DlqBackend], dict[str, Any]]) -> web.Response:
        top, back = topology(), backend()
        loop = asyncio.get_running_loop()
        return answer(await loop.run_in_executor(None, lambda: work(top, back)))

    async def letters(request: web.Request) -> web.Response:
        name, query, now = request.match_info["name"], request.query, now_ms(clock)
        return await off_loop(lambda t, b: topic_dead_letters_json(t, b, name, query, now))

    async def purge(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        return await off_loop(lambda t, b: purge_topic_json(t, b, name))

    async def purge_records(request: web.Request) -> web.Response:
        name, body = request.match_info["name"], await read_json(request)
        return await off_loop(lambda t, b: purge_topic_records_json(t, b, name, body))

    async def replay(request: web.Request) -> web.Response:
        name, body = request.match_info["name"], await read_json(request, empty_ok=True)
        return await off_loop(lambda t, b: replay_topic_json(t, b, name, body))

    router.add_get("/v1/topics/{name}/dead-letters", letters)
    router.add_delete("/v1/topics/{name}/dead-letters", purge)
    router.add_post("/v1/topics/{name}/dead-letters/purge", purge_records)
    router.add_post("/v1/topics/{name}/replay", replay)
