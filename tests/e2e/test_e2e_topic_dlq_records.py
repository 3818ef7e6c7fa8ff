"""Issue 13: dead letters of a dead-letter topic replayed or purged one by one, by
partition and offset, on a real daemon over HTTP (`POST /v1/topics/{name}/replay
{"records": [...]}`, `POST /v1/topics/{name}/dead-letters/purge`) and the CLI
(`runner dlq replay|purge T --record P:O`): a settled record is no longer pending,
is never replayed again (also not by "replay all", also after a restart), and
the depth, the pending metric and the age follow."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.e2e.conftest import Daemon, error_of

pytestmark = pytest.mark.e2e

TOPOLOGY = """\
version: 1
name: topic-dlq-records
topics:
  t.dlq: {partitions: 2}
queues:
  parking: {}
dlq_policies:
  to-topic:
    dead_letter_queue: t.dlq
"""
DEATH = {"reason": "rejected", "original_queue": "parking", "original_exchange": "",
         "original_routing_key": "parking", "death_count": 1}
T0 = int(time.time()) - 3600  # the first dead letter's time (s); one a second after it
NOT_DEAD = "not a dead letter (no x-dead-letter header naming where it died)"


def _metric(d: Daemon, name: str) -> float:
    found = re.findall(rf'^{name}\{{partition="0",topic="t.dlq"\}} (\S+)$', d.metrics(), re.M)
    assert len(found) == 1, found
    return float(found[0])


def _pending(d: Daemon) -> list[int]:
    got = d.ok("GET", "/v1/topics/t.dlq/dead-letters?n=100")
    return [r["offset"] for r in got["records"]]


def _parking(d: Daemon) -> list[Any]:
    return [m["body"] for m in d.ok("GET", "/v1/queues/parking/peek?n=100")["messages"]]


def _one(p: int, o: int) -> dict[str, Any]:
    return {"records": [{"partition": p, "offset": o}]}


@pytest.fixture
def daemon(start_daemon: Callable[..., Daemon]) -> Daemon:
    d = start_daemon(TOPOLOGY)
    records = [{"value": body, "partition": 0, "timestamp": (T0 + i) * 1000,
                "headers": {"x-dead-letter": DEATH}} for i, body in enumerate("abcd")]
    records.append({"value": "e", "partition": 0, "timestamp": (T0 + 4) * 1000})
    d.ok("POST", "/v1/topics/t.dlq/records", {"records": records}, 202)
    return d


def test_one_by_one_then_all_nothing_twice(daemon: Daemon) -> None:
    d = daemon
    assert _pending(d) == [0, 1, 2, 3, 4]
    out = d.ok("POST", "/v1/topics/t.dlq/replay", _one(0, 2))
    assert out == {"replayed": 1, "skipped": 0, "skipped_reasons": {}, "remaining": 4}
    assert _parking(d) == ["c"] and _pending(d) == [0, 1, 3, 4]
    assert _metric(d, "runner_dead_letter_topic_pending") == 4
    assert d.ok("GET", "/v1/topics/t.dlq/dead-letters?n=1")["depth"] == 4

    # the first pending one: the position moves (its age is now b's)
    assert d.ok("POST", "/v1/topics/t.dlq/dead-letters/purge", _one(0, 0)) == {
        "purged": 1, "remaining": 3}
    assert _pending(d) == [1, 3, 4]
    assert _metric(d, "runner_dead_letter_topic_oldest_pending_timestamp_seconds") == T0 + 1

    # settled ones and offsets the log does not hold, before anything changes
    assert error_of(d, "POST", "/v1/topics/t.dlq/replay", _one(0, 2)) == (
        409, "the dead letter at partition 0 offset 2 of topic 't.dlq' was already "
        "replayed or purged")
    assert error_of(d, "POST", "/v1/topics/t.dlq/dead-letters/purge", _one(0, 0)) == (
        409, "the dead letter at partition 0 offset 0 of topic 't.dlq' was already "
        "replayed or purged")
    assert error_of(d, "POST", "/v1/topics/t.dlq/replay", _one(0, 9)) == (
        404, "topic 't.dlq' partition 0 has no record at offset 9 (it keeps offsets 0..4)")
    assert error_of(d, "POST", "/v1/topics/t.dlq/replay", _one(1, 0)) == (
        404, "topic 't.dlq' partition 1 has no record at offset 0 (it keeps offsets none)")
    assert error_of(d, "POST", "/v1/topics/t.dlq/replay", _one(2, 0)) == (
        404, "topic 't.dlq' has no partition 2 (it has 2: 0..1)")
    assert _pending(d) == [1, 3, 4]

    # "replay all" skips what was replayed or purged on its own
    out = d.ok("POST", "/v1/topics/t.dlq/replay", {})
    assert out == {"replayed": 2, "skipped": 1, "skipped_reasons": {NOT_DEAD: 1},
                   "remaining": 1}
    assert _parking(d) == ["c", "b", "d"] and _pending(d) == [4]

    # durable: after a restart nothing settled is pending or replayed again
    d.stop()
    d.start()
    assert _pending(d) == [4]
    assert d.ok("POST", "/v1/topics/t.dlq/replay", {})["replayed"] == 0
    assert _parking(d) == ["c", "b", "d"]
    assert d.ok("POST", "/v1/topics/t.dlq/dead-letters/purge", _one(0, 4)) == {
        "purged": 1, "remaining": 0}
    assert _metric(d, "runner_dead_letter_topic_pending") == 0
    assert _metric(d, "runner_dead_letter_topic_oldest_pending_timestamp_seconds") == 0


def test_a_record_that_cannot_go_back_stays_pending_and_to_moves_it(daemon: Daemon) -> None:
    d = daemon
    out = d.ok("POST", "/v1/topics/t.dlq/replay",
               {"records": [{"partition": 0, "offset": 4}, {"partition": 0, "offset": 3}]})
    assert out == {"replayed": 1, "skipped": 1, "skipped_reasons": {NOT_DEAD: 1},
                   "remaining": 4}
    assert _pending(d) == [0, 1, 2, 4]
    out = d.ok("POST", "/v1/topics/t.dlq/replay", {**_one(0, 4), "to": "parking"})
    assert out == {"replayed": 1, "skipped": 0, "skipped_reasons": {}, "remaining": 3,
                   "to": "parking"}
    assert _parking(d) == ["d", "e"] and _pending(d) == [0, 1, 2]


@pytest.mark.parametrize(("path", "body", "message"), [
    ("replay", {"records": []},
     "'records' must be a non-empty list of {\"partition\": P, \"offset\": O}"),
    ("replay", {"records": [{"partition": 0, "offset": 1}], "max": 1},
     "give 'records' (these dead letters) or 'max' (the first N), not both"),
    ("replay", {"records": [{"partition": 0}]}, "'records[0].offset' is missing"),
    ("replay", {"records": [[0, 1]]},
     "'records[0]' must be an object {\"partition\": P, \"offset\": O}"),
    ("dead-letters/purge", {"records": [{"partition": 0, "offset": 1}] * 2},
     "'records[1]' names partition 0 offset 1 twice"),
    ("dead-letters/purge", {}, "'records' must be a non-empty list of "
     "{\"partition\": P, \"offset\": O}"),
])
def test_bad_selections_are_400(daemon: Daemon, path: str, body: Any, message: str) -> None:
    assert error_of(daemon, "POST", f"/v1/topics/t.dlq/{path}", body) == (400, message)
    assert _pending(daemon) == [0, 1, 2, 3, 4]


def test_the_cli_takes_records(daemon: Daemon) -> None:
    d = daemon
    done = d.cli("dlq", "replay", "t.dlq", "--record", "0:1", "--record", "0:2")
    assert (done.returncode, done.stdout, done.stderr) == (
        0, "replayed 2 message(s) from t.dlq\n", "")
    done = d.cli("dlq", "purge", "t.dlq", "--record", "0:0")
    assert (done.returncode, done.stdout) == (
        0, "purged 1 record(s) from t.dlq (marked handled; the log keeps them until "
        "retention)\n")
    assert _pending(d) == [3, 4] and _parking(d) == ["b", "c"]
    done = d.cli("dlq", "replay", "t.dlq", "--record", "zero")
    assert done.returncode == 2
    assert "--record: expected PARTITION:OFFSET (e.g. 0:42), got 'zero'" in done.stderr
    done = d.cli("dlq", "replay", "t.dlq", "--record", "0:1")
    assert done.returncode == 1
    assert done.stderr == (
        "runner dlq: the dead letter at partition 0 offset 1 of topic 't.dlq' was already "
        "replayed or purged (HTTP 409)\n")
    done = d.cli("dlq", "replay", "parking", "--record", "0:1")
    assert (done.returncode, done.stderr) == (
        2, "runner dlq: --record names dead letters of a dead-letter topic; parking is no "
        "topic\n")
