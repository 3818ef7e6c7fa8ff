"""Issue 8 item 8: a dead_letter_queue that is a topic works with the DLQ tools.

`runner dlq list|show|replay [--to]|purge` and the HTTP routes
(`GET|DELETE /v1/topics/{name}/dead-letters`, `POST /v1/topics/{name}/replay`)
on a real daemon; replay puts each record back where it died (a queue
message into its queue, a group's record to that group) and advances the
durable replay position, so `runner_dead_letter_topic_pending` and the
generated alert clear; purge advances it too (the log keeps the records).
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.e2e.conftest import RUNNER, Daemon, error_of, wait_for

pytestmark = pytest.mark.e2e

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
name: topic-dlq
topics:
  t: {partitions: 1}
  t.dlq: {partitions: 2}
  archive: {partitions: 1}
queues:
  qa: {}
  parking: {}
dlq_policies:
  to-topic:
    max_retries: 0
    dead_letter_queue: t.dlq
    alert: {max_depth: 0}
consumer_groups:
  g: {topic: t, handler: "dlq_handlers:work", dlq_policy: to-topic}
consumers:
  ca: {queue: qa, handler: "dlq_handlers:work", dlq_policy: to-topic}
"""


def _depth(d: Daemon) -> int:
    return int(d.ok("GET", "/v1/topics/t.dlq/dead-letters?n=1")["depth"])


def _pending_metric(d: Daemon) -> int:
    found = re.findall(r'^runner_dead_letter_topic_pending\{[^}]*topic="t.dlq"[^}]*\} (\S+)$',
                       d.metrics(), re.M)
    assert len(found) == 2, found  # one per partition
    return int(sum(float(v) for v in found))


def _done(d: Daemon) -> list[str]:
    path = d.workdir / "done.txt"
    return sorted(path.read_text().split()) if path.exists() else []


@pytest.fixture
def daemon(start_daemon: Callable[..., Daemon]) -> Daemon:
    d = start_daemon(TOPOLOGY, modules={"dlq_handlers": HANDLERS})
    (d.workdir / "fail").write_text("")
    return d


def _kill_five(d: Daemon) -> None:
    d.ok("POST", "/v1/topics/t/records", {"records": [{"value": f"r{i}"} for i in range(3)]}, 202)
    for i in range(2):
        d.ok("POST", "/v1/queues/qa/messages", {"body": f"m{i}"}, 202)
    wait_for(lambda: _depth(d) == 5)


def test_list_show_replay_to_the_origin_clears_the_depth(daemon: Daemon) -> None:
    _kill_five(daemon)
    assert _pending_metric(daemon) == 5

    done = daemon.cli("dlq", "list")
    assert done.returncode == 0, done.stderr
    row = [line.split() for line in done.stdout.splitlines() if line.startswith("t.dlq")]
    assert row and row[0][:3] == ["t.dlq", "topic", "5"], done.stdout

    done = daemon.cli("dlq", "show", "t.dlq", "-n", "5")
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("--- message t.dlq/") == 5
    assert done.stdout.count("error:         ValueError: cannot take") == 5
    assert "origin:        queue qa" in done.stdout
    assert "origin:        topic t partition 0 offset 0" in done.stdout

    (daemon.workdir / "fail").unlink()
    done = daemon.cli("dlq", "replay", "t.dlq", "--max", "2")
    assert (done.returncode, done.stdout.strip()) == (0, "replayed 2 message(s) from t.dlq")
    assert _depth(daemon) == 3
    done = daemon.cli("dlq", "replay", "t.dlq")
    assert (done.returncode, done.stdout.strip()) == (0, "replayed 3 message(s) from t.dlq")
    assert wait_for(lambda: _done(daemon) == ["m0", "m1", "r0", "r1", "r2"])
    assert _depth(daemon) == 0 and _pending_metric(daemon) == 0
    # nothing appended again to t: the group got its records back through its replay queue
    assert daemon.ok("GET", "/v1/topics/t")["records"] == 3
    # the log keeps the dead letters; only the replay position moved
    assert daemon.ok("GET", "/v1/topics/t.dlq")["records"] == 5

    # durable: a restart still has nothing pending and replays nothing twice
    daemon.stop()
    daemon.start()
    assert _depth(daemon) == 0
    assert daemon.ok("POST", "/v1/topics/t.dlq/replay", {})["replayed"] == 0
    assert _done(daemon) == ["m0", "m1", "r0", "r1", "r2"]


def test_replay_to_another_place_and_purge(daemon: Daemon) -> None:
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
    assert daemon.ok("GET", "/v1/topics/archive")["records"] == 1

    done = daemon.cli("dlq", "purge", "t.dlq")
    assert (done.returncode, done.stdout.strip()) == (
        0, "purged 2 record(s) from t.dlq (the replay position moved past them; the log "
        "keeps them until retention)")
    assert _depth(daemon) == 0 and _pending_metric(daemon) == 0
    daemon.stop()
    daemon.start()
    assert _depth(daemon) == 0


def test_the_alert_hint_runs(daemon: Daemon) -> None:
    _kill_five(daemon)
    rules = subprocess.run([str(RUNNER), "alerts", str(daemon.topology)], capture_output=True,
                           text=True, check=True, cwd=daemon.workdir).stdout
    hints = re.findall(r"`(runner dlq [^`]+)`", rules)
    assert "runner dlq show t.dlq" in hints and "runner dlq replay t.dlq" in hints, rules
    assert "runner_dead_letter_topic_pending" in rules
    (daemon.workdir / "fail").unlink()
    for hint in hints:
        done = daemon.cli(*hint.split()[1:])
        assert done.returncode == 0, (hint, done.stdout, done.stderr)
    assert _depth(daemon) == 0


def test_bad_input_is_refused_with_a_clear_sentence(daemon: Daemon) -> None:
    assert error_of(daemon, "GET", "/v1/topics/t.dlqq/dead-letters") == (
        404, "topic 't.dlqq' not found; did you mean \"t.dlq\"?")
    not_dlq = ("topic 't' is not a dead-letter topic (no dlq_policy has it as "
               "dead_letter_queue)")
    assert error_of(daemon, "GET", "/v1/topics/t/dead-letters") == (400, not_dlq)
    assert error_of(daemon, "POST", "/v1/topics/t/replay", {}) == (400, not_dlq)
    assert error_of(daemon, "DELETE", "/v1/topics/t/dead-letters") == (400, not_dlq)
    assert error_of(daemon, "POST", "/v1/topics/t.dlq/replay", {"to": "parkng"}) == (
        404, "queue or topic 'parkng' not found; did you mean \"parking\"?")
    assert error_of(daemon, "POST", "/v1/topics/t.dlq/replay", {"to": "t.dlq"}) == (
        400, "'to' names the topic being replayed ('t.dlq'); give another queue or topic")
    status, sentence = error_of(daemon, "POST", "/v1/topics/t.dlq/replay", {"max": 0})
    assert status == 400 and sentence.startswith("'max' must be"), sentence
    status, sentence = error_of(daemon, "POST", "/v1/topics/t.dlq/replay", {"mx": 1})
    assert status == 400 and "'mx'" in sentence, sentence
    done = daemon.cli("dlq", "show", "t")
    assert done.returncode == 1 and not_dlq in done.stderr, done.stderr


def test_a_record_that_cannot_go_back_stops_its_partition(
    start_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    d = start_daemon(TOPOLOGY, modules={"dlq_handlers": HANDLERS})
    d.ok("POST", "/v1/topics/t.dlq/records",
         {"records": [{"value": "plain", "partition": 0}]}, 202)
    answer = d.ok("POST", "/v1/topics/t.dlq/replay", {})
    assert answer == {"replayed": 0, "skipped": 1, "remaining": 1, "skipped_reasons": {
        "not a dead letter (no x-dead-letter header naming where it died)": 1}}
    done = d.cli("dlq", "replay", "t.dlq")
    assert done.returncode == 0
    assert done.stdout.splitlines() == [
        "replayed 0 message(s) from t.dlq", "kept 1 message(s) in t.dlq:",
        "  1: not a dead letter (no x-dead-letter header naming where it died)"]
