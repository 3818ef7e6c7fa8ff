"""The fast lane: a small publish or append answered without aiohttp's per-request work.

`POST /v1/queues/{name}/messages` (and `/v1/exchanges/{name}/messages`) of one
message is what producers send most, and under `--fsync always` the daemon's event
loop spent ~170 us on each, a third of it in aiohttp building the request and the
response objects and running the middlewares. The lane serves those two routes, and
`POST /v1/topics/{name}/records`, at the connection's protocol
(`runner.daemon.connections.GuardedHandler`): it parses the bytes that arrived with
httptools (llhttp, the parser aiohttp's own is built on) and, when they are one whole
request the route would accept, stores it through the same merged write
(`MergedWrites.put_merged` / `publish_merged` / `append_merged`) and writes the same
answer (202 `{"routed": ...}` or `{"offsets": ...}`, once the write is durable).

It takes a request only when nothing but the happy path is possible before the
write: anything else -- another route, a query string, pipelined requests, a bad or
missing token, a body that is not a valid publish or append, a destination (or a
partition) that does not exist, an append a lagging `max_lag` group refuses, a
private reply address, a publish rate, more than 100 message copies or records,
tracing, a shutdown, a backend without merged writes -- is declined before anything
is stored, and aiohttp serves the same bytes: its route gives the answer (and the
error) it always gave. A request may come in several reads (the lane holds them,
under the header and body timeouts). Once a connection was served by aiohttp it
stays with aiohttp (its parser may hold part of a request); what the lane answers
after storing (a 429 of a full queue, a storage error) is the route's answer, built
by the same functions.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import re
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any

import httptools
from aiohttp import web
from aiohttp.http import SERVER_SOFTWARE
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from runner import jsontext
from runner.daemon import codec, http
from runner.daemon.backpressure import check_lag
from runner.daemon.connections import stalled_body
from runner.daemon.ratelimit import PublishLimiter
from runner.daemon.traced import SPANS_KEY
from runner.errors import EngineError, NotFound
from runner.pipeline.replies import is_private
from runner.pipeline.tracing import TRACEPARENT, TRACESTATE
from runner.topology.model import Topic

log = logging.getLogger(__name__)

PREFIXES = (b"POST /v1/queues/", b"POST /v1/exchanges/", b"POST /v1/topics/")
_PATH = re.compile(rb"/v1/(?:(queues|exchanges)/([A-Za-z0-9._~-]+)/messages"
                   rb"|topics/([A-Za-z0-9._~-]+)/records)")
# a publish or an append the lane may decline (counted): any name, any query
_PUBLISH = re.compile(
    rb"/v1/(?:(?:queues|exchanges)/[^/?#]+/messages|topics/[^/?#]+/records)([?#].*)?", re.S)


def _route(url: bytes) -> tuple[str, str] | None:
    """("queue" | "exchange" | "topic", its name) of a path the lane serves, else None."""
    match = _PATH.fullmatch(url)
    if match is None:
        return None
    plural, name, topic = match.groups()
    if topic is not None:
        return "topic", topic.decode()
    assert plural is not None and name is not None
    return ("queue" if plural == b"queues" else "exchange"), name.decode()


# headers that make a request one for aiohttp's route (it decodes, expects, upgrades,
# traces...); `Connection: close` is seen by httptools (should_keep_alive)
_DECLINED_HEADERS = frozenset({
    b"transfer-encoding", b"content-encoding", b"expect", b"upgrade",
    b"sec-websocket-key1", TRACEPARENT.encode(), TRACESTATE.encode(),
})


# what aiohttp's request parser refuses (aiohttp/_http_parser.pyx) and llhttp alone
# lets through: a request with any of these is the route's, to be answered 400
MAX_LINE = 8190  # the request target, and a header's name + value (aiohttp checks
# the name + value of only the first header, the name alone of the others: the lane
# declines more, never less)
MAX_HEADERS = 128
# headers aiohttp allows once (a second one is a 400)
_SINGLETONS = frozenset({
    b"content-length", b"content-location", b"content-range", b"content-type", b"etag",
    b"host", b"max-forwards", b"server", b"transfer-encoding", b"user-agent",
})


class _Request:
    """httptools' callbacks for one request: its path, headers and body."""

    __slots__ = ("url", "length", "token", "body", "messages", "declined", "head_done",
                 "complete", "parser", "keep_alive", "headers", "seen")

    def __init__(self) -> None:
        self.url = b""
        self.length = -1
        self.token: bytes | None = None
        self.body = bytearray()  # grows in place: a body in many small pieces stays linear
        self.messages = 0
        self.declined = False
        self.head_done = False
        self.complete = False
        self.parser: httptools.HttpRequestParser | None = None
        self.keep_alive = False  # HTTP/1.1 without `Connection: close`
        self.headers = 0
        self.seen: set[bytes] = set()  # the singletons seen

    def on_message_begin(self) -> None:
        self.messages += 1

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        lower = name.lower()
        self.headers += 1
        if lower in _SINGLETONS:
            self.declined |= lower in self.seen
            self.seen.add(lower)
        if lower == b"content-length":
            self.length = int(value) if value.isdigit() else -1
            self.declined |= self.length == -1
        elif lower == b"authorization":
            self.declined |= self.token is not None
            self.token = value
        elif lower in _DECLINED_HEADERS:
            self.declined = True
        if len(name) + len(value) > MAX_LINE or self.headers > MAX_HEADERS:
            self.declined = True

    def on_headers_complete(self) -> None:
        self.head_done = True
        parser = self.parser
        assert parser is not None
        # read here: httptools resets both once the message is complete
        self.keep_alive = parser.get_http_version() == "1.1" and parser.should_keep_alive()
        self.declined |= b"host" not in self.seen or len(self.url) > MAX_LINE

    def on_body(self, body: bytes) -> None:
        self.body += body

    def on_message_complete(self) -> None:
        self.complete = True


MAX_HEAD = 16 * 1024  # a longer header is aiohttp's to refuse (it allows 8190 a line)
# a bigger body is aiohttp's to read (in pieces, bounded as it goes): the lane holds
# a request's bytes twice (as they came, for aiohttp if it declines; and parsed)
MAX_BODY = 1024 * 1024


class FastLane:
    """The lane of one app (`runner.daemon.http.build_app`'s): a `reader` for each
    POST to a queue, an exchange or a topic (what is not a publish or an append, a
    pull or a replay, is declined uncounted)."""

    def __init__(self, app: web.Application) -> None:
        self._host = app[http.HOST_KEY]
        self._limits = app[http.LIMITS_KEY]
        self._max_request = app[http.MAX_REQUEST_KEY]
        token = app.get(http.TOKEN_KEY)
        self._token = token.encode() if token else None
        self._limiter: PublishLimiter | None = app.get(http.LIMITER_KEY)
        self._traced = app.get(SPANS_KEY) is not None
        self._date = b""
        self._date_s = 0
        self.served = 0  # requests the lane answered
        self.declined = 0  # requests that began like its route, served by aiohttp

    def reader(self, data: bytes) -> _Reader | None:
        """A reader of the request `data` begins, None when the lane does not serve it."""
        if not data.startswith(PREFIXES) or self._traced:
            return None
        return _Reader(self)

    def _checked_head(self, req: _Request) -> bool:
        """Whether the request's header is one the lane serves."""
        return (not req.declined and 0 <= req.length <= min(self._max_request, MAX_BODY)
                and req.keep_alive and self._authorized(req.token))

    def _job(self, req: _Request, kind: str, name: str) -> _Job | None:
        """The publish or append of a whole request to `kind` `name` (`_route`'s) whose
        header passed `_checked_head`."""
        host = self._host
        backend = host.backend
        topology = host.topology
        declared: Mapping[str, object]
        if kind == "queue":
            declared = topology.queue_map()
        elif kind == "exchange":
            declared = topology.exchange_map()
        else:
            declared = topology.topic_map()
        spec = declared.get(name)
        if (not host.accepting or spec is None or not http.merges_writes(backend)
                or (kind == "queue" and is_private(name))):
            return None
        if self._limiter is not None and self._limiter.rate_of(topology, kind, name) is not None:
            return None
        write: Awaitable[Any]
        try:
            body = codec.require_object(codec.decode_json(bytes(req.body)))
            if isinstance(spec, Topic):
                recs, batch = http.checked_records(spec, self._limits, body)
                if not recs or len(recs) > http.MERGED_MAX:
                    return None
                check_lag(host.backend, topology, name)  # a 429 the route gives before storing
                write = backend.append_merged(name, recs)
            else:
                to_queue = kind == "queue"
                msgs, batch = codec.messages(body, limits=self._limits,
                                             default_key=name if to_queue else None)
                copies = len(msgs) if to_queue else sum(host.backend.fanout(name, msgs))
                if not msgs or copies > http.MERGED_MAX or copies > self._limits.max_fanout:
                    return None
                write = (backend.put_merged(name, msgs) if to_queue
                         else backend.publish_merged(name, msgs, copies))
        except EngineError:
            return None  # the route answers it (400, 404, 413, 429)
        except Exception:  # a bug: the route answers (and logs) it as a 500
            return None
        return _Job(self, asyncio.ensure_future(write), kind, name, batch)

    def _authorized(self, given: bytes | None) -> bool:
        """The route's token rule (`http.bearer_ok`) on the header's bytes; a header
        that is not UTF-8 is left to the route."""
        if self._token is None:
            return True
        try:
            return given is not None and http.bearer_ok(given.decode(), [self._token])
        except UnicodeError:
            return False

    def _answer_of(self, job: _Job) -> bytes | None:
        """The route's answer to a publish or an append whose write is done (None: it
        was cancelled, the daemon is stopping; the connection closes unanswered)."""
        self.served += 1
        try:
            try:
                done = job.write.result()
            finally:
                self._host.notify()  # also after a 429: the messages before it are stored
        except asyncio.CancelledError:
            return None
        except NotFound as exc:
            return self._raw(http.engine_error(http.suggested(self._host.topology, exc)))
        except EngineError as exc:
            return self._raw(http.engine_error(exc))
        except Exception:
            log.exception("unexpected error serving POST /v1/%ss/%s/%s", job.kind, job.name,
                          "records" if job.kind == "topic" else "messages")
            return self._raw(http.error(500, "internal error; the daemon log has the details"))
        if job.kind == "topic":
            return self._answer(b"202 Accepted", _JSON, jsontext.dumps(http.offsets_json(done)))
        routed = [list(r) for r in done]
        return self._answer(b"202 Accepted", _JSON, jsontext.dumps(
            {"routed": routed if job.batch else routed[0]}))

    def _raw(self, response: web.Response, *, close: bool = False) -> bytes:
        """`response` as aiohttp writes it: its headers in their order, then
        Content-Length, Date, Server (and Connection: close)."""
        body = response.body
        assert isinstance(body, bytes)
        head = b"".join(f"{k}: {v}\r\n".encode() for k, v in response.headers.items()
                        if k != "Content-Length")
        return self._answer(f"{response.status} {response.reason}".encode(), head, body,
                            close=close)

    def stalled(self, stall_s: float) -> bytes:
        """The route's answer to a request body that stopped arriving (the connection
        then closes)."""
        return self._raw(http.error(408, stalled_body(stall_s)), close=True)

    def _answer(self, status: bytes, head: bytes, body: bytes, *, close: bool = False) -> bytes:
        now = int(time.time())
        if now != self._date_s:
            self._date_s = now
            self._date = email.utils.formatdate(now, usegmt=True).encode()
        return b"".join((
            b"HTTP/1.1 ", status, b"\r\n", head, b"Content-Length: ", str(len(body)).encode(),
            b"\r\nDate: ", self._date, b"\r\nServer: ", _SERVER,
            b"\r\nConnection: close\r\n\r\n" if close else b"\r\n\r\n", body,
        ))


_SERVER = SERVER_SOFTWARE.encode()
_JSON = b"Content-Type: application/json\r\n"


class _Reader:
    """One request arriving for the lane, in as many reads as it takes."""

    __slots__ = ("_lane", "_req", "_parser", "_seen", "_route")

    def __init__(self, lane: FastLane) -> None:
        self._lane = lane
        self._req = _Request()
        self._parser = self._req.parser = httptools.HttpRequestParser(self._req)
        self._seen = 0
        self._route: tuple[str, str] | None = None  # (kind, name) once the header passed

    @property
    def head_done(self) -> bool:
        """The whole header arrived (what is missing is body)."""
        return self._req.head_done

    def feed(self, data: bytes) -> _Job | bool:
        """The next bytes: the answer to the whole request (awaited: after its writes
        are durable), True when more is needed, False when the lane does not serve it
        (nothing was done)."""
        req = self._req
        self._seen += len(data)
        try:
            self._parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade):
            return self._decline()
        if req.declined or req.messages != 1:  # a second request began: pipelined
            return self._decline()
        if not req.head_done:
            return self._seen <= MAX_HEAD or self._decline()
        if self._route is None:
            self._route = _route(req.url)
            if self._route is None or not self._lane._checked_head(req):
                return self._decline()
        if not req.complete:
            return True
        job = self._lane._job(req, *self._route)
        return self._decline() if job is None else job

    def _decline(self) -> bool:
        """False; counted when the request was a publish (not a pull, an ack...)."""
        if _PUBLISH.fullmatch(self._req.url) is not None:
            self._lane.declined += 1
        return False


class _Job:
    """A publish or an append the lane took: its merged write, then the answer."""

    __slots__ = ("lane", "write", "kind", "name", "batch")

    def __init__(self, lane: FastLane, write: asyncio.Future[Any], kind: str, name: str,
                 batch: bool) -> None:
        self.lane = lane
        self.write = write
        self.kind = kind  # queue, exchange or topic
        self.name = name
        self.batch = batch

    def when_done(self, callback: Callable[[], None]) -> None:
        self.write.add_done_callback(lambda _: callback())

    def answer(self) -> bytes | None:
        return self.lane._answer_of(self)


class LaneCollector(Collector):
    """`runner_http_fast_lane_requests_total{result}`: small publishes to a queue or
    an exchange, and appends to a topic, the fast lane `served`, and requests that
    began like one but aiohttp served (`declined`: an error to answer, a query
    string, pipelining...)."""

    def __init__(self, lane: FastLane) -> None:
        self._lane = lane

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "runner_http_fast_lane_requests",
            "POST /v1/queues|exchanges/{name}/messages and /v1/topics/{name}/records "
            "requests answered by the fast lane (served) or handed to the full HTTP stack "
            "(declined).",
            labels=["result"],
        )
        family.add_metric(["served"], self._lane.served)
        family.add_metric(["declined"], self._lane.declined)
        yield family
