"""Request-reply: reply addresses, reply messages, and the waiting requests of one daemon.

A message asks for a reply with two headers, `x-reply-to` (where to) and
`x-correlation-id` (echoed on the reply). When its handler returns, the
return value becomes the reply; a handler that fails for good sends an error
reply (`{"error": {"type", "message"}}`, header `x-reply-error: true`).

A reply address is one of:

* `exchange/routing_key`: published through that exchange with that key
  (names never hold `/`, so the first one splits);
* `QUEUE`: put straight into that queue;
* a private address `runner.reply-to.<daemon>.<n>` (RabbitMQ's direct
  reply-to is the model): no queue is declared; the reply goes to the one
  request waiting for it in this daemon, in memory, or nowhere.

`Replies` is that in-memory side: a map address -> asyncio future, one entry
per waiting request (an HTTP `?wait=` publish or a handler's `ctx.request`).
No thread and no queue per request: a delivered reply sets the future, the
waiter's `finally` removes the entry. Everything runs on the daemon's loop.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from runner import jsontext
from runner.engine.contract import OutMessage
from runner.topology.build import REPLY_ADDRESS_PREFIX

log = logging.getLogger(__name__)

REPLY_TO_HEADER = "x-reply-to"
CORRELATION_HEADER = "x-correlation-id"
REPLY_ERROR_HEADER = "x-reply-error"
PRIVATE_PREFIX = REPLY_ADDRESS_PREFIX  # reserved by validation
MAX_ADDRESS_CHARS = 512  # an exchange name (249) + "/" + a routing key (255) fits
MAX_CORRELATION_CHARS = 255  # as AMQP's shortstr


class ReplyError(Exception):
    """The other side's handler failed for good: its error reply, raised by `ctx.request`."""

    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(f"{error_type}: {message}")
        self.error_type = error_type
        self.message = message


class ReplyTimeout(TimeoutError):
    """No reply came within the request's timeout."""


class ShuttingDown(RuntimeError):
    """The daemon stopped while the request waited."""


class ReplyLost(RuntimeError):
    """The reply can no longer come: the way replies reach this daemon was lost
    meanwhile (over RabbitMQ, its reply queue; runner.daemon.remote_replies)."""


class NoRoute(LookupError):
    """A request went nowhere (no binding matched): no reply can ever come."""


@dataclass(frozen=True, slots=True)
class Reply:
    """A reply as the waiting request gets it."""

    body: bytes
    content_type: str | None
    headers: Mapping[str, Any]

    @property
    def correlation_id(self) -> str | None:
        cid = self.headers.get(CORRELATION_HEADER)
        return None if cid is None else str(cid)

    @property
    def is_error(self) -> bool:
        return self.headers.get(REPLY_ERROR_HEADER) in (True, "true")


def is_private(address: str) -> bool:
    return address.startswith(PRIVATE_PREFIX)


def destination(address: str) -> tuple[str, str | None]:
    """`(exchange, routing_key)` for `exchange/routing_key`, `(queue, None)` for a queue."""
    name, sep, key = address.partition("/")
    return (name, key) if sep else (address, None)


def check_address(value: object, field: str = "reply_to") -> str:
    """A reply address as a producer may give it; ValueError with the sentence otherwise."""
    if not isinstance(value, str) or not value or value.startswith("/"):
        raise ValueError(f"'{field}' must be a queue name or 'exchange/routing_key', "
                         f"got {value!r}")
    if len(value) > MAX_ADDRESS_CHARS:
        raise ValueError(f"'{field}' is {len(value)} characters, over the limit of "
                         f"{MAX_ADDRESS_CHARS}")
    return value


def check_correlation_id(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"'correlation_id' must be a non-empty string, got {value!r}")
    if len(value) > MAX_CORRELATION_CHARS:
        raise ValueError(f"'correlation_id' is {len(value)} characters, over the limit of "
                         f"{MAX_CORRELATION_CHARS}")
    return value


def error_of(body: bytes) -> tuple[str, str]:
    """(type, message) of an error reply's body (whatever its shape, never raises)."""
    try:
        error = jsontext.loads(body)["error"]
        return str(error["type"]), str(error["message"])
    except (ValueError, TypeError, KeyError):
        return "ReplyError", body.decode(errors="replace")


def reply_message(
    body: bytes, content_type: str | None, correlation_id: str | None, *, error: bool = False,
) -> OutMessage:
    """The reply to a message with `correlation_id` (without its routing key yet)."""
    headers: dict[str, Any] = {}
    if correlation_id is not None:
        headers[CORRELATION_HEADER] = correlation_id
    if error:
        headers[REPLY_ERROR_HEADER] = True
    return OutMessage(body=body, headers=headers, content_type=content_type)


@dataclass(slots=True)
class Waiting:
    """One waiting request: its private address and the future its reply sets."""

    address: str
    correlation_id: str
    future: asyncio.Future[Reply]


class Replies:
    """The requests of one daemon that wait for a reply, by private address."""

    def __init__(self) -> None:
        self._prefix = f"{PRIVATE_PREFIX}{secrets.token_hex(6)}."  # a restart never matches
        self._numbers = itertools.count(1)
        self._waiting: dict[str, Waiting] = {}
        self.delivered = 0  # replies handed to a waiting request
        self.dropped = 0  # replies to a private address nobody waits on (any more)
        self.timed_out = 0

    def __len__(self) -> int:
        return len(self._waiting)

    @property
    def prefix(self) -> str:
        """Every private address of this daemon starts with it (`runner.reply-to.<hex>.`)."""
        return self._prefix

    def open(self, correlation_id: str | None = None) -> Waiting:
        """A new waiting request (call `close` when done waiting, in a `finally`)."""
        address = f"{self._prefix}{next(self._numbers)}"
        cid = correlation_id or secrets.token_hex(8)
        waiting = Waiting(address, cid, asyncio.get_running_loop().create_future())
        self._waiting[address] = waiting
        return waiting

    def close(self, waiting: Waiting) -> None:
        self._waiting.pop(waiting.address, None)
        if not waiting.future.done():
            waiting.future.cancel()

    async def wait(self, waiting: Waiting, timeout_s: float) -> Reply:
        """The reply, or ReplyTimeout after `timeout_s` (the entry stays until `close`)."""
        try:
            async with asyncio.timeout(timeout_s):
                return await asyncio.shield(waiting.future)
        except TimeoutError:
            self.timed_out += 1
            raise ReplyTimeout(f"no reply within {timeout_s:g}s") from None

    def deliver(self, address: str, message: OutMessage) -> bool:
        """Hand a reply to the request waiting on `address`; False (counted, logged at
        debug) when none does: it timed out, was answered already, or belongs to a
        daemon that has restarted since (its map is gone, as RabbitMQ's channel is)."""
        waiting = self._waiting.get(address)
        if waiting is None or waiting.future.done():
            self.dropped += 1
            log.debug("reply to %s dropped: no request waits for it", address)
            return False
        waiting.future.set_result(Reply(message.body, message.content_type, message.headers))
        self.delivered += 1
        return True

    def fail_all(self, exc: BaseException) -> None:
        """Every waiting request ends with `exc` (the daemon is stopping)."""
        for waiting in self._waiting.values():
            if not waiting.future.done():
                waiting.future.set_exception(exc)
