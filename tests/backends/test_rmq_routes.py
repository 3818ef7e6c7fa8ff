"""The routes `runner run --backend amqp://...` serves beyond publish and pull: topic
append, queue peek and dead-letter replay (and `runner dlq`), status. Real daemon
processes over the real RabbitMQ, each test in a vhost of its own; every bad input is
answered with the embedded daemon's exact error (asserted against a real embedded
daemon of the same topology)."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from typing import Any

import pytest

from runner.backends.rabbitmq.url import Target
from runner.log.partitioner import partition_for_key
from tests.backends.test_rmq_daemon import depth, get_all, lines
from tests.e2e.conftest import Daemon, make_daemon, wait_for
from tests.rmq import url

HANDLERS = '''\
import json
import signal


def fail_once(msg):
    """Fails a message until it was replayed; then logs it."""
    if "x-replay-count" not in msg.headers:
        raise ValueError(f"bad order {msg.body}")
    with open("handled.log", "a") as fh:
        fh.write(json.dumps({"body": msg.body, "exchange": msg.exchange,
                             "routing_key": msg.routing_key,
                             "replays": msg.headers["x-replay-count"],
                             "dead": "x-dead-letter" in msg.headers}) + "\\n")


def record(msg):
    with open("extra.log", "a") as fh:
        fh.write(json.dumps({"body": msg.body, "routing_key": msg.routing_key}) + "\\n")
'''

TOPOLOGY = """\
version: 1
name: rmq-routes
topics:
  events: {partitions: 3, key: id, max_message_bytes: 200}
exchanges:
  orders: {type: direct}
  dlx: {type: fanout}
queues:
  work: {}
  dead: {}
  parked: {}
  small: {max_length: 1, overflow: reject-publish, dead_letter: {exchange: dlx}}
  rdead: {}
  counted: {delivery_limit: 3}
bindings:
  - {exchange: orders, queue: work, routing_key: w}
  - {exchange: dlx, queue: rdead}
dlq_policies:
  quick: {max_retries: 0, dead_letter_queue: dead}
consumers:
  work-c: {queue: work, handler: "h:fail_once", dlq_policy: quick}
"""

NOT_A_DEAD_LETTER = "not a dead letter (no x-dead-letter header naming where it died)"


class Pair:
    """A daemon over RabbitMQ and an embedded daemon with the same topology."""

    def __init__(self, remote: Daemon, embedded: Daemon, target: Target) -> None:
        self.remote = remote
        self.embedded = embedded
        self.target = target

    def same_error(self, method: str, path: str, body: Any = None, *,
                   raw: bytes | None = None) -> tuple[int, str]:
        """The remote daemon's (status, error), asserted equal to the embedded one's."""
        got = []
        for d in (self.remote, self.embedded):
            answer = d.request(method, path, body, raw=raw)
            assert 400 <= answer.status < 500, (d.args, answer.status, answer.body)
            got.append((answer.status, answer.body["error"]))
        assert got[0] == got[1], got
        return got[0]


@pytest.fixture
def pair(tmp_path: Any, vhost: Target) -> Iterator[Pair]:
    remote = make_daemon(tmp_path / "remote", TOPOLOGY, modules={"h": HANDLERS},
                         args=["--backend", url(vhost), "--no-watch"])
    embedded = make_daemon(tmp_path / "embedded", TOPOLOGY, modules={"h": HANDLERS},
                           args=["--no-watch"])
    remote.start()
    try:
        embedded.start()
        yield Pair(remote, embedded, vhost)
    finally:
        for d in (remote, embedded):
            if d.running:
                d.stop()


def test_topic_append_routes_keys_by_murmur2_and_answers_null_offsets(pair: Pair) -> None:
    d = pair.remote
    keys = [f"k{i}" for i in range(12)]
    answer = d.post("/v1/topics/events/records",
                    {"records": [{"key": k, "value": {"n": i}} for i, k in enumerate(keys)]})
    assert answer.status == 202, answer.body
    assert answer.body == {"offsets": [
        {"partition": partition_for_key(k.encode(), 3), "offset": None} for k in keys]}
    # one record: the value's `key` field (the topic's key: id) picks the partition
    one = d.ok("POST", "/v1/topics/events/records", {"value": {"id": "o-7"}}, 202)
    assert one == {"offsets": [{"partition": partition_for_key(b"o-7", 3), "offset": None}]}
    explicit = d.ok("POST", "/v1/topics/events/records",
                    {"key": "k0", "value": "x", "partition": 2}, 202)
    assert explicit == {"offsets": [{"partition": 2, "offset": None}]}
    assert d.ok("POST", "/v1/topics/events/records", {"records": []}, 202) == {"offsets": []}
    for p in range(3):  # read back from the partitions' streams, keys with them
        start = d.ok("GET", "/v1/topics/events")["partition_offsets"][p]["log_start_offset"]
        got = d.ok("GET", f"/v1/topics/events/partitions/{p}/records?offset={start}")
        mine = {k for k in keys if partition_for_key(k.encode(), 3) == p}
        assert {r["key"] for r in got["records"] if r["key"] in keys} == mine
        if p == 2:
            assert {"key": "k0", "value": "x"}.items() <= got["records"][-1].items()
    # the errors, as the embedded daemon's
    assert pair.same_error("POST", "/v1/topics/nope/records", {"value": 1}) == (
        404, "topic 'nope' not found")
    assert pair.same_error("POST", "/v1/topics/evnts/records", {"value": 1}) == (
        404, "topic 'evnts' not found; did you mean \"events\"?")
    assert pair.same_error("POST", "/v1/topics/events/records",
                           {"value": 1, "partition": 3}) == (
        404, "topic 'events' has no partition 3 (it has 3: 0..2)")
    assert pair.same_error("POST", "/v1/topics/events/records",
                           {"records": [{"value": 1}, {"value": 2, "partition": 5}]}) == (
        404, "record 1: topic 'events' has no partition 5 (it has 3: 0..2)")
    status, message = pair.same_error("POST", "/v1/topics/events/records",
                                      {"value": 1, "colour": "red"})
    assert status == 400 and "colour" in message, message
    status, message = pair.same_error("POST", "/v1/topics/events/records", raw=b"{nope")
    assert status == 400, message
    status, message = pair.same_error("POST", "/v1/topics/events/records",
                                      {"value": 1, "partition": -1})
    assert status == 400 and "partition" in message, message
    status, message = pair.same_error("POST", "/v1/topics/events/records", {"key": 5,
                                                                           "value": 1})
    assert (status, message) == (400, "'key' must be a string, got a number")
    status, message = pair.same_error("POST", "/v1/topics/events/records",
                                      {"value": "v" * 300})
    assert status == 413 and "max_message_bytes" in message, message
    status, message = pair.same_error("POST", "/v1/topics/events/records",
                                      {"key": "k" * 150, "value": "v" * 100})
    assert status == 413 and "with its key and headers" in message, message
    status, message = pair.same_error("POST", "/v1/topics/events/records", [1, 2])
    assert status == 400, message


def test_peek_leaves_messages_in_place_and_refuses_quorum_queues(pair: Pair) -> None:
    d = pair.remote
    d.ok("POST", "/v1/queues/parked/messages",
         {"messages": [{"body": {"n": i}, "headers": {"h": i}} for i in range(3)]}, 202)
    first = d.ok("GET", "/v1/queues/parked/peek?n=2")["messages"]
    assert [(m["body"], m["headers"], m["redelivered"], m["delivery_id"]) for m in first] == [
        ({"n": 0}, {"h": 0}, False, 0), ({"n": 1}, {"h": 1}, False, 0)]
    again = d.ok("GET", "/v1/queues/parked/peek")["messages"]  # the default n=10
    # in place and in order; given back, the peeked ones are `redelivered` (the cost)
    assert [(m["body"], m["redelivered"]) for m in again] == [
        ({"n": 0}, True), ({"n": 1}, True), ({"n": 2}, False)]
    assert depth(pair.target, "parked") == 3
    assert d.ok("GET", "/v1/queues/dead/peek?n=5") == {"messages": []}
    assert pair.same_error("GET", "/v1/queues/nope/peek") == (404, "queue 'nope' not found")
    assert pair.same_error("GET", "/v1/queues/parkd/peek") == (
        404, "queue 'parkd' not found; did you mean \"parked\"?")
    for query in ("n=0", "n=1001", "n=x"):
        status, message = pair.same_error("GET", f"/v1/queues/parked/peek?{query}")
        assert status == 400 and "'n'" in message, (query, message)
    d.ok("POST", "/v1/queues/counted/messages", {"body": 1}, 202)
    answer = d.get("/v1/queues/counted/peek")
    assert (answer.status, answer.body["error"]) == (
        409, "queue 'counted' has a delivery_limit (a RabbitMQ quorum queue): the broker "
        "counts every message a peek gives back as a delivery, so peeking would use up "
        "their deliveries and dead-letter them; pull and nack instead")


def test_replay_moves_dead_letters_back_at_least_once_with_the_cli(pair: Pair) -> None:
    d = pair.remote
    d.ok("POST", "/v1/exchanges/orders/messages",
         {"messages": [{"routing_key": "w", "body": i} for i in range(3)]}, 202)
    wait_for(lambda: depth(pair.target, "dead") == 3, timeout_s=30)
    d.ok("POST", "/v1/queues/dead/messages", {"body": "plain"}, 202)  # no dead letter
    letters = d.ok("GET", "/v1/queues/dead/peek?n=10")["messages"]
    assert [m["body"] for m in letters] == [0, 1, 2, "plain"]
    death = letters[0]["headers"]["x-dead-letter"]
    assert (death["original_queue"], death["original_exchange"],
            death["original_routing_key"], death["error"]["type"]) == (
        "work", "orders", "w", "ValueError")
    # the CLI against the remote daemon: list (status + peek), show (peek)
    def listed() -> list[str] | None:  # the broker's counts lag by up to 5 s
        done = d.cli("dlq", "list")
        assert done.returncode == 0, done.stderr
        rows = [line.split() for line in done.stdout.splitlines()]
        return next((r for r in rows if r[:3] == ["dead", "queue", "4"]), None)

    assert wait_for(listed, timeout_s=20, every_s=0.5)
    shown = d.cli("dlq", "show", "dead", "-n", "1")
    assert shown.returncode == 0, shown.stderr
    assert "reason:        handler_error" in shown.stdout, shown.stdout
    assert "error:         ValueError: bad order 0" in shown.stdout
    assert "origin:        queue work (exchange orders, routing key 'w')" in shown.stdout
    replayed = d.cli("dlq", "replay", "dead")
    assert replayed.returncode == 0, replayed.stderr
    assert replayed.stdout.splitlines() == [
        "replayed 3 message(s) from dead", "kept 1 message(s) in dead:",
        f"  1: {NOT_A_DEAD_LETTER}"]
    wait_for(lambda: len(lines(d, "handled.log")) == 3, timeout_s=30)
    handled = sorted(lines(d, "handled.log"), key=lambda h: h["body"])
    assert handled == [{"body": i, "exchange": "orders", "routing_key": "w", "replays": 1,
                        "dead": False} for i in range(3)]
    kept = d.ok("GET", "/v1/queues/dead/peek")["messages"]
    assert [m["body"] for m in kept] == ["plain"]
    # into another queue (`to`): no x-dead-letter, x-replay-count + 1
    answer = d.ok("POST", "/v1/queues/dead/replay", {"to": "parked"})
    assert answer == {"replayed": 1, "skipped": 0, "skipped_reasons": {}, "remaining": 0,
                      "to": "parked"}
    ((props, body),) = get_all(pair.target, "parked")
    assert (json.loads(body), props.headers["x-replay-count"]) == ("plain", 1)
    assert d.ok("POST", "/v1/queues/dead/replay", {}) == {
        "replayed": 0, "skipped": 0, "skipped_reasons": {}, "refused": 0, "remaining": 0}
    # dead letters that died in the queue being replayed go back once, not round again
    death = {"original_queue": "parked", "original_exchange": "",
             "original_routing_key": "parked", "reason": "rejected"}
    d.ok("POST", "/v1/queues/parked/messages",
         {"messages": [{"body": i, "headers": {"x-dead-letter": death}} for i in range(3)]},
         202)
    assert d.ok("POST", "/v1/queues/parked/replay") == {
        "replayed": 3, "skipped": 0, "skipped_reasons": {}, "refused": 0, "remaining": 3}
    again = d.ok("GET", "/v1/queues/parked/peek")["messages"]
    assert [(m["body"], m["headers"]) for m in again] == [
        (i, {"x-replay-count": 1}) for i in range(3)]


def test_replay_of_rabbitmq_dead_letters_keeps_what_a_full_queue_refuses(pair: Pair) -> None:
    d = pair.remote
    for i in range(2):  # expired in `small`: RabbitMQ's own dead-lettering, x-death
        d.ok("POST", "/v1/queues/small/messages", {"body": f"r{i}", "ttl": "1ms"}, 202)
        wait_for(lambda i=i: depth(pair.target, "rdead") == i + 1)
    d.ok("POST", "/v1/queues/small/messages", {"body": "filler"}, 202)  # small is full
    full = ("original queue 'small' is full (max_length 1, overflow reject-publish): kept "
            "in the dead-letter queue for a later replay")
    assert d.ok("POST", "/v1/queues/rdead/replay", {"max": 5}) == {
        "replayed": 0, "skipped": 2, "skipped_reasons": {full: 2}, "refused": 2,
        "remaining": 2}
    kept = d.ok("GET", "/v1/queues/rdead/peek")["messages"]
    assert [m["body"] for m in kept] == ["r0", "r1"]  # kept in place, in order
    (death,) = kept[0]["headers"]["x-death"]  # its time in milliseconds, as every time
    assert (death["queue"], death["reason"], type(death["time"])) == ("small", "expired", int)
    d.ok("DELETE", "/v1/queues/small/messages")
    assert d.ok("POST", "/v1/queues/rdead/replay") == {
        "replayed": 1, "skipped": 1, "skipped_reasons": {full: 1}, "refused": 1,
        "remaining": 1}
    (msg,) = d.ok("POST", "/v1/queues/small/pull", {"max": 1})["messages"]
    assert (msg["body"], msg["routing_key"], msg["headers"]["x-replay-count"]) == (
        "r0", "small", 1)
    assert "x-death" not in msg["headers"]


def test_replay_errors_are_the_embedded_daemons(pair: Pair) -> None:
    assert pair.same_error("POST", "/v1/queues/nope/replay", {}) == (
        404, "queue 'nope' not found")
    assert pair.same_error("POST", "/v1/queues/dead/replay", {"to": "nope"}) == (
        404, "queue 'nope' not found")
    assert pair.same_error("POST", "/v1/queues/dead/replay", {"to": "dead"}) == (
        400, "'to' names the queue being replayed ('dead'); give another queue or a topic")
    for body in ({"max": 0}, {"max": 10_001}, {"max": "5"}, {"colour": 1}, {"to": 5}):
        status, message = pair.same_error("POST", "/v1/queues/dead/replay", body)
        assert status == 400, (body, message)
    status, message = pair.same_error("POST", "/v1/queues/dead/replay", raw=b"[")
    assert status == 400, message


def test_status_from_the_brokers_view(pair: Pair) -> None:
    d = pair.remote
    d.ok("POST", "/v1/queues/parked/messages", {"messages": [{"body": i} for i in range(4)]},
         202)
    d.ok("POST", "/v1/topics/events/records", {"key": "a", "value": 1}, 202)
    # for `runner dlq list` below: published now, so one lag of the broker's stats covers both
    d.ok("POST", "/v1/queues/counted/messages", {"body": 1}, 202)

    def counted() -> Any:
        status = d.ok("GET", "/v1/status")
        queues = {q["name"]: q for q in status["queues"]}
        return queues["parked"]["ready"] == 4 and queues["counted"]["ready"] == 1 and status

    status = wait_for(counted, timeout_s=20, every_s=0.5)  # the broker's stats lag by 5 s
    backend = f"amqp://guest@127.0.0.1:5672/{pair.target.vhost}"
    assert status["backend"] == backend
    assert (status["topology"]["name"], status["topology"]["generation"]) == ("rmq-routes", 1)
    assert status["topology"]["hash"] == pair.embedded.ok("GET", "/v1/status")["topology"][
        "hash"]
    queues = {q["name"]: q for q in status["queues"]}
    assert set(queues) == {"work", "dead", "parked", "small", "rdead", "counted"}
    assert queues["dead"]["dead_letter_queue"] and not queues["parked"]["dead_letter_queue"]
    assert queues["rdead"]["dead_letter_queue"]  # bound to small's dead-letter exchange
    (events,) = status["topics"]
    assert [p["partition"] for p in events["partitions"]] == [0, 1, 2]
    written = partition_for_key(b"a", 3)
    part = events["partitions"][written]
    assert part["log_end_offset"] > part["log_start_offset"]
    assert [(c["name"], c["queue"], c["errors"]) for c in status["consumers"]] == [
        ("work-c", "work", 0)]
    shown = d.cli("status")
    assert shown.returncode == 0, shown.stderr
    assert "parked" in shown.stdout and "work-c" in shown.stdout
    # `runner dlq list` peeks at non-empty queues: a quorum queue's 409 is passed over
    listed = d.cli("dlq", "list")
    assert listed.returncode == 0, listed.stderr
    assert "counted" not in listed.stdout and "parked" not in listed.stdout, listed.stdout


RELOADED = (TOPOLOGY
            .replace("  - {exchange: orders, queue: work, routing_key: w}\n",
                     "  - {exchange: orders, queue: extra, routing_key: x}\n")
            .replace("  work-c: {queue: work, handler: \"h:fail_once\", dlq_policy: quick}\n",
                     "  extra-c: {queue: extra, handler: \"h:record\"}\n")
            .replace("  counted: {delivery_limit: 3}\n",
                     "  counted: {delivery_limit: 3}\n  extra: {}\n"))


def reload(d: Daemon, text: str) -> Any:
    d.topology.write_text(text)
    return d.post("/v1/admin/reload")


def test_reload_declares_additions_moves_handlers_and_unbinds(pair: Pair) -> None:
    d = pair.remote
    answer = reload(d, RELOADED)
    assert answer.status == 200, answer.body
    assert answer.body["generation"] == 2
    assert {(c["kind"], c["entity"], c["name"]) for c in answer.body["changes"]} == {
        ("added", "queue", "extra"), ("added", "consumer", "extra-c"),
        ("removed", "consumer", "work-c"), ("added", "binding", 'orders -> queue extra key "x"'),
        ("removed", "binding", 'orders -> queue work key "w"')}
    # the new queue is on the broker, bound, and its new consumer handles it
    routed = d.ok("POST", "/v1/exchanges/orders/messages",
                  {"messages": [{"routing_key": "x", "body": 1},
                                {"routing_key": "w", "body": 2}]}, 202)
    assert routed == {"routed": [["extra"], []]}
    wait_for(lambda: lines(d, "extra.log") == [{"body": 1, "routing_key": "x"}])
    # work lost its binding on the broker (nothing arrives) and its consumer: a put
    # stays ready (no daemon prefetches it)
    d.ok("POST", "/v1/queues/work/messages", {"messages": [{"body": i} for i in range(3)]},
         202)
    wait_for(lambda: depth(pair.target, "work") == 3)
    assert depth(pair.target, "dead") == 0
    status = d.ok("GET", "/v1/status")
    assert (status["topology"]["generation"], status["topology"]["last_reload_result"],
            status["topology"]["last_reload_error"]) == (2, "applied", None)
    assert [c["name"] for c in status["consumers"]] == ["extra-c"]
    assert "extra" in {q["name"] for q in d.ok("GET", "/v1/queues")["queues"]}
    assert 'runner_topology_reloads_total{result="applied"} 1.0' in d.metrics()
    # the same file again: applied, no changes, the same generation
    assert d.ok("POST", "/v1/admin/reload") == {"generation": 2, "changes": []}


def test_reload_refuses_what_rabbitmq_cannot_change_and_keeps_serving(pair: Pair) -> None:
    d = pair.remote
    ttl = TOPOLOGY.replace("  parked: {}\n", "  parked: {message_ttl: 5s}\n")
    answer = reload(d, ttl)
    assert answer.status == 409, answer.body
    assert answer.body["error"] == (
        "refused 1 unsafe change(s): queue 'parked' message_ttl: RabbitMQ cannot change a "
        "queue's arguments in place (message_ttl): delete and declare it again (its messages "
        "are lost) or declare a new one")
    assert [(c["entity"], c["name"], c["field"], c["safe"]) for c in answer.body["changes"]] == [
        ("queue", "parked", "message_ttl", False)]
    # the embedded engine can change a TTL: it applies it
    assert reload(pair.embedded, ttl).status == 200
    # a change neither may make: the same refusal, word for word
    fewer = TOPOLOGY.replace("events: {partitions: 3,", "events: {partitions: 2,")
    refused = [reload(x, fewer) for x in (d, pair.embedded)]
    assert [r.status for r in refused] == [409, 409]
    assert refused[0].body["error"] == refused[1].body["error"], refused
    assert refused[0].body["error"].startswith("refused 1 unsafe change(s): topic 'events' "
                                               "partitions: ")
    # invalid: 422 as on the embedded daemon (the file's path aside)
    broken = TOPOLOGY.replace("  parked: {}\n", "  parked: {max_length: -1}\n")
    invalid = [reload(x, broken) for x in (d, pair.embedded)]
    assert [r.status for r in invalid] == [422, 422]
    assert invalid[0].body["error"].replace(str(d.topology), "T") == invalid[1].body[
        "error"].replace(str(pair.embedded.topology), "T")
    assert invalid[0].body["error"].startswith(f"invalid topology: {d.topology}:")
    missing = TOPOLOGY.replace('handler: "h:fail_once"', 'handler: "h:nope"')
    answer = reload(d, missing)
    assert (answer.status, answer.body["error"].split(": ")[0]) == (
        422, "handler import failed"), answer.body
    # the old topology keeps serving; nothing was declared
    assert d.ok("POST", "/v1/queues/parked/messages", {"body": 1}, 202) == {
        "routed": ["parked"]}
    status = d.ok("GET", "/v1/status")["topology"]
    assert (status["generation"], status["last_reload_result"]) == (1, "invalid")
    metrics = d.metrics()
    assert 'runner_topology_reloads_total{result="refused"} 2.0' in metrics
    assert 'runner_topology_reloads_total{result="invalid"} 2.0' in metrics


def test_sighup_and_file_events_reload_the_remote_daemon(tmp_path: Any, vhost: Target) -> None:
    d = make_daemon(tmp_path / "watched", TOPOLOGY, modules={"h": HANDLERS},
                    args=["--backend", url(vhost)])
    d.start()
    try:
        d.topology.write_text(RELOADED)  # the watcher sees it
        wait_for(lambda: d.ok("GET", "/v1/status")["topology"]["generation"] == 2,
                 timeout_s=20, every_s=0.2)
        d.topology.write_text(RELOADED.replace("  extra: {}\n", "  extra: {}\n  more: {}\n"))
        d.signal(signal.SIGHUP)  # and SIGHUP (the watcher may be first: either applies it)
        wait_for(lambda: d.ok("GET", "/v1/status")["topology"]["generation"] == 3,
                 timeout_s=20, every_s=0.2)
        assert depth(vhost, "more") == 0  # declared on the broker
        assert "reload applied" in d.log()
    finally:
        d.stop()
