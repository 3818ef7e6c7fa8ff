"""W3C trace context through the real daemon, headers only (no OpenTelemetry set up):
`traceparent` / `tracestate` on an HTTP publish or append ride in the message headers
through routing into the handler (`msg.trace`) and onto everything it publishes,
appends and replies: the same trace id, the handler's span id as the new parent."""

from __future__ import annotations

import json
import re

import pytest

from tests.e2e.conftest import Daemon, module_daemon, wait_for

pytestmark = pytest.mark.e2e

TOPOLOGY = """\
version: 1
name: traced
exchanges:
  orders: {type: topic}
queues:
  incoming: {}
  out: {}
topics:
  events: {partitions: 1}
bindings:
  - {exchange: orders, queue: incoming, routing_key: "order.*"}
consumers:
  stage: {queue: incoming, handler: "trace_handlers:stage"}
consumer_groups:
  reader: {topic: events, handler: "trace_handlers:reader"}
"""

HANDLERS = """\
import json

def _seen(name, msg):
    t = msg.trace
    with open("seen.jsonl", "a") as f:
        f.write(json.dumps({"who": name, "trace": None if t is None else
                            [t.trace_id, t.span_id, t.flags, t.state]}) + "\\n")

def stage(msg, ctx):
    _seen("stage", msg)
    ctx.append("events", {"from": "stage"})
    return {"ok": True}

def reader(msg, ctx):
    _seen("reader", msg)
"""

TRACE = "0af7651916cd43dd8448eb211c80319c"
PARENT = "b7ad6b7169203331"


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    yield from module_daemon(tmp_path_factory.mktemp("trace"), TOPOLOGY,
                             modules={"trace_handlers": HANDLERS}, args=["--fsync", "never"])


def _seen(d: Daemon) -> list[dict[str, object]]:
    path = d.workdir / "seen.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_trace_context_travels_from_an_http_publish_through_two_handlers(
    daemon: Daemon,
) -> None:
    headers = {"traceparent": f"00-{TRACE}-{PARENT}-01", "tracestate": "congo=t61rcWkgMzE"}
    got = daemon.post("/v1/exchanges/orders/messages?wait=10s",
                      {"routing_key": "order.new", "body": {"n": 1}}, headers=headers)
    assert got.status == 200, got.body
    seen = wait_for(lambda: len(_seen(daemon)) >= 2 and _seen(daemon))
    (stage,) = [s for s in seen if s["who"] == "stage"]
    (reader,) = [s for s in seen if s["who"] == "reader"]
    # the handler sees the producer's context as it came in
    assert stage["trace"] == [TRACE, PARENT, "01", "congo=t61rcWkgMzE"]
    # what it appended carries the same trace with a new parent span id (its own)
    trace_id, span_id, flags, state = reader["trace"]  # type: ignore[misc]
    assert (trace_id, flags, state) == (TRACE, "01", "congo=t61rcWkgMzE")
    assert re.fullmatch(r"[0-9a-f]{16}", span_id) and span_id != PARENT
    record = daemon.ok("GET", "/v1/topics/events/partitions/0/records?offset=0")["records"][0]
    assert record["headers"]["traceparent"] == f"00-{TRACE}-{span_id}-01"
    # and its reply too, under the same handler span
    assert got.body["headers"]["traceparent"] == f"00-{TRACE}-{span_id}-01"


def test_a_malformed_traceparent_is_ignored_and_an_append_carries_a_good_one(
    daemon: Daemon,
) -> None:
    bad = {"traceparent": f"00-{TRACE}-{'0' * 16}-01"}  # an all-zero parent id is invalid
    daemon.ok("POST", "/v1/queues/out/messages", {"body": 1}, 202)
    answer = daemon.request("POST", "/v1/queues/out/messages", {"body": 2}, headers=bad)
    assert answer.status == 202
    peeked = daemon.ok("GET", "/v1/queues/out/peek?n=10")["messages"]
    assert [("traceparent" in m["headers"]) for m in peeked] == [False, False]
    good = {"traceparent": f"00-{TRACE}-{PARENT}-00"}
    answer = daemon.request("POST", "/v1/topics/events/records", {"value": 3}, headers=good)
    assert answer.status == 202
    records = daemon.ok("GET", "/v1/topics/events/partitions/0/records?offset=0")["records"]
    assert records[-1]["headers"] == {"traceparent": f"00-{TRACE}-{PARENT}-00"}
