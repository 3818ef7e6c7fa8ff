"""OpenTelemetry spans (the otel extra) with the SDK's in-memory exporter: a real
daemon (engine, pipeline, HTTP) in this process; one trace runs from an HTTP publish
through two chained handlers, with publish, route, deliver, handle and settle spans
and the messaging semantic conventions."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from runner.daemon.supervisor import real_parts
from runner.pipeline import otel
from tests.daemon.harness import Client, run_daemon
from tests.spans import in_memory_spans

TOPOLOGY = """\
version: 1
name: traced
exchanges:
  orders: {type: topic}
queues:
  incoming: {}
topics:
  shipped: {partitions: 1}
bindings:
  - {exchange: orders, queue: incoming, routing_key: "order.*"}
consumers:
  first: {queue: incoming, handler: "traced_handlers:first"}
consumer_groups:
  second: {topic: shipped, handler: "traced_handlers:second"}
"""

HANDLERS = """\
SEEN = []

async def first(msg, ctx):
    SEEN.append(("first", msg.trace))
    ctx.append("shipped", {"order": msg.body["order"]})

def second(msg, ctx):
    SEEN.append(("second", msg.trace))
"""

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"


@pytest.fixture(scope="module")
def exporter() -> Iterator[InMemorySpanExporter]:
    with in_memory_spans() as spans:
        yield spans


def test_without_configuration_there_are_no_spans(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(trace, "get_tracer_provider", lambda: trace.ProxyTracerProvider())
    assert otel.from_environment({}) is None
    assert otel.from_environment({"OTEL_TRACES_EXPORTER": "none"}) is None
    assert otel.from_environment({"OTEL_SDK_DISABLED": "true",
                                  "OTEL_TRACES_EXPORTER": "console"}) is None


def test_one_trace_runs_from_an_http_publish_through_two_chained_handlers(
    tmp_path: Path, exporter: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch,
) -> None:
    (tmp_path / "traced_handlers.py").write_text(HANDLERS)
    monkeypatch.syspath_prepend(str(tmp_path))
    exporter.clear()
    got: dict[str, Any] = {}

    async def scenario(c: Client) -> None:
        headers = {"traceparent": f"00-{TRACE_ID}-{PARENT}-01", "tracestate": "vendor=1"}
        async with c.session.post(f"{c.url}/v1/exchanges/orders/messages", headers=headers,
                                  json={"routing_key": "order.new", "body": {"order": 7},
                                        "message_id": "m-7"}) as r:
            assert r.status == 202
        for _ in range(200):
            if len([s for s in exporter.get_finished_spans() if s.name == "settle shipped"]):
                break
            await asyncio.sleep(0.05)
        status, body, _ = await c.call("GET", "/v1/topics/shipped/partitions/0/records?offset=0")
        got["record"] = body["records"][0]

    run_daemon(tmp_path, TOPOLOGY, scenario, parts=real_parts())
    handlers = sys.modules["traced_handlers"]
    spans = exporter.get_finished_spans()
    by_name = {s.name: s for s in spans}
    assert set(by_name) >= {
        "publish orders", "route orders", "deliver incoming", "handle first", "settle incoming",
        "deliver shipped", "handle second", "settle shipped"}
    # one trace, the producer's
    assert {f"{s.context.trace_id:032x}" for s in spans} == {TRACE_ID}
    span_id = {name: f"{s.context.span_id:016x}" for name, s in by_name.items()}
    parent = {name: s.parent and f"{s.parent.span_id:016x}" for name, s in by_name.items()}
    assert parent["publish orders"] == PARENT
    assert parent["route orders"] == span_id["publish orders"]
    assert parent["deliver incoming"] == span_id["publish orders"]
    assert parent["handle first"] == parent["settle incoming"] == span_id["deliver incoming"]
    # the record the first handler appended carries its handle span: the next stage hangs there
    assert parent["deliver shipped"] == span_id["handle first"]
    assert parent["handle second"] == span_id["deliver shipped"]
    assert got["record"]["headers"]["traceparent"] == (
        f"00-{TRACE_ID}-{span_id['handle first']}-01")
    assert got["record"]["headers"]["tracestate"] == "vendor=1"
    # the handlers saw it as msg.trace
    (first, first_trace), (second, second_trace) = handlers.SEEN
    assert (first, first_trace.trace_id, first_trace.span_id, first_trace.state) == (
        "first", TRACE_ID, span_id["publish orders"], "vendor=1")
    assert (second, second_trace.span_id) == ("second", span_id["handle first"])
    # the messaging semantic conventions
    deliver = by_name["deliver incoming"]
    assert deliver.kind is trace.SpanKind.CONSUMER
    assert by_name["publish orders"].kind is trace.SpanKind.PRODUCER
    assert dict(deliver.attributes or {}).items() >= {
        "messaging.system": "topology-runner", "messaging.operation.name": "deliver",
        "messaging.operation.type": "receive", "messaging.destination.name": "incoming",
        "messaging.consumer.group.name": "first", "messaging.message.id": "m-7"}.items()
    assert [f"{link.context.span_id:016x}" for link in deliver.links] == [
        span_id["publish orders"]]
    assert by_name["route orders"].attributes["messaging.runner.routed"] == ("incoming",)
    assert by_name["settle shipped"].attributes["messaging.runner.settle"] == "commit"
    assert by_name["deliver shipped"].attributes["messaging.destination.partition.id"] == "0"


RPC_TOPOLOGY = """\
version: 1
name: traced-rpc
exchanges:
  rpc: {type: direct}
queues:
  callers: {}
  work: {}
  flaky: {}
  dead: {}
  unanswered: {}
topics:
  events: {partitions: 1}
bindings:
  - {exchange: rpc, queue: work, routing_key: double}
  - {exchange: rpc, queue: unanswered, routing_key: nobody}
dlq_policies:
  twice: {max_retries: 2, backoff: [20ms, 40ms], dead_letter_queue: dead}
consumers:
  caller: {queue: callers, handler: "traced_rpc:caller"}
  doubler: {queue: work, handler: "traced_rpc:double"}
  flaky: {queue: flaky, handler: "traced_rpc:flaky", dlq_policy: twice}
consumer_groups:
  flakygroup: {topic: events, handler: "traced_rpc:flaky", dlq_policy: twice}
"""

RPC_HANDLERS = """\
GOT = []

async def caller(msg, ctx):
    key = msg.body.get("key", "double")
    try:
        GOT.append(await ctx.request("rpc", key, {"n": msg.body["n"]},
                                     timeout=msg.body.get("timeout", 5)))
    except Exception as exc:
        GOT.append(type(exc).__name__)

def double(msg):
    return {"doubled": msg.body["n"] * 2}

def flaky(msg):
    raise ValueError("never works")
"""


def test_ctx_request_has_a_client_span_and_retries_and_the_dead_letter_are_events(
    tmp_path: Path, exporter: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch,
) -> None:
    (tmp_path / "traced_rpc.py").write_text(RPC_HANDLERS)
    monkeypatch.syspath_prepend(str(tmp_path))
    exporter.clear()

    def names() -> list[str]:
        return [s.name for s in exporter.get_finished_spans()]

    async def scenario(c: Client) -> None:
        for queue, body in (("callers", {"n": 21}), ("flaky", {"n": 1}),
                            ("callers", {"n": 0, "key": "nobody", "timeout": 0.2})):
            status, _, _ = await c.call("POST", f"/v1/queues/{queue}/messages",
                                        {"body": body})
            assert status == 202
        status, _, _ = await c.call("POST", "/v1/topics/events/records",
                                    {"records": [{"value": {"n": 2}}]})
        assert status in (200, 201, 202)
        for _ in range(200):
            if (names().count("settle callers") == 2 and names().count("settle flaky") == 3
                    and names().count("settle events") == 3):
                break
            await asyncio.sleep(0.05)

    run_daemon(tmp_path, RPC_TOPOLOGY, scenario, parts=real_parts())
    assert sys.modules["traced_rpc"].GOT == [{"doubled": 42}, "ReplyTimeout"]
    spans = exporter.get_finished_spans()
    requests = sorted((s for s in spans if s.name == "request rpc"), key=lambda s: s.start_time)
    assert len(requests) == 2
    # the unanswered request: error status, no reply event
    timed_out = requests[1]
    assert timed_out.status.status_code is trace.StatusCode.ERROR
    assert dict(timed_out.attributes or {})["error.type"] == "ReplyTimeout"
    assert [e.name for e in timed_out.events] == ["exception"]
    # the answered request's trace (each HTTP publish without traceparent starts one)
    by_name = {s.name: s for s in spans if s.context.trace_id == requests[0].context.trace_id}
    span_id = {name: s.context.span_id for name, s in by_name.items()}

    # ctx.request: a client span under the caller's handle span; the request
    # message carries it, so the answering handler's deliver span hangs under it
    request = by_name["request rpc"]
    assert request.kind is trace.SpanKind.CLIENT
    assert request.parent is not None and request.parent.span_id == span_id["handle caller"]
    assert by_name["deliver work"].parent.span_id == span_id["request rpc"]
    assert request.context.trace_id == by_name["publish callers"].context.trace_id == (
        by_name["handle doubler"].context.trace_id)
    attrs = dict(request.attributes or {})
    assert attrs.items() >= {
        "messaging.operation.name": "request", "messaging.operation.type": "send",
        "messaging.destination.name": "rpc",
        "messaging.rabbitmq.destination.routing_key": "double",
        "messaging.runner.timeout_s": 5}.items()
    assert attrs["messaging.message.conversation_id"]
    assert [(e.name, dict(e.attributes or {})) for e in request.events] == [
        ("reply", {"messaging.runner.reply.error": False,
                   "messaging.message.body.size": len(b'{"doubled":42}')})]
    assert request.end_time <= by_name["handle caller"].end_time

    # retries: each attempt its own deliver/handle/settle with its number; the
    # settle span of a failed attempt has a retry event (attempt, delay), the
    # last one the dead letter
    flaky = sorted((s for s in spans if s.name == "settle flaky"), key=lambda s: s.start_time)
    assert [s.attributes["messaging.runner.attempt"] for s in flaky] == [1, 2, 3]
    assert [s.attributes["messaging.runner.settle"] for s in flaky] == [
        "retry", "retry", "dead_letter"]
    events = [[(e.name, dict(e.attributes or {})) for e in s.events] for s in flaky]
    assert events == [
        [("retry", {"messaging.runner.attempt": 1, "messaging.runner.retry.delay_s": 0.02,
                    "messaging.runner.retry.next_attempt": 2})],
        [("retry", {"messaging.runner.attempt": 2, "messaging.runner.retry.delay_s": 0.04,
                    "messaging.runner.retry.next_attempt": 3})],
        [("dead_letter", {"messaging.runner.attempt": 3,
                          "messaging.runner.dead_letter.reason": "handler_error",
                          "messaging.runner.dead_letter.why": "2 retries exhausted",
                          "messaging.runner.dead_letter.target": "queue dead"})],
    ]
    handles = sorted((s for s in spans if s.name == "handle flaky"), key=lambda s: s.start_time)
    assert [s.attributes["messaging.runner.attempt"] for s in handles] == [1, 2, 3]
    assert all(s.status.status_code is trace.StatusCode.ERROR for s in handles)

    # a group retries in place: the same, each attempt a call of its own
    group = sorted((s for s in spans if s.name == "settle events"), key=lambda s: s.start_time)
    assert [[(e.name, dict(e.attributes or {})) for e in s.events] for s in group] == [
        [("retry", {"messaging.runner.attempt": 1, "messaging.runner.retry.delay_s": 0.02,
                    "messaging.runner.retry.next_attempt": 2})],
        [("retry", {"messaging.runner.attempt": 2, "messaging.runner.retry.delay_s": 0.04,
                    "messaging.runner.retry.next_attempt": 3})],
        [("dead_letter", {"messaging.runner.attempt": 3,
                          "messaging.runner.dead_letter.reason": "handler_error",
                          "messaging.runner.dead_letter.why": "2 retries exhausted",
                          "messaging.runner.dead_letter.target": "queue dead"})],
    ]
