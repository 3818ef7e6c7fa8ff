"""HTTP connections: read timeouts, the idle timeout, the connection cap, JSON parse errors.

aiohttp's protocol handler, made safe against slow and greedy clients:

* a request's header must arrive within `header_timeout_s` of its first byte,
  else the client gets a 408 JSON answer and the connection is closed (a
  partial header no longer holds a connection for ever);
* a connection with no request in flight is closed after `idle_timeout_s`
  (aiohttp's keep-alive timer, also armed when the connection opens);
* the body is read with `body_timeout_s` between two pieces (see
  `runner.daemon.http._read`: a 408 JSON answer);
* an answer the client does not read is given up after `write_timeout_s`: when
  the transport paused writing (the socket's buffers are full) and its buffer
  then does not shrink for that long, the connection is aborted, so a client
  that sends requests and never reads cannot pin their answers (and a
  connection) in the daemon's memory; a slow reader that keeps reading is not
  cut off (the timer restarts whenever some of the answer left);
* at most `max_connections` connections are served at once: one more is
  answered 503 JSON with `Retry-After` and closed at once, before its request
  is parsed, so a flood of idle sockets cannot lock everyone out (the process
  file limit is raised to fit the cap, see `fit_file_limit`);
* what the HTTP parser refuses (a malformed request line, a `Content-Encoding`
  it cannot decode such as `br`) is answered with our JSON `{"error"}`, not
  aiohttp's plain text.
"""

from __future__ import annotations

import asyncio
import logging
import re
import resource
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, cast

import orjson
from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

log = logging.getLogger(__name__)

FILE_RESERVE = 256  # descriptors kept for the engine's logs, the watcher, the Kafka port


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """The HTTP listener's limits (flags of `runner run`)."""

    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    idle_timeout_s: float = 60.0
    max_connections: int = 1024
    write_timeout_s: float = 30.0


def _raw_answer(status: int, reason: str, message: str, extra: str = "") -> bytes:
    body = orjson.dumps({"error": message})
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n{extra}Connection: close\r\n\r\n"
    )
    return head.encode() + body


def _header_timeout_answer(limit_s: float) -> bytes:
    return _raw_answer(
        408, "Request Timeout",
        f"the request header did not arrive within {limit_s:g}s (--header-timeout)",
    )


def stalled_body(stall_s: float) -> str:
    """The error of a request body that stopped arriving (--body-timeout)."""
    return (f"the request body stalled: nothing arrived for {stall_s:g}s "
            "(--body-timeout); send the whole body without pauses")


class LaneJob(Protocol):
    """A request a `Lane` took."""

    def when_done(self, callback: Callable[[], None]) -> None:
        """Call `callback` (once) when `answer` is ready."""
        ...

    def answer(self) -> bytes | None:
        """The whole HTTP answer; None: none (the daemon is stopping), close."""
        ...


class LaneReader(Protocol):
    """One request arriving for a `Lane`."""

    @property
    def head_done(self) -> bool:
        """Its whole header arrived."""
        ...

    def feed(self, data: bytes) -> LaneJob | bool:
        """Its next bytes: the job once the lane has the whole request and serves it
        (its answer is written when done); True when more is needed; False when the lane
        does not serve it (nothing done: aiohttp serves all the bytes fed)."""
        ...


class Lane(Protocol):
    """Requests served before aiohttp sees them (`runner.daemon.fastlane`)."""

    def reader(self, data: bytes) -> LaneReader | None:
        """A reader for the request `data` begins; None when the lane does not serve it."""
        ...

    def stalled(self, stall_s: float) -> bytes:
        """The answer to a request whose body stopped arriving for `stall_s` (the
        route's, as aiohttp writes it); the connection closes after it."""
        ...


class GuardedHandler(RequestHandler):
    """aiohttp's RequestHandler with a header timeout and JSON parser errors, and a
    `Lane` that serves the requests it takes until the first one it declines (from
    then on aiohttp's parser holds the connection's bytes, and serves them all)."""

    def __init__(
        self, manager: web.Server, *, limits: ConnectionLimits,
        released: Callable[[], None], lane: Lane | None = None, **kwargs: Any,
    ) -> None:
        super().__init__(manager, keepalive_timeout=limits.idle_timeout_s, **kwargs)
        self._lane = lane
        self._lane_reader: LaneReader | None = None  # a request arriving for the lane
        self._lane_held: list[bytes] = []  # its bytes so far
        self._lane_timer: asyncio.TimerHandle | None = None
        self._lane_busy = False  # a request the lane took is being served
        self._lane_backlog: list[bytes] = []  # what arrived meanwhile (read paused)
        self._limits = limits
        self._released: Callable[[], None] | None = released
        self._header_timer: asyncio.TimerHandle | None = None
        self._write_timer: asyncio.TimerHandle | None = None
        self._unsent = 0  # bytes buffered when the write timer was armed
        self._partial = False  # bytes of a request header have arrived, not all of it
        # when the lane held part of a header it then declined: its time runs on
        self._header_deadline: float | None = None

    def data_received(self, data: bytes) -> None:
        if self._lane is not None:
            if self._lane_busy or self.writing_paused:
                # answers go out in order, and not faster than the client reads them
                self._lane_backlog.append(data)
                if self.transport is not None and len(self._lane_backlog) == 1:
                    self.transport.pause_reading()
                return
            if not (self._force_close or self._close) and self._lane_feed(data):
                return
            if self._lane_held:  # aiohttp serves the lane's bytes too
                data = b"".join(self._lane_held) + data
                self._lane_held.clear()
            self._lane = self._lane_reader = None  # aiohttp's from now on
            self._cancel_lane_timer()
        before = self._request_count
        busy = self._request_in_progress or bool(self._messages)
        super().data_received(data)
        if self._request_count != before:  # a whole header arrived
            self._partial = False
            self._cancel_header_timer()
        elif not busy and data and not self._partial:
            self._partial = True
            delay = self._limits.header_timeout_s
            if self._header_deadline is not None:
                delay = max(0.0, self._header_deadline - self._loop.time())
            self._header_timer = self._loop.call_later(delay, self._header_expired)
        self._header_deadline = None

    def _lane_feed(self, data: bytes) -> bool:
        """Whether the lane took `data` (a request it serves, or part of one)."""
        assert self._lane is not None
        reader = self._lane_reader
        if reader is None:
            reader = self._lane.reader(data)
            if reader is None:
                return False
            self._lane_reader = reader
        verdict = reader.feed(data)
        if verdict is False:
            return False
        if verdict is True:  # part of it: wait for the rest, as aiohttp would
            self._lane_held.append(data)
            if not reader.head_done:
                if self._lane_timer is None:  # the header's time counts from its first byte
                    self._header_deadline = self._loop.time() + self._limits.header_timeout_s
                    self._lane_timer = self._loop.call_at(
                        self._header_deadline, self._lane_header_expired)
            else:  # the body's: from its last piece
                self._header_deadline = None
                self._cancel_lane_timer()
                self._lane_timer = self._loop.call_later(
                    self._limits.body_timeout_s, self._lane_body_expired)
            return True
        self._header_deadline = None
        self._lane_reader = None
        self._lane_held.clear()
        self._cancel_lane_timer()
        self._lane_busy = True
        self._request_in_progress = True  # a graceful shutdown waits for it
        verdict.when_done(lambda: self._lane_answer(verdict))
        return True

    def _cancel_lane_timer(self) -> None:
        if self._lane_timer is not None:
            self._lane_timer.cancel()
            self._lane_timer = None

    def _lane_header_expired(self) -> None:
        self._lane_timer = None
        if self.transport is not None:
            self.transport.write(_header_timeout_answer(self._limits.header_timeout_s))
        self.force_close()

    def _lane_body_expired(self) -> None:
        self._lane_timer = None
        if self.transport is not None and self._lane is not None:
            self.transport.write(self._lane.stalled(self._limits.body_timeout_s))
        self.force_close()

    def _lane_answer(self, job: LaneJob) -> None:
        try:
            answer = job.answer()
        finally:
            self._lane_busy = False
            self._request_in_progress = False
            if self._handler_waiter is not None and not self._handler_waiter.done():
                self._handler_waiter.set_result(None)
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if answer is None:
            transport.close()
            return
        transport.write(answer)
        self._next_keepalive_close_time = self._loop.time() + self._keepalive_timeout
        if self._keepalive_handle is None and not self._force_close:
            self._keepalive_handle = self._loop.call_at(
                self._next_keepalive_close_time, self._process_keepalive)
        if self._force_close:  # shutting down: this was the last answer
            transport.close()
            return
        if self._lane_backlog and not self.writing_paused:
            self._lane_continue()

    def _lane_continue(self) -> None:
        """Serve what arrived while the lane answered (when the client reads its answers)."""
        data = b"".join(self._lane_backlog)
        self._lane_backlog.clear()
        if self.transport is not None:
            self.transport.resume_reading()
        self.data_received(data)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_expired(self) -> None:
        self._header_timer = None
        idle = self._current_request is None and not self._messages
        if not self._partial or not idle or self.transport is None:
            self._partial = False
            return
        self.transport.write(_header_timeout_answer(self._limits.header_timeout_s))
        self.force_close()

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._write_timer is None:
            self._arm_write_timer()

    def _arm_write_timer(self) -> None:
        transport = self.transport
        self._unsent = transport.get_write_buffer_size() if transport is not None else 0
        self._write_timer = self._loop.call_later(
            self._limits.write_timeout_s, self._write_expired
        )

    def resume_writing(self) -> None:
        super().resume_writing()
        self._cancel_write_timer()
        if self._lane_backlog and not self._lane_busy:
            self._lane_continue()

    def _cancel_write_timer(self) -> None:
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None

    def _write_expired(self) -> None:
        self._write_timer = None
        if self.transport is None or not self.writing_paused:
            return
        if self.transport.get_write_buffer_size() < self._unsent:  # progress: wait on
            self._arm_write_timer()
            return
        peer = self.transport.get_extra_info("peername")
        log.warning(
            "a client read nothing of its answer for %gs (--write-timeout): connection "
            "from %s closed", self._limits.write_timeout_s, _peer_text(peer),
            extra={"event": "write_timeout", "peer": _peer_text(peer)},
        )
        self.transport.abort()

    def _process_keepalive(self) -> None:
        if self._partial or self._lane_reader is not None:  # the header/body timer decides
            self._keepalive_handle = None  # fired: re-armed after the request's answer
            return
        if self._lane_busy or self._lane_backlog:  # a request is served or waits its turn
            self._keepalive_handle = self._loop.call_later(
                self._keepalive_timeout, self._process_keepalive)
            return
        super()._process_keepalive()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._cancel_header_timer()
        self._cancel_lane_timer()
        self._cancel_write_timer()
        if self._released is not None:
            self._released()
            self._released = None
        super().connection_lost(exc)

    def log_exception(self, *args: Any, **kw: Any) -> None:
        # a body the route did not read (refused before reading it: 401, 404...) is
        # drained by aiohttp after the answer; one that fails to decode there is the
        # client's mistake, already answered, and the connection is closed
        if isinstance(kw.get("exc_info"), web.RequestPayloadError):
            log.info(
                "a request body the daemon did not need could not be decoded: %s; "
                "connection closed", kw["exc_info"], extra={"event": "bad_request_body"},
            )
            return
        super().log_exception(*args, **kw)

    def handle_error(
        self, request: BaseRequest, status: int = 500, exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        text = str(getattr(exc, "message", None) or message or "the request could not be read")
        if "content-encoding" in text.lower():
            named = re.search(r"\((\w+)\)", text)  # "...: brotli (br). Please install..."
            what = f"Content-Encoding {named.group(1)!r}" if named else "its Content-Encoding"
            sentence = (
                f"the request body could not be read: {what} is not supported; send plain, "
                "gzip- or deflate-encoded JSON that matches its Content-Encoding"
            )
        elif status >= 500:
            log.error("error reading a request: %s", text, exc_info=exc)
            sentence = "internal error; the daemon log has the details"
        else:
            sentence = f"the request could not be parsed: {text}"
        response = web.Response(
            body=orjson.dumps({"error": sentence}), status=status,
            content_type="application/json",
        )
        response.force_close()
        return response


def _peer_text(peer: object) -> str:
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return "an unknown peer"


class Busy(asyncio.Protocol):
    """One connection over the cap: a 503 JSON answer, our side shut, closed when the
    client closes or after BUSY_LINGER_S (reading what it sent, so that closing does
    not reset the connection before the client has read the answer)."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # a stream transport (uvloop's TCPTransport is one without subclassing it)
        transport = cast(asyncio.Transport, transport)
        self._transport = transport
        transport.write(_raw_answer(
            503, "Service Unavailable",
            f"the daemon serves at most {self._limit} connections at once "
            "(--max-connections); retry later",
            "Retry-After: 1\r\n",
        ))
        if transport.can_write_eof():
            transport.write_eof()
        self._timer = asyncio.get_running_loop().call_later(BUSY_LINGER_S, transport.close)

    def data_received(self, data: bytes) -> None:
        pass  # read and dropped

    def eof_received(self) -> bool:
        return False  # the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()


BUSY_LINGER_S = 1.0


class CappedSite(web.TCPSite):
    """A TCP site whose connections are GuardedHandlers, at most `max_connections`."""

    def __init__(self, runner: web.BaseRunner, host: str, port: int, *,
                 limits: ConnectionLimits, lane: Lane | None = None) -> None:
        super().__init__(runner, host, port, reuse_address=True)
        self._limits = limits
        self._lane = lane
        # counted when the protocol is made, not when aiohttp registers the connection:
        # a burst of accepts makes every protocol before any connection_made runs
        self.open = 0

    def _release(self) -> None:
        self.open -= 1

    def _protocol(self) -> asyncio.Protocol:
        server = self._runner.server
        assert server is not None
        if self.open >= self._limits.max_connections:
            return Busy(self._limits.max_connections)
        self.open += 1
        kwargs = dict(server._kwargs)
        kwargs.pop("keepalive_timeout", None)
        return GuardedHandler(
            server, limits=self._limits, released=self._release, lane=self._lane,
            loop=server._loop, **kwargs,
        )

    async def start(self) -> None:
        self._runner._reg_site(self)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._protocol, self._host, self._port, backlog=self._backlog,
            reuse_address=True,
        )
        sockets = self._server.sockets
        self._bound_port = sockets[0].getsockname()[1] if sockets else self._port


def fit_file_limit(max_connections: int) -> int:
    """The connection cap the process file limit allows: the soft RLIMIT_NOFILE is
    raised (up to the hard limit) to `max_connections` + FILE_RESERVE; when even the
    hard limit is lower, the cap is lowered to fit and a warning says so."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max_connections + FILE_RESERVE
    if soft != resource.RLIM_INFINITY and soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
            soft = new
        except (ValueError, OSError):
            pass
    if soft == resource.RLIM_INFINITY or soft >= want:
        return max_connections
    fitted = max(1, soft - FILE_RESERVE)
    log.warning(
        "--max-connections %d does not fit the open-file limit %d (%d kept for the "
        "engine): serving at most %d connections",
        max_connections, soft, FILE_RESERVE, fitted,
        extra={"event": "connection_limit", "max_connections": fitted},
    )
    return fitted
