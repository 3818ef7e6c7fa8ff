"""Issue 8: the age of a dead-letter topic is the age of its oldest dead letter not
yet replayed or purged (the record at each partition's replay position), not of
the oldest record the log keeps. On a real daemon through /metrics:
`runner_dead_letter_topic_oldest_pending_timestamp_seconds` follows replay and
purge while `runner_topic_partition_oldest_record_timestamp_seconds` stays."""

from __future__ import annotations

import re
import time
from collections.abc import Callable

import pytest

from tests.e2e.conftest import Daemon

pytestmark = pytest.mark.e2e

TOPOLOGY = """\
version: 1
name: topic-dlq-age
topics:
  t.dlq: {partitions: 2}
queues:
  parking: {}
dlq_policies:
  to-topic:
    dead_letter_queue: t.dlq
    alert: {max_age: 1h}
"""

PENDING = "runner_dead_letter_topic_oldest_pending_timestamp_seconds"
KEPT = "runner_topic_partition_oldest_record_timestamp_seconds"


def _gauge(d: Daemon, name: str) -> dict[int, float]:
    found = re.findall(rf'^{name}\{{partition="(\d+)",topic="t.dlq"\}} (\S+)$', d.metrics(),
                       re.M)
    return {int(p): float(v) for p, v in found}


def _dead_letter(body: str, ts_ms: int) -> dict[str, object]:
    death = {"reason": "rejected", "original_queue": "parking", "original_exchange": "",
             "original_routing_key": "parking", "death_count": 1}
    return {"value": body, "partition": 0, "timestamp": ts_ms,
            "headers": {"x-dead-letter": death}}


def test_the_age_metric_follows_the_oldest_pending_dead_letter(
    start_daemon: Callable[..., Daemon],
) -> None:
    d = start_daemon(TOPOLOGY)
    assert _gauge(d, PENDING) == {0: 0.0, 1: 0.0}
    # three dead letters written 3, 2 and 1 hours ago (whole seconds)
    t0 = int(time.time()) - 3 * 3600
    d.ok("POST", "/v1/topics/t.dlq/records", {"records": [
        _dead_letter("a", t0 * 1000), _dead_letter("b", (t0 + 3600) * 1000),
        _dead_letter("c", (t0 + 7200) * 1000)]}, 202)
    assert _gauge(d, PENDING) == {0: t0, 1: 0.0}

    assert d.ok("POST", "/v1/topics/t.dlq/replay", {"max": 1})["replayed"] == 1
    assert _gauge(d, PENDING) == {0: t0 + 3600, 1: 0.0}
    assert _gauge(d, KEPT) == {0: t0, 1: 0.0}  # the log still keeps `a`
    assert [m["body"] for m in d.ok("GET", "/v1/queues/parking/peek")["messages"]] == ["a"]

    assert d.ok("POST", "/v1/topics/t.dlq/replay", {"max": 1})["replayed"] == 1
    assert _gauge(d, PENDING) == {0: t0 + 7200, 1: 0.0}
    assert d.ok("DELETE", "/v1/topics/t.dlq/dead-letters")["purged"] == 1
    assert _gauge(d, PENDING) == {0: 0.0, 1: 0.0}
    assert _gauge(d, KEPT) == {0: t0, 1: 0.0}

    # the position is durable: after a restart nothing is pending again
    d.stop()
    d.start()
    assert _gauge(d, PENDING) == {0: 0.0, 1: 0.0}
