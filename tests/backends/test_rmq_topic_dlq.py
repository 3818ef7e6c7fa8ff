"""Dead letters into topics over RabbitMQ: real daemons (`runner run --backend amqp://`)
over the real broker, each test in a vhost of its own. A group and a queue consumer
that fail for good dead-letter into a dead-letter topic (its partition streams) with
the `x-dead-letter` header; the DLQ tools (`GET|DELETE /v1/topics/{name}/dead-letters`,
`POST /v1/topics/{name}/dead-letters/purge`, `POST /v1/topics/{name}/replay` and
`runner dlq`) answer as on the embedded daemon (tests/e2e/test_e2e_topic_dlq.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pika
import pytest

from runner.backends.rabbitmq.url import Target
from tests.e2e.conftest import Daemon, error_of, make_daemon, wait_for
from tests.rmq import url

HANDLERS = '''\
import pathlib

HERE = pathlib.Path(__file__).parent


def work(msg):
    if (HERE / "fail").exists():
        raise ValueError(f"cannot take {msg.body}")
    with open(HERE / "done.txt", "a") as out:
        out.write(f"{msg.body}\\n")
'''

TOPOLOGY = """\
version: 1
name: rmq-topic-dlq
topics:
  t: {partitions: 1}
  t.dlq: {partitions: 2}
  archive: {partitions: 1}
  u: {partitions: 1}
queues:
  qa: {}
  parking: {}
  gq.dlq: {}
dlq_policies:
  to-topic:
    max_retries: 0
    dead_letter_queue: t.dlq
  to-queue:
    max_retries: 0
    dead_letter_queue: gq.dlq
consumer_groups:
  g: {topic: t, handler: "dlq_handlers:work", dlq_policy: to-topic}
  h: {topic: u, handler: "dlq_handlers:work", dlq_policy: to-queue}
consumers:
  ca: {queue: qa, handler: "dlq_handlers:work", dlq_policy: to-topic}
"""


@pytest.fixture
def daemon(tmp_path: Path, vhost: Target) -> Iterator[Daemon]:
    d = make_daemon(tmp_path / "d", TOPOLOGY, modules={"dlq_handlers": HANDLERS},
                    args=["--backend", url(vhost), "--no-watch"])
    (d.workdir / "fail").write_text("")
    d.start()
    yield d
    if d.running:
        d.stop()


def _letters(d: Daemon, n: int = 10) -> dict[str, Any]:
    answer: dict[str, Any] = d.ok("GET", f"/v1/topics/t.dlq/dead-letters?n={n}")
    return answer


def _depth(d: Daemon) -> int:
    return int(_letters(d, 1)["depth"])


def _done(d: Daemon) -> list[str]:
    path = d.workdir / "done.txt"
    return sorted(path.read_text().split()) if path.exists() else []


def _kill_five(d: Daemon) -> None:
    d.ok("POST", "/v1/topics/t/records", {"records": [{"value": f"r{i}"} for i in range(3)]}, 202)
    for i in range(2):
        d.ok("POST", "/v1/queues/qa/messages", {"body": f"m{i}"}, 202)
    wait_for(lambda: _depth(d) == 5, timeout_s=30)


def _stream_count(target: Target, stream: str) -> int:
    """Records in a stream now (consumed from the first, until 0.5 s of quiet)."""
    conn = pika.BlockingConnection(pika.ConnectionParameters(
        host=target.host, port=target.port, virtual_host=target.vhost))
    try:
        ch = conn.channel()
        ch.basic_qos(prefetch_count=100)
        got = 0
        for _method, _props, _body in ch.consume(stream, inactivity_timeout=0.5,
                                                  arguments={"x-stream-offset": "first"}):
            if _method is None:
                break
            got += 1
            ch.basic_ack(_method.delivery_tag)
        return got
    finally:
        conn.close()


def test_failed_records_and_messages_land_in_the_topic_with_the_header_and_go_back(
    daemon: Daemon, vhost: Target,
) -> None:
    _kill_five(daemon)
    letters = _letters(daemon)
    assert (letters["name"], letters["kind"], letters["depth"]) == ("t.dlq", "topic", 5)
    assert [p["pending"] for p in letters["partitions"]] != [0, 0]
    deaths = [r["headers"]["x-dead-letter"] for r in letters["records"]]
    assert len(deaths) == 5
    for death in deaths:
        assert death["error"]["type"] == "ValueError", death
        assert death["error"]["message"].startswith("cannot take "), death
        assert (death["reason"], death["retry_count"], death["death_count"]) == (
            "handler_error", 0, 1), death
    from_group = [x for x in deaths if x.get("original_group") == "g"]
    assert len(from_group) == 3
    assert sorted(x["original_offset"] for x in from_group) == [0, 1, 2]
    assert {(x["original_topic"], x["original_partition"]) for x in from_group} == {("t", 0)}
    from_queue = [x for x in deaths if x.get("original_group") is None]
    assert [(x["original_queue"], x["consumer_id"] is not None) for x in from_queue] == [
        ("qa", True), ("qa", True)]
    assert sorted(r["value"] for r in letters["records"]) == ["m0", "m1", "r0", "r1", "r2"]
    # on the broker: the records are in the dead-letter topic's two partition streams
    assert _stream_count(vhost, "t.dlq.0") + _stream_count(vhost, "t.dlq.1") == 5

    listed = daemon.cli("dlq", "list")
    assert listed.returncode == 0, listed.stderr
    row = [line.split() for line in listed.stdout.splitlines() if line.startswith("t.dlq")]
    assert row and row[0][:3] == ["t.dlq", "topic", "5"], listed.stdout
    shown = daemon.cli("dlq", "show", "t.dlq", "-n", "5")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.count("--- message t.dlq/") == 5
    assert shown.stdout.count("error:         ValueError: cannot take") == 5
    assert "origin:        queue qa" in shown.stdout
    assert "origin:        topic t partition 0 offset 0" in shown.stdout

    (daemon.workdir / "fail").unlink()
    done = daemon.cli("dlq", "replay", "t.dlq", "--max", "2")
    assert (done.returncode, done.stdout.strip()) == (0, "replayed 2 message(s) from t.dlq")
    assert _depth(daemon) == 3
    done = daemon.cli("dlq", "replay", "t.dlq")
    assert (done.returncode, done.stdout.strip()) == (0, "replayed 3 message(s) from t.dlq")
    # queue messages back into qa, the group's records through its replay queue
    assert wait_for(lambda: _done(daemon) == ["m0", "m1", "r0", "r1", "r2"], timeout_s=30)
    assert _depth(daemon) == 0
    # nothing appended to t again, and the dead-letter topic keeps its records
    assert _stream_count(vhost, "t.0") == 3
    assert _stream_count(vhost, "t.dlq.0") + _stream_count(vhost, "t.dlq.1") == 5

    # durable on the broker: a restarted daemon has nothing pending, replays nothing twice
    daemon.stop()
    daemon.start()
    assert _depth(daemon) == 0
    assert daemon.ok("POST", "/v1/topics/t.dlq/replay", {}) == {
        "replayed": 0, "skipped": 0, "skipped_reasons": {}, "remaining": 0}
    assert _done(daemon) == ["m0", "m1", "r0", "r1", "r2"]


def test_replay_elsewhere_purge_and_chosen_records(daemon: Daemon, vhost: Target) -> None:
    _kill_five(daemon)
    answer = daemon.ok("POST", "/v1/topics/t.dlq/replay", {"max": 2, "to": "parking"})
    assert answer == {"replayed": 2, "skipped": 0, "skipped_reasons": {}, "remaining": 3,
                      "to": "parking"}
    parked = daemon.ok("GET", "/v1/queues/parking/peek?n=10")["messages"]
    assert len(parked) == 2
    for msg in parked:
        assert "x-dead-letter" not in msg["headers"]
        assert msg["headers"]["x-replay-count"] == 1
    done = daemon.cli("dlq", "replay", "t.dlq", "--to", "archive", "--max", "1")
    assert (done.returncode, done.stdout.strip()) == (
        0, "replayed 1 message(s) from t.dlq into archive")
    assert _stream_count(vhost, "archive.0") == 1

    # two left: purge one of them by name (a settle marker), replay it again: 409
    left = _letters(daemon)["records"]
    assert len(left) == 2
    first, second = ({"partition": r["partition"], "offset": r["offset"]} for r in left)
    assert daemon.ok("POST", "/v1/topics/t.dlq/dead-letters/purge", {"records": [second]}) == {
        "purged": 1, "remaining": 1}
    assert error_of(daemon, "POST", "/v1/topics/t.dlq/replay", {"records": [second]}) == (
        409, f"the dead letter at partition {second['partition']} offset {second['offset']} "
        "of topic 't.dlq' was already replayed or purged")
    assert [(r["partition"], r["offset"]) for r in _letters(daemon)["records"]] == [
        (first["partition"], first["offset"])]
    answer = daemon.ok("POST", "/v1/topics/t.dlq/replay", {"records": [first], "to": "parking"})
    assert answer == {"replayed": 1, "skipped": 0, "skipped_reasons": {}, "remaining": 0,
                      "to": "parking"}
    assert len(daemon.ok("GET", "/v1/queues/parking/peek?n=10")["messages"]) == 3

    # purge everything: nothing pending; more dead letters after it are pending again
    daemon.ok("POST", "/v1/queues/qa/messages", {"body": "m9"}, 202)
    wait_for(lambda: _depth(daemon) == 1, timeout_s=30)
    done = daemon.cli("dlq", "purge", "t.dlq")
    assert (done.returncode, done.stdout.strip()) == (
        0, "purged 1 record(s) from t.dlq (the replay position moved past them; the log "
        "keeps them until retention)")
    assert _depth(daemon) == 0
    daemon.stop()
    daemon.start()
    assert _depth(daemon) == 0


def test_bad_input_is_refused_with_the_embedded_daemons_sentences(daemon: Daemon) -> None:
    assert error_of(daemon, "GET", "/v1/topics/t.dlqq/dead-letters") == (
        404, "topic 't.dlqq' not found; did you mean \"t.dlq\"?")
    not_dlq = ("topic 't' is not a dead-letter topic (no dlq_policy has it as "
               "dead_letter_queue)")
    assert error_of(daemon, "GET", "/v1/topics/t/dead-letters") == (400, not_dlq)
    assert error_of(daemon, "POST", "/v1/topics/t/replay", {}) == (400, not_dlq)
    assert error_of(daemon, "DELETE", "/v1/topics/t/dead-letters") == (400, not_dlq)
    assert error_of(daemon, "POST", "/v1/topics/t/dead-letters/purge",
                    {"records": [{"partition": 0, "offset": 0}]}) == (400, not_dlq)
    assert error_of(daemon, "POST", "/v1/topics/t.dlq/replay", {"to": "parkng"}) == (
        404, "queue or topic 'parkng' not found; did you mean \"parking\"?")
    assert error_of(daemon, "POST", "/v1/topics/t.dlq/replay", {"to": "t.dlq"}) == (
        400, "'to' names the topic being replayed ('t.dlq'); give another queue or topic")
    assert error_of(daemon, "POST", "/v1/topics/t.dlq/replay", {"max": 0}) == (
        400, "'max' must be an integer between 1 and 10000, got 0")
    status, sentence = error_of(daemon, "POST", "/v1/topics/t.dlq/replay", {"mx": 1})
    assert status == 400 and "'mx'" in sentence, sentence
    assert error_of(daemon, "POST", "/v1/topics/t.dlq/replay",
                    {"max": 1, "records": [{"partition": 0, "offset": 0}]}) == (
        400, "give 'records' (these dead letters) or 'max' (the first N), not both")
    assert error_of(daemon, "POST", "/v1/topics/t.dlq/dead-letters/purge", {"records": []}) == (
        400, "'records' must be a non-empty list of {\"partition\": P, \"offset\": O}")
    assert error_of(daemon, "POST", "/v1/topics/t.dlq/dead-letters/purge",
                    {"records": [{"partition": 5, "offset": 0}]}) == (
        404, "topic 't.dlq' has no partition 5 (it has 2: 0..1)")
    assert error_of(daemon, "POST", "/v1/topics/t.dlq/dead-letters/purge",
                    {"records": [{"partition": 0, "offset": 7}]}) == (
        404, "topic 't.dlq' partition 0 has no record at offset 7 (it keeps offsets none)")
    assert error_of(daemon, "POST", "/v1/topics/t.dlq/replay", raw=b"{nope") == (
        400, error_of(daemon, "POST", "/v1/queues/qa/replay", raw=b"{nope")[1])
    done = daemon.cli("dlq", "show", "t")
    assert done.returncode == 1 and not_dlq in done.stderr, done.stderr


def test_a_groups_dead_letter_in_a_queue_replays_back_to_the_group(daemon: Daemon) -> None:
    daemon.ok("POST", "/v1/topics/u/records", {"records": [{"value": "u0"}]}, 202)

    def parked() -> list[Any]:
        got: list[Any] = daemon.ok("GET", "/v1/queues/gq.dlq/peek?n=5")["messages"]
        return got

    (letter,) = wait_for(parked, timeout_s=30)
    death = letter["headers"]["x-dead-letter"]
    assert (death["original_topic"], death["original_offset"], death["original_group"]) == (
        "u", 0, "h")
    (daemon.workdir / "fail").unlink()
    answer = daemon.ok("POST", "/v1/queues/gq.dlq/replay", {})
    assert (answer["replayed"], answer["skipped"], answer["remaining"]) == (1, 0, 0), answer
    assert wait_for(lambda: _done(daemon) == ["u0"], timeout_s=30)
    internal = [q for q in daemon.ok("GET", "/v1/queues")["queues"] if q["internal"]]
    assert sorted(q["name"] for q in internal) == [
        "__runner.group.g.replay", "__runner.group.h.replay"]


def _dlq_series(d: Daemon) -> dict[tuple[str, int], float]:
    """(series, partition) -> value of t.dlq's pending series in a scrape."""
    out: dict[tuple[str, int], float] = {}
    for line in d.metrics().splitlines():
        for name in ("runner_dead_letter_topic_pending",
                     "runner_dead_letter_topic_oldest_pending_timestamp_seconds"):
            if line.startswith(name + "{") and 'topic="t.dlq"' in line:
                partition = int(line.split('partition="')[1].split('"')[0])
                out[(name, partition)] = float(line.rsplit(" ", 1)[1])
    return out


def _route_series(d: Daemon) -> dict[tuple[str, int], float]:
    """The same series as `GET /v1/topics/t.dlq/dead-letters` counts them."""
    out: dict[tuple[str, int], float] = {}
    for p in _letters(d)["partitions"]:
        out[("runner_dead_letter_topic_pending", p["partition"])] = float(p["pending"])
        ts = p["oldest_timestamp_ms"]
        out[("runner_dead_letter_topic_oldest_pending_timestamp_seconds", p["partition"])] = (
            ts / 1000 if ts is not None else 0.0)
    return out


def test_the_pending_series_count_what_the_dead_letters_route_counts(daemon: Daemon) -> None:
    _kill_five(daemon)
    letters = _letters(daemon)
    first = min(letters["records"], key=lambda r: (r["partition"], r["offset"]))
    # one dead letter purged on its own, at the replay position of its partition (a
    # marker: the pending count and the oldest one's timestamp both move past it)
    assert daemon.ok("POST", "/v1/topics/t.dlq/dead-letters/purge", {"records": [
        {"partition": first["partition"], "offset": first["offset"]}]}) == {
        "purged": 1, "remaining": 4}
    route = _route_series(daemon)
    assert sum(v for (name, _), v in route.items() if name.endswith("_pending")) == 4
    assert all(v > 0 for (name, _), v in route.items()
               if name.endswith("_seconds") and route[("runner_dead_letter_topic_pending", _)])
    # the scrape's series are cached (STREAM_SERIES_S): equal within a refresh or two
    assert wait_for(lambda: _dlq_series(daemon) == route, timeout_s=30, every_s=0.5), (
        _dlq_series(daemon), route)
