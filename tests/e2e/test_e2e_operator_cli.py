"""The tools people reach for, against the real daemon: `runner groups describe|reset`
(kafka-consumer-groups), `runner consume` (kcat), `runner dlq purge|replay --to`,
did-you-mean on 404s, and no abbreviated options."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator

import pytest

from tests.e2e.conftest import RUNNER, Daemon, error_of, module_daemon

pytestmark = pytest.mark.e2e

TOPOLOGY = """\
version: 1
name: tools
topics:
  events: {partitions: 3}
  other: {}
  moved: {}
  live: {partitions: 2}
  handled: {}
queues:
  work: {}
  dead: {}
  dead2: {}
  big.dlq: {}
  target: {}
  tiny: {max_length: 1, overflow: reject-publish}
consumer_groups:
  ext: {topics: [events, other]}
  fresh: {topic: events}
  readers: {topic: live}
  handled-group: {topic: handled, handler: "h:handle"}
"""


@pytest.fixture(scope="module")
def d(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    yield from module_daemon(tmp_path_factory.mktemp("tools"), TOPOLOGY,
                             modules={"h": "def handle(msg):\n    raise RuntimeError('never')\n"})


@pytest.fixture(scope="module", autouse=True)
def records(d: Daemon) -> None:
    # events: partition 0 gets 4 records, 1 gets 3, 2 gets 2 (9 in all)
    for p, n in ((0, 4), (1, 3), (2, 2)):
        d.ok("POST", "/v1/topics/events/records",
             {"records": [{"value": {"p": p, "i": i}, "partition": p} for i in range(n)]}, 202)
    d.ok("POST", "/v1/groups/ext/commit", {"offsets": [
        {"topic": "events", "partition": 0, "offset": 1},
        {"topic": "events", "partition": 1, "offset": 3}]})


def cli(d: Daemon, *args: str) -> tuple[int, str, str]:
    done = d.cli(*args)
    return done.returncode, done.stdout, done.stderr


def positions(d: Daemon, group: str, topic: str = "events") -> list[int]:
    doc = d.ok("GET", f"/v1/groups/{group}")
    return [p["position"] for p in doc["partitions"] if p["topic"] == topic]


# ------------------------------------------------------------------ groups describe


def test_groups_describe_is_kafka_consumer_groups_describe(d: Daemon) -> None:
    code, out, err = cli(d, "groups", "describe", "ext")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "group ext: 0 member(s), total lag 5"
    assert lines[1].split() == ["topic", "partition", "current-offset", "log-end-offset", "lag",
                                "member"]
    assert [line.split() for line in lines[2:]] == [
        ["events", "0", "1", "4", "3", "-"],
        ["events", "1", "3", "3", "0", "-"],
        ["events", "2", "-", "2", "2", "-"],
        ["other", "0", "-", "0", "0", "-"],
    ]
    code, out, _ = cli(d, "groups", "describe", "ext", "--format", "json")
    assert code == 0 and json.loads(out)["lag"] == 5


def test_groups_describe_of_an_unknown_group_suggests_the_closest(d: Daemon) -> None:
    code, _, err = cli(d, "groups", "describe", "fresg")
    assert code == 1
    assert "consumer group 'fresg' not found; did you mean \"fresh\"? (HTTP 404)" in err


# ------------------------------------------------------------------ groups reset


def test_reset_dry_run_prints_the_plan_and_changes_nothing(d: Daemon) -> None:
    before = positions(d, "fresh")
    code, out, err = cli(d, "groups", "reset", "fresh", "--to-latest", "--dry-run")
    assert code == 0, err
    assert [line.split() for line in out.splitlines()] == [
        ["topic", "partition", "old", "new", "note"],
        ["events", "0", "0", "4", "-"],
        ["events", "1", "0", "3", "-"],
        ["events", "2", "0", "2", "-"],
        ["dry", "run:", "group", "fresh", "not", "changed", "(3", "partition(s)", "would",
         "move)"],
    ]
    assert positions(d, "fresh") == before == [0, 0, 0]


def test_reset_to_each_target(d: Daemon) -> None:
    assert cli(d, "groups", "reset", "fresh", "--to-latest")[0] == 0
    assert positions(d, "fresh") == [4, 3, 2]
    code, out, _ = cli(d, "groups", "reset", "fresh", "--shift-by", "-2")
    assert code == 0 and out.splitlines()[-1] == "group fresh reset: 3 partition(s) moved"
    assert positions(d, "fresh") == [2, 1, 0]
    assert cli(d, "groups", "reset", "fresh", "--to-earliest")[0] == 0
    assert positions(d, "fresh") == [0, 0, 0]
    code, out, _ = cli(d, "groups", "reset", "fresh", "--to-offset", "3")
    assert code == 0
    assert positions(d, "fresh") == [3, 3, 2]
    assert "3 is above the log end; set to 2" in out
    # a time after every record: the log end; one before all: the start
    assert cli(d, "groups", "reset", "fresh", "--to-datetime", "2000-01-01T00:00:00Z")[0] == 0
    assert positions(d, "fresh") == [0, 0, 0]
    assert cli(d, "groups", "reset", "fresh", "--to-datetime", "2999-01-01T00:00:00+00:00")[0] == 0
    assert positions(d, "fresh") == [4, 3, 2]


def test_reset_of_one_topic_leaves_the_others(d: Daemon) -> None:
    d.ok("POST", "/v1/topics/other/records", {"value": 1}, 202)
    code, out, err = cli(d, "groups", "reset", "ext", "--topic", "other", "--to-latest")
    assert code == 0, err
    assert [line.split()[0] for line in out.splitlines()[1:-1]] == ["other"]
    assert positions(d, "ext", "other") == [1]
    assert positions(d, "ext", "events")[:2] == [1, 3]


@pytest.mark.parametrize(("body", "status", "message"), [
    ({"to": "middle"}, 400,
     "'to' must be one of earliest, latest, offset, timestamp, shift, got 'middle'"),
    ({"to": "offset"}, 400, "missing field 'offset' (an integer)"),
    ({"to": "latest", "offset": 3}, 400, "'offset' goes with \"to\": \"offset\", not \"latest\""),
    ({"to": "offset", "offset": -1}, 400, "'offset' must be an integer between 0 and"),
    ({"to": "latest", "dry": True}, 400, "unknown field 'dry'"),
    ({"to": "latest", "topic": "nope"}, 404,
     "consumer group 'fresh' does not read topic 'nope' (it reads events)"),
])
def test_reset_refuses_bad_requests(d: Daemon, body: dict[str, object], status: int,
                                    message: str) -> None:
    before = positions(d, "fresh")
    got_status, got = error_of(d, "POST", "/v1/groups/fresh/reset", body)
    assert got_status == status and got.startswith(message), got
    assert positions(d, "fresh") == before


def test_reset_usage_errors(d: Daemon) -> None:
    code, _, err = cli(d, "groups", "reset", "fresh", "--to-datetime", "yesterday")
    assert code == 2
    assert "--to-datetime 'yesterday' is not an ISO 8601 date-time" in err
    code, _, err = cli(d, "groups", "reset", "fresh", "--to-earliest", "--to-latest")
    assert code == 2 and "not allowed with argument" in err


# ------------------------------------------------------------------ consume --topic


def records_of(out: str) -> list[tuple[int, int]]:
    return sorted((r["partition"], r["offset"]) for r in map(json.loads, out.splitlines()))


def test_consume_a_topic_reads_every_partition(d: Daemon) -> None:
    code, out, err = cli(d, "consume", "--topic", "events", "--from-beginning")
    assert code == 0, err
    assert records_of(out) == [(0, 0), (0, 1), (0, 2), (0, 3), (1, 0), (1, 1), (1, 2),
                               (2, 0), (2, 1)]
    assert "9 record(s) from events; next offsets (partition:offset) 0:4 1:3 2:2" in err
    code, out, err = cli(d, "consume", "--topic", "events", "--from-beginning", "--max", "5")
    assert code == 0 and len(out.splitlines()) == 5
    code, out, err = cli(d, "consume", "--topic", "events", "--partition", "1",
                         "--offset", "1")
    assert records_of(out) == [(1, 1), (1, 2)]


def test_consume_a_topic_starts_at_the_log_end_by_default(d: Daemon) -> None:
    code, out, err = cli(d, "consume", "--topic", "events")
    assert code == 0 and out == ""
    assert "(at the log end: --from-beginning reads what is there, --follow waits)" in err


def test_consume_follow_waits_for_new_records(d: Daemon) -> None:
    proc = subprocess.Popen(
        [str(RUNNER), "consume", "--topic", "live", "--follow", "--max", "3", "--url", d.url],
        env=d.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    assert proc.stderr is not None
    # it says when it listens; what is appended from then on is printed
    first = proc.stderr.readline()
    assert first == "following live from (partition:offset) 0:0 1:0; Ctrl-C stops\n", first
    for i in range(3):
        d.ok("POST", "/v1/topics/live/records", {"value": i, "partition": i % 2}, 202)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, first + err
    assert sorted(json.loads(line)["value"] for line in out.splitlines()) == [0, 1, 2]


def test_consume_as_an_external_group_commits_what_it_printed(d: Daemon) -> None:
    for i in range(4):
        d.ok("POST", "/v1/topics/live/records", {"value": 10 + i, "partition": i % 2}, 202)
    code, out, err = cli(d, "consume", "--topic", "live", "--group", "readers")
    assert code == 0, err
    assert len(out.splitlines()) == d.ok("GET", "/v1/groups/readers")["partitions"][0][
        "log_end_offset"] + d.ok("GET", "/v1/groups/readers")["partitions"][1]["log_end_offset"]
    assert d.ok("GET", "/v1/groups/readers")["lag"] == 0
    code, out, _ = cli(d, "consume", "--topic", "live", "--group", "readers")
    assert code == 0 and out == ""  # nothing new for the group


def test_consume_as_a_handler_group_is_refused(d: Daemon) -> None:
    d.ok("POST", "/v1/topics/handled/records", {"value": 1}, 202)
    code, _, err = cli(d, "consume", "--topic", "handled", "--group", "handled-group",
                       "--from-beginning")
    assert code == 2 and "give at most one of --from-beginning, --offset and --group" in err
    # the handler fails and waits 1s, 5s, 30s before its retries: nothing is committed
    code, out, err = cli(d, "consume", "--topic", "handled", "--group", "handled-group")
    assert code == 1 and len(out.splitlines()) == 1
    assert "group handled-group is run by this daemon's handler" in err


def test_consume_topic_usage_errors(d: Daemon) -> None:
    code, _, err = cli(d, "consume", "--topic", "events", "--ack")
    assert code == 2 and "--ack and --lease are for queues" in err
    code, _, err = cli(d, "consume", "--topic", "events", "--partition", "7")
    assert code == 2 and "topic events has no partition 7 (it has 3: 0..2)" in err
    code, _, err = cli(d, "consume", "--topic", "evnets")
    assert code == 1 and "topic 'evnets' not found; did you mean \"events\"?" in err


# ------------------------------------------------------------------ consume --queue


def test_consume_a_queue_peeks_by_default(d: Daemon) -> None:
    d.ok("POST", "/v1/queues/work/messages", {"messages": [{"body": i} for i in range(3)]}, 202)
    for _ in range(2):  # twice: nothing was hidden
        code, out, err = cli(d, "consume", "--queue", "work", "--max", "5")
        assert code == 0, err
        assert [json.loads(line)["body"] for line in out.splitlines()] == [0, 1, 2]
        assert "they stay ready" in err
    assert d.ok("GET", "/v1/queues")["queues"][-1]["ready"] == 3  # 'work', last by name
    code, out, err = cli(d, "consume", "--queue", "work", "--max", "2", "--lease", "30s")
    assert code == 0 and "not acked, they come back when it ends" in err
    code, out, err = cli(d, "consume", "--queue", "work", "--max", "5", "--ack")
    assert code == 0 and [json.loads(line)["body"] for line in out.splitlines()] == [2]
    assert "acked 1 message(s)" in err
    code, _, err = cli(d, "consume", "--queue", "work", "--follow")
    assert code == 2 and "--follow is for topics" in err


# ------------------------------------------------------------------ dlq purge, replay --to


def depth(d: Daemon, queue: str) -> int:
    return next(q["ready"] for q in d.ok("GET", "/v1/queues")["queues"] if q["name"] == queue)


def test_dlq_purge(d: Daemon) -> None:
    d.ok("POST", "/v1/queues/dead2/messages", {"messages": [{"body": i} for i in range(5)]}, 202)
    code, out, err = cli(d, "dlq", "purge", "dead2")
    assert code == 0, err
    assert out == "purged 5 message(s) from dead2\n"
    assert depth(d, "dead2") == 0
    status, message = error_of(d, "DELETE", "/v1/queues/dead22/messages")
    assert (status, message) == (404, "queue 'dead22' not found; did you mean \"dead2\"?")


def test_dlq_replay_to_another_queue_and_to_a_topic(d: Daemon) -> None:
    death = json.dumps({"reason": "rejected"})
    d.ok("POST", "/v1/queues/dead/messages", {"messages": [
        {"body": {"n": i}, "headers": {"x-dead-letter": death, "k": "v"}} for i in range(3)]},
        202)
    code, out, err = cli(d, "dlq", "replay", "dead", "--to", "target", "--max", "2")
    assert code == 0, err
    assert out == "replayed 2 message(s) from dead into target\n"
    moved = d.ok("GET", "/v1/queues/target/peek?n=10")["messages"]
    assert [m["body"] for m in moved] == [{"n": 0}, {"n": 1}]
    assert all("x-dead-letter" not in m["headers"] for m in moved)
    assert moved[0]["headers"]["k"] == "v" and moved[0]["headers"]["x-replay-count"] == 1
    code, out, err = cli(d, "dlq", "replay", "dead", "--to", "moved")
    assert code == 0 and out == "replayed 1 message(s) from dead into moved\n"
    recs = d.ok("GET", "/v1/topics/moved/partitions/0/records?offset=0")["records"]
    assert [r["value"] for r in recs] == [{"n": 2}]
    assert depth(d, "dead") == 0


def test_dlq_replay_to_refusals_keep_every_message(d: Daemon) -> None:
    d.ok("POST", "/v1/queues/dead/messages", {"messages": [{"body": i} for i in range(3)]}, 202)
    code, _, err = cli(d, "dlq", "replay", "dead", "--to", "targte")
    assert code == 1 and "queue 'targte' not found; did you mean \"target\"?" in err
    code, _, err = cli(d, "dlq", "replay", "dead", "--to", "dead")
    assert code == 1 and "'to' names the queue being replayed ('dead')" in err
    code, _, err = cli(d, "dlq", "replay", "dead", "--to", "tiny")  # holds 1: refused
    assert code == 1 and "(HTTP 429)" in err
    assert depth(d, "dead") == 3 and depth(d, "tiny") == 0
    cli(d, "dlq", "purge", "dead")


def test_a_long_replay_reports_progress(d: Daemon) -> None:
    for _ in range(2):
        d.ok("POST", "/v1/queues/big.dlq/messages",
             {"messages": [{"body": 0}] * 6000}, 202)
    code, out, err = cli(d, "dlq", "replay", "big.dlq", "--to", "target")
    assert code == 0, err
    assert out == "replayed 12000 message(s) from big.dlq into target\n"
    assert err == "replayed 10000 of 12000...\n"
    cli(d, "dlq", "purge", "target")


# ------------------------------------------------------------------ 404s and abbreviations


def test_404s_suggest_the_closest_declared_name(d: Daemon) -> None:
    assert error_of(d, "POST", "/v1/queues/wrok/messages", {"body": 1}) == (
        404, "queue 'wrok' not found; did you mean \"work\"?")
    assert error_of(d, "POST", "/v1/exchanges/wrok/messages", {"routing_key": "", "body": 1})[0] \
        == 404
    assert error_of(d, "GET", "/v1/topics/event/partitions/0/records?offset=0") == (
        404, "topic 'event' not found; did you mean \"events\"?")
    assert error_of(d, "GET", "/v1/groups/redaers") == (
        404, "consumer group 'redaers' not found; did you mean \"readers\"?")
    assert error_of(d, "GET", "/v1/queus") == (
        404, "no route GET /v1/queus; did you mean \"/v1/queues\"?")
    assert error_of(d, "GET", "/v1/queues/zzzzzzzz/peek") == (
        404, "queue 'zzzzzzzz' not found")


def test_abbreviated_options_are_refused(d: Daemon) -> None:
    # before: `--to` was read as `--token` and the replay went back to the origin, exit 0
    code, _, err = cli(d, "dlq", "replay", "dead", "--tok", "x")
    assert code == 2 and "unrecognized arguments: --tok" in err
    code, _, err = cli(d, "publish", "--que", "work", "1")
    assert code == 2 and "unrecognized arguments" in err
