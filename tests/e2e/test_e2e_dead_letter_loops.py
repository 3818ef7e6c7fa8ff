"""Issue 8 items 1 and 2 through the real daemon over HTTP: dead-letter cycles through
queues that drop or refuse on arrival answer at once, and the daemon stays responsive."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.daemon.promtool import check_metrics
from tests.e2e.conftest import Answer, Daemon

pytestmark = pytest.mark.e2e

DROP_CYCLE = """\
version: 1
exchanges: {x1: {type: fanout}, x2: {type: fanout}}
queues:
  q1: {max_length: 0, message_ttl: 60s, dead_letter: {exchange: x2}}
  q2: {max_length: 0, dead_letter: {exchange: x1}}
bindings: [{exchange: x1, queue: q1}, {exchange: x2, queue: q2}]
"""

REJECT_CYCLE = """\
version: 1
exchanges: {x1: {type: fanout}, x2: {type: fanout}}
queues:
  q1: {max_length: 1, overflow: reject-publish-dlx, message_ttl: 60s,
       dead_letter: {exchange: x2}}
  q2: {max_length: 1, overflow: reject-publish-dlx, dead_letter: {exchange: x1}}
bindings: [{exchange: x1, queue: q1}, {exchange: x2, queue: q2}]
"""


def metric(d: Daemon, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(d.metrics()):
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return s.value
    raise AssertionError(f"{name}{labels} not in /metrics")


def test_drop_on_arrival_cycle_answers_and_the_daemon_stays_alive(
    start_daemon: Callable[..., Daemon],
) -> None:
    d = start_daemon(DROP_CYCLE)
    got: list[Answer] = []
    publisher = threading.Thread(
        target=lambda: got.append(d.post("/v1/queues/q1/messages", {"body": "m1"})),
        daemon=True)
    started = time.monotonic()
    publisher.start()
    publisher.join(timeout=10)
    assert got, "the publish did not answer within 10 s"
    assert (got[0].status, got[0].body) == (202, {"routed": ["q1"]})
    assert time.monotonic() - started < 10
    assert d.get("/healthz").status == 200
    for queue in ("q1", "q2"):
        assert metric(d, "runner_queue_dead_lettered_total", queue=queue,
                      reason="maxlen") == 1
        assert metric(d, "runner_queue_dead_letter_loops_total", queue=queue) == 0
        assert d.ok("GET", f"/v1/queues/{queue}/peek?n=10")["messages"] == []
    time.sleep(1.2)  # ticks pass: nothing keeps bouncing
    assert metric(d, "runner_queue_dead_lettered_total", queue="q1", reason="maxlen") == 1
    result = check_metrics(d.metrics())
    assert result.returncode == 0, result.stdout + result.stderr
    d.signal(signal.SIGTERM)
    assert d.wait(timeout_s=20) == 0
    assert "Traceback" not in d.log()


def test_two_full_reject_publish_dlx_queues_keep_their_messages(
    start_daemon: Callable[..., Daemon],
) -> None:
    d = start_daemon(REJECT_CYCLE)
    assert d.post("/v1/queues/q1/messages", {"body": "m1"}).status == 202
    assert d.post("/v1/queues/q2/messages", {"body": "m2"}).status == 202
    refused = d.post("/v1/queues/q1/messages", {"body": "m3"})
    assert refused.status == 429, refused.body
    time.sleep(1.2)  # a second of ticks: the refused m3 must not bounce between them
    for queue, body in (("q1", "m1"), ("q2", "m2")):
        assert metric(d, "runner_queue_dead_lettered_total", queue=queue,
                      reason="maxlen") == 1
        msgs = d.ok("GET", f"/v1/queues/{queue}/peek?n=10")["messages"]
        assert [m["body"] for m in msgs] == [body]
        assert "x-dead-letter" not in msgs[0]["headers"]
