"""The HTTP API of `runner run`: aiohttp routes over the backend owned by the loop.

Every route of INTERFACES.md. Handlers reach the backend only through the
engine contract (`runner.engine.contract`: the Backend and the optional parts
the embedded engine adds, `Served`); its synchronous methods are owned by the
event loop, so a handler calls them directly (no locks, no threads), and
awaits the ticket of its writes before it answers. Errors of
the `runner.errors` tree become JSON answers with their status; anything else
is a bug: logged with its traceback and answered as a 500 JSON, never an HTML
page.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import logging
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol, TypeGuard

from aiohttp import web

from runner import jsontext
from runner.clock import Clock, now_ms
from runner.daemon import codec, dlq_ops, dlq_records, fanout, groups, lists
from runner.daemon.backpressure import check_lag
from runner.daemon.connections import (
    CappedSite,
    ConnectionLimits,
    Lane,
    fit_file_limit,
    stalled_body,
)
from runner.daemon.dlq_ops import DlqBackend
from runner.daemon.ratelimit import PublishLimiter, Throttled, producer_of
from runner.daemon.reload import ReloadResult
from runner.daemon.traced import SPANS_KEY, Traced
from runner.engine.contract import (
    Ack,
    Backend,
    DeadLetter,
    FanoutCounter,
    MergedWrites,
    Outcome,
    OutMessage,
    OutRecord,
    ReplayOutcome,
    Requeue,
    StorageHealth,
    Ticket,
    TopicPartition,
)
from runner.errors import (
    Conflict,
    EngineError,
    Forbidden,
    InvalidRequest,
    NotFound,
    OffsetOutOfRange,
    Refused,
    StorageError,
    TooLarge,
    UnsafeChange,
)
from runner.jsontext import key_from_json
from runner.pipeline.otel import Spans
from runner.pipeline.replies import (
    CORRELATION_HEADER,
    REPLY_TO_HEADER,
    Replies,
    ReplyLost,
    ReplyTimeout,
    ShuttingDown,
    error_of,
    is_private,
)
from runner.topology.model import Topic, Topology
from runner.topology.suggest import closest, did_you_mean

log = logging.getLogger(__name__)

MAX_PULL = 1000
MAX_PEEK = 1000
MAX_READ = 10_000
# stored bytes of the records one read answers with (at least one record): base64 and
# headers make the answer at most ~1.4x this; it was 64 MiB (~90 MiB answers)
READ_BYTES = 8 * 1024 * 1024
MAX_REPLAY = codec.MAX_ITEMS  # dead letters one replay request moves (page with more calls)
LISTED_IDS = 20  # unknown delivery ids named in a 409's sentence (all are in `unknown`)
RETRY_AFTER_S = 1
PULL_FIELDS = frozenset({"max", "lease", "consumer_id"})
REPLAY_FIELDS = frozenset({"max", "to"})
TOPIC_REPLAY_FIELDS = frozenset({"max", "to", "records"})
TOPIC_PURGE_FIELDS = frozenset({"records"})


class Served(DlqBackend, StorageHealth, FanoutCounter, Protocol):
    """The backend the HTTP API serves: the contract's Backend with the optional parts
    its routes use -- dead-letter topics (the DLQ tools), storage health (`/readyz`)
    and the fanout count of a publish (`--max-fanout`). The embedded engine's
    `EmbeddedBackend` is one."""


class Host(Protocol):
    """What the HTTP layer needs from the supervisor."""

    @property
    def backend(self) -> Served: ...

    @property
    def clock(self) -> Clock:
        """The injected clock (the backend's): the age of dead letters."""
        ...

    @property
    def topology(self) -> Topology: ...

    @property
    def accepting(self) -> bool: ...

    def notify(self) -> None: ...

    async def reload(self, trigger: str) -> ReloadResult: ...

    def status(self) -> dict[str, Any]: ...

    def render_metrics(self) -> bytes: ...

    def group_members(self, group: str, engine_members: list[str]) -> list[str]: ...

    @property
    def replies(self) -> Replies: ...


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

HOST_KEY = web.AppKey("host", Host)
LIMITS_KEY = web.AppKey("limits", codec.Limits)
MAX_REQUEST_KEY = web.AppKey("max_request_bytes", int)
CONNECTION_LIMITS_KEY = web.AppKey("connection_limits", ConnectionLimits)
ABANDONED = web.RequestKey("runner.body_abandoned", bool)
LIMITER_KEY = web.AppKey("publish_limiter", PublishLimiter)
TOKEN_KEY = web.AppKey("token", str)  # the bearer token of /v1/ (absent: none)


def answer(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=jsontext.dumps(data), status=status, content_type="application/json", headers=headers
    )


def error(status: int, message: str, **extra: Any) -> web.Response:
    headers = {"Retry-After": str(RETRY_AFTER_S)} if status in (429, 503) else None
    return answer({"error": message, **extra}, status, headers)


def engine_error(exc: EngineError) -> web.Response:
    if isinstance(exc, Throttled):
        return answer({"error": str(exc), "accepted": 0, "routed": []}, 429,
                      {"Retry-After": str(exc.retry_after_s)})
    if isinstance(exc, Refused):
        return error(429, str(exc), accepted=exc.accepted, routed=list(exc.routed))
    if isinstance(exc, Conflict):
        return error(409, str(exc), unknown=list(exc.unknown))
    if isinstance(exc, OffsetOutOfRange):
        return error(416, str(exc), log_start_offset=exc.log_start, log_end_offset=exc.log_end)
    if isinstance(exc, InvalidRequest):
        return error(400, str(exc))
    if isinstance(exc, Forbidden):
        return error(403, str(exc))
    if isinstance(exc, NotFound):
        return error(404, str(exc))
    if isinstance(exc, TooLarge):
        return error(413, str(exc))
    if isinstance(exc, UnsafeChange):
        return error(409, str(exc))
    if isinstance(exc, StorageError):
        log.error("storage error: %s", exc)
        return error(503 if exc.retriable else 500, f"storage error: {exc}")
    log.error("engine error: %s", exc)
    return error(500, f"engine error: {exc}")


def make_error_middleware() -> Any:
    @web.middleware
    async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        limit = request.app[MAX_REQUEST_KEY]
        declared = request.content_length
        if declared is not None and declared > limit:
            # answer at once, before any body arrives (it may never come); aiohttp
            # then drains what the client still sends for a bounded lingering time
            response: web.StreamResponse = _too_large(limit)
            response.force_close()
        else:
            response = await _answer(request, handler, limit)
        if request.get(ABANDONED):
            response.force_close()
        return response

    return errors


async def _answer(request: web.Request, handler: Handler, limit: int) -> web.StreamResponse:
    try:
        return await handler(request)
    except NotFound as exc:
        return engine_error(_suggested(request, exc))
    except EngineError as exc:
        return engine_error(exc)
    except web.HTTPRequestEntityTooLarge:
        return _too_large(limit)
    except web.HTTPMethodNotAllowed as exc:
        allowed = ", ".join(sorted(exc.allowed_methods))
        return error(
            405, f"{request.method} is not allowed on {request.path} (allowed: {allowed})"
        )
    except web.HTTPNotFound:
        routes = [r.canonical for r in request.app.router.resources()]
        hint = _route_hint(request.path, routes)
        return error(404, f"no route {request.method} {request.path}{hint}")
    except web.HTTPException as exc:
        return error(exc.status, exc.reason)
    except Exception:
        log.exception("unexpected error serving %s %s", request.method, request.path)
        return error(500, "internal error; the daemon log has the details")


def _route_hint(path: str, routes: list[str]) -> str:
    """`; did you mean "/v1/queues"?` for a path one misspelt segment away from a route
    (the other segments equal, or filling a `{parameter}`)."""
    parts = path.strip("/").split("/")
    near: dict[int, dict[str, str]] = {}  # index of the misspelt segment -> route's -> path
    for route in routes:
        want = route.strip("/").split("/")
        if len(want) != len(parts):
            continue
        differ = [i for i, (a, b) in enumerate(zip(parts, want, strict=True))
                  if a != b and not b.startswith("{")]
        if len(differ) == 1:
            i = differ[0]
            fixed = "/" + "/".join([*parts[:i], want[i], *parts[i + 1:]])
            near.setdefault(i, {}).setdefault(want[i], fixed)
    for i, options in sorted(near.items()):
        found = closest(parts[i], list(options))
        if found is not None:
            return f'; did you mean "{options[found]}"?'
    return ""


_UNKNOWN = re.compile(r"(exchange|queue|topic|consumer group) '(.*)' not found", re.S)


def _suggested(request: web.Request, exc: NotFound) -> NotFound:
    return suggested(request.app[HOST_KEY].topology, exc)


def suggested(topology: Topology, exc: NotFound) -> NotFound:
    """`queue 'ordres' not found; did you mean "orders"?`: the closest declared name of
    that kind, as `runner validate` suggests (the engine's sentences get it here too)."""
    match = _UNKNOWN.fullmatch(str(exc))
    if match is None:
        return exc
    kind, name = match.groups()
    names = {
        "exchange": topology.exchanges, "queue": topology.queues, "topic": topology.topics,
        "consumer group": topology.consumer_groups,
    }[kind]
    hint = did_you_mean(name, [n for n, _ in names])
    return NotFound(f"{exc}{hint}") if hint else exc


def make_auth_middleware(token: str | None, metrics_token: str | None = None) -> Any:
    """Bearer tokens: `token` guards /v1/; `metrics_token` (or `token`) guards /metrics
    when given. /healthz and /readyz stay open (probes carry no secrets)."""
    expected = token.encode() if token else None
    for_metrics = [t.encode() for t in (metrics_token, token) if t] if metrics_token else []

    @web.middleware
    async def auth(request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path
        if expected is not None and path.startswith("/v1/"):
            if not _bearer_ok(request, [expected]):
                return error(401, "missing or wrong bearer token (Authorization: Bearer TOKEN)")
        elif for_metrics and path == "/metrics" and not _bearer_ok(request, for_metrics):
            return error(
                401, "missing or wrong bearer token for /metrics (Authorization: Bearer "
                "TOKEN, the token of --metrics-token-file)",
            )
        return await handler(request)

    return auth


def _bearer_ok(request: web.Request, tokens: list[bytes]) -> bool:
    return bearer_ok(request.headers.get("Authorization", ""), tokens)


def bearer_ok(authorization: str, tokens: list[bytes]) -> bool:
    """Whether an `Authorization: Bearer` header value carries one of `tokens` (the
    scheme is case-insensitive, RFC 7235; every token compared in constant time)."""
    scheme, _, given = authorization.strip().partition(" ")
    raw = given.strip().encode()
    matches = [hmac.compare_digest(raw, t) for t in tokens]
    return scheme.lower() == "bearer" and any(matches)


def _host(request: web.Request) -> Host:
    return request.app[HOST_KEY]


def _too_large(limit: int) -> web.Response:
    return error(
        413,
        f"the request body is over the limit of {limit} bytes; send smaller "
        "batches, or store large payloads elsewhere and send a reference",
    )


def _abandon_body(request: web.Request) -> None:
    """Do not read the rest of a body that failed to decode (aiohttp would drain it
    after the answer and log the payload's error); close the connection after the answer."""
    request.content.feed_eof()
    request[ABANDONED] = True


async def _read(request: web.Request) -> bytes:
    """The request body; 400 when it cannot be read (a bad Content-Encoding...), 413
    as soon as it (decompressed) passes --max-request-bytes: read in the stream's
    small pieces, so a compressed bomb never holds more than the limit in memory."""
    limit = request.app[MAX_REQUEST_KEY]
    stall = request.app[CONNECTION_LIMITS_KEY].body_timeout_s
    body = bytearray()
    try:
        while chunk := await _piece(request, stall):
            body += chunk
            if len(body) > limit:
                _abandon_body(request)
                raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=len(body))
        return bytes(body)
    except web.RequestPayloadError as exc:
        _abandon_body(request)
        encoding = request.headers.get("Content-Encoding")
        how = f" with Content-Encoding {encoding!r}" if encoding else ""
        raise codec.BadInput(
            f"the request body could not be read{how}: {exc}; send plain, "
            "gzip- or deflate-encoded JSON that matches its Content-Encoding"
        ) from exc


async def _piece(request: web.Request, stall_s: float) -> bytes:
    """The next piece of the body; 408 when nothing arrives for `stall_s` seconds."""
    content = request.content
    # what already arrived needs no timer (a small body usually came with its header):
    # arming and cancelling one cost ~5% of a single-message publish
    ready = content.read_nowait()
    if ready or content.is_eof():
        return ready
    try:
        async with asyncio.timeout(stall_s):
            return await content.readany()
    except TimeoutError:
        _abandon_body(request)
        raise web.HTTPRequestTimeout(reason=stalled_body(stall_s)) from None


async def _json(request: web.Request, *, empty_ok: bool = False) -> dict[str, Any]:
    raw = await _read(request)
    if empty_ok and not raw.strip():
        return {}
    return codec.require_object(codec.decode_json(raw))


async def read_json(request: web.Request, *, empty_ok: bool = False) -> dict[str, Any]:
    """A request's JSON object body, read as every route reads it (bounded as it
    decompresses, timed, 400/413/408 as JSON): for routes outside this module."""
    return await _json(request, empty_ok=empty_ok)


def _accepting(host: Host) -> None:
    if not host.accepting:
        raise web.HTTPServiceUnavailable(reason="the daemon is shutting down")


def queue_exists(host: Host, name: str) -> None:
    if name not in host.topology.queue_map():
        raise NotFound(f"queue '{name}' not found")


# ------------------------------------------------------------------ durability


class _Writes:
    """A request's writes through the contract and the ticket covering them all:
    the handler answers only after `await wait()`, which returns once they are
    durable (embedded, `--fsync always`: once the data dir's flusher synced them,
    the event loop never waiting for a disk; at once otherwise) and raises the
    503 storage error of a failed fsync. A publish refused part-way (Refused)
    returns no ticket: what it took is covered by `Backend.taken()`."""

    __slots__ = ("backend", "ticket")

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.ticket = Ticket.DONE

    def publish(self, exchange: str, msgs: Sequence[OutMessage]) -> list[list[str]]:
        try:
            published = self.backend.publish(exchange, msgs)
        except Refused:
            self.ticket = self.ticket.max(self.backend.taken())
            raise
        self.ticket = self.ticket.max(published.ticket)
        return [list(r) for r in published.routes]

    def put(self, queue: str, msgs: Sequence[OutMessage]) -> list[list[str]]:
        try:
            published = self.backend.put(queue, msgs)
        except Refused:
            self.ticket = self.ticket.max(self.backend.taken())
            raise
        self.ticket = self.ticket.max(published.ticket)
        return [list(r) for r in published.routes]

    def append(self, topic: str, recs: Sequence[OutRecord]) -> list[tuple[int, int]]:
        appended = self.backend.append(topic, recs)
        self.ticket = self.ticket.max(appended.ticket)
        return list(appended.positions)

    def settle(self, queue: str, outcomes: Sequence[Outcome]) -> list[int]:
        """The outcomes applied; the unknown delivery ids."""
        settled = self.backend.settle(queue, outcomes)
        self.ticket = self.ticket.max(settled.ticket)
        return list(settled.unknown)

    def commit(self, group: str, offsets: Mapping[TopicPartition, int]) -> None:
        self.ticket = self.ticket.max(self.backend.commit(group, offsets))

    async def wait(self) -> None:
        await self.backend.durable(self.ticket)


# ------------------------------------------------------------------ publishing


async def _publish(request: web.Request, *, to_queue: bool) -> web.Response:
    """Publish to the exchange (or straight to the queue) named in the path; a
    queue's name is the default routing key."""
    host = _host(request)
    _accepting(host)
    name = request.match_info["name"]
    wait_s = _wait(request)
    body = await _json(request)
    msgs, batch = codec.messages(
        body, limits=request.app[LIMITS_KEY], default_key=name if to_queue else None
    )
    if to_queue and is_private(name):
        return _reply_over_http(host, name, msgs, batch)
    _limit(request, "queue" if to_queue else "exchange", name, len(msgs))
    durable = _Writes(host.backend)
    publish = durable.put if to_queue else durable.publish
    counts = fanout.copies(host.backend, None if to_queue else name, msgs)
    fanout.check(counts, request.app[LIMITS_KEY].max_fanout,
                 f"queue '{name}'" if to_queue else f"exchange '{name}'")
    if wait_s is not None and batch:
        raise codec.BadInput("'wait' takes one message, not a batch: send each request "
                             "on its own")
    with Traced(request, "queue" if to_queue else "exchange", name, msgs) as traced:
        if wait_s is not None:
            return await _request_reply(host, name, msgs[0], traced.wrap(publish), wait_s,
                                        durable)
        store = traced.wrap(publish)
        merged = host.backend
        copies = sum(counts)
        if store is publish and copies <= MERGED_MAX and merges_writes(merged):
            # stored with the other small writes of this turn of the loop, durable
            # together (runner.engine.merged); what this request sees is its own
            try:
                routes = await (merged.put_merged(name, msgs) if to_queue else
                                merged.publish_merged(name, msgs, copies))
            finally:
                host.notify()  # also after a 429: the items before it are stored
            routed = [list(r) for r in routes]
            return answer({"routed": routed if batch else routed[0]}, 202)
        try:
            routed = await fanout.publish(store, name, msgs, counts)
        except Refused:
            await durable.wait()  # the items before the refusal are stored: durably
            raise
        finally:
            host.notify()  # also after a 429: the items before the refusal are stored
        await durable.wait()
    return answer({"routed": routed if batch else routed[0]}, 202)


# a write making at most this many message copies (or records) is merged
# (MergedWrites); a bigger one is stored on its own, in slices (fanout.py)
MERGED_MAX = 100
_MERGING: dict[type, bool] = {}  # backend class -> implements MergedWrites


def merges_writes(backend: Backend) -> TypeGuard[MergedWrites]:
    """isinstance(backend, MergedWrites), once per backend class (a runtime-checkable
    Protocol's isinstance inspects the object's attributes on every call)."""
    kind = type(backend)
    known = _MERGING.get(kind)
    if known is None:
        known = _MERGING[kind] = isinstance(backend, MergedWrites)
    return known


MAX_WAIT_S = 300.0  # a request-reply's wait: at most 5 minutes (the default handler timeout)


def _wait(request: web.Request) -> float | None:
    """The `?wait=DURATION` of a request-reply publish, None without one."""
    text = request.query.get("wait")
    if text is None:
        return None
    try:
        seconds = codec.parse_duration(text, "wait")
    except codec.BadInput:
        raise codec.BadInput(f"query parameter 'wait' must be a duration like \"5s\" or "
                             f"\"250ms\", got {text!r}") from None
    if not 0 < seconds <= MAX_WAIT_S:
        raise codec.BadInput(f"query parameter 'wait' must be more than 0s and at most "
                             f"{MAX_WAIT_S:g}s (5m), got {text!r}")
    return seconds


async def _request_reply(
    host: Host, name: str, msg: OutMessage, publish: Callable[[str, list[OutMessage]], Any],
    wait_s: float, durable: _Writes,
) -> web.Response:
    """Publish `msg` with a private reply address and answer with its reply: 200 the
    reply, 502 an error reply (the handler failed for good), 504 none within `wait_s`,
    404 when the message was routed nowhere (no reply can come)."""
    if REPLY_TO_HEADER in msg.headers:
        raise codec.BadInput("a request with 'wait' gets a private reply address; leave out "
                             "'reply_to' (or publish without 'wait')")
    replies = host.replies
    waiting = replies.open(msg.headers.get(CORRELATION_HEADER))
    msg = dataclasses.replace(msg, headers={**msg.headers, REPLY_TO_HEADER: waiting.address,
                                            CORRELATION_HEADER: waiting.correlation_id})
    cid = waiting.correlation_id
    try:
        try:
            routed = publish(name, [msg])[0]
        finally:
            host.notify()
        await durable.wait()
        if not routed:
            return error(404, f"the request was routed nowhere (no binding of '{name}' "
                         "matched its routing key), so no reply can come", routed=[],
                         correlation_id=cid)
        try:
            reply = await replies.wait(waiting, wait_s)
        except ReplyTimeout:
            return error(504, f"no reply within {wait_s:g}s; the request stays published and "
                         "a later reply is dropped", routed=routed, correlation_id=cid)
        except (ShuttingDown, ReplyLost) as exc:
            return error(503, str(exc), routed=routed, correlation_id=cid)
    finally:
        replies.close(waiting)
    if reply.is_error:
        error_type, message = error_of(reply.body)
        return error(502, f"the handler failed for good: {error_type}: {message}",
                     reply_error={"type": error_type, "message": message},
                     routed=routed, correlation_id=cid)
    out: dict[str, Any] = {"correlation_id": cid, "routed": routed}
    out.update(codec.reply_json(reply.body, reply.content_type, reply.headers))
    return answer(out, 200)


def _reply_over_http(host: Host, address: str, msgs: list[OutMessage], batch: bool) -> web.Response:
    """A consumer outside the daemon replies to a waiting request: a publish to its
    private reply address (a message's `reply_to`) hands the reply over in memory."""
    if batch or len(msgs) != 1:
        raise codec.BadInput("a reply is one message, not a batch")
    if not host.replies.deliver(address, msgs[0]):
        raise NotFound(f"no request waits for reply address '{address}' (it was answered, "
                       "timed out, or the daemon restarted since)")
    return answer({"routed": [address]}, 202)


def _limit(request: web.Request, kind: str, name: str, count: int) -> None:
    """Throttled (429) when this producer passes the destination's publish_rate."""
    limiter = request.app.get(LIMITER_KEY)
    if limiter is None:
        return
    rate = limiter.rate_of(_host(request).topology, kind, name)
    if rate is not None:
        producer = producer_of(request.headers.get("Authorization"), request.remote)
        limiter.admit(kind, name, rate, producer, count)


async def publish_exchange(request: web.Request) -> web.Response:
    return await _publish(request, to_queue=False)


async def publish_queue(request: web.Request) -> web.Response:
    return await _publish(request, to_queue=True)


async def append_args(request: web.Request) -> tuple[str, list[OutRecord]]:
    """`POST /v1/topics/{name}/records` up to the append (any backend): the topic and
    its checked records; 404 unknown topic or partition, 400, 413, 429 publish_rate."""
    host = _host(request)
    _accepting(host)
    name = request.match_info["name"]
    topic = host.topology.topic_map().get(name)
    if topic is None:
        raise NotFound(f"topic '{name}' not found")
    recs, _ = checked_records(topic, request.app[LIMITS_KEY], await _json(request))
    _limit(request, "topic", name, len(recs))
    return name, recs


def checked_records(topic: Topic, limits: codec.Limits,
                    body: dict[str, Any]) -> tuple[list[OutRecord], bool]:
    """The records of an append to `topic` (the request's JSON object) and whether it
    was a batch; 404 unknown partition, 400, 413. Also the fast lane's."""
    name = topic.name
    recs, batch = codec.records(body, limits=limits, topic_limit=topic.max_message_bytes)
    for i, rec in enumerate(recs):
        where = f"record {i}: " if batch else ""
        if topic.compact and rec.key is None and _no_derived_key(topic.key, rec.value):
            field = f" (or a value with the field '{topic.key}')" if topic.key else ""
            raise codec.BadInput(
                f"{where}topic '{name}' is compacted: every record needs a 'key' or "
                f"'key_b64'{field}"
            )
        codec.check_record_size(rec, limits, topic.max_message_bytes, where)
        if rec.partition is not None and rec.partition >= topic.partitions:
            raise NotFound(
                f"{where}topic '{name}' has no partition {rec.partition} "
                f"(it has {topic.partitions}: 0..{topic.partitions - 1})"
            )
    return recs, batch


def offsets_json(positions: Sequence[tuple[int, int]]) -> dict[str, Any]:
    """An append's answer: per record its partition and offset (null when the backend
    cannot say: RabbitMQ's confirms carry no stream offset, it reports -1)."""
    return {"offsets": [{"partition": p, "offset": o if o >= 0 else None}
                        for p, o in positions]}


async def append_topic(request: web.Request) -> web.Response:
    host = _host(request)
    name, recs = await append_args(request)
    if recs:
        check_lag(host.backend, host.topology, name)
    durable = _Writes(host.backend)
    with Traced(request, "topic", name, recs) as traced:
        append = durable.append
        store = traced.wrap(append)
        merged = host.backend
        if recs and store is append and len(recs) <= MERGED_MAX and merges_writes(merged):
            # appended with the other small appends of this turn of the loop
            try:
                positions = await merged.append_merged(name, recs)
            finally:
                host.notify()
            return answer(offsets_json(positions), 202)
        try:
            offsets = store(name, recs) if recs else []
        finally:
            host.notify()
        await durable.wait()
    return answer(offsets_json(offsets), 202)


def _no_derived_key(path: str | None, value: bytes | None) -> bool:
    """Whether a keyless record gets no key from its value (the topic's `key` path)."""
    return path is None or key_from_json(value, path) is None


# ------------------------------------------------------------------ topics


def _partition(host: Host, topic: str, text: str) -> int:
    spec = host.topology.topic_map().get(topic)
    if spec is None:
        raise NotFound(f"topic '{topic}' not found")
    try:
        partition = int(text)
    except ValueError as exc:
        raise codec.BadInput(f"the partition must be an integer, got {text!r}") from exc
    if not 0 <= partition < spec.partitions:
        raise NotFound(
            f"topic '{topic}' has no partition {partition} "
            f"(it has {spec.partitions}: 0..{spec.partitions - 1})"
        )
    return partition


def _not_above_end(host: Host, topic: str, partition: int, offset: int, verb: str) -> None:
    """416 for an offset above the log end (the log end itself is fine: nothing yet)."""
    info = next(p for p in host.backend.partitions(topic) if p.partition == partition)
    if offset > info.log_end_offset:
        raise OffsetOutOfRange(
            f"offset {offset} is above the log end offset {info.log_end_offset} of topic "
            f"'{topic}' partition {partition}; {verb} at most {info.log_end_offset}",
            log_start=info.log_start_offset,
            log_end=info.log_end_offset,
        )


def records_json(host: Host, name: str, partition_text: str,
                 query: Mapping[str, str]) -> dict[str, Any]:
    """`GET /v1/topics/{name}/partitions/{p}/records?offset=&limit=` (any backend)."""
    partition = _partition(host, name, partition_text)
    offset = codec.query_int(query, "offset", default=None)
    limit = codec.query_int(query, "limit", default=100, low=1, high=MAX_READ)
    _not_above_end(host, name, partition, offset, "read from")
    got = host.backend.read(name, partition, offset, max_records=limit, max_bytes=READ_BYTES)
    return {"records": [codec.record_json(r) for r in got.records],
            "next_offset": got.next_offset}


async def read_records(request: web.Request) -> web.Response:
    return answer(records_json(_host(request), request.match_info["name"],
                               request.match_info["p"], request.query))


# ------------------------------------------------------------------ queues


def pull_args(body: dict[str, Any]) -> tuple[int, float, str]:
    """A pull's body (any backend): (max, lease in seconds, consumer_id)."""
    codec.check_fields(body, PULL_FIELDS)
    n = codec.int_field(body, "max", default=1, low=1, high=MAX_PULL)
    lease = codec.parse_duration(body.get("lease", "30s"), "lease")
    if lease <= 0:
        raise codec.BadInput("'lease' must be longer than 0s")
    consumer = body.get("consumer_id", "http")
    if not isinstance(consumer, str):
        raise codec.BadInput("'consumer_id' must be a string")
    return n, lease, consumer


async def pull(request: web.Request) -> web.Response:
    host = _host(request)
    name = request.match_info["name"]
    n, lease, consumer = pull_args(await _json(request, empty_ok=True))
    queue_exists(host, name)
    got = host.backend.fetch(name, n, lease_s=lease, consumer_id=consumer)
    return answer({"messages": [codec.delivery_json(d) for d in got]})


def settled_answer(host: Host, name: str, ids: list[int], unknown: list[int],
                   verb: str) -> web.Response:
    """An ack's or nack's answer (any backend): 200, or 409 naming the unknown ids."""
    done = len(ids) - len(unknown)
    host.notify()
    if unknown:
        listed = ", ".join(str(i) for i in unknown[:LISTED_IDS])
        if len(unknown) > LISTED_IDS:
            listed += f" and {len(unknown) - LISTED_IDS} more (all in 'unknown')"
        return error(
            409,
            f"{len(unknown)} delivery id(s) of queue '{name}' are unknown or their lease "
            f"expired: {listed}; the other {done} were {verb}",
            unknown=unknown,
            **{verb: done},
        )
    return answer({verb: done})


async def ack(request: web.Request) -> web.Response:
    host = _host(request)
    name = request.match_info["name"]
    body = await _json(request)
    ids = codec.delivery_ids(body)
    queue_exists(host, name)
    durable = _Writes(host.backend)
    unknown = durable.settle(name, [Ack(i) for i in ids]) if ids else []
    await durable.wait()
    return settled_answer(host, name, ids, unknown, "acked")


async def nack(request: web.Request) -> web.Response:
    host = _host(request)
    name = request.match_info["name"]
    body = await _json(request)
    ids = codec.delivery_ids(body)
    requeue = codec.bool_field(body, "requeue", default=True)
    queue_exists(host, name)
    durable = _Writes(host.backend)
    outcomes: list[Outcome] = ([Requeue(i) for i in ids] if requeue  # back in place
                               else [DeadLetter(i) for i in ids])  # a plain reject
    unknown = durable.settle(name, outcomes) if ids else []
    await durable.wait()
    return settled_answer(host, name, ids, unknown, "nacked")


def peek_json(host: Host, name: str, query: Mapping[str, str]) -> dict[str, Any]:
    """`GET /v1/queues/{name}/peek?n=N` (any backend)."""
    n = codec.query_int(query, "n", default=10, low=1, high=MAX_PEEK)
    queue_exists(host, name)
    got = host.backend.peek_ids(name, n)
    return {"messages": [codec.delivery_json(d) for _, d in got]}


async def peek(request: web.Request) -> web.Response:
    return answer(peek_json(_host(request), request.match_info["name"], request.query))


async def purge(request: web.Request) -> web.Response:
    host = _host(request)
    name = request.match_info["name"]
    queue_exists(host, name)
    purged = await dlq_ops.purge(host.backend, name)
    host.notify()
    return answer({"purged": purged})


def replay_args(body: dict[str, Any]) -> tuple[int, str | None]:
    """A queue replay's body (any backend): (max, to)."""
    codec.check_fields(body, REPLAY_FIELDS)
    n = codec.int_field(body, "max", default=MAX_REPLAY, low=1, high=MAX_REPLAY)
    return n, codec.str_field(body, "to") if body.get("to") is not None else None


def replayed_json(outcome: ReplayOutcome, remaining: int) -> dict[str, Any]:
    """A queue replay's answer (any backend)."""
    return {"replayed": outcome.replayed, "skipped": outcome.skipped,
            "skipped_reasons": dict(outcome.reasons), "refused": outcome.refused,
            "remaining": remaining}


def moved_json(moved: int, remaining: int, dest: str) -> dict[str, Any]:
    """The answer of a queue replay into `to` (any backend)."""
    return {"replayed": moved, "skipped": 0, "skipped_reasons": {}, "remaining": remaining,
            "to": dest}


async def replay(request: web.Request) -> web.Response:
    host = _host(request)
    name = request.match_info["name"]
    n, dest = replay_args(await _json(request, empty_ok=True))
    queue_exists(host, name)
    if dest is not None:
        moved = dlq_ops.replay_to(host.backend, host.topology, name, dest, n)
        host.notify()
        return answer(moved_json(moved, host.backend.queue_info(name).ready, dest))
    outcome = host.backend.replay(name, n)
    host.notify()
    return answer(replayed_json(outcome, host.backend.queue_info(name).ready))


# ------------------------------------------------------------------ dead-letter topics


def dlq_topic_check(topology: Topology, name: str) -> None:
    """404 for an unknown topic (with the closest name), 400 for a topic no
    dlq_policy dead-letters into."""
    if name not in topology.topic_map():
        raise NotFound(f"topic '{name}' not found")
    if name not in topology.dead_letter_topics():
        raise codec.BadInput(
            f"topic '{name}' is not a dead-letter topic (no dlq_policy has it as "
            "dead_letter_queue)")


# The four routes of a dead-letter topic, for any backend serving `dlq_ops.DlqBackend`
# (the embedded daemon passes its engine as one; the RabbitMQ daemon its runtime, off
# its loop): parsing, checks and answers in one place.


def topic_dead_letters_json(topology: Topology, backend: dlq_ops.DlqBackend, name: str,
                            query: Mapping[str, str], now: int) -> dict[str, Any]:
    """`GET /v1/topics/{name}/dead-letters?n=`: the summary and the first n pending."""
    n = codec.query_int(query, "n", default=10, low=1, high=MAX_PEEK)
    dlq_topic_check(topology, name)
    parts = dlq_ops.topic_positions(backend, name)  # once for both (reads of each partition)
    summary = dlq_ops.topic_summary(backend, name, now, parts)
    summary["records"] = [codec.record_json(r)
                          for r in dlq_ops.topic_letters(backend, name, n, parts)]
    return summary


def purge_topic_json(topology: Topology, backend: dlq_ops.DlqBackend,
                     name: str) -> dict[str, Any]:
    """`DELETE /v1/topics/{name}/dead-letters`: every pending dead letter."""
    dlq_topic_check(topology, name)
    return {"purged": dlq_ops.purge_topic(backend, name)}


def purge_topic_records_json(topology: Topology, backend: dlq_ops.DlqBackend, name: str,
                             body: dict[str, Any]) -> dict[str, Any]:
    """`POST /v1/topics/{name}/dead-letters/purge {"records": [...]}`: these only."""
    codec.check_fields(body, TOPIC_PURGE_FIELDS)
    dlq_topic_check(topology, name)
    chosen = dlq_records.chosen_records(body, topology, name)
    return dlq_ops.purge_records(backend, name, chosen)


def replay_topic_json(topology: Topology, backend: dlq_ops.DlqBackend, name: str,
                      body: dict[str, Any]) -> dict[str, Any]:
    """`POST /v1/topics/{name}/replay {"max"|"records", "to"}`."""
    codec.check_fields(body, TOPIC_REPLAY_FIELDS)
    to = codec.str_field(body, "to") if body.get("to") is not None else None
    if body.get("records") is not None:
        if body.get("max") is not None:
            raise codec.BadInput("give 'records' (these dead letters) or 'max' (the first N), "
                                 "not both")
        dlq_topic_check(topology, name)
        chosen = dlq_records.chosen_records(body, topology, name)
        return dlq_ops.replay_records(backend, topology, name, chosen, to)
    n = codec.int_field(body, "max", default=MAX_REPLAY, low=1, high=MAX_REPLAY)
    dlq_topic_check(topology, name)
    return dlq_ops.replay_topic(backend, topology, name, n, to)


async def topic_dead_letters(request: web.Request) -> web.Response:
    host = _host(request)
    return answer(topic_dead_letters_json(
        host.topology, host.backend, request.match_info["name"],
        request.query, now_ms(host.clock)))


async def purge_topic(request: web.Request) -> web.Response:
    host = _host(request)
    out = purge_topic_json(host.topology, host.backend,
                           request.match_info["name"])
    host.notify()
    return answer(out)


async def purge_topic_records(request: web.Request) -> web.Response:
    """`POST /v1/topics/{name}/dead-letters/purge {"records": [...]}`: these only."""
    host = _host(request)
    body = await _json(request)
    out = purge_topic_records_json(host.topology, host.backend,
                                   request.match_info["name"], body)
    host.notify()
    return answer(out)


async def replay_topic(request: web.Request) -> web.Response:
    host = _host(request)
    body = await _json(request, empty_ok=True)
    out = replay_topic_json(host.topology, host.backend,
                            request.match_info["name"], body)
    host.notify()
    return answer(out)


# ------------------------------------------------------------------ groups


def _group_exists(host: Host, group: str) -> None:
    if group not in host.topology.group_map():
        raise NotFound(f"consumer group '{group}' not found")


def _group_tp(host: Host, group: str, obj: dict[str, Any], where: str = "") -> TopicPartition:
    topic = codec.str_field(obj, "topic")
    spec = host.topology.group_map()[group]
    if topic not in spec.topics:
        raise NotFound(f"{where}consumer group '{group}' does not read topic '{topic}'")
    partition = codec.int_field(obj, "partition")
    _partition(host, topic, str(partition))
    return TopicPartition(topic, partition)


async def seek(request: web.Request) -> web.Response:
    host = _host(request)
    group = request.match_info["group"]
    body = await _json(request)
    done = seek_json(host, group, body)
    host.notify()
    return answer(done)


def seek_json(host: Host, group: str, body: dict[str, Any]) -> dict[str, Any]:
    """`POST /v1/groups/{group}/offsets` (any backend; blocking over RabbitMQ)."""
    _group_exists(host, group)
    tp = _group_tp(host, group, body)
    has_offset, has_time = body.get("offset") is not None, body.get("timestamp") is not None
    if has_offset == has_time:
        raise codec.BadInput("give exactly one of 'offset' or 'timestamp' (milliseconds)")
    if has_offset:
        offset = codec.int_field(body, "offset")
        _not_above_end(host, tp.topic, tp.partition, offset, "seek to")
        pos = host.backend.seek(group, tp, offset=offset)
    else:
        pos = host.backend.seek(group, tp, timestamp_ms=codec.int_field(body, "timestamp"))
    return {"topic": tp.topic, "partition": tp.partition, "offset": pos}


async def commit(request: web.Request) -> web.Response:
    host = _host(request)
    group = request.match_info["group"]
    offsets = commit_args(host, group, await _json(request))
    if offsets:
        durable = _Writes(host.backend)
        durable.commit(group, offsets)
        await durable.wait()
    return answer({"committed": len(offsets)})


def commit_args(host: Host, group: str, body: dict[str, Any]) -> dict[TopicPartition, int]:
    """`POST /v1/groups/{group}/commit`'s body checked (any backend): the offsets."""
    _group_exists(host, group)
    items = body.get("offsets")
    if not isinstance(items, list):
        raise codec.BadInput(
            "missing field 'offsets' (an array of {\"topic\", \"partition\", \"offset\"})"
            if items is None
            else "'offsets' must be an array of {\"topic\", \"partition\", \"offset\"}"
        )
    codec.check_count(items, "offsets")
    offsets: dict[TopicPartition, int] = {}
    for i, item in enumerate(items):
        obj = codec.require_object(item, f"offsets[{i}]")
        try:
            tp = _group_tp(host, group, obj)
            offsets[tp] = codec.int_field(obj, "offset")
        except codec.BadInput as exc:
            raise codec.BadInput(f"offsets[{i}]: {exc}") from exc
    return offsets


def group_json(backend: Backend, group: str) -> dict[str, Any]:
    info = backend.group_info(group)
    return {
        "group": info.name,
        "members": list(info.members),
        "partitions": [
            {
                "topic": p.topic,
                "partition": p.partition,
                "committed": p.committed,
                "position": p.position,
                "log_end_offset": p.log_end_offset,
                "lag": p.lag,
                "member": p.member,
            }
            for p in info.partitions
        ],
        "lag": sum(p.lag for p in info.partitions),
    }


async def reset_group(request: web.Request) -> web.Response:
    host = _host(request)
    done = reset_json(host, request.match_info["group"], await _json(request))
    if not done["dry_run"]:
        host.notify()
    return answer(done)


def reset_json(host: Host, group: str, body: dict[str, Any]) -> dict[str, Any]:
    """`POST /v1/groups/{group}/reset` (any backend; blocking over RabbitMQ)."""
    _group_exists(host, group)
    return groups.reset(host.backend, host.topology.group_map()[group], body)


async def get_group(request: web.Request) -> web.Response:
    host = _host(request)
    group = request.match_info["group"]
    _group_exists(host, group)
    body = group_json(host.backend, group)
    body["members"] = host.group_members(group, body["members"])  # Kafka clients too
    return answer(body)


# ------------------------------------------------------------------ lists, index


async def index(request: web.Request) -> web.Response:
    return answer(lists.index_json())


async def list_queues(request: web.Request) -> web.Response:
    host = _host(request)
    return answer(lists.queues_json(host.backend, host.topology))


async def list_exchanges(request: web.Request) -> web.Response:
    host = _host(request)
    return answer(lists.exchanges_json(host.backend, host.topology))


async def list_bindings(request: web.Request) -> web.Response:
    return answer(lists.bindings_json(_host(request).topology))


async def list_topics(request: web.Request) -> web.Response:
    host = _host(request)
    return answer(lists.topics_json(host.backend, host.topology))


async def get_topic(request: web.Request) -> web.Response:
    host = _host(request)
    name = request.match_info["name"]
    if name not in host.topology.topic_map():
        raise NotFound(f"topic '{name}' not found")
    return answer(lists.topic_json(host.backend, host.topology, name))


async def list_groups(request: web.Request) -> web.Response:
    host = _host(request)
    return answer(lists.groups_json(host.backend, host.topology))


# ------------------------------------------------------------------ admin, health


async def status(request: web.Request) -> web.Response:
    return answer(_host(request).status())


async def admin_reload(request: web.Request) -> web.Response:
    _accepting(_host(request))
    result = await _host(request).reload("admin")
    if result.result == "invalid":
        return answer({"error": result.error, "problems": result.problems}, 422)
    if result.result == "refused":
        return answer({"error": result.error, "changes": result.changes}, 409)
    return answer({"generation": result.generation, "changes": result.changes})


async def metrics(request: web.Request) -> web.Response:
    text = _host(request).render_metrics()
    return web.Response(body=text, headers={"Content-Type": "text/plain; version=0.0.4"})


async def healthz(request: web.Request) -> web.Response:
    return answer({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    host = _host(request)
    if not host.accepting:
        return answer({"status": "shutting down"}, 503)
    failed = host.backend.failed_logs()
    if failed:  # an fsync failed: those logs refuse I/O until a restart recovers them
        return answer({"status": "storage failed", "failed_logs": failed}, 503)
    return answer({"status": "ready"})


def build_app(
    host: Host, *, token: str | None, limits: codec.Limits, max_request_bytes: int,
    connection_limits: ConnectionLimits | None = None, metrics_token: str | None = None,
    limiter: PublishLimiter | None = None, spans: Spans | None = None,
) -> web.Application:
    """The aiohttp application serving `host`."""
    app = web.Application(
        middlewares=[make_error_middleware(), make_auth_middleware(token, metrics_token)],
        client_max_size=max_request_bytes,
    )
    app[HOST_KEY] = host
    app[LIMITS_KEY] = limits
    app[MAX_REQUEST_KEY] = max_request_bytes
    app[CONNECTION_LIMITS_KEY] = connection_limits or ConnectionLimits()
    if token:
        app[TOKEN_KEY] = token
    if limiter is not None:
        app[LIMITER_KEY] = limiter
    if spans is not None:
        app[SPANS_KEY] = spans
    r = app.router
    r.add_get("/", index)
    r.add_get("/v1/queues", list_queues)
    r.add_get("/v1/exchanges", list_exchanges)
    r.add_get("/v1/bindings", list_bindings)
    r.add_get("/v1/topics", list_topics)
    r.add_get("/v1/topics/{name}", get_topic)
    r.add_get("/v1/groups", list_groups)
    r.add_post("/v1/exchanges/{name}/messages", publish_exchange)
    r.add_post("/v1/queues/{name}/messages", publish_queue)
    r.add_delete("/v1/queues/{name}/messages", purge)
    r.add_post("/v1/topics/{name}/records", append_topic)
    r.add_get("/v1/topics/{name}/partitions/{p}/records", read_records)
    r.add_post("/v1/queues/{name}/pull", pull)
    r.add_post("/v1/queues/{name}/ack", ack)
    r.add_post("/v1/queues/{name}/nack", nack)
    r.add_get("/v1/queues/{name}/peek", peek)
    r.add_post("/v1/queues/{name}/replay", replay)
    r.add_get("/v1/topics/{name}/dead-letters", topic_dead_letters)
    r.add_delete("/v1/topics/{name}/dead-letters", purge_topic)
    r.add_post("/v1/topics/{name}/dead-letters/purge", purge_topic_records)
    r.add_post("/v1/topics/{name}/replay", replay_topic)
    r.add_post("/v1/groups/{group}/offsets", seek)
    r.add_post("/v1/groups/{group}/commit", commit)
    r.add_post("/v1/groups/{group}/reset", reset_group)
    r.add_get("/v1/groups/{group}", get_group)
    r.add_get("/v1/status", status)
    r.add_post("/v1/admin/reload", admin_reload)
    r.add_get("/metrics", metrics)
    r.add_get("/healthz", healthz)
    r.add_get("/readyz", readyz)
    return app


class HttpServer:
    """The aiohttp runner and site for one app: bind, report the port, close.
    Connections are guarded (`runner.daemon.connections`): read timeouts, idle
    timeout, a connection cap fitted to the process file limit."""

    def __init__(self, app: web.Application, lane: Lane | None = None) -> None:
        self._lane = lane
        self._runner = web.AppRunner(
            app, access_log=None, handle_signals=False, shutdown_timeout=2.0
        )
        self._limits = app.get(CONNECTION_LIMITS_KEY) or ConnectionLimits()

    async def start(self, host: str, port: int) -> int:
        """Listen on host:port (0: any free port); the bound port. OSError when taken."""
        await self._runner.setup()
        cap = fit_file_limit(self._limits.max_connections)
        limits = dataclasses.replace(self._limits, max_connections=cap)
        site = CappedSite(self._runner, host, port, limits=limits, lane=self._lane)
        await site.start()
        return site.port

    async def stop(self) -> None:
        await self._runner.cleanup()
