"""/metrics over the RabbitMQ backend: the series read from the broker's statistics,
beside the embedded daemon's scrape of the same work."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from runner.backends.rabbitmq.url import Target
from tests.e2e.conftest import Daemon, make_daemon, wait_for
from tests.rmq import url

TOPOLOGY = """\
version: 1
name: rmq-metrics
topics:
  ev: {partitions: 2}
  quiet: {partitions: 1}
queues:
  jobs: {}
  held: {delivery_limit: 3}
"""

# records per partition of `ev`, the same on both daemons
COUNTS = {0: 3, 1: 5}


def value(d: Daemon, series: str) -> float:
    """One series of a scrape (`name{labels}` as the exposition writes it)."""
    for line in d.metrics().splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{series} is not in the scrape of {d.args}")


@pytest.fixture
def pair(tmp_path: Any, vhost: Target) -> Iterator[tuple[Daemon, Daemon]]:
    remote = make_daemon(tmp_path / "remote", TOPOLOGY,
                         args=["--backend", url(vhost), "--no-watch"])
    embedded = make_daemon(tmp_path / "embedded", TOPOLOGY, args=["--no-watch"])
    remote.start()
    try:
        embedded.start()
        yield remote, embedded
    finally:
        for d in (remote, embedded):
            if d.running:
                d.stop()


def test_records_appended_to_a_topic_are_counted_as_on_the_embedded_daemon(
        pair: tuple[Daemon, Daemon]) -> None:
    remote, embedded = pair
    total = 'runner_topic_records_total{topic="ev"}'
    assert value(remote, total) == 0
    for d in pair:
        for part, n in COUNTS.items():
            d.ok("POST", "/v1/topics/ev/records", {"records": [
                {"value": {"p": part, "i": i}, "partition": part} for i in range(n)]},
                status=202)
    assert value(embedded, total) == 8
    # the broker's publish counts of the partitions' streams, refreshed every 5 s
    wait_for(lambda: value(remote, total) == 8, timeout_s=30)
    assert value(remote, 'runner_topic_records_total{topic="quiet"}') == 0
    d = remote
    d.ok("POST", "/v1/topics/ev/records", {"records": [{"value": {"more": 1}, "partition": 0}]},
         status=202)
    wait_for(lambda: value(d, total) == 9, timeout_s=30)


def test_the_oldest_message_age_of_a_classic_queue_is_its_head_messages_timestamp(
        pair: tuple[Daemon, Daemon]) -> None:
    remote, embedded = pair
    age = 'runner_queue_oldest_message_age_seconds{queue="%s"}'
    published = time.time()
    for d in pair:
        for queue in ("jobs", "held"):
            d.ok("POST", f"/v1/queues/{queue}/messages", {"messages": [{"body": "x"}]},
                 status=202)
    time.sleep(2)
    assert value(embedded, age % "jobs") >= 2
    # the broker's head_message_timestamp: whole seconds, the statistics up to 5 s old
    wait_for(lambda: value(remote, age % "jobs") >= 2, timeout_s=30)
    assert value(remote, age % "jobs") <= time.time() - published + 1
    listed = {q["name"]: q for q in remote.ok("GET", "/v1/queues")["queues"]}
    assert listed["jobs"]["oldest_ready_age_s"] >= 2
    # a quorum queue (delivery_limit) has no head_message_timestamp in 3.10: 0
    assert value(remote, age % "held") == 0
    assert value(embedded, age % "held") >= 2
    remote.ok("DELETE", "/v1/queues/jobs/messages")
    wait_for(lambda: value(remote, age % "jobs") == 0, timeout_s=30)
