"""The pipeline's pure parts: retry decisions, the dead-letter header, handler
resolution, idempotency store, body encoding and the handler context."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import re
import time
from pathlib import Path

import pytest

from runner.clock import ManualClock
from runner.engine import QueueDelivery, Record
from runner.errors import HandlerImportError
from runner.pipeline.deadletter import build_death, error_type, iso_utc
from runner.pipeline.handler import Handler, HandlerTimeout, check_handlers, resolve
from runner.pipeline.idempotency import IdempotencyStore, key_of
from runner.pipeline.message import (
    Context,
    ContextClosed,
    QueueMessage,
    TopicMessage,
    decode_body,
    encode_body,
    encode_key,
)
from runner.pipeline.retry import Retrier, exception_matches
from runner.topology.model import (
    Consumer,
    ConsumerGroup,
    Delivery,
    DlqPolicy,
    ExponentialBackoff,
    Idempotency,
    Topology,
)
from tests.pipeline import pipeline_handlers as ph

H = "tests.pipeline.pipeline_handlers"


def _delivery(**kw: object) -> QueueDelivery:
    base: dict[str, object] = dict(
        queue="q", delivery_id=7, body=b'{"id": 3}', headers={"h": "v"}, routing_key="rk",
        exchange="ex", priority=0, redelivered=False, delivery_count=1, message_id="m-1",
        timestamp_ms=1_700_000_000_000, content_type="application/json",
    )
    base.update(kw)
    return QueueDelivery(**base)  # type: ignore[arg-type]


# ------------------------------------------------------------------ retry


def test_schedule_delays_and_exhaustion() -> None:
    policy = DlqPolicy(name="p", max_retries=4, backoff=(0.0, 1.0, 5.0))
    r = Retrier(policy, Delivery.AT_LEAST_ONCE, random=lambda: 0.5)
    got = [r.decide(ValueError("x"), n) for n in range(1, 6)]
    assert [(d.retry, d.delay_s) for d in got] == [
        (True, 0.0), (True, 1.0), (True, 5.0), (True, 5.0), (False, 0.0),
    ]
    assert got[-1].reason == "4 retries exhausted"


def test_exponential_jitter_uses_the_random_source() -> None:
    policy = DlqPolicy(name="p", backoff=ExponentialBackoff(1.0, 2.0, 30.0, jitter=0.1))
    low = Retrier(policy, Delivery.AT_LEAST_ONCE, random=lambda: 0.0)
    high = Retrier(policy, Delivery.AT_LEAST_ONCE, random=lambda: 1.0)
    assert low.delay(3) == pytest.approx(3.6)
    assert high.delay(3) == pytest.approx(4.4)
    assert low.delay(10) == pytest.approx(27.0)  # capped at max, then jittered


def test_defaults_without_policy() -> None:
    r = Retrier(None, Delivery.AT_LEAST_ONCE, random=lambda: 0.5)
    assert [r.decide(KeyError("k"), n).delay_s for n in (1, 2, 3)] == [1.0, 5.0, 30.0]
    assert not r.decide(KeyError("k"), 4).retry


def test_at_most_once_never_retries() -> None:
    r = Retrier(DlqPolicy(name="p", max_retries=9), Delivery.AT_MOST_ONCE, random=lambda: 0.5)
    d = r.decide(ValueError("x"), 1)
    assert (d.retry, d.reason) == (False, "at-most-once never retries")


def test_no_retry_on_matches_base_classes_and_dotted_names() -> None:
    err = json.JSONDecodeError("bad", "doc", 0)
    assert exception_matches(err, ("ValueError",))
    assert exception_matches(err, ("json.decoder.JSONDecodeError",))
    assert not exception_matches(err, ("decoder.JSONDecodeError",))
    assert exception_matches(ph.ValidationError("x"), (f"{H}.ValidationError",))
    assert not exception_matches(KeyError("k"), ("ValueError", "ValidationError"))
    r = Retrier(DlqPolicy(name="p", no_retry_on=("ValueError",)), Delivery.AT_LEAST_ONCE,
                random=lambda: 0.5)
    d = r.decide(err, 1)
    assert (d.retry, d.reason) == (False, "JSONDecodeError is in no_retry_on")


# ------------------------------------------------------------------ dead-letter header


def test_error_type_names() -> None:
    assert error_type(ValueError("x")) == "ValueError"
    assert error_type(ph.ValidationError("x")) == f"{H}.ValidationError"
    assert error_type(json.JSONDecodeError("m", "d", 0)) == "json.decoder.JSONDecodeError"


def test_death_for_a_queue_message_has_the_exact_fields() -> None:
    msg = QueueMessage.from_delivery(_delivery())
    try:
        raise ph.ValidationError("Invalid order_id format")
    except ph.ValidationError as exc:
        death = build_death(msg, exc, retry_count=4, first_attempt=1705312800.0,
                            last_attempt=1705312830.0, consumer_id="c-3@host")
    trace = death["error"].pop("stack_trace")
    assert "Traceback" in trace and "Invalid order_id format" in trace
    assert death == {
        "reason": "handler_error",
        "error": {"type": f"{H}.ValidationError", "message": "Invalid order_id format"},
        "retry_count": 4, "first_attempt": "2024-01-15T10:00:00Z",
        "last_attempt": "2024-01-15T10:00:30Z", "original_queue": "q",
        "original_exchange": "ex", "original_routing_key": "rk", "consumer_id": "c-3@host",
        "death_count": 1,
    }


def test_death_for_a_topic_record_and_death_count() -> None:
    rec = Record("t", 2, 41, 5, b"k", b"raw", {"x-replay-count": 2})
    msg = TopicMessage.from_record(rec)
    death = build_death(msg, RuntimeError("boom"), retry_count=0, first_attempt=None,
                        last_attempt=None, consumer_id="g-1@h", group="g")
    assert {k: death[k] for k in ("original_topic", "original_partition", "original_offset",
                                  "original_group", "first_attempt", "death_count")} == {
        "original_topic": "t", "original_partition": 2, "original_offset": 41,
        "original_group": "g", "first_attempt": None, "death_count": 3,
    }
    assert "original_queue" not in death
    assert iso_utc(0.25) == "1970-01-01T00:00:00.250Z"


# ------------------------------------------------------------------ handlers


def test_resolve_and_check_handlers() -> None:
    assert resolve(f"{H}:ok") is ph.ok
    assert resolve(f"{H}:Holder.method") == ph.Holder.method
    topo = Topology(
        consumers=(("c1", Consumer("c1", "q", f"{H}:nope")),
                   ("c2", Consumer("c2", "q", f"{H}:ok"))),
        consumer_groups=(("g", ConsumerGroup("g", ("t",), handler="no_such_mod_xyz:f")),
                         ("ext", ConsumerGroup("ext", ("t",)))),
    )
    assert [(n, r, SEARCHED.sub("", m)) for n, r, m in check_handlers(topo)] == [
        ("c1", f"{H}:nope",
         f"consumer 'c1': handler '{H}:nope': module '{H}' has no attribute 'nope'"),
        ("g", "no_such_mod_xyz:f",
         "consumer 'g': handler 'no_such_mod_xyz:f': cannot import module 'no_such_mod_xyz': "
         "ModuleNotFoundError: No module named 'no_such_mod_xyz'"),
    ]


# a module that is not found says where it was looked for (tested in tests/e2e)
SEARCHED = re.compile(r" \(searched sys\.path: [^)]*\)$")


@pytest.mark.parametrize(("ref", "message"), [
    ("justamodule", "consumer 'c': handler 'justamodule' is not of the form "
                    "'package.module:callable'"),
    (f"{H}:NOT_CALLABLE", f"consumer 'c': handler '{H}:NOT_CALLABLE': 'NOT_CALLABLE' is a "
                          "int, not a callable"),
    ("tests.pipeline.pipeline_broken:f", "consumer 'c': handler "
     "'tests.pipeline.pipeline_broken:f': cannot import module 'tests.pipeline.pipeline_broken'"
     ": ModuleNotFoundError: No module named 'tests.pipeline.pipeline_broken'"),
])
def test_resolve_errors(ref: str, message: str) -> None:
    with pytest.raises(HandlerImportError) as info:
        resolve(ref, consumer="c")
    assert SEARCHED.sub("", str(info.value)) == message


def test_handler_call_sync_async_context_and_timeout() -> None:
    msg = QueueMessage.from_delivery(_delivery())

    async def go() -> list[object]:
        out: list[object] = []
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            for ref in ("ok", "async_ok", "with_ctx", "async_with_ctx"):
                h = Handler.load(f"{H}:{ref}")
                ctx = Context("c", msg)
                await h.call(msg, ctx, timeout_s=5, executor=pool)
                staged = ctx.close()
                out.append((ref, h.is_async, h.wants_context,
                            len(staged.publishes) + len(staged.appends)))
            slow = Handler.load(f"{H}:slow_sync")
            t0 = time.monotonic()
            with pytest.raises(HandlerTimeout) as info:
                await slow.call(msg, Context("c", msg), timeout_s=0.05, executor=pool)
            out.append(str(info.value))
            out.append(time.monotonic() - t0 < 0.3)
            with pytest.raises(HandlerTimeout):
                await Handler.load(f"{H}:slow_async").call(
                    msg, Context("c", msg), timeout_s=0.05, executor=pool)
            with pytest.raises(TimeoutError) as own:
                await Handler.load(f"{H}:raises_timeout").call(
                    msg, Context("c", msg), timeout_s=5, executor=pool)
            out.append(type(own.value).__name__)
        return out

    assert asyncio.run(go()) == [
        ("ok", False, False, 0), ("async_ok", True, False, 0), ("with_ctx", False, True, 1),
        ("async_with_ctx", True, True, 1),
        f"handler '{H}:slow_sync' did not finish within 0.05s", True, "TimeoutError",
    ]


def test_context_stages_and_refuses_after_close() -> None:
    msg = QueueMessage.from_delivery(_delivery())
    ctx = Context("c", msg)
    ctx.publish("ex", "a.b", {"n": 1}, headers={"h": 1}, priority=3)
    ctx.append("t", b"raw", key="k")
    ctx.append("t", None, key={"id": 1})
    out = ctx.close()
    assert [(e, m.body, m.routing_key, m.priority, m.content_type) for e, m in out.publishes] == [
        ("ex", b'{"n":1}', "a.b", 3, "application/json")]
    assert [(t, r.value, r.key) for t, r in out.appends] == [
        ("t", b"raw", b"k"), ("t", None, b'{"id":1}')]
    with pytest.raises(ContextClosed) as info:
        ctx.publish("ex", "k", 1)
    assert str(info.value) == "the call of consumer 'c' is over"
    with pytest.raises(TypeError) as bad:
        Context("c", msg).publish("ex", "k", object())
    assert str(bad.value).startswith("cannot encode object as JSON")


def test_bodies_and_keys() -> None:
    assert decode_body(b'{"a": [1]}') == {"a": [1]}
    assert decode_body(b"\x00not json") == b"\x00not json"
    assert decode_body(None) is None
    assert encode_body(b"x") == (b"x", None)
    assert encode_body("s") == (b'"s"', "application/json")
    assert (encode_key(None), encode_key("é"), encode_key(5)) == (None, "é".encode(), b"5")
    msg = TopicMessage.from_record(Record("t", 0, 9, 1, None, b"[1]", {}))
    assert (msg.message_id, msg.body, msg.key) == ("t/0/9", [1], None)


# ------------------------------------------------------------------ idempotency


def test_idempotency_keys() -> None:
    msg = QueueMessage.from_delivery(_delivery(body=b'{"order": {"id": 12, "s": "x"}}'))
    assert key_of(msg, Idempotency("message_id", 10)) == "m-1"
    assert key_of(msg, Idempotency("order.id", 10)) == "12"
    assert key_of(msg, Idempotency("order.s", 10)) == "x"
    assert key_of(msg, Idempotency("order.missing", 10)) is None


def test_idempotency_store_survives_restart_expires_and_truncates_torn_tail(
    tmp_path: Path,
) -> None:
    clock = ManualClock()
    path = tmp_path / "idem" / "c.keys"
    store = IdempotencyStore(path, window_s=60, clock=clock)
    store.record("a")
    clock.advance(30)
    store.record("b")
    store.close()
    with open(path, "ab") as f:
        f.write(b"deadbeef [1,")  # a torn write
    again = IdempotencyStore(path, window_s=60, clock=clock)
    assert (again.seen("a"), again.seen("b"), again.seen("c")) == (True, True, False)
    clock.advance(31)
    assert (again.seen("a"), again.seen("b")) == (False, True)
    again.record("c")
    again.close()
    assert path.read_bytes().endswith(b'"c"]\n')
    third = IdempotencyStore(path, window_s=60, clock=clock)
    assert (len(third), third.seen("a"), third.seen("c")) == (2, False, True)
    third.close()


def test_idempotency_store_compacts(tmp_path: Path) -> None:
    clock = ManualClock()
    path = tmp_path / "c.keys"
    store = IdempotencyStore(path, window_s=1, clock=clock, fsync=False)
    for i in range(3000):
        store.record(f"k{i}")
        clock.advance(0.01)
    store.close()
    lines = path.read_bytes().count(b"\n")
    assert lines < 2100  # rewritten at least once: ~100 live keys, not 3000 lines
    reopened = IdempotencyStore(path, window_s=1, clock=clock, fsync=False)
    assert reopened.seen("k2999") and not reopened.seen("k0")
    reopened.close()



def test_a_call_waiting_for_a_pool_thread_is_not_charged_for_the_wait() -> None:
    msg = QueueMessage.from_delivery(_delivery())
    ph.reset()

    async def go() -> float:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            with pytest.raises(HandlerTimeout):  # overruns and keeps the only thread ~0.3 s
                await Handler.load(f"{H}:slow_sync").call(msg, Context("c", msg),
                                                          timeout_s=0.05, executor=pool)
            t0 = time.monotonic()
            await Handler.load(f"{H}:ok").call(msg, Context("c", msg), timeout_s=0.1,
                                               executor=pool)
            return time.monotonic() - t0

    waited = asyncio.run(go())
    assert waited > 0.15  # it queued behind the overrunning call, then ran and succeeded
    assert [e["id"] for e in ph.SEEN] == ["3"]  # body {"id": 3}
