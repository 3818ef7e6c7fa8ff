"""W3C trace context parsing (runner.pipeline.tracing) and the context's outputs carrying it."""

from __future__ import annotations

import pytest

from runner.pipeline.message import Context, QueueMessage
from runner.pipeline.tracing import TraceContext, parse

T = "4bf92f3577b34da6a3ce929d0e0e4736"
S = "00f067aa0ba902b7"


@pytest.mark.parametrize(("value", "state", "want"), [
    (f"00-{T}-{S}-01", None, TraceContext(T, S, "01")),
    (f"00-{T}-{S}-00", "a=1,b=2", TraceContext(T, S, "00", "a=1,b=2")),
    (f"00-{T}-{S}-01".encode(), b"k=v", TraceContext(T, S, "01", "k=v")),
    (f"01-{T}-{S}-01-future", None, TraceContext(T, S, "01")),  # a later version may add fields
    (f"00-{T}-{S}-01", "x" * 513, TraceContext(T, S, "01")),  # over the limit: state dropped
    (f"00-{T}-{S}-01-extra", None, None),  # version 00 has exactly four fields
    (f"ff-{T}-{S}-01", None, None),
    (f"00-{T.upper()}-{S}-01", None, None),
    (f"00-{'0' * 32}-{S}-01", None, None),
    (f"00-{T}-{'0' * 16}-01", None, None),
    (f"00-{T}-{S}", None, None),
    (5, None, None),
])
def test_traceparent_is_parsed_as_the_w3c_spec_says(
    value: object, state: object, want: TraceContext | None,
) -> None:
    assert parse(value, state) == want


def _msg(headers: dict[str, object]) -> QueueMessage:
    return QueueMessage(body=None, payload=b"", headers=headers, message_id=None,
                        redelivered=False, delivery_count=1, queue="q", exchange="",
                        routing_key="q", priority=0, timestamp=0, delivery_id=1)


def test_outputs_carry_the_trace_with_the_handlers_span_unless_they_set_their_own() -> None:
    incoming = TraceContext(T, S, "01", "v=1")
    msg = _msg({"traceparent": incoming.traceparent, "tracestate": "v=1"})
    assert msg.trace == incoming
    out = incoming.child()
    ctx = Context("c", msg, None, out)
    ctx.publish("ex", "k", {"a": 1})
    ctx.append("t", 1)
    ctx.publish("ex", "k", 2, headers={"traceparent": f"00-{'1' * 32}-{'2' * 16}-01"})
    outputs = ctx.close()
    (_, first), (_, own) = outputs.publishes
    (_, record) = outputs.appends[0]
    assert first.headers == record.headers == {
        "traceparent": f"00-{T}-{out.span_id}-01", "tracestate": "v=1"}
    assert out.span_id != S
    assert own.headers == {"traceparent": f"00-{'1' * 32}-{'2' * 16}-01"}
    # a message without trace context sends none
    ctx = Context("c", _msg({}))
    ctx.publish("ex", "k", 1)
    assert ctx.close().publishes[0][1].headers == {}
