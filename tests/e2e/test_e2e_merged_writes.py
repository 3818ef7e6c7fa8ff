"""Single-message puts and publishes sent at once to a real `--fsync always` daemon: the daemon
merges the ones it reads in one turn of its loop (`runner.engine.merged`); each
client still gets its own answer, nothing is stored twice, and every 202 survives
kill -9."""

from __future__ import annotations

import concurrent.futures
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import Answer, Daemon, make_daemon

TOPOLOGY = """\
version: 1
exchanges:
  events: {type: topic}
queues:
  work: {durable: true}
  tight: {durable: true, max_length: 5, overflow: reject-publish}
  seen: {durable: true}
topics:
  log: {partitions: 1}
bindings:
  - {exchange: events, queue: seen, routing_key: "ev.#"}
  - {exchange: events, topic: log, routing_key: "ev.#"}
"""


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    d = make_daemon(tmp_path / "d", TOPOLOGY, args=["--fsync", "always"])
    d.start()
    yield d
    if d.running:
        d.kill()


def _at_once(n: int, send: Callable[[int], Answer]) -> list[Answer]:
    """`send(i)` for i < n from n threads released together."""
    with concurrent.futures.ThreadPoolExecutor(n) as pool:
        return list(pool.map(send, range(n)))


def _drain(d: Daemon, queue: str) -> list[object]:
    body = d.ok("POST", f"/v1/queues/{queue}/pull", {"max": 1000})
    return [m["body"] for m in body["messages"]]


def test_every_concurrent_put_is_answered_stored_once_and_survives_kill_9(
    daemon: Daemon,
) -> None:
    answers: list[Answer] = []
    for rnd in range(5):
        answers += _at_once(
            16, lambda i, rnd=rnd: daemon.post("/v1/queues/work/messages",  # type: ignore[misc]
                                               {"body": {"n": rnd * 16 + i}}))
    assert [(a.status, a.body) for a in answers] == [(202, {"routed": ["work"]})] * 80
    daemon.signal(signal.SIGKILL)
    daemon.wait(10)
    daemon.start()
    bodies = _drain(daemon, "work")
    assert sorted(b["n"] for b in bodies) == list(range(80))  # type: ignore[index]


def test_a_full_reject_publish_queue_answers_429_to_exactly_the_puts_past_its_room(
    daemon: Daemon,
) -> None:
    answers = _at_once(12, lambda i: daemon.post("/v1/queues/tight/messages", {"body": i}))
    ok = [a for a in answers if a.status == 202]
    refused = [a for a in answers if a.status == 429]
    assert len(ok) == 5 and len(refused) == 7, [(a.status, a.body) for a in answers]
    assert all(a.body == {"routed": ["tight"]} for a in ok)
    for a in refused:
        assert a.body == {
            "error": "queue 'tight' is full (max_length 5, overflow reject-publish): "
                     "publish refused", "accepted": 0, "routed": []}
        assert a.headers["Retry-After"] == "1"
    stored = _drain(daemon, "tight")
    assert sorted(stored) == [i for i, a in enumerate(answers) if a.status == 202]  # type: ignore[type-var]


def test_a_batch_cut_by_the_full_queue_counts_what_it_stored(daemon: Daemon) -> None:
    answers = _at_once(3, lambda i: daemon.post(
        "/v1/queues/tight/messages", {"messages": [{"body": [i, j]} for j in range(2)]}))
    statuses = sorted(a.status for a in answers)
    assert statuses == [202, 202, 429]
    refused = next(a for a in answers if a.status == 429)
    assert refused.body["accepted"] == 1  # room for 5: two batches of 2, then one more
    stored = _drain(daemon, "tight")
    assert len(stored) == 5


def test_concurrent_publishes_through_an_exchange_reach_queue_and_topic_once_each(
    daemon: Daemon,
) -> None:
    answers = _at_once(16, lambda i: daemon.post(
        "/v1/exchanges/events/messages", {"routing_key": "ev.x", "body": {"n": i}}))
    assert all(a.status == 202 and sorted(a.body["routed"]) == ["log", "seen"]
               for a in answers), [(a.status, a.body) for a in answers]
    daemon.signal(signal.SIGKILL)
    daemon.wait(10)
    daemon.start()
    assert sorted(b["n"] for b in _drain(daemon, "seen")) == list(range(16))  # type: ignore[index]
    got = daemon.ok("GET", "/v1/topics/log/partitions/0/records?offset=0")
    assert sorted(r["value"]["n"] for r in got["records"]) == list(range(16))


def test_concurrent_single_record_appends_get_distinct_offsets_and_survive_kill_9(
    daemon: Daemon,
) -> None:
    answers = _at_once(16, lambda i: daemon.post(
        "/v1/topics/log/records", {"value": {"n": i}}))
    assert all(a.status == 202 for a in answers), [(a.status, a.body) for a in answers]
    offsets = [a.body["offsets"][0]["offset"] for a in answers]
    assert sorted(offsets) == list(range(16))
    daemon.signal(signal.SIGKILL)
    daemon.wait(10)
    daemon.start()
    got = daemon.ok("GET", "/v1/topics/log/partitions/0/records?offset=0")
    by_offset = {r["offset"]: r["value"]["n"] for r in got["records"]}
    assert by_offset == {off: i for i, off in enumerate(offsets)}  # each where it was told
