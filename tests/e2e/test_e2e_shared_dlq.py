"""Issue 8 item 7: several consumers or groups sharing one DLQ policy each get
their own dead letters (one per exhausted failure); none is swallowed by the
publish dedup window, in the real daemon."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import pytest

from tests.e2e.conftest import Daemon, wait_for

pytestmark = pytest.mark.e2e

HANDLERS = '''\
def fail(msg):
    raise ValueError(f"cannot take {msg.body}")
'''

TOPOLOGY = """\
version: 1
name: shared-dlq
topics:
  t: {partitions: 1}
exchanges:
  fan: {type: fanout}
queues:
  shared.dlq: {}
  qa: {}
  qb: {}
bindings:
  - {exchange: fan, queue: qa}
  - {exchange: fan, queue: qb}
dlq_policies:
  standard: {max_retries: 1, backoff: [10ms], dead_letter_queue: shared.dlq}
consumer_groups:
  g1: {topic: t, handler: "shared_handlers:fail", dlq_policy: standard}
  g2: {topic: t, handler: "shared_handlers:fail", dlq_policy: standard}
consumers:
  ca: {queue: qa, handler: "shared_handlers:fail", delivery: at-most-once,
       dlq_policy: standard}
  cb: {queue: qb, handler: "shared_handlers:fail", delivery: at-most-once,
       dlq_policy: standard}
"""


def _dead(d: Daemon) -> list[dict[str, object]]:
    return list(d.ok("GET", "/v1/queues/shared.dlq/peek?n=1000")["messages"])


def _ready(d: Daemon, queue: str) -> int:
    return int({q["name"]: q["ready"] for q in d.ok("GET", "/v1/status")["queues"]}[queue])


@pytest.fixture
def daemon(start_daemon: Callable[..., Daemon]) -> Daemon:
    return start_daemon(TOPOLOGY, modules={"shared_handlers": HANDLERS})


def test_two_groups_sharing_a_dlq_policy_each_dead_letter_every_record(daemon: Daemon) -> None:
    daemon.ok("POST", "/v1/topics/t/records",
              {"records": [{"value": i, "headers": {"x-message-id": f"r{i}"} if i % 2 else {}}
                           for i in range(5)]}, 202)
    wait_for(lambda: _ready(daemon, "shared.dlq") >= 10)
    dead = _dead(daemon)
    groups = Counter(m["headers"]["x-dead-letter"]["original_group"] for m in dead)  # type: ignore[index]
    assert groups == {"g1": 5, "g2": 5}
    per_group = {(m["headers"]["x-dead-letter"]["original_group"], m["body"])  # type: ignore[index]
                 for m in dead}
    assert per_group == {(g, i) for g in ("g1", "g2") for i in range(5)}
    for group in ("g1", "g2"):
        info = daemon.ok("GET", f"/v1/groups/{group}")
        assert [p["committed"] for p in info["partitions"]] == [5], info


def test_two_at_most_once_consumers_of_one_message_each_dead_letter_it(daemon: Daemon) -> None:
    daemon.ok("POST", "/v1/exchanges/fan/messages",
              {"routing_key": "", "body": "m", "message_id": "same-id"}, 202)
    wait_for(lambda: _ready(daemon, "shared.dlq") >= 2)
    origins = sorted(m["headers"]["x-dead-letter"]["original_queue"]  # type: ignore[index]
                     for m in _dead(daemon))
    assert origins == ["qa", "qb"]
