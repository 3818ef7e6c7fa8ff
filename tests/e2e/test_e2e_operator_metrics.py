"""Operator metrics of the real daemon: messages waiting for a retry (queues and groups),
dead letters made by consumer groups, and the groups' internal replay queues."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.daemon.promtool import check_metrics
from tests.e2e.conftest import Daemon, wait_for

pytestmark = pytest.mark.e2e

TOPOLOGY = """\
version: 1
name: ops
topics:
  orders: {partitions: 1}
  payments: {partitions: 1}
queues:
  jobs: {}
  dead: {}
dlq_policies:
  later: {max_retries: 1, backoff: [1h], dead_letter_queue: dead}
  at-once: {max_retries: 0, dead_letter_queue: dead}
consumers:
  worker: {queue: jobs, handler: "failing:handle", dlq_policy: later}
consumer_groups:
  billing: {topic: orders, handler: "failing:handle", dlq_policy: later}
  audit: {topic: payments, handler: "failing:handle", dlq_policy: at-once}
"""

FAILING = """\
def handle(msg):
    raise KeyError("always")
"""


def samples(d: Daemon) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(d.metrics()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(d: Daemon, name: str, **labels: str) -> float | None:
    return samples(d).get((name, tuple(sorted(labels.items()))))


def test_retry_waiting_group_dead_letters_and_replay_queues(
    start_daemon: Callable[..., Daemon],
) -> None:
    d = start_daemon(TOPOLOGY, modules={"failing": FAILING})
    # from the first scrape: zero for every queue, group and replay queue
    first = samples(d)
    for name, labels in [
        ("runner_queue_messages_retry_waiting", {"queue": "jobs"}),
        ("runner_queue_messages_retry_waiting", {"queue": "__replay.billing"}),
        ("runner_queue_messages_ready", {"queue": "__replay.audit"}),
        ("runner_queue_published_total", {"queue": "__replay.audit"}),
        ("runner_consumer_group_retry_waiting", {"group": "billing"}),
        ("runner_consumer_group_dead_lettered_total", {"group": "audit"}),
        ("runner_topology_last_reload_successful", {}),
    ]:
        expected = 1.0 if name == "runner_topology_last_reload_successful" else 0.0
        assert first[(name, tuple(sorted(labels.items())))] == expected, (name, labels)
    # a queue message and a group record each fail once and wait an hour for their retry
    d.ok("POST", "/v1/queues/jobs/messages", {"body": 1}, 202)
    d.ok("POST", "/v1/topics/orders/records", {"value": 1}, 202)
    wait_for(lambda: value(d, "runner_queue_messages_retry_waiting", queue="jobs") == 1)
    wait_for(lambda: value(d, "runner_consumer_group_retry_waiting", group="billing") == 1)
    assert value(d, "runner_queue_messages_ready", queue="jobs") == 0
    # audit gives up at once: a dead letter made by a group, counted per group
    d.ok("POST", "/v1/topics/payments/records", {"value": 2}, 202)
    wait_for(lambda: value(d, "runner_consumer_group_dead_lettered_total", group="audit") == 1)
    assert value(d, "runner_consumer_group_dead_lettered_total", group="billing") == 0
    assert value(d, "runner_queue_messages_ready", queue="dead") == 1
    # replayed, the record goes back through audit's replay queue (and dies again)
    assert d.ok("POST", "/v1/queues/dead/replay", {})["replayed"] == 1
    wait_for(lambda: value(d, "runner_consumer_group_dead_lettered_total", group="audit") == 2)
    assert value(d, "runner_queue_published_total", queue="__replay.audit") == 1
    assert value(d, "runner_queue_acked_total", queue="__replay.audit") == 1
    checked = check_metrics(d.metrics())
    assert checked.returncode == 0, checked.stdout + checked.stderr
