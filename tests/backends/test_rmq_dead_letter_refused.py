"""A dead letter the broker refuses over RabbitMQ is never lost: real daemons over the
real broker, each test in a vhost of its own. The broker really refuses the dead
letter: a nack from a dead-letter queue full with `overflow: reject-publish`, or a
dead-letter topic whose partition stream was deleted (a stream has no
reject-publish; a message routed nowhere is confirmed positively unless it is
published `mandatory`). Meanwhile a group does not commit past the record and a
queue consumer does not ack it; once the destination takes messages again, the
record is dead-lettered once, with its `x-dead-letter` header, and the group
commits past it."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pika
import pytest

from runner.backends.rabbitmq import apply as apply_mod
from runner.backends.rabbitmq import streams
from runner.backends.rabbitmq.url import Target
from runner.topology.load import load_text
from tests.e2e.conftest import Daemon, make_daemon, wait_for
from tests.rmq import read_stream, url

HANDLERS = '''\
import pathlib

HERE = pathlib.Path(__file__).parent


def work(msg):
    body = msg.body if isinstance(msg.body, str) else msg.body.decode()
    if body.startswith("bad"):
        raise ValueError(f"cannot take {body}")
    with open(HERE / "done.txt", "a") as out:
        out.write(f"{body}\\n")
'''

TOPOLOGY = """\
version: 1
name: rmq-dead-letter-refused
topics:
  t: {partitions: 1}
  u: {partitions: 1}
  t.dlq: {partitions: 1}
queues:
  qa: {}
  gq.dlq: {max_length: 1, overflow: reject-publish}
dlq_policies:
  to-topic: {max_retries: 0, dead_letter_queue: t.dlq}
  to-queue: {max_retries: 0, dead_letter_queue: gq.dlq}
consumer_groups:
  g: {topic: t, handler: "refused_handlers:work", delivery: at-least-once,
      dlq_policy: to-topic}
  h: {topic: u, handler: "refused_handlers:work", delivery: at-least-once,
      dlq_policy: to-queue}
consumers:
  ca: {queue: qa, handler: "refused_handlers:work", dlq_policy: to-topic}
"""

OUTAGE_S = 4.0  # how long the dead-letter destination refuses


@pytest.fixture
def daemon(tmp_path: Path, vhost: Target) -> Iterator[Daemon]:
    d = make_daemon(tmp_path / "d", TOPOLOGY, modules={"refused_handlers": HANDLERS},
                    args=["--backend", url(vhost), "--no-watch"])
    d.start()
    yield d
    if d.running:
        d.stop()


def _channel(target: Target) -> tuple[pika.BlockingConnection, Any]:
    conn = pika.BlockingConnection(pika.ConnectionParameters(
        host=target.host, port=target.port, virtual_host=target.vhost))
    return conn, conn.channel()


def _delete_queue(target: Target, name: str) -> None:
    conn, ch = _channel(target)
    try:
        ch.queue_delete(name)
    finally:
        conn.close()


def _redeclare(target: Target) -> None:
    """The topology declared again (`runner apply`): the deleted stream is back, empty."""
    apply_mod.apply(target, load_text(TOPOLOGY).topology)


def _committed(d: Daemon, group: str) -> int | None:
    (part,) = d.ok("GET", f"/v1/groups/{group}")["partitions"]
    committed = part["committed"]
    return None if committed is None else int(committed)


def _done(d: Daemon) -> list[str]:
    path = d.workdir / "done.txt"
    return path.read_text().split() if path.exists() else []


def _hold_on(d: Daemon, group: str, below: int) -> None:
    """For OUTAGE_S: the group never commits at or past `below` (the refused record + 1)."""
    until = time.monotonic() + OUTAGE_S
    while time.monotonic() < until:
        committed = _committed(d, group)
        assert committed is None or committed < below, (
            f"group {group} committed {committed} past a record whose dead letter the "
            "broker refused")
        time.sleep(0.2)


def _death(headers: Any) -> dict[str, Any]:
    """The `x-dead-letter` header of a message of a queue or a stream (where the runner
    keeps non-AMQP header values as JSON)."""
    unpacked = dict(headers or {})
    streams.unpack_json_headers(unpacked)
    death = unpacked.get("x-dead-letter")
    assert isinstance(death, dict), headers
    return death


def test_a_group_does_not_commit_past_a_record_whose_dead_letter_topic_is_gone(
    daemon: Daemon, vhost: Target,
) -> None:
    _delete_queue(vhost, "t.dlq.0")  # the dead-letter topic's only partition stream
    daemon.ok("POST", "/v1/topics/t/records",
              {"records": [{"value": "a"}, {"value": "bad-1"}, {"value": "c"}]}, 202)
    wait_for(lambda: "a" in _done(daemon), timeout_s=30)
    _hold_on(daemon, "g", below=2)
    assert "refused" in daemon.log()  # the member went back to the record, logged

    _redeclare(vhost)
    wait_for(lambda: _committed(daemon, "g") == 3, timeout_s=30)
    # dead-lettered once, as on the embedded engine; handled records not lost
    letters = read_stream(vhost, "t.dlq.0", 2, timeout_s=3)
    assert [body for _, body in letters] == [b'"bad-1"']
    death = _death(letters[0][0].headers)
    assert (death["original_topic"], death["original_partition"], death["original_offset"],
            death["original_group"], death["error"]["type"]) == ("t", 0, 1, "g", "ValueError")
    assert _done(daemon).count("a") == 1
    assert "c" in _done(daemon)
    answer = daemon.ok("GET", "/v1/topics/t.dlq/dead-letters?n=10")
    assert [r["value"] for r in answer["records"]] == ["bad-1"]


def test_a_group_does_not_commit_past_a_record_its_full_dead_letter_queue_nacks(
    daemon: Daemon, vhost: Target,
) -> None:
    # gq.dlq holds one message at most and refuses more (reject-publish: a nack)
    daemon.ok("POST", "/v1/queues/gq.dlq/messages", {"body": "filler"}, 202)
    daemon.ok("POST", "/v1/topics/u/records",
              {"records": [{"value": "a"}, {"value": "bad-2"}, {"value": "c"}]}, 202)
    wait_for(lambda: "a" in _done(daemon), timeout_s=30)
    _hold_on(daemon, "h", below=2)

    conn, ch = _channel(vhost)
    try:
        method, _props, body = ch.basic_get("gq.dlq", auto_ack=True)  # room for one
        assert (method is not None, body) == (True, b'"filler"')
        wait_for(lambda: _committed(daemon, "h") == 3, timeout_s=30)
        method, props, body = ch.basic_get("gq.dlq", auto_ack=True)
        assert method is not None and body == b'"bad-2"'
        death = _death(props.headers)
        assert (death["original_topic"], death["original_offset"], death["original_group"]) == (
            "u", 1, "h")
        assert ch.basic_get("gq.dlq", auto_ack=True)[0] is None  # once
    finally:
        conn.close()
    assert _done(daemon).count("a") == 1
    assert "c" in _done(daemon)


def test_a_queue_consumer_does_not_ack_a_message_whose_dead_letter_topic_is_gone(
    daemon: Daemon, vhost: Target,
) -> None:
    _delete_queue(vhost, "t.dlq.0")
    daemon.ok("POST", "/v1/queues/qa/messages", {"body": "bad-3"}, 202)
    time.sleep(OUTAGE_S)  # failed and dead-lettered nowhere again and again meanwhile

    _redeclare(vhost)
    # not acked while its dead letter went nowhere: dead-lettered now, once
    letters = wait_for(lambda: read_stream(vhost, "t.dlq.0", 1, timeout_s=1), timeout_s=30)
    assert [body for _, body in letters] == [b'"bad-3"']
    assert _death(letters[0][0].headers)["original_queue"] == "qa"
    wait_for(lambda: _qa_empty(daemon), timeout_s=20, every_s=0.5)
    assert [body for _, body in read_stream(vhost, "t.dlq.0", 2, timeout_s=2)] == [b'"bad-3"']


def _qa_empty(d: Daemon) -> bool:
    (info,) = [q for q in d.ok("GET", "/v1/queues")["queues"] if q["name"] == "qa"]
    return bool(info["ready"] == 0 and info["unacked"] == 0)
