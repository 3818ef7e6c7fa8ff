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
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from runner.daemon.supervisor import real_parts
from runner.pipeline import otel
from tests.daemon.harness import Client, run_daemon

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
    spans = InMemorySpanExporter()
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    provider.add_span_processor(SimpleSpanProcessor(spans))
    yield spans
    spans.shutdown()


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
