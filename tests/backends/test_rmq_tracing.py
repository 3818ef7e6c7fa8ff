"""OpenTelemetry spans of `runner run --backend amqp://...` with the SDK's in-memory
exporter: the remote daemon (HTTP, pipeline, the real RabbitMQ) in this process. An
HTTP publish opens a `publish` producer span and a `route` span, as on the embedded
daemon, and the handler's spans over RabbitMQ join the same trace; so does a `?wait=`
request's."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from runner.backends.rabbitmq.url import Target
from runner.daemon.remote import RemoteDaemon
from runner.daemon.supervisor import DaemonConfig
from runner.topology.load import load
from tests.spans import in_memory_spans

TOPOLOGY = """\
version: 1
name: rmq-traced
exchanges:
  orders: {type: topic}
queues:
  incoming: {}
bindings:
  - {exchange: orders, queue: incoming, routing_key: "order.*"}
consumers:
  first: {queue: incoming, handler: "rmq_traced_handlers:first"}
"""

HANDLERS = """\
async def first(msg, ctx):
    return {"order": msg.body["order"], "ok": True}
"""

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"


@pytest.fixture(scope="module")
def exporter() -> Iterator[InMemorySpanExporter]:
    with in_memory_spans() as spans:
        yield spans


def test_an_http_publish_opens_a_publish_span_the_handler_joins(
    tmp_path: Path, vhost: Target, exporter: InMemorySpanExporter,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    (tmp_path / "topology.yaml").write_text(TOPOLOGY)
    (tmp_path / "rmq_traced_handlers.py").write_text(HANDLERS)
    monkeypatch.syspath_prepend(str(tmp_path))
    exporter.clear()
    loaded = load(str(tmp_path / "topology.yaml"))
    assert loaded.topology is not None
    config = DaemonConfig(path=tmp_path / "topology.yaml", data_dir=tmp_path / "data", port=0)
    daemon = RemoteDaemon(config, loaded.topology, loaded.content_hash, vhost)
    got: dict[str, Any] = {}

    async def scenario() -> None:
        listening: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        serving = asyncio.create_task(daemon.serve(
            ready=lambda host, port: listening.set_result(port)))
        port = await asyncio.wait_for(listening, 30)
        url = f"http://127.0.0.1:{port}"
        try:
            async with aiohttp.ClientSession() as session:
                headers = {"traceparent": f"00-{TRACE_ID}-{PARENT}-01"}
                async with session.post(f"{url}/v1/exchanges/orders/messages",
                                        headers=headers,
                                        json={"routing_key": "order.new",
                                              "body": {"order": 7}}) as r:
                    got["publish"] = (r.status, await r.json())
                async with session.post(f"{url}/v1/queues/incoming/messages?wait=10s",
                                        json={"body": {"order": 8}}) as r:
                    got["request"] = (r.status, await r.json())
            for _ in range(200):
                if len([s for s in exporter.get_finished_spans()
                        if s.name == "handle first"]) == 2:
                    break
                await asyncio.sleep(0.05)
        finally:
            daemon.stop()
            await serving

    asyncio.run(scenario())
    assert got["publish"] == (202, {"routed": ["incoming"]})
    assert got["request"][0] == 200 and got["request"][1]["body"] == {"order": 8, "ok": True}
    spans = exporter.get_finished_spans()
    traced = [s for s in spans if f"{s.context.trace_id:032x}" == TRACE_ID]
    by_name = {s.name: s for s in traced}
    assert set(by_name) >= {"publish orders", "route orders", "deliver incoming",
                            "handle first", "settle incoming"}, sorted(by_name)
    span_id = {name: f"{s.context.span_id:016x}" for name, s in by_name.items()}
    parent = {name: s.parent and f"{s.parent.span_id:016x}" for name, s in by_name.items()}
    assert parent["publish orders"] == PARENT
    assert parent["route orders"] == span_id["publish orders"]
    assert parent["deliver incoming"] == span_id["publish orders"]
    publish = by_name["publish orders"]
    assert publish.kind is trace.SpanKind.PRODUCER
    assert dict(publish.attributes or {}).items() >= {
        "messaging.system": "topology-runner", "messaging.operation.name": "publish",
        "messaging.destination.name": "orders",
        "messaging.runner.destination.kind": "exchange"}.items()
    assert by_name["route orders"].attributes["messaging.runner.routed"] == ("incoming",)
    # the request-reply publish is a trace of its own, through the same handler
    (queued,) = [s for s in spans if s.name == "publish incoming"]
    (routed,) = [s for s in spans if s.name == "route incoming"]
    assert routed.parent is not None and routed.parent.span_id == queued.context.span_id
    assert queued.attributes["messaging.runner.destination.kind"] == "queue"
    handled = [s for s in spans if s.name == "deliver incoming"
               and s.context.trace_id == queued.context.trace_id]
    assert len(handled) == 1
