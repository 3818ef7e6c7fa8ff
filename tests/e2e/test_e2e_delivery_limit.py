"""`delivery_limit: N` allows at most N deliveries; `delivery_count` starts at 1
(RabbitMQ's x-delivery-limit of N-1), in the real daemon over HTTP: requeues,
lease expiry and a dead letter with reason `delivery_limit`."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from tests.e2e.conftest import Daemon

pytestmark = pytest.mark.e2e

TOPOLOGY = """\
version: 1
name: limits
exchanges:
  dlx: {type: fanout}
queues:
  once: {delivery_limit: 1, dead_letter: {exchange: dlx}}
  twice: {delivery_limit: 2, dead_letter: {exchange: dlx}}
  dlq: {}
bindings:
  - {exchange: dlx, queue: dlq}
"""


def _pull(d: Daemon, queue: str, lease: str = "30s") -> list[dict[str, object]]:
    return list(d.ok("POST", f"/v1/queues/{queue}/pull", {"max": 10, "lease": lease})["messages"])


def _dead(d: Daemon) -> list[dict[str, object]]:
    return list(d.ok("GET", "/v1/queues/dlq/peek?n=10")["messages"])


@pytest.fixture
def daemon(start_daemon: Callable[..., Daemon]) -> Daemon:
    return start_daemon(TOPOLOGY)


def test_delivery_limit_n_allows_exactly_n_deliveries_counted_from_1(daemon: Daemon) -> None:
    daemon.ok("POST", "/v1/queues/twice/messages", {"body": "m"}, 202)
    counts = []
    for _ in range(2):
        (m,) = _pull(daemon, "twice")
        counts.append(m["delivery_count"])
        daemon.ok("POST", "/v1/queues/twice/nack",
                  {"delivery_ids": [m["delivery_id"]], "requeue": True})
    assert counts == [1, 2]
    assert _pull(daemon, "twice") == []  # a third delivery would exceed the limit
    (dead,) = _dead(daemon)
    death = dead["headers"]["x-dead-letter"]  # type: ignore[index]
    assert (dead["body"], death["reason"], death["retry_count"]) == ("m", "delivery_limit", 1)


def test_delivery_limit_1_means_one_delivery_also_when_the_lease_expires(
    daemon: Daemon,
) -> None:
    daemon.ok("POST", "/v1/queues/once/messages", {"body": "x"}, 202)
    (m,) = _pull(daemon, "once", lease="100ms")
    assert m["delivery_count"] == 1
    time.sleep(0.3)
    assert _pull(daemon, "once") == []
    assert [d["body"] for d in _dead(daemon)] == ["x"]
