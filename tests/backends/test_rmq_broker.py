"""The RabbitMQ backend against the real local broker: apply, plan, prune, routing,
every queue argument as the broker reports it, priorities, DLX, delay queues."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pika
import pytest

from runner.backends.rabbitmq import live
from runner.backends.rabbitmq.url import Target
from tests.cli.console import run, write
from tests.rmq import url

pytestmark = pytest.mark.rabbitmq

TOPOLOGY = """\
version: 1
topics:
  events: {partitions: 2, retention: {time: 2d, bytes: 1GiB}, segment_bytes: 8MiB}
exchanges:
  direct: {type: direct}
  fanout: {type: fanout}
  topic: {type: topic, alternate_exchange: unrouted}
  headers: {type: headers}
  unrouted: {type: fanout}
  dlx: {type: direct}
queues:
  plain: {}
  from.fanout: {}
  from.topic: {}
  from.headers: {}
  lost: {}
  everything:
    max_priority: 9
    message_ttl: 300ms
    max_length: 100
    max_length_bytes: 1MiB
    overflow: reject-publish-dlx
    single_active_consumer: true
    dead_letter: {exchange: dlx, routing_key: dead}
  limited: {delivery_limit: 5, overflow: reject-publish}
  prio: {max_priority: 9}
  dead: {}
bindings:
  - {exchange: direct, queue: plain, routing_key: k}
  - {exchange: topic, to_exchange: fanout, routing_key: "a.*.c"}
  - {exchange: fanout, queue: from.fanout}
  - {exchange: topic, queue: from.topic, routing_key: "x.#"}
  - {exchange: headers, queue: from.headers, match: any, headers: {format: pdf, kind: report}}
  - {exchange: unrouted, queue: lost}
  - {exchange: dlx, queue: dead, routing_key: dead}
dlq_policies:
  quick: {max_retries: 2, backoff: [200ms, 400ms]}
consumers:
  c: {queue: plain, handler: "m:f", dlq_policy: quick}
"""


def api(target: Target, path: str) -> Any:
    return live.request(target, "GET", path.replace("{v}", live.vhost_path(target.vhost)))


@pytest.fixture
def channel(vhost: Target) -> Iterator[Any]:
    conn = pika.BlockingConnection(pika.ConnectionParameters(
        host=vhost.host, virtual_host=vhost.vhost,
        credentials=pika.PlainCredentials("guest", "guest")))
    try:
        yield conn.channel()
    finally:
        conn.close()


def applied(tmp_path: Path, vhost: Target, text: str = TOPOLOGY, *extra: str) -> str:
    write(tmp_path / "t.yaml", text)
    done = run(tmp_path, "apply", "t.yaml", "--backend", url(vhost), *extra)
    assert done.returncode == 0, done.stderr
    return done.stdout


def get(ch: Any, queue: str, wait_s: float = 0.0) -> bytes | None:
    deadline = time.monotonic() + wait_s
    while True:
        _, _, body = ch.basic_get(queue, auto_ack=True)
        if body is not None or time.monotonic() >= deadline:
            return body  # type: ignore[no-any-return]
        time.sleep(0.05)


def test_apply_declares_every_argument_and_a_second_apply_changes_nothing(
    tmp_path: Path, vhost: Target,
) -> None:
    out = applied(tmp_path, vhost)
    assert "+ queue limited (quorum)\n" in out
    assert "+ queue events.1 (stream)\n" in out
    assert "+ binding topic -> exchange fanout key \"a.*.c\"\n" in out
    queues = {q["name"]: q for q in api(vhost, "/api/queues/{v}")}
    assert queues["everything"]["arguments"] == {
        "x-dead-letter-exchange": "dlx", "x-dead-letter-routing-key": "dead",
        "x-max-length": 100, "x-max-length-bytes": 1048576, "x-max-priority": 9,
        "x-message-ttl": 300, "x-overflow": "reject-publish-dlx", "x-queue-type": "classic",
        "x-single-active-consumer": True,
    }
    assert queues["limited"]["type"] == "quorum"
    assert queues["limited"]["arguments"] == {
        "x-delivery-limit": 4, "x-overflow": "reject-publish", "x-queue-type": "quorum",
    }
    for p in (0, 1):
        assert queues[f"events.{p}"]["type"] == "stream"
        assert queues[f"events.{p}"]["arguments"] == {
            "x-queue-type": "stream", "x-max-age": "172800s", "x-max-length-bytes": 1024**3,
            "x-stream-max-segment-size-bytes": 8 * 1024**2,
        }
    for ms in (200, 400):
        assert queues[f"__runner.delay.{ms}ms"]["arguments"] == {
            "x-queue-type": "classic", "x-message-ttl": ms, "x-dead-letter-exchange": "",
        }
    exchanges = {e["name"]: e for e in api(vhost, "/api/exchanges/{v}")}
    assert exchanges["topic"]["arguments"] == {"alternate-exchange": "unrouted"}
    assert {exchanges[n]["type"] for n in ("direct", "fanout", "topic", "headers")} == {
        "direct", "fanout", "topic", "headers"}
    assert applied(tmp_path, vhost) == "no changes\n"
    done = run(tmp_path, "plan", "t.yaml", "--against", url(vhost))
    assert (done.returncode, done.stdout) == (0, "no changes\n")


def test_routing_through_each_exchange_type(tmp_path: Path, vhost: Target, channel: Any) -> None:
    applied(tmp_path, vhost)
    ch = channel
    ch.basic_publish("direct", "k", b"d")
    ch.basic_publish("direct", "other", b"nowhere")
    ch.basic_publish("topic", "a.b.c", b"t2f")  # exchange-to-exchange into fanout
    ch.basic_publish("topic", "x.y.z", b"t")
    ch.basic_publish("topic", "nothing", b"alt")  # alternate exchange
    ch.basic_publish("headers", "", b"h", pika.BasicProperties(headers={"format": "pdf"}))
    ch.basic_publish("headers", "", b"no", pika.BasicProperties(headers={"format": "doc"}))
    assert get(ch, "plain", 2) == b"d"
    assert get(ch, "plain") is None
    assert get(ch, "from.fanout", 2) == b"t2f"
    assert get(ch, "from.topic", 2) == b"t"
    assert get(ch, "lost", 2) == b"alt"
    assert get(ch, "from.headers", 2) == b"h"
    assert get(ch, "from.headers") is None


def test_priorities_dead_letters_and_a_delay_queue_round_trip(
    tmp_path: Path, vhost: Target, channel: Any,
) -> None:
    applied(tmp_path, vhost)
    ch = channel
    for p in (1, 9, 5):
        ch.basic_publish("", "prio", str(p).encode(), pika.BasicProperties(priority=p))
    time.sleep(0.2)
    assert [get(ch, "prio", 10) for _ in range(3)] == [b"9", b"5", b"1"]
    # message_ttl 300ms, then dead-lettered through dlx with key "dead"
    ch.basic_publish("", "everything", b"expires")
    assert get(ch, "dead", 20) == b"expires"
    # the 200ms delay queue dead-letters back to the queue named by the routing key
    start = time.monotonic()
    ch.basic_publish("__runner.delay.200ms", "plain", b"later")
    deadline = start + 20
    while True:
        _, props, body = ch.basic_get("plain", auto_ack=True)
        if body is not None or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert body == b"later"
    assert time.monotonic() - start >= 0.2
    death = props.headers["x-death"][0]
    assert (death["queue"], death["reason"], death["routing-keys"]) == (
        "__runner.delay.200ms", "expired", ["plain"])


def test_plan_against_an_empty_vhost_then_an_unsafe_change_is_refused_with_the_broker_reason(
    tmp_path: Path, vhost: Target,
) -> None:
    write(tmp_path / "t.yaml", TOPOLOGY)
    done = run(tmp_path, "plan", "t.yaml", "--against", url(vhost), "--format", "json")
    assert done.returncode == 0, done.stderr
    changes = json.loads(done.stdout)["changes"]
    assert {"kind": "added", "entity": "queue", "name": "limited"} in [
        {k: c[k] for k in ("kind", "entity", "name")} for c in changes]
    applied(tmp_path, vhost)
    write(tmp_path / "t.yaml", TOPOLOGY.replace("message_ttl: 300ms", "message_ttl: 1s"))
    done = run(tmp_path, "plan", "t.yaml", "--against", url(vhost))
    assert done.returncode == 1
    assert done.stdout.splitlines()[0] == (
        "~ queue everything: message_ttl 300ms -> 1s  ! UNSAFE: RabbitMQ cannot change a "
        "queue's arguments in place (message_ttl): delete and declare it again (its messages "
        "are lost) or declare a new one"
    )
    assert done.stdout.splitlines()[-1] == (
        "0 to add, 1 to change, 0 to remove; 1 unsafe: runner apply would be refused")
    done = run(tmp_path, "apply", "t.yaml", "--backend", url(vhost))
    assert done.returncode == 1
    assert (
        "  queue 'everything': the broker refused it: 406 PRECONDITION_FAILED - inequivalent "
        f"arg 'x-message-ttl' for queue 'everything' in vhost '{vhost.vhost}': received "
        "'1000' but current is '300'"
    ) in done.stderr.splitlines()
    queues = {q["name"]: q for q in api(vhost, "/api/queues/{v}")}
    assert queues["everything"]["arguments"]["x-message-ttl"] == 300


def test_prune_deletes_only_when_asked(tmp_path: Path, vhost: Target) -> None:
    applied(tmp_path, vhost)
    smaller = TOPOLOGY.replace("  lost: {}\n", "").replace(
        "  - {exchange: unrouted, queue: lost}\n", "")
    assert applied(tmp_path, vhost, smaller) == "no changes\n"
    assert "lost" in {q["name"] for q in api(vhost, "/api/queues/{v}")}
    done = run(tmp_path, "plan", "t.yaml", "--against", url(vhost))
    assert "- queue lost" in done.stdout
    out = applied(tmp_path, vhost, smaller, "--prune")
    assert out == "- binding unrouted -> queue lost\n- queue lost\n"
    assert "lost" not in {q["name"] for q in api(vhost, "/api/queues/{v}")}
    assert applied(tmp_path, vhost, smaller, "--prune") == "no changes\n"


def test_prune_refuses_a_queue_that_holds_messages(
    tmp_path: Path, vhost: Target, channel: Any,
) -> None:
    applied(tmp_path, vhost)
    channel.basic_publish("", "lost", b"still here")
    smaller = TOPOLOGY.replace("  lost: {}\n", "").replace(
        "  - {exchange: unrouted, queue: lost}\n", "")
    write(tmp_path / "t.yaml", smaller)
    done = run(tmp_path, "apply", "t.yaml", "--backend", url(vhost), "--prune")
    assert done.returncode == 1
    assert "  - queue lost  ! UNSAFE: the queue holds messages" in done.stderr.splitlines()
    assert channel.queue_declare("lost", passive=True).method.message_count == 1


def test_compaction_is_reported_by_plan_and_refused_by_apply(
    tmp_path: Path, vhost: Target,
) -> None:
    write(tmp_path / "t.yaml", "version: 1\ntopics:\n  users: {key: id, cleanup_policy: compact}\n")
    done = run(tmp_path, "plan", "t.yaml", "--against", url(vhost))
    assert done.returncode == 1
    assert done.stdout.splitlines()[0] == (
        "+ topic users  ! UNSAFE: the RabbitMQ backend cannot express this: RabbitMQ streams "
        "have no compaction (a stream only drops whole segments by age or size)"
    )
    done = run(tmp_path, "apply", "t.yaml", "--backend", url(vhost))
    assert done.returncode == 1
    assert api(vhost, "/api/queues/{v}") == []
