"""Delivery semantics with real handlers in the real daemon: at-most-once, at-least-once,
exactly-once (with a kill -9 in the middle), retries with real short delays, dead letters."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import Daemon, wait_for

pytestmark = pytest.mark.e2e

HANDLERS = '''\
import json
import os
import time


def _log(name, **fields):
    with open(name, "a") as fh:
        fh.write(json.dumps(fields) + "\\n")


def amo(msg):
    _log("amo.log", body=msg.body, count=msg.delivery_count, t=time.time())
    if msg.body == "fail":
        raise RuntimeError("at-most-once failure")


def alo(msg):
    _log("alo.log", body=msg.body, count=msg.delivery_count, redelivered=msg.redelivered,
         t=time.time())
    if msg.body == "flaky" and msg.delivery_count == 1:
        raise ConnectionError("first attempt fails")


class OrderError(ValueError):
    pass


def always_fail(msg):
    _log("fail.log", body=msg.body, count=msg.delivery_count, t=time.time())
    raise OrderError(f"Invalid order {msg.body['id']}")


def eo_forward(msg, ctx):
    time.sleep(0.004)
    ctx.publish("out-x", "k", {"id": msg.body["id"]})


def eo_append(msg, ctx):
    time.sleep(0.004)
    ctx.append("out-topic", {"id": msg.body["id"]})


def slow(msg):
    _log("slow-start.log", body=msg.body)
    time.sleep(1.0)
    _log("slow-done.log", body=msg.body)
'''

TOPOLOGY = """\
version: 1
name: e2e-delivery
topics:
  in-topic: {partitions: 2}
  out-topic: {partitions: 1}
exchanges:
  out-x: {type: fanout}
queues:
  amo: {}
  alo: {}
  retry-q: {}
  retry.dlq: {}
  eo-in: {}
  eo-out: {}
bindings:
  - {exchange: out-x, queue: eo-out}
dlq_policies:
  fast:
    max_retries: 2
    backoff: [100ms, 200ms]
    dead_letter_queue: retry.dlq
consumers:
  amo-c: {queue: amo, handler: "handlers_e2e:amo", delivery: at-most-once, dlq_policy: fast}
  alo-c: {queue: alo, handler: "handlers_e2e:alo", delivery: at-least-once, dlq_policy: fast}
  retry-c: {queue: retry-q, handler: "handlers_e2e:always_fail", dlq_policy: fast}
  eo-c:
    queue: eo-in
    handler: "handlers_e2e:eo_forward"
    delivery: exactly-once
    concurrency: 2
    dlq_policy: fast
consumer_groups:
  eo-group:
    topic: in-topic
    handler: "handlers_e2e:eo_append"
    delivery: exactly-once
    dlq_policy: fast
"""


def lines(d: Daemon, name: str) -> list[dict[str, object]]:
    path = d.workdir / name
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def depth(d: Daemon, queue: str) -> int:
    status = d.ok("GET", "/v1/status")
    return int({q["name"]: q["ready"] + q["unacked"] for q in status["queues"]}[queue])


def metric(d: Daemon, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(d.metrics()):
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return float(s.value)
    raise AssertionError(f"no sample {name}{labels}")


@pytest.fixture
def daemon(start_daemon: Callable[..., Daemon]) -> Daemon:
    return start_daemon(TOPOLOGY, modules={"handlers_e2e": HANDLERS}, args=["--fsync", "always"])


def test_at_most_once_never_retries_and_dead_letters_a_failure(daemon: Daemon) -> None:
    daemon.ok("POST", "/v1/queues/amo/messages",
              {"messages": [{"body": "a"}, {"body": "fail"}, {"body": "b"}]}, 202)
    wait_for(lambda: depth(daemon, "retry.dlq") == 1)
    time.sleep(0.5)  # a retry would have come after 100 ms
    calls = lines(daemon, "amo.log")
    assert sorted(str(c["body"]) for c in calls) == ["a", "b", "fail"]
    dead = daemon.ok("GET", "/v1/queues/retry.dlq/peek")["messages"][0]
    assert dead["body"] == "fail"
    death = dead["headers"]["x-dead-letter"]
    assert death["reason"] == "handler_error"
    assert death["error"]["type"] == "RuntimeError"
    assert death["retry_count"] == 0


def test_at_least_once_redelivers_a_failed_message(daemon: Daemon) -> None:
    daemon.ok("POST", "/v1/queues/alo/messages", {"messages": [{"body": "flaky"},
                                                                {"body": "fine"}]}, 202)
    wait_for(lambda: len(lines(daemon, "alo.log")) == 3)
    flaky = [c for c in lines(daemon, "alo.log") if c["body"] == "flaky"]
    assert [(c["count"], c["redelivered"]) for c in flaky] == [(1, False), (2, True)]
    assert float(flaky[1]["t"]) - float(flaky[0]["t"]) >= 0.09  # backoff 100 ms
    wait_for(lambda: depth(daemon, "alo") == 0)
    assert depth(daemon, "retry.dlq") == 0
    assert metric(daemon, "runner_handler_retries_total", consumer="alo-c") == 1
    assert metric(daemon, "runner_handler_errors_total", consumer="alo-c",
                  error_type="ConnectionError") == 1


def test_retries_wait_their_backoff_then_dead_letter_with_the_enriched_header(
    daemon: Daemon,
) -> None:
    daemon.ok("POST", "/v1/queues/retry-q/messages", {"body": {"id": 42}, "message_id": "o-42"},
              202)
    wait_for(lambda: depth(daemon, "retry.dlq") == 1)
    calls = lines(daemon, "fail.log")
    assert len(calls) == 3  # first attempt + max_retries 2
    gaps = [float(calls[i + 1]["t"]) - float(calls[i]["t"]) for i in range(2)]
    assert gaps[0] >= 0.09 and gaps[1] >= 0.19, gaps
    dead = daemon.ok("GET", "/v1/queues/retry.dlq/peek")["messages"][0]
    assert dead["body"] == {"id": 42}
    death = dead["headers"]["x-dead-letter"]
    assert death["reason"] == "handler_error"
    assert death["error"]["type"] == "handlers_e2e.OrderError"
    assert death["error"]["message"] == "Invalid order 42"
    assert "always_fail" in death["error"]["stack_trace"]
    assert death["retry_count"] == 2
    assert death["original_queue"] == "retry-q"
    assert death["first_attempt"] and death["last_attempt"]
    assert metric(daemon, "runner_handler_retries_total", consumer="retry-c") == 2
    assert metric(daemon, "runner_handler_errors_total", consumer="retry-c",
                  error_type="handlers_e2e.OrderError") == 3
    assert metric(daemon, "runner_handler_duration_seconds_count", consumer="retry-c") == 3
    assert metric(daemon, "runner_queue_messages_ready", queue="retry.dlq") == 1
    shown = daemon.cli("dlq", "show", "retry.dlq")
    assert shown.returncode == 0
    assert "error:         handlers_e2e.OrderError: Invalid order 42" in shown.stdout
    assert "retries:       2" in shown.stdout
    assert "stack trace:" in shown.stdout
    assert "origin:        queue retry-q" in shown.stdout


def _pull_all(d: Daemon, queue: str) -> list[object]:
    bodies: list[object] = []
    while True:
        got = d.ok("POST", f"/v1/queues/{queue}/pull", {"max": 1000})["messages"]
        if not got:
            return bodies
        bodies += [m["body"]["id"] for m in got]
        d.ok("POST", f"/v1/queues/{queue}/ack", {"delivery_ids": [m["delivery_id"] for m in got]})


def _records(d: Daemon, topic: str) -> list[object]:
    got = d.ok("GET", f"/v1/topics/{topic}/partitions/0/records?offset=0&limit=10000")
    return [r["value"]["id"] for r in got["records"]]


def _feed_exactly_once(d: Daemon, n: int) -> None:
    """Ids 0..n-1 into the exactly-once queue and (over both partitions) its topic."""
    d.ok("POST", "/v1/queues/eo-in/messages",
         {"messages": [{"body": {"id": i}} for i in range(n)]}, 202)
    d.ok("POST", "/v1/topics/in-topic/records",
         {"records": [{"value": {"id": i}, "partition": i % 2} for i in range(n)]}, 202)


def test_exactly_once_survives_kill_9_without_loss_or_duplicates(daemon: Daemon) -> None:
    n = 400
    _feed_exactly_once(daemon, n)
    wait_for(lambda: depth(daemon, "eo-out") > n // 5, every_s=0.01)
    before_kill = depth(daemon, "eo-out")
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGKILL)
    daemon.proc.wait(timeout=30)
    assert before_kill < n, "the work finished before the kill; the test needs more messages"
    daemon.start()
    wait_for(lambda: depth(daemon, "eo-out") == n and depth(daemon, "eo-in") == 0, timeout_s=60)
    wait_for(lambda: len(_records(daemon, "out-topic")) >= n, timeout_s=60)
    time.sleep(0.3)
    outputs = _pull_all(daemon, "eo-out")
    assert sorted(outputs) == list(range(n))  # each input once: nothing lost, no duplicate
    records = _records(daemon, "out-topic")
    assert sorted(records) == list(range(n))


@pytest.mark.torture
@pytest.mark.timeout(600)
def test_exactly_once_survives_repeated_kill_9(daemon: Daemon) -> None:
    n = 2000
    _feed_exactly_once(daemon, n)
    kills = 0
    for round_ in range(8):
        target = n * (round_ + 1) // 10
        wait_for(lambda t=target: depth(daemon, "eo-out") >= t, timeout_s=60, every_s=0.01)
        if depth(daemon, "eo-out") >= n:
            break
        assert daemon.proc is not None
        daemon.proc.send_signal(signal.SIGKILL)
        daemon.proc.wait(timeout=30)
        kills += 1
        daemon.start()
    assert kills >= 3
    wait_for(lambda: depth(daemon, "eo-out") == n and depth(daemon, "eo-in") == 0, timeout_s=120)
    wait_for(lambda: len(_records(daemon, "out-topic")) >= n, timeout_s=120)
    time.sleep(0.3)
    assert sorted(_pull_all(daemon, "eo-out")) == list(range(n))
    assert sorted(_records(daemon, "out-topic")) == list(range(n))
