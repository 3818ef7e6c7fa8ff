"""Seeking a consumer group that the real daemon runs with a handler replays its
records; an outside commit to such a group is refused with 409."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from tests.e2e.conftest import Daemon, wait_for

pytestmark = pytest.mark.e2e

HANDLERS = '''\
import json


def note(msg):
    with open("seen.log", "a") as fh:
        fh.write(json.dumps({"offset": msg.offset, "body": msg.body}) + "\\n")
'''

TOPOLOGY = """\
version: 1
name: e2e-seek
topics:
  orders: {partitions: 1}
consumer_groups:
  order-processing:
    topic: orders
    handler: "seek_handlers:note"
  reporting:
    topic: orders
"""


def seen(d: Daemon) -> list[int]:
    path = d.workdir / "seen.log"
    if not path.exists():
        return []
    return [json.loads(line)["offset"] for line in path.read_text().splitlines() if line]


def committed(d: Daemon, group: str) -> int | None:
    body = d.ok("GET", f"/v1/groups/{group}")
    (part,) = body["partitions"]
    value = part.get("committed")
    return None if value is None else int(value)


def test_seek_replays_a_group_run_by_a_handler(start_daemon: Callable[..., Daemon]) -> None:
    d = start_daemon(TOPOLOGY, modules={"seek_handlers": HANDLERS})
    d.ok("POST", "/v1/topics/orders/records",
         {"records": [{"value": {"n": i}} for i in range(3)]}, 202)
    wait_for(lambda: seen(d) == [0, 1, 2])
    wait_for(lambda: committed(d, "order-processing") == 3)
    answer = d.ok("POST", "/v1/groups/order-processing/offsets",
                  {"topic": "orders", "partition": 0, "offset": 0})
    assert answer == {"topic": "orders", "partition": 0, "offset": 0}
    wait_for(lambda: seen(d) == [0, 1, 2, 0, 1, 2])
    wait_for(lambda: committed(d, "order-processing") == 3)


def test_outside_commit_to_a_handled_group_is_409(start_daemon: Callable[..., Daemon]) -> None:
    d = start_daemon(TOPOLOGY, modules={"seek_handlers": HANDLERS})
    d.ok("POST", "/v1/topics/orders/records", {"records": [{"value": {"n": 0}}]}, 202)
    wait_for(lambda: committed(d, "order-processing") == 1)
    refused = d.post("/v1/groups/order-processing/commit",
                     {"offsets": [{"topic": "orders", "partition": 0, "offset": 0}]})
    assert refused.status == 409
    assert refused.body["error"] == ("group order-processing is run by this daemon's handler; "
                                     "use POST /v1/groups/order-processing/offsets to seek it")
    assert committed(d, "order-processing") == 1
    # a group without a handler still takes outside commits
    assert d.ok("POST", "/v1/groups/reporting/commit",
                {"offsets": [{"topic": "orders", "partition": 0, "offset": 1}]}) == {
                    "committed": 1}
    assert committed(d, "reporting") == 1
