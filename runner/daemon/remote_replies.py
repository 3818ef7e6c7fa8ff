"""Request-reply between daemons over RabbitMQ (`runner run --backend amqp://...`).

The private reply addresses of the embedded daemon (`runner.reply-to.<daemon>.<n>`,
see runner.pipeline.replies) stay; over RabbitMQ the daemon that answers may not be
the one that waits. So each daemon declares ONE reply queue, named by its address
prefix (`runner.reply-to.<daemon>`: exclusive, auto-delete, consumed no-ack, like
RabbitMQ's direct reply-to, which needs no queue per request either; validation
reserves the prefix, so no topology entity has that name). A reply to:

* an address of this daemon is handed over in memory (as on the embedded engine);
* an address of another daemon is published through the default exchange to that
  daemon's reply queue, the full address in header `x-reply-address` (no confirm,
  not persistent: a reply is worth nothing once its daemon is gone, and the queue
  is gone with it, so the broker drops it).

One thread owns one pika connection for both directions; the loop only queues
outgoing replies and wakes it (`add_callback_threadsafe`). A lost connection is
reconnected with backoff and the queue declared again (replies sent meanwhile are
lost, counted in `dropped`, and their requests time out).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections import deque
from typing import Any

import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel

from runner.backends.rabbitmq.runtime import encode_headers
from runner.backends.rabbitmq.url import Target
from runner.engine.contract import OutMessage
from runner.errors import StorageError
from runner.pipeline.replies import Replies

log = logging.getLogger(__name__)

ADDRESS_HEADER = "x-reply-address"
START_TIMEOUT_S = 10.0
IDLE_S = 0.5  # the I/O thread checks for stop this often when nothing happens


def queue_of(address: str) -> str:
    """The reply queue of the daemon owning a private `address` (`<prefix>.<n>`)."""
    return address.rpartition(".")[0]


class BrokerReplies(Replies):
    """The waiting requests of one daemon, and its reply queue on the broker."""

    def __init__(self, target: Target) -> None:
        super().__init__()
        self.target = target
        self.queue = self.prefix.rstrip(".")
        self.forwarded = 0  # replies sent to another daemon's reply queue
        self.received = 0  # replies that came in through this daemon's reply queue
        self._outbox: deque[tuple[str, OutMessage]] = deque()
        self._conn: pika.BlockingConnection | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = threading.Event()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None

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

    def deliver(self, address: str, message: OutMessage) -> bool:
        if address.startswith(self.prefix):
            return super().deliver(address, message)
        self._outbox.append((address, message))
        conn = self._conn
        if conn is not None:
            # closed under us: the next connection sends it
            with contextlib.suppress(Exception):
                conn.add_callback_threadsafe(lambda: None)  # wake the I/O thread
        return True

    def stop(self) -> None:
        self._stopping.set()
        conn = self._conn
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.add_callback_threadsafe(lambda: None)
        if self._thread is not None:
            self._thread.join(timeout=5)

    # ---------------------------------------------------------------- I/O thread
    def _run(self) -> None:
        backoff = 0.1
        while not self._stopping.is_set():
            try:
                self._serve()
                backoff = 0.1
            except pika.exceptions.AMQPError as exc:
                if not self._ready.is_set():
                    self._error = exc
                    self._ready.set()
                    return
                log.warning("reply queue %s: connection lost (%s); reconnecting",
                            self.queue, exc, extra={"event": "replies_lost"})
                self._conn = None
                self._stopping.wait(backoff)
                backoff = min(backoff * 2, 5.0)

    def _serve(self) -> None:
        t = self.target
        conn = pika.BlockingConnection(pika.ConnectionParameters(
            host=t.host, port=t.port, virtual_host=t.vhost,
            credentials=pika.PlainCredentials(t.user, t.password),
            connection_attempts=1, heartbeat=10, socket_timeout=5,
        ))
        try:
            ch = conn.channel()
            ch.queue_declare(self.queue, exclusive=True, auto_delete=True)
            ch.basic_consume(self.queue, self._on_reply, auto_ack=True)
            self._conn = conn
            self._ready.set()
            while not self._stopping.is_set():
                conn.process_data_events(time_limit=IDLE_S)
                self._flush(ch)
        finally:
            self._conn = None
            if conn.is_open:
                with contextlib.suppress(pika.exceptions.AMQPError):
                    conn.close()

    def _flush(self, ch: BlockingChannel) -> None:
        while self._outbox:
            address, m = self._outbox[0]
            headers = dict(m.headers)
            headers[ADDRESS_HEADER] = address
            props = pika.BasicProperties(headers=encode_headers(headers),
                                         content_type=m.content_type, delivery_mode=1)
            ch.basic_publish("", queue_of(address), m.body, props)
            self._outbox.popleft()
            self.forwarded += 1

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

