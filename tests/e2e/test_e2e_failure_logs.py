"""Failure logs of the real daemon: outputs that cannot be applied are logged and counted
like a handler failure (issue 8 item 10), and a failure storm writes a few lines."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from tests.e2e.conftest import Daemon, wait_for

pytestmark = pytest.mark.e2e

TOPOLOGY = """\
version: 1
queues:
  orders: {}
  storm: {}
  dead: {}
dlq_policies:
  park: {max_retries: 0, dead_letter_queue: dead}
consumers:
  billing: {queue: orders, handler: "h:bill", dlq_policy: park}
  stormy: {queue: storm, handler: "h:fail", dlq_policy: park}
"""

HANDLERS = """\
def bill(msg, ctx):
    ctx.publish("payments", "payment.requested", {"id": msg.body})


def fail(msg):
    raise ValueError(f"bad order {msg.body}")
"""


def events(d: Daemon, name: str) -> list[dict[str, object]]:
    out = []
    for line in d.log().splitlines():
        if line.startswith("{"):
            doc = json.loads(line)
            if doc.get("event") == name:
                out.append(doc)
    return out


def test_outputs_that_cannot_be_applied_are_logged_and_counted(
    start_daemon: Callable[..., Daemon],
) -> None:
    d = start_daemon(TOPOLOGY, modules={"h": HANDLERS}, args=["--log-format", "json"])
    d.ok("POST", "/v1/queues/orders/messages", {"body": 1, "message_id": "order-1"}, 202)
    (line,) = wait_for(lambda: events(d, "outputs_failed"))
    assert line["consumer"] == "billing" and line["queue"] == "orders"
    assert line["message_id"] == "order-1" and line["stage"] == "outputs"
    assert line["error_type"] == "runner.errors.NotFound"
    assert line["error"] == "exchange 'payments' not found"
    assert line["level"] == "warning"
    assert ('runner_handler_errors_total{consumer="billing",error_type="runner.errors.NotFound"}'
            ' 1.0') in d.metrics()
    wait_for(lambda: d.ok("GET", "/v1/queues/dead/peek?n=5")["messages"])


def test_a_failure_storm_is_rate_limited(start_daemon: Callable[..., Daemon]) -> None:
    d = start_daemon(TOPOLOGY, modules={"h": HANDLERS}, args=["--log-format", "json"])
    d.ok("POST", "/v1/queues/storm/messages",
         {"messages": [{"body": i} for i in range(2000)]}, 202)
    wait_for(lambda: len(d.ok("GET", "/v1/queues/dead/peek?n=1000")["messages"]) == 1000,
             timeout_s=60)
    wait_for(lambda: 'error_type="ValueError"} 2000.0' in d.metrics(), timeout_s=60)
    lines = events(d, "handler_failed")
    assert 1 <= len(lines) <= 3, lines  # one per 10 s window
    first = lines[0]
    assert first["consumer"] == "stormy" and first["queue"] == "storm"
    assert first["error_type"] == "ValueError" and str(first["error"]).startswith("bad order ")
    assert isinstance(first["delivery_id"], int)
