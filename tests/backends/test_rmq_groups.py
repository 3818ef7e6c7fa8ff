"""Consumer groups over RabbitMQ with real daemon processes, each test in a vhost of its
own: two daemons split a group's partitions and handle every record; a daemon killed
with SIGKILL hands its partitions to the survivor within seconds, nothing lost; a
restarted daemon resumes from the committed offsets."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import pika
import pytest

from runner.backends.rabbitmq.runtime import RabbitBackend
from runner.backends.rabbitmq.url import Target
from runner.engine.contract import OutRecord
from runner.topology.model import Topic, Topology
from tests.e2e.conftest import Daemon, make_daemon, wait_for
from tests.rmq import url

HANDLERS = '''\
import json
import os
import time


def handle(msg):
    time.sleep(float(os.environ.get("WORK_S", "0.01")))
    if msg.body.get("fail"):
        raise ValueError(f"record {msg.body['n']} fails")
    with open("handled.log", "a") as fh:
        fh.write(json.dumps({"n": msg.body["n"], "p": msg.partition, "offset": msg.offset,
                             "t": time.time()}) + "\\n")
'''

TOPOLOGY = """\
version: 1
name: rmq-groups
topics:
  ev: {partitions: 4}
queues:
  parked: {}
dlq_policies:
  fast: {max_retries: 1, backoff: [100ms], dead_letter_queue: parked}
consumer_groups:
  g: {topic: ev, handler: "handlers_g:handle", delivery: at-least-once, dlq_policy: fast}
"""

PARTITIONS = 4


class Group:
    def __init__(self, tmp_path: Any, target: Target) -> None:
        self.tmp_path = tmp_path
        self.target = target
        self.started: list[Daemon] = []
        self.sent = 0
        self._backend = RabbitBackend(target, Topology(topics=(("ev", Topic("ev", PARTITIONS)),)))

    def start(self, *, env: dict[str, str] | None = None, topology: str = TOPOLOGY) -> Daemon:
        d = make_daemon(self.tmp_path / f"d{len(self.started)}", topology,
                        modules={"handlers_g": HANDLERS},
                        args=["--backend", url(self.target), "--no-watch"])
        d.env.update(env or {})
        self.started.append(d)
        d.start()
        return d

    def append(self, n: int, *, fail: int | None = None) -> set[int]:
        """`n` more records, spread over the partitions round robin: their numbers
        (record number `fail` makes the handler fail)."""
        numbers = list(range(self.sent, self.sent + n))
        self.sent += n
        got = self._backend.append("ev", [
            OutRecord(json.dumps({"n": i, "fail": i == fail}).encode(), partition=i % PARTITIONS)
            for i in numbers])
        asyncio.run(self._backend.durable(got.ticket))
        return set(numbers)

    def close(self) -> None:
        self._backend.close()


@pytest.fixture
def group(tmp_path: Any, vhost: Target) -> Iterator[Group]:
    g = Group(tmp_path, vhost)
    yield g
    for d in g.started:
        if d.running:
            d.stop()
    g.close()


def handled(d: Daemon) -> list[dict[str, Any]]:
    path = d.workdir / "handled.log"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def numbers(*ds: Daemon) -> set[int]:
    return {int(x["n"]) for d in ds for x in handled(d)}


def owners(d: Daemon) -> dict[int, str | None]:
    body = d.ok("GET", "/v1/groups/g")
    return {p["partition"]: p["member"] for p in body["partitions"]}


def split(d: Daemon) -> bool:
    """Two members own two partitions each."""
    got = owners(d)
    counts: dict[str | None, int] = {}
    for m in got.values():
        counts[m] = counts.get(m, 0) + 1
    return None not in counts and sorted(counts.values()) == [2, 2]


def test_two_daemons_split_a_group_and_handle_every_record(group: Group) -> None:
    a = group.start()
    b = group.start()
    first = group.append(80)
    wait_for(lambda: numbers(a, b) >= first, timeout_s=60)
    wait_for(lambda: split(a), timeout_s=30)
    mid = (len(handled(a)), len(handled(b)))
    second = group.append(80)
    wait_for(lambda: numbers(a, b) >= second, timeout_s=60)
    # once split, each daemon reads only its own two partitions
    pa = {x["p"] for x in handled(a)[mid[0]:]}
    pb = {x["p"] for x in handled(b)[mid[1]:]}
    assert len(pa) == len(pb) == 2 and not pa & pb, (pa, pb)
    assert numbers(a, b) == first | second
    info = a.ok("GET", "/v1/groups/g")
    assert len(info["members"]) == 2
    assert sorted(p["partition"] for p in info["partitions"]) == [0, 1, 2, 3]
    listed = b.ok("GET", "/v1/groups")["groups"]
    assert [(x["name"], len(x["members"]), x["partitions"]) for x in listed] == [("g", 2, 4)]
    assert a.get("/v1/groups/nope").status == 404


def test_a_killed_daemon_hands_its_partitions_to_the_survivor(group: Group) -> None:
    env = {"WORK_S": "0.05"}
    a = group.start(env=env)
    b = group.start(env=env)
    wait_for(lambda: split(a), timeout_s=30)
    sent = group.append(160)
    wait_for(lambda: len(handled(a)) >= 10 and len(handled(b)) >= 10, timeout_s=60)
    theirs = {x["p"] for x in handled(a)}
    a.kill()  # SIGKILL: its connections close, the broker deletes its exclusive queues
    killed_at = time.time()
    wait_for(lambda: {x["p"] for x in handled(b) if x["t"] > killed_at} >= theirs,
             timeout_s=30)
    took = min(x["t"] for x in handled(b) if x["t"] > killed_at and x["p"] in theirs) - killed_at
    print(f"failover: the survivor handled a killed daemon's partition {took:.2f} s after "
          "the kill")
    assert took < 5.0, took
    wait_for(lambda: numbers(a, b) >= sent, timeout_s=90)
    assert numbers(a, b) == sent  # nothing lost
    # the survivor redoes at most what the killed daemon handled since its last commit
    twice = len(handled(a)) + len(handled(b)) - len(sent)
    assert twice <= 2 * 100, twice
    wait_for(lambda: set(owners(b).values()) == {owners(b)[0]} and owners(b)[0] is not None,
             timeout_s=10)


def test_a_restarted_daemon_resumes_from_the_committed_offsets(group: Group) -> None:
    a = group.start()
    first = group.append(40)
    wait_for(lambda: numbers(a) >= first, timeout_s=60)
    wait_for(lambda: all(p["committed"] is not None and p["lag"] == 0
                         for p in a.ok("GET", "/v1/groups/g")["partitions"]), timeout_s=20)
    assert a.stop() == 0
    b = group.start()
    second = group.append(8)
    wait_for(lambda: numbers(b) >= second, timeout_s=60)
    time.sleep(1.0)
    assert numbers(b) == second  # nothing committed before the restart is handled again
    assert sorted(x["n"] for x in handled(a)) == sorted(first)


def test_a_seek_over_http_makes_the_owner_read_again_and_bad_seeks_are_refused(
    group: Group,
) -> None:
    a = group.start()
    first = group.append(8)
    wait_for(lambda: numbers(a) >= first, timeout_s=60)
    wait_for(lambda: all(p["lag"] == 0 for p in a.ok("GET", "/v1/groups/g")["partitions"]),
             timeout_s=20)
    assert a.ok("POST", "/v1/groups/g/offsets", {"topic": "ev", "partition": 0,
                                                 "offset": 0}) == {
        "topic": "ev", "partition": 0, "offset": 0}
    # partition 0 holds records 0 and 4: handled again, nothing else is
    wait_for(lambda: sorted(x["n"] for x in handled(a)).count(4) == 2, timeout_s=30)
    time.sleep(1.0)
    again = sorted(x["n"] for x in handled(a))
    assert again == sorted([*first, 0, 4])
    bad = a.post("/v1/groups/g/offsets", {"topic": "ev", "partition": 0})
    assert (bad.status, bad.body["error"]) == (
        400, "give exactly one of 'offset' or 'timestamp' (milliseconds)")
    high = a.post("/v1/groups/g/offsets", {"topic": "ev", "partition": 0, "offset": 99})
    assert high.status == 416
    assert high.body["error"].startswith(
        "offset 99 is above the log end offset 2 of topic 'ev' partition 0; seek to at most 2")
    nope = a.post("/v1/groups/nope/offsets", {"topic": "ev", "partition": 0, "offset": 0})
    assert (nope.status, nope.body["error"]) == (404, "consumer group 'nope' not found")


def test_a_failing_record_is_dead_lettered_into_a_queue_and_the_group_moves_on(
    group: Group,
) -> None:
    a = group.start()
    sent = group.append(8, fail=5)
    wait_for(lambda: numbers(a) >= sent - {5}, timeout_s=60)
    conn = pika.BlockingConnection(pika.ConnectionParameters(
        group.target.host, group.target.port, virtual_host=group.target.vhost))
    try:
        ch = conn.channel()
        got = None
        deadline = time.monotonic() + 20
        while got is None and time.monotonic() < deadline:
            method, props, body = ch.basic_get("parked", auto_ack=True)
            if method is not None:
                got = (props, body)
            else:
                time.sleep(0.1)
    finally:
        conn.close()
    assert got is not None
    props, body = got
    assert json.loads(body) == {"n": 5, "fail": True}
    death = props.headers["x-dead-letter"]
    assert (death["original_group"], death["retry_count"], death["error"]["type"]) == (
        "g", 1, "ValueError")


def test_an_at_most_once_group_commits_before_the_handler_runs(group: Group) -> None:
    a = group.start(topology=TOPOLOGY.replace("at-least-once", "at-most-once"))
    sent = group.append(12)
    wait_for(lambda: numbers(a) >= sent, timeout_s=60)
    info = a.ok("GET", "/v1/groups/g")
    assert {p["partition"]: p["committed"] for p in info["partitions"]} == {
        0: 3, 1: 3, 2: 3, 3: 3}
    assert sorted(x["n"] for x in handled(a)) == sorted(sent)
