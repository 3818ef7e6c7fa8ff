"""The shared idempotency window over RabbitMQ: a stream of processed keys per consumer.

A consumer with `idempotency: {key, window}` skips a message whose key it already
processed. Over RabbitMQ several daemons consume one queue, and the broker may
deliver a message again to another daemon than the one that handled it (the
first died, or lost its connection, before its ack reached the broker), so the
window is kept by the broker: the durable stream `__runner.idem.<consumer>`
(`mapping.keys_stream`, `x-max-age` = the window), declared by `runner apply`
and `runner run`. Every daemon appends the keys it processes and tails the
stream into a local window (`SharedWindow`, a `contract.KeyWindow`).

Ordering of an at-least-once call (runner.pipeline.queue_worker):

    handler returns -> its outputs published, confirmed
                    -> key appended to the stream, confirmed  (`record` -> Ticket)
                    -> the message is acked

so a message whose ack the broker has received has its key in the stream, and
a message the broker delivers again either has its key there (the handler ran
and its outputs are stored) or was not finished. A key is seen by the daemon
that recorded it at once, by the others when their tail delivers it
(milliseconds). A daemon that gets a delivery with the redelivered flag whose
key it has not seen first catches up (`catch_up`), and so does every window at
start: it appends a marker of its own to the stream, confirmed, and waits
until its tail delivers that marker. A stream keeps one order, so every key
confirmed before the marker -- the one a dead daemon confirmed before the
broker noticed its death and gave its message to this one -- has been read
by then. This needs no "end of stream" detection, which over 3.10 costs a
quiet period and has to cope with offset gaps (runner.backends.rabbitmq.streams).

A record is the key as body, `x-runner-timestamp-ms` when it was recorded;
it is in the window until that time plus the window (the recording daemon's
clock). A marker has an empty body and `x-runner-marker: <token>:<n>`. The tail
starts at the stream's chunk of "now - window" (an AMQP timestamp offset) and
goes on from the offset after the last record it got when the connection comes
back (the broker attaches at the chunk holding it: earlier records are
dropped here; an offset gap is harmless, nothing waits for an offset).

What remains possible: two copies of one key (a producer's duplicate) handled
twice when the second is delivered before the first one's key has been
recorded and read -- on two daemons at the same time, or within the tail's
delay (the same holds between two concurrent workers of one daemon, and on the
embedded engine). It costs one more handler call and its outputs sent twice,
as at-least-once allows. A daemon killed after its key was appended but before
the broker confirmed it may or may not leave the key in the stream: if not, the
redelivery runs the handler again.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import itertools
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import pika

from runner.backends.rabbitmq import streams
from runner.backends.rabbitmq.mapping import keys_stream
from runner.clock import Clock
from runner.engine.contract import Ticket

log = logging.getLogger(__name__)

MARKER_HEADER = "x-runner-marker"  # <token>:<n> of a catch-up marker
TIMESTAMP_HEADER = streams.TIMESTAMP_HEADER  # when the key was recorded, milliseconds
CATCH_UP_S = 10.0  # a catch-up gives up (logged) when its marker is not back by then

# (stream, body, properties) -> the ticket of a confirmed publish into the stream
Write = Callable[[str, bytes, pika.BasicProperties], Ticket]


class SharedWindow:
    """One consumer's window of processed keys, shared through its keys stream.

    The owner thread calls `seen`, `record` and `catch_up`; the backend's I/O
    thread feeds it what its tail of the stream delivers (`delivered`)."""

    def __init__(self, consumer: str, window_s: float, *, clock: Clock, write: Write,
                 token: str) -> None:
        self.consumer = consumer
        self.stream = keys_stream(consumer)
        self.window_s = window_s
        self._clock = clock
        self._write = write
        self._token = token
        self._lock = threading.Lock()
        self._keys: OrderedDict[str, float] = OrderedDict()  # key -> expires_at, oldest first
        self._markers = itertools.count(1)
        self._reached = 0  # the last of our markers the tail delivered
        self._waiting: list[tuple[int, asyncio.Future[None]]] = []
        # the tail (I/O thread only)
        self.next_offset: int | None = None  # where a re-attached tail goes on
        self.start = 0  # records below this offset are a chunk's earlier ones: dropped

    # ---------------------------------------------------------------- owner thread
    def seen(self, key: str) -> bool:
        now = self._clock.time()
        with self._lock:
            expires = self._keys.get(key)
        return expires is not None and expires > now

    def record(self, key: str) -> Ticket:
        now = self._clock.time()
        self._add(key, now + self.window_s)
        props = pika.BasicProperties(headers={TIMESTAMP_HEADER: int(now * 1000)},
                                     delivery_mode=2, timestamp=int(now))
        return self._write(self.stream, key.encode(), props)

    async def catch_up(self) -> None:
        n = next(self._markers)
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        with self._lock:
            self._waiting.append((n, fut))
        props = pika.BasicProperties(headers={MARKER_HEADER: f"{self._token}:{n}"},
                                     delivery_mode=2)
        self._write(self.stream, b"", props)
        try:
            async with asyncio.timeout(CATCH_UP_S):
                await fut
        except TimeoutError:
            log.warning("idempotency keys of consumer %s: not caught up with stream '%s' "
                        "within %.0f s; going on with the keys read so far", self.consumer,
                        self.stream, CATCH_UP_S)
        finally:
            with self._lock:
                self._waiting = [(m, f) for m, f in self._waiting if f is not fut]

    def __len__(self) -> int:
        with self._lock:
            return len(self._keys)

    # ---------------------------------------------------------------- I/O thread
    def attach_offset(self) -> object:
        """Where the tail starts: after the last record read, else "now - window"."""
        if self.next_offset is not None:
            self.start = self.next_offset
            return self.next_offset
        self.start = 0
        since = max(0.0, self._clock.time() - self.window_s)
        return datetime.datetime.fromtimestamp(int(since), tz=datetime.UTC)

    def delivered(self, props: Any, body: bytes) -> None:
        """One record of the stream, in order."""
        headers = props.headers or {}
        offset = headers.get(streams.OFFSET_HEADER)
        if not isinstance(offset, int) or offset < self.start:
            return  # an earlier record of the chunk the tail attached at
        self.next_offset = offset + 1
        marker = headers.get(MARKER_HEADER)
        if marker is not None:
            self._marker(marker.decode() if isinstance(marker, bytes) else str(marker))
            return
        stamp = headers.get(TIMESTAMP_HEADER)
        at = stamp / 1000 if isinstance(stamp, int) else float(props.timestamp or 0)
        expires = at + self.window_s
        if expires > self._clock.time():
            self._add(body.decode(errors="replace"), expires)

    def _marker(self, marker: str) -> None:
        token, _, n = marker.rpartition(":")
        if token != self._token or not n.isdigit():
            return  # another daemon's
        with self._lock:
            self._reached = max(self._reached, int(n))
            done = [f for m, f in self._waiting if m <= self._reached]
        for fut in done:
            with contextlib.suppress(RuntimeError):  # its loop is closed
                fut.get_loop().call_soon_threadsafe(_resolve, fut)

    # ---------------------------------------------------------------- both
    def _add(self, key: str, expires: float) -> None:
        now = self._clock.time()
        with self._lock:
            if expires > self._keys.get(key, 0.0):
                self._keys[key] = expires
                self._keys.move_to_end(key)
            while self._keys:  # keys arrive about in time order: the oldest first
                oldest, until = next(iter(self._keys.items()))
                if until > now:
                    break
                del self._keys[oldest]


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
