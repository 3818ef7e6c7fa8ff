"""Real handlers used by the pipeline tests (referenced as `module:callable`).

They record what they saw in module-level lists that each test resets.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

SEEN: list[dict[str, Any]] = []
ATTEMPTS: dict[str, int] = {}
LOCK = threading.Lock()
RELEASE = threading.Event()
STARTED = threading.Event()
NOT_CALLABLE = 5


class ValidationError(ValueError):
    """A user error type that lives in a user module."""


class Holder:
    @staticmethod
    def method(msg: Any) -> None:
        del msg


def reset() -> None:
    with LOCK:
        SEEN.clear()
        ATTEMPTS.clear()
    RELEASE.clear()
    STARTED.clear()
    global HOOK
    HOOK = None


def _note(msg: Any, **extra: Any) -> int:
    ident = str(msg.body.get("id") if isinstance(msg.body, dict) else msg.message_id)
    with LOCK:
        ATTEMPTS[ident] = ATTEMPTS.get(ident, 0) + 1
        entry = {
            "id": ident, "body": msg.body, "attempt": ATTEMPTS[ident],
            "redelivered": msg.redelivered, "delivery_count": msg.delivery_count,
            "headers": dict(msg.headers), "t": time.monotonic(), **extra,
        }
        if hasattr(msg, "queue"):
            entry.update(queue=msg.queue, routing_key=msg.routing_key, priority=msg.priority)
        else:
            entry.update(topic=msg.topic, partition=msg.partition, offset=msg.offset, key=msg.key)
        SEEN.append(entry)
        return ATTEMPTS[ident]


def ok(msg: Any) -> None:
    _note(msg)


async def async_ok(msg: Any) -> None:
    await asyncio.sleep(0)
    _note(msg)


def with_ctx(msg: Any, ctx: Any) -> None:
    _note(msg)
    ctx.publish("out", "done", {"from": msg.body})


async def async_with_ctx(msg: Any, ctx: Any) -> None:
    _note(msg)
    ctx.append("results", {"from": msg.body}, key="k")


def slow_sync(msg: Any) -> None:
    time.sleep(0.3)


async def slow_async(msg: Any) -> None:
    await asyncio.sleep(0.3)


def raises_timeout(msg: Any) -> None:
    raise TimeoutError("mine")


def flaky(msg: Any, ctx: Any) -> None:
    """Fails the first `body["fail"]` attempts of each id, then forwards and succeeds."""
    attempt = _note(msg)
    ctx.publish("out", "flaky", {"id": msg.body["id"], "attempt": attempt})
    if attempt <= int(msg.body.get("fail", 0)):
        raise RuntimeError(f"attempt {attempt} of {msg.body['id']} failed")


def invalid(msg: Any) -> None:
    _note(msg)
    raise ValidationError("Invalid order_id format")


def forward(msg: Any, ctx: Any) -> None:
    _note(msg)
    ctx.publish("out", "fwd", {"id": msg.body["id"]})
    ctx.append("results", {"id": msg.body["id"]}, key=str(msg.body["id"]))


def stamped(msg: Any, ctx: Any) -> None:
    """Appends to `results` with the timestamp the message names (a bad one raises)."""
    _note(msg)
    ctx.append("results", {"id": msg.body["id"]}, timestamp=msg.body["ts"])


def blocking(msg: Any) -> None:
    """Waits until the test releases it (or 5 s)."""
    _note(msg, phase="start")
    STARTED.set()
    RELEASE.wait(5)
    _note(msg, phase="end")


def sleepy(msg: Any) -> None:
    time.sleep(float(msg.body.get("sleep", 0.2)))
    _note(msg)


def sleepy_forward(msg: Any, ctx: Any) -> None:
    """Sleeps `body["sleep"]` (default 0), then forwards its id and notes the call."""
    time.sleep(float(msg.body.get("sleep", 0)))
    ctx.publish("out", "fwd", {"id": msg.body["id"]})
    _note(msg)


class ReturnsCoroutine:
    """A sync callable (not `async def`) whose call returns a coroutine: the
    worker awaits it on the loop, within what is left of the timeout."""

    def __call__(self, msg: Any) -> Any:
        return self._later(msg)

    async def _later(self, msg: Any) -> None:
        await asyncio.sleep(float(msg.body.get("sleep", 0)))
        _note(msg)


returns_coroutine = ReturnsCoroutine()


def blocking_forward(msg: Any, ctx: Any) -> None:
    """The first call waits for the test's release; every call forwards its id."""
    _note(msg, phase="start")
    if not STARTED.is_set():
        STARTED.set()
        RELEASE.wait(5)
    _note(msg, phase="end")
    ctx.publish("out", "fwd", {"id": msg.body["id"]})


async def async_blocking(msg: Any) -> None:
    """Like `blocking`, on the loop: waits until the test releases it (or 5 s)."""
    _note(msg, phase="start")
    STARTED.set()
    for _ in range(500):
        if RELEASE.is_set():
            break
        await asyncio.sleep(0.01)
    _note(msg, phase="end")


def bad_sig(a: Any, b: Any, c: Any) -> None:
    """Three required parameters: not a handler."""


def no_params() -> None:
    """No parameter at all: not a handler."""


def kw_needed(msg: Any, *, tenant: str) -> None:
    """A required keyword-only parameter: not a handler."""


def optional_extras(msg: Any, ctx: Any = None, extra: Any = None) -> None:
    """(msg) or (msg, ctx) both work: a handler."""


def star_args(*args: Any) -> None:
    """Anything positional: a handler."""


class CallableHandler:
    def __call__(self, msg: Any) -> None:
        del msg


INSTANCE = CallableHandler()


# ---------------------------------------------------------------- request-reply
def double(msg: Any) -> Any:
    """A sync replier: the reply is the return value."""
    if msg.body.get("fail"):
        raise ValidationError(f"cannot double {msg.body['n']}")
    return {"doubled": msg.body["n"] * 2}


async def async_double(msg: Any) -> Any:
    return {"doubled": msg.body["n"] * 2}


def raw_reply(msg: Any) -> bytes:
    del msg
    return b"\x00raw"


def unencodable_reply(msg: Any) -> Any:
    del msg
    return {1, 2}


async def asks_double(msg: Any, ctx: Any) -> None:
    """Calls another handler through ctx.request and appends what came back."""
    try:
        got = await ctx.request("rpc", "double", {"n": msg.body["n"], "fail": msg.body.get("fail")},
                                timeout=msg.body.get("timeout", 5.0))
    except Exception as exc:  # recorded for the test
        got = {"raised": type(exc).__name__, "text": str(exc)}
    ctx.publish("out", "", {"asked": msg.body["n"], "got": got})


def sync_asks(msg: Any, ctx: Any) -> None:
    with LOCK:
        try:
            ctx.request("rpc", "double", {"n": 1})
        except RuntimeError as exc:
            SEEN.append({"raised": str(exc)})


GATE: asyncio.Event | None = None  # set by a test inside its running loop


async def gated_forward(msg: Any, ctx: Any) -> None:
    """Waits for GATE, then publishes one message to the `out` (or body["to"]) exchange."""
    _note(msg)
    assert GATE is not None
    await GATE.wait()
    ctx.publish(msg.body.get("to", "out"), "fwd", {"id": msg.body["id"]})


HOOK: Callable[[Any], None] | None = None  # set by a test: called with each message


async def hooked_forward(msg: Any, ctx: Any) -> None:
    """Calls HOOK with the message, then publishes one message to the `out` exchange."""
    _note(msg)
    if HOOK is not None:
        HOOK(msg)
    ctx.publish("out", "fwd", {"id": msg.body["id"]})
