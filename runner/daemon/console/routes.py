"""The console's routes on the daemon's HTTP listener.

    GET /                   the console page for browsers (Accept: text/html);
                            programs keep getting the JSON index (`lists`)
    GET /ui/, /ui/static/*  the page and its assets (shipped in the package)
    GET  /ui/api/session    who you are: token needed? logged in? CSRF token
    POST /ui/api/login      {"token"} -> session cookie; /ui/api/logout
    GET  /ui/api/events     server-sent events: one snapshot a second (`live`)
    GET  /ui/api/{overview,flow,queues,topics,groups,dlq}, .../{name}/...
    POST /ui/api/dlq/{name}/replay | purge, /ui/api/groups/{name}/reset

`/ui/api/` answers only within a console session (`session`), never to the
bearer token of `/v1/`; changes also need the CSRF header and are refused in
`--console read-only`. Every console answer carries a strict Content Security
Policy: scripts and styles only from the daemon itself, no inline script.

The console runs on both daemons (`ConsoleHost`): the embedded one reads its
engine on the loop; the RabbitMQ one (runner.daemon.remote) runs every backend
read on a thread (`off_loop`: they are blocking calls to the broker). What a
backend cannot do (NotImplementedError: e.g. choosing dead letters by id on
RabbitMQ) is answered 409 with the backend's sentence, which the page shows.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import Enum
from importlib import resources
from typing import Any, Protocol, TypeVar

from aiohttp import web

from runner.clock import Clock
from runner.daemon import codec
from runner.daemon.console import actions, views
from runner.daemon.console.live import LiveFeed
from runner.daemon.console.session import (
    Denied,
    Sessions,
    check_origin,
    clear_cookie,
    cookie_name,
    set_cookie,
)
from runner.daemon.http import answer, error, read_json

log = logging.getLogger(__name__)

HEARTBEAT_S = 15.0
LOGIN_FAILURE_DELAY_S = 0.25
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}


class ConsoleMode(str, Enum):  # noqa: UP042 - compared and printed as its value
    READ_WRITE = "read-write"
    READ_ONLY = "read-only"
    OFF = "off"


T = TypeVar("T")


class ConsoleHost(views.ViewSource, Protocol):
    """What the console needs from a daemon (the embedded supervisor, the RabbitMQ
    backend's RemoteDaemon)."""

    def notify(self) -> None: ...

    async def off_loop(self, read: Callable[[], T]) -> T:
        """`read()` (calls into the backend) where this daemon's backend may be
        called: inline on the embedded engine, on a thread over RabbitMQ."""
        ...


@dataclass(frozen=True, slots=True)
class Asset:
    body: bytes
    content_type: str
    etag: str


def load_assets() -> dict[str, Asset]:
    """Every file of the package's `static/` folder, read once."""
    out: dict[str, Asset] = {}
    folder = resources.files("runner.daemon.console").joinpath("static")
    for item in folder.iterdir():
        name = item.name
        suffix = name[name.rfind("."):] if "." in name else ""
        if not item.is_file() or suffix not in _TYPES:
            continue
        body = item.read_bytes()
        out[name] = Asset(body, _TYPES[suffix], '"' + hashlib.sha256(body).hexdigest()[:20] + '"')
    return out


def _secure(response: web.StreamResponse) -> web.StreamResponse:
    response.headers["Content-Security-Policy"] = _CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["X-Frame-Options"] = "DENY"
    return response


Route = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Console:
    """The console's request handlers over one daemon."""

    def __init__(
        self, host: ConsoleHost, *, token: str | None, mode: ConsoleMode, clock: Clock,
        interval_s: float = 1.0, idle_sampling: bool = True,
    ) -> None:
        self.host = host
        self.mode = mode
        self.clock = clock
        self.sessions = Sessions(token, clock)
        self.feed = LiveFeed(host, clock, interval_s=interval_s, idle_sampling=idle_sampling)
        self.assets = load_assets()

    # ------------------------------------------------------------ plumbing
    def guard(self, handler: Route, *, mutating: bool = False) -> Route:
        """`handler` behind the session gate (and, for a change, CSRF and read-only)."""

        async def guarded(request: web.Request) -> web.StreamResponse:
            try:
                self.sessions.require(request, mutating=mutating)
                if mutating and self.mode is ConsoleMode.READ_ONLY:
                    raise Denied(403, "the console is read-only (started with --console read-only)")
            except Denied as exc:
                return _secure(_no_store(error(exc.status, str(exc))))
            try:
                response = await handler(request)
            except NotImplementedError as exc:  # the backend cannot: say so, plainly
                return _secure(_no_store(error(409, str(exc))))
            if mutating:
                self.host.notify()
            return _secure(_no_store(response))

        return guarded

    def page(self) -> web.Response:
        asset = self.assets["index.html"]
        response = web.Response(body=asset.body, content_type="text/html", charset="utf-8")
        response.headers["Cache-Control"] = "no-cache"
        _secure(response)
        return response

    # ------------------------------------------------------------ pages and assets
    def root_middleware(self) -> Any:
        """`GET /` from a browser (Accept: text/html) gets the console; programs
        still get the daemon's JSON index."""

        @web.middleware
        async def root(request: web.Request, handler: Route) -> web.StreamResponse:
            if (request.path == "/" and request.method in ("GET", "HEAD")
                    and "text/html" in request.headers.get("Accept", "")):
                return self.page()
            return await handler(request)

        return root

    async def ui(self, request: web.Request) -> web.StreamResponse:
        return self.page()

    async def ui_redirect(self, request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound("/ui/")

    async def static(self, request: web.Request) -> web.StreamResponse:
        asset = self.assets.get(request.match_info["file"])
        if asset is None:
            return error(404, f"no console asset {request.match_info['file']!r}")
        if request.headers.get("If-None-Match") == asset.etag:
            return _secure(web.Response(status=304, headers={"ETag": asset.etag}))
        response = web.Response(body=asset.body, headers={
            "Content-Type": asset.content_type, "ETag": asset.etag,
            "Cache-Control": "no-cache",
        })
        return _secure(response)

    # ------------------------------------------------------------ session
    async def session(self, request: web.Request) -> web.StreamResponse:
        found = self.sessions.find(request)
        sid = None
        if found is None and not self.sessions.token_required:
            sid, found = self.sessions.open()
        response = answer({
            "token_required": self.sessions.token_required,
            "authenticated": found is not None,
            "read_only": self.mode is ConsoleMode.READ_ONLY,
            "csrf": found.csrf if found is not None else None,
        })
        if sid is not None:
            set_cookie(request, response, sid)
        return _secure(_no_store(response))

    async def login(self, request: web.Request) -> web.StreamResponse:
        try:
            check_origin(request)
        except Denied as exc:
            return _secure(error(exc.status, str(exc)))
        body = await read_json(request)
        given = body.get("token")
        if not isinstance(given, str) or not given:
            return _secure(error(400, "missing field 'token' (the daemon's token)"))
        if not self.sessions.token_required:
            return _secure(error(400, "this daemon has no token: no login is needed"))
        if not self.sessions.token_ok(given.strip()):
            await asyncio.sleep(LOGIN_FAILURE_DELAY_S)  # slows guessing down
            return _secure(error(401, "wrong token"))
        sid, found = self.sessions.open()
        response = answer({"authenticated": True, "csrf": found.csrf,
                           "read_only": self.mode is ConsoleMode.READ_ONLY})
        set_cookie(request, response, sid)
        return _secure(_no_store(response))

    async def logout(self, request: web.Request) -> web.StreamResponse:
        try:
            self.sessions.require(request, mutating=True)
        except Denied as exc:
            return _secure(error(exc.status, str(exc)))
        self.sessions.close(request.cookies.get(cookie_name(request)))
        response = answer({"authenticated": False})
        clear_cookie(request, response)
        return _secure(response)

    # ------------------------------------------------------------ live feed
    async def events(self, request: web.Request) -> web.StreamResponse:
        queue = self.feed.listen()
        if queue is None:
            return error(503, "too many console event streams are open; close some tabs")
        response = web.StreamResponse(headers={
            "Content-Type": "text/event-stream", "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
        })
        try:
            await response.prepare(request)
            first = b"event: snapshot\ndata: " + (await self.feed.encoded()) + b"\n\n"
            await response.write(b"retry: 2000\n" + first)
            while True:
                try:
                    item = await asyncio.wait_for(queue.get(), timeout=HEARTBEAT_S)
                except TimeoutError:
                    await response.write(b": keep-alive\n\n")
                    continue
                if item is None:
                    break
                if item == first:  # sampled while the stream was opening: sent already
                    continue
                await response.write(item)
        except (ConnectionError, RuntimeError):
            pass  # the browser went away (or the server is closing the transport)
        finally:
            self.feed.forget(queue)
        return response

    # ------------------------------------------------------------ read-only pages
    async def overview(self, request: web.Request) -> web.StreamResponse:
        data = views.overview(self.host, self.clock.time())
        data["history"] = self.feed.history()
        data["snapshot"] = await self.feed.snapshot()
        return answer(data)

    async def flow(self, request: web.Request) -> web.StreamResponse:
        data = views.flow(self.host.topology)
        data["snapshot"] = await self.feed.snapshot()
        return answer(data)

    async def queues(self, request: web.Request) -> web.StreamResponse:
        return answer({"queues": views.queues(self.host.topology),
                       "bindings": views.binding_rows(self.host.topology),
                       "snapshot": await self.feed.snapshot()})

    async def queue_messages(self, request: web.Request) -> web.StreamResponse:
        n = codec.query_int(request.query, "n", default=20, low=1, high=views.MAX_PEEK)
        host, name = self.host, request.match_info["name"]
        topology = host.topology
        return answer({"messages": await host.off_loop(
            lambda: views.peek(host.backend, topology, name, n))})

    async def topics(self, request: web.Request) -> web.StreamResponse:
        host = self.host
        topology = host.topology
        rows = await host.off_loop(lambda: views.topics(host.backend, topology))
        return answer({"topics": rows, "snapshot": await self.feed.snapshot()})

    async def records(self, request: web.Request) -> web.StreamResponse:
        host, name, query = self.host, request.match_info["name"], request.query
        topology = host.topology
        return answer(await host.off_loop(
            lambda: views.browse(host.backend, topology, name, query)))

    async def groups(self, request: web.Request) -> web.StreamResponse:
        host = self.host
        topology = host.topology
        return answer({"groups": await host.off_loop(
            lambda: views.groups(host.backend, topology))})

    async def dlq(self, request: web.Request) -> web.StreamResponse:
        host, now_s = self.host, self.clock.time()
        topology = host.topology
        return answer({"dead_letter_queues": await host.off_loop(
            lambda: views.dead_letter_summary(host, topology, now_s))})

    async def dlq_letters(self, request: web.Request) -> web.StreamResponse:
        n = codec.query_int(request.query, "n", default=100, low=1, high=views.MAX_PEEK)
        host, name = self.host, request.match_info["name"]
        topology = host.topology
        return answer(await host.off_loop(
            lambda: views.dead_letters(host, topology, name, n)))

    # ------------------------------------------------------------ changes
    async def _body(self, request: web.Request) -> dict[str, Any]:
        return await read_json(request, empty_ok=True)

    async def replay(self, request: web.Request) -> web.StreamResponse:
        host, name = self.host, request.match_info["name"]
        body = await self._body(request)
        topology = host.topology
        return answer(await host.off_loop(
            lambda: actions.replay(host.backend, topology, name, body)))

    async def purge(self, request: web.Request) -> web.StreamResponse:
        host = self.host
        body = await self._body(request)
        return answer(await actions.purge(host.backend, host.topology,
                                          request.match_info["name"], body,
                                          off_loop=host.off_loop))

    async def reset(self, request: web.Request) -> web.StreamResponse:
        host, name = self.host, request.match_info["name"]
        body = await self._body(request)
        topology = host.topology
        return answer(await host.off_loop(
            lambda: actions.reset(host.backend, topology, name, body)))


def _no_store(response: web.StreamResponse) -> web.StreamResponse:
    response.headers["Cache-Control"] = "no-store"
    return response


def install_console(
    app: web.Application, host: ConsoleHost, *, token: str | None, mode: ConsoleMode,
    clock: Clock, interval_s: float = 1.0, idle_sampling: bool = True,
) -> Console | None:
    """Add the console's routes to `app` (none with `--console off`). `idle_sampling`
    False: the live feed samples only while an event stream is open (a sample of a
    remote broker costs calls to it)."""
    if mode is ConsoleMode.OFF:
        return None
    console = Console(host, token=token, mode=mode, clock=clock, interval_s=interval_s,
                      idle_sampling=idle_sampling)
    g = console.guard
    app.middlewares.append(console.root_middleware())
    r = app.router
    r.add_get("/ui", console.ui_redirect)
    r.add_get("/ui/", console.ui)
    r.add_get("/ui/static/{file}", console.static)
    r.add_get("/ui/api/session", console.session)
    r.add_post("/ui/api/login", console.login)
    r.add_post("/ui/api/logout", console.logout)
    r.add_get("/ui/api/events", g(console.events))
    r.add_get("/ui/api/overview", g(console.overview))
    r.add_get("/ui/api/flow", g(console.flow))
    r.add_get("/ui/api/queues", g(console.queues))
    r.add_get("/ui/api/queues/{name}/messages", g(console.queue_messages))
    r.add_get("/ui/api/topics", g(console.topics))
    r.add_get("/ui/api/topics/{name}/records", g(console.records))
    r.add_get("/ui/api/groups", g(console.groups))
    r.add_get("/ui/api/dlq", g(console.dlq))
    r.add_get("/ui/api/dlq/{name}", g(console.dlq_letters))
    r.add_post("/ui/api/dlq/{name}/replay", g(console.replay, mutating=True))
    r.add_post("/ui/api/dlq/{name}/purge", g(console.purge, mutating=True))
    r.add_post("/ui/api/groups/{name}/reset", g(console.reset, mutating=True))

    async def start(_app: web.Application) -> None:
        console.feed.start()

    async def stop(_app: web.Application) -> None:
        with contextlib.suppress(Exception):
            await console.feed.stop()

    app.on_startup.append(start)
    app.on_shutdown.append(stop)
    return console
