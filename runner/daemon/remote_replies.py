"""Request-reply between daemons over RabbitMQ (`runner run --backend amqp://...`).

The private reply addresses of the embedded daemon (`runner.reply-to.<daemon>.<n>`,
see runner.pipeline.replies) stay; over RabbitMQ the daemon that answers may not be
the one that waits. So each daemon declares ONE reply queue, named by its address
prefix (`runner.reply-to.<daemon>`, consumed no-ack and exclusively, like RabbitMQ's
direct reply-to, which needs no queue per request either; validation reserves the
prefix, so no topology entity has that name). A reply to:

* an address of this daemon is handed over in memory (as on the embedded engine);
* an address of another daemon is published through the default exchange to that
  daemon's reply queue, the full address in header `x-reply-address` (no confirm,
  not persistent: a reply is worth nothing once its daemon is gone; `mandatory`,
  so the broker returns what has no queue any more, counted `unroutable`).

The queue is not exclusive but expires (`x-expires`) QUEUE_EXPIRES_S after its
consumer went: an exclusive queue would be deleted with a lost connection, and the
replies other daemons send before it is declared again would be dropped. So a
connection lost for less than that keeps every reply; one lost for longer (or a
queue deleted by hand) is seen when the connection comes back (the queue is gone)
and every waiting request fails at once with ReplyLost (HTTP 503) instead of
waiting for its 504. A stopping daemon deletes its queue.

One thread owns one pika connection for both directions; the loop only queues
outgoing replies and wakes it (`add_callback_threadsafe`). While the broker is
unreachable the replies to other daemons wait in memory, at most MAX_OUTBOX_BYTES
of them: past that a reply is refused (an HTTP reply answers 503, a handler's reply
is dropped and logged), counted `refused`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections import deque
from collections.abc import Iterator
from typing import Any

import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from runner.backends.rabbitmq.runtime import encode_headers
from runner.backends.rabbitmq.url import Target
from runner.engine.contract import OutMessage
from runner.errors import StorageError
from runner.pipeline.replies import Replies, ReplyLost

log = logging.getLogger(__name__)

ADDRESS_HEADER = "x-reply-address"
START_TIMEOUT_S = 10.0
IDLE_S = 0.5  # the I/O thread checks for stop this often when nothing happens
QUEUE_EXPIRES_S = 60.0  # the reply queue outlives its lost consumer this long
MAX_OUTBOX_BYTES = 16 * 1024 * 1024  # replies waiting for an unreachable broker
OVERHEAD_BYTES = 256  # counted per waiting reply besides its body and headers
NOT_FOUND = 404


def queue_of(address: str) -> str:
    """The reply queue of the daemon owning a private `address` (`<prefix>.<n>`)."""
    return address.rpartition(".")[0]


def _size(message: OutMessage) -> int:
    return len(message.body) + OVERHEAD_BYTES + sum(
        len(str(k)) + len(str(v)) for k, v in message.headers.items())


class _Cancelled(Exception):
    """The broker cancelled the reply queue's consumer (the queue was deleted)."""


class BrokerReplies(Replies):
    """The waiting requests of one daemon, and its reply queue on the broker."""

    def __init__(self, target: Target, *, max_outbox_bytes: int = MAX_OUTBOX_BYTES) -> None:
        super().__init__()
        self.target = target
        self.queue = self.prefix.rstrip(".")
        self.max_outbox_bytes = max_outbox_bytes
        self.forwarded = 0  # replies sent to another daemon's reply queue
        self.received = 0  # replies that came in through this daemon's reply queue
        self.unroutable = 0  # forwarded, returned by the broker: that queue is gone
        self.refused = 0  # not forwarded: the outbox was full
        self.outbox_bytes = 0
        self._outbox: deque[tuple[str, OutMessage, int]] = deque()
        self._conn: pika.BlockingConnection | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = threading.Event()
        self._ready = threading.Event()
        self._cancelled = False
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None

    @property
    def outbox(self) -> int:
        """Replies to other daemons waiting for the broker now."""
        return len(self._outbox)

    # ---------------------------------------------------------------- loop side
    async def start(self) -> None:
        """Declare and consume the reply queue; StorageError when the broker refuses."""
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name="replies", daemon=True)
        self._thread.start()
        ready = await self._loop.run_in_executor(None, self._ready.wait, START_TIMEOUT_S)
        if self._error is not None or not ready:
            self.stop()
            raise StorageError(f"the reply queue {self.queue!r} could not be consumed on "
                               f"{self.target}: {self._error or 'no answer in time'}")

    def refusal(self, address: str) -> str | None:
        """Why a reply to `address` is refused now (None: it is taken): the outbox of
        replies to other daemons is full while the broker is unreachable. A refusal
        is counted and logged."""
        if address.startswith(self.prefix) or self.outbox_bytes < self.max_outbox_bytes:
            return None
        self.refused += 1
        log.warning("reply to %s refused: %d replies (%d bytes) wait for the broker "
                    "already", address, len(self._outbox), self.outbox_bytes,
                    extra={"event": "reply_refused"})
        return (f"the broker is unreachable and {len(self._outbox)} replies to other "
                f"daemons ({self.outbox_bytes} bytes, the limit is {self.max_outbox_bytes}) "
                "wait to be sent; retry once it is back")

    def deliver(self, address: str, message: OutMessage) -> bool:
        if address.startswith(self.prefix):
            return super().deliver(address, message)
        if self.refusal(address) is not None:
            return False
        size = _size(message)
        self._outbox.append((address, message, size))
        self.outbox_bytes += size
        self._wake()
        return True

    def stop(self) -> None:
        self._stopping.set()
        self._wake()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _wake(self) -> None:
        conn = self._conn
        if conn is not None:
            # closed under us: the next connection sends what waits
            with contextlib.suppress(Exception):
                conn.add_callback_threadsafe(lambda: None)

    def _lost(self) -> None:
        """On the loop: the reply queue was gone when the connection came back."""
        log.warning("reply queue %s was gone when the connection came back: %d waiting "
                    "requests fail", self.queue, len(self), extra={"event": "replies_gone"})
        self.fail_all(ReplyLost(
            f"this daemon's reply queue {self.queue!r} was gone when its connection to "
            f"the broker came back (away for over {QUEUE_EXPIRES_S:g}s, or deleted), so "
            "replies sent meanwhile are lost; send the request again"))

    # ---------------------------------------------------------------- I/O thread
    def _run(self) -> None:
        backoff = 0.1
        while not self._stopping.is_set():
            try:
                self._serve()
                backoff = 0.1
            except (pika.exceptions.AMQPError, _Cancelled) as exc:
                if not self._ready.is_set():
                    self._error = exc
                    self._ready.set()
                    return
                log.warning("reply queue %s: connection lost (%s); reconnecting",
                            self.queue, type(exc).__name__ if isinstance(exc, _Cancelled)
                            else exc, extra={"event": "replies_lost"})
                self._conn = None
                self._stopping.wait(backoff)
                backoff = min(backoff * 2, 5.0)

    def _serve(self) -> None:
        t = self.target
        conn = pika.BlockingConnection(pika.ConnectionParameters(
            host=t.host, port=t.port, virtual_host=t.vhost,
            credentials=pika.PlainCredentials(t.user, t.password),
            connection_attempts=1, heartbeat=10, socket_timeout=5,
            client_properties={"connection_name": f"runner replies {self.queue}"},
        ))
        try:
            ch = self._declare(conn)
            ch.basic_consume(self.queue, self._on_reply, auto_ack=True, exclusive=True)
            ch.add_on_cancel_callback(self._on_cancel)
            ch.add_on_return_callback(self._on_return)
            self._cancelled = False
            self._conn = conn
            self._ready.set()
            while not self._stopping.is_set():
                conn.process_data_events(time_limit=IDLE_S)
                if self._cancelled:
                    raise _Cancelled(f"the broker cancelled the consumer of {self.queue}")
                self._flush(ch)
            with contextlib.suppress(pika.exceptions.AMQPError):
                ch.queue_delete(self.queue)  # stopping: nobody waits for these replies
        finally:
            self._conn = None
            if conn.is_open:
                with contextlib.suppress(pika.exceptions.AMQPError):
                    conn.close()

    def _declare(self, conn: pika.BlockingConnection) -> BlockingChannel:
        """The reply queue declared on a new channel; after a reconnect, when the
        queue was gone meanwhile, the waiting requests are failed first."""
        ch = conn.channel()
        if self._ready.is_set():
            try:
                ch.queue_declare(self.queue, passive=True)
            except pika.exceptions.ChannelClosedByBroker as exc:
                if exc.reply_code != NOT_FOUND:
                    raise
                loop = self._loop
                if loop is not None:
                    loop.call_soon_threadsafe(self._lost)
                ch = conn.channel()
        ch.queue_declare(self.queue, arguments={"x-expires": int(QUEUE_EXPIRES_S * 1000)})
        return ch

    def _flush(self, ch: BlockingChannel) -> None:
        while self._outbox:
            address, m, size = self._outbox[0]
            headers = dict(m.headers)
            headers[ADDRESS_HEADER] = address
            props = pika.BasicProperties(headers=encode_headers(headers),
                                         content_type=m.content_type, delivery_mode=1)
            ch.basic_publish("", queue_of(address), m.body, props, mandatory=True)
            self._outbox.popleft()
            self.outbox_bytes -= size
            self.forwarded += 1

    def _on_cancel(self, frame: Any) -> None:
        self._cancelled = True

    def _on_return(self, ch: BlockingChannel, method: Any, props: Any, body: bytes) -> None:
        self.unroutable += 1
        log.debug("a reply to %s was returned: its daemon's reply queue is gone",
                  method.routing_key)

    def _on_reply(self, ch: BlockingChannel, method: Any, props: Any, body: bytes) -> None:
        headers = dict(props.headers or {})
        address = headers.pop(ADDRESS_HEADER, None)
        loop = self._loop
        if not isinstance(address, str) or loop is None:
            log.warning("reply queue %s: a message without %s dropped", self.queue,
                        ADDRESS_HEADER)
            return
        self.received += 1
        reply = OutMessage(body=body, headers=headers, content_type=props.content_type)
        loop.call_soon_threadsafe(super().deliver, address, reply)


class ForwardedCollector(Collector):
    """`runner_replies_forwarded_total{result}`: replies that crossed the broker between
    daemons (`sent`, `received`, `unroutable`: returned, that daemon's queue is gone,
    `refused`: the outbox was full); `runner_replies_outbox`: replies to other daemons
    waiting for the broker now."""

    def __init__(self, replies: BrokerReplies) -> None:
        self._replies = replies

    def collect(self) -> Iterator[Metric]:
        r = self._replies
        total = CounterMetricFamily(
            "runner_replies_forwarded", "Replies between daemons through their reply queues "
            "on the broker, by what became of them.", labels=["result"])
        for result, count in (("sent", r.forwarded), ("received", r.received),
                              ("unroutable", r.unroutable), ("refused", r.refused)):
            total.add_metric([result], count)
        yield total
        outbox = GaugeMetricFamily("runner_replies_outbox", "Replies to other daemons "
                                   "waiting for the broker (while it is unreachable).")
        outbox.add_metric([], r.outbox)
        yield outbox
