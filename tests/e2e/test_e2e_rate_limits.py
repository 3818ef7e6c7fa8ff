"""Rate limits and backpressure in the real daemon over HTTP: `publish_rate` answers
429 with Retry-After and counts it, `max_lag` refuses appends while a group lags,
`rate_limit` paces a consumer's handler."""

from __future__ import annotations

import json
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import Daemon, module_daemon, wait_for

pytestmark = pytest.mark.e2e

TOPOLOGY = """\
version: 1
name: limits
queues:
  limited: {publish_rate: 2/s}
  paced: {}
  free: {}
topics:
  events: {partitions: 2}
  clicks: {publish_rate: 3/m}
consumer_groups:
  watchers: {topic: events, max_lag: 3}
consumers:
  pacer: {queue: paced, handler: "handlers_rl:stamp", rate_limit: 5/s}
"""

HANDLERS = """\
import json, time

def stamp(msg, ctx):
    with open("stamps.jsonl", "a") as f:
        f.write(json.dumps({"body": msg.body, "t": time.monotonic()}) + "\\n")
"""


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    yield from module_daemon(
        tmp_path_factory.mktemp("limits"), TOPOLOGY, modules={"handlers_rl": HANDLERS}
    )


def _throttled(d: Daemon, kind: str, name: str) -> float | None:
    for family in text_string_to_metric_families(d.metrics()):
        for s in family.samples:
            if s.name == "runner_publish_throttled_total" and s.labels == {
                "kind": kind, "name": name,
            }:
                return float(s.value)
    return None


def _peek(d: Daemon, queue: str) -> list[object]:
    return [m["body"] for m in d.ok("GET", f"/v1/queues/{queue}/peek?n=100")["messages"]]


def test_past_publish_rate_a_producer_gets_429_with_retry_after_and_nothing_is_stored(
    daemon: Daemon,
) -> None:
    assert _throttled(daemon, "queue", "limited") == 0
    # a 2/s bucket holds two tokens: the first two pass, the third is refused whole
    for body in ("a", "b"):
        daemon.ok("POST", "/v1/queues/limited/messages", {"body": body}, 202)
    refused = daemon.post("/v1/queues/limited/messages", {"messages": [{"body": "c"}]})
    assert refused.status == 429
    assert refused.headers["Retry-After"] == "1"
    assert refused.body == {
        "error": "queue 'limited' takes at most 2/s from one producer (publish_rate); "
        "1 message refused, none stored: retry in 1s",
        "accepted": 0,
        "routed": [],
    }
    assert _peek(daemon, "limited") == ["a", "b"]
    assert _throttled(daemon, "queue", "limited") == 1
    time.sleep(1.1)  # what Retry-After said
    daemon.ok("POST", "/v1/queues/limited/messages", {"body": "c"}, 202)
    assert _peek(daemon, "limited") == ["a", "b", "c"]
    # a destination without publish_rate is never limited, and has no series
    for i in range(20):
        daemon.ok("POST", "/v1/queues/free/messages", {"body": i}, 202)
    assert _throttled(daemon, "queue", "free") is None


def test_a_slow_topic_rate_answers_the_whole_seconds_to_wait(daemon: Daemon) -> None:
    daemon.ok("POST", "/v1/topics/clicks/records", {"value": 1}, 202)  # 3/m: one token
    refused = daemon.post("/v1/topics/clicks/records", {"records": [{"value": 2}]})
    assert refused.status == 429
    assert 19 <= int(refused.headers["Retry-After"]) <= 20
    assert refused.body["error"].startswith(
        "topic 'clicks' takes at most 3/m from one producer (publish_rate); "
        "1 record refused, none stored: retry in "
    )


def test_max_lag_refuses_appends_while_the_group_lags_and_not_after_it_commits(
    daemon: Daemon,
) -> None:
    records = {"records": [{"value": i, "partition": i % 2} for i in range(4)]}
    daemon.ok("POST", "/v1/topics/events/records", records, 202)  # lag was 0: taken
    refused = daemon.post("/v1/topics/events/records", {"value": "more"})
    assert refused.status == 429
    assert refused.headers["Retry-After"] == "1"
    assert refused.body["error"] == (
        "topic 'events' refuses appends while consumer group 'watchers' lags 4 records on "
        "it (max_lag 3); retry when it has caught up"
    )
    ends = {p["partition"]: p["log_end_offset"]
            for p in daemon.ok("GET", "/v1/groups/watchers")["partitions"]}
    offsets = [{"topic": "events", "partition": p, "offset": end} for p, end in ends.items()]
    daemon.ok("POST", "/v1/groups/watchers/commit", {"offsets": offsets})
    daemon.ok("POST", "/v1/topics/events/records", {"value": "more"}, 202)


def test_rate_limit_paces_the_handler(daemon: Daemon) -> None:
    daemon.ok("POST", "/v1/queues/paced/messages",
              {"messages": [{"body": i} for i in range(15)]}, 202)
    path = daemon.workdir / "stamps.jsonl"

    def stamps() -> list[dict[str, float]]:
        if not path.exists():
            return []
        found = [json.loads(line) for line in path.read_text().splitlines() if line]
        return found if len(found) == 15 else []

    done = wait_for(stamps, timeout_s=30)
    times = sorted(s["t"] for s in done)
    # 5/s with a burst of 5: the last of 15 starts 2s after the first, not at once
    assert times[-1] - times[0] >= 1.8
    assert sorted(s["body"] for s in done) == list(range(15))
