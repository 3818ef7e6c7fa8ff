"""The HTTP API of the real daemon: every route, every error status, over real HTTP.

One daemon (with a bearer token) is shared by the module; each test uses its
own queues/topics so they do not see each other's traffic.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.daemon.promtool import check_metrics
from tests.e2e.conftest import Daemon, error_of, module_daemon, wait_for

pytestmark = pytest.mark.e2e

TOKEN = "e2e-token-123"

TOPOLOGY = """\
version: 1
name: e2e-api
topics:
  events: {partitions: 3}
  compacted: {cleanup_policy: compact}
  tiny: {max_message_bytes: 100B}
  metered: {partitions: 2}
exchanges:
  orders: {type: topic}
  hidden: {type: fanout, internal: true}
  dlx: {type: fanout}
  limits: {type: fanout}
  metered-x: {type: direct}
queues:
  work: {max_priority: 10}
  full: {max_length: 2, overflow: reject-publish}
  buddy: {}
  leased: {}
  fragile: {dead_letter: {exchange: dlx}}
  fragile.dlq: {}
  metered-q: {}
  cli-q: {}
bindings:
  - {exchange: orders, queue: work, routing_key: "orders.#"}
  - {exchange: orders, topic: events, routing_key: "orders.*"}
  - {exchange: limits, queue: buddy}
  - {exchange: limits, queue: full}
  - {exchange: dlx, queue: fragile.dlq}
  - {exchange: metered-x, queue: metered-q, routing_key: m}
consumer_groups:
  external: {topic: events}
"""


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    yield from module_daemon(tmp_path_factory.mktemp("api"), TOPOLOGY, token=TOKEN,
                             args=["--max-request-bytes", "2MiB"])


# ------------------------------------------------------------------ publishing and reading


def test_publish_through_an_exchange_routes_to_queues_and_topics(daemon: Daemon) -> None:
    body = daemon.ok("POST", "/v1/exchanges/orders/messages",
                     {"routing_key": "orders.created", "body": {"id": 1}, "priority": 5}, 202)
    assert sorted(body["routed"]) == ["events", "work"]
    body = daemon.ok("POST", "/v1/exchanges/orders/messages", {"messages": [
        {"routing_key": "orders.a.b", "body": 2},
        {"routing_key": "nothing", "body": 3},
    ]}, 202)
    assert body["routed"] == [["work"], []]
    pulled = daemon.ok("POST", "/v1/queues/work/pull", {"max": 10})["messages"]
    assert [m["body"] for m in pulled] == [{"id": 1}, 2]  # priority 5 first
    assert pulled[0]["priority"] == 5 and pulled[0]["delivery_count"] == 1
    daemon.ok("POST", "/v1/queues/work/ack", {"delivery_ids": [m["delivery_id"] for m in pulled]})


def test_topic_records_append_and_read_back(daemon: Daemon) -> None:
    raw = base64.b64encode(b"\x00\xffbin").decode()
    body = daemon.ok("POST", "/v1/topics/events/records", {"records": [
        {"key": "a", "value": {"n": 1}, "partition": 2, "headers": {"h": "1"}},
        {"value_b64": raw, "partition": 2},
    ]}, 202)
    first = body["offsets"][0]["offset"]
    assert body["offsets"] == [{"partition": 2, "offset": first},
                               {"partition": 2, "offset": first + 1}]
    got = daemon.ok("GET", f"/v1/topics/events/partitions/2/records?offset={first}&limit=2")
    assert got["next_offset"] == first + 2
    a, b = got["records"]
    assert (a["offset"], a["key"], a["value"], a["headers"]) == (first, "a", {"n": 1}, {"h": "1"})
    assert b["value_b64"] == raw and "value" not in b
    assert abs(a["timestamp"] - time.time() * 1000) < 60_000


def test_queue_publish_pull_ack_nack(daemon: Daemon) -> None:
    raw = base64.b64encode(b"\x01\x02").decode()
    daemon.ok("POST", "/v1/queues/work/messages",
              {"messages": [{"body": "x", "headers": {"k": "v"}}, {"body_b64": raw}]}, 202)
    msgs = daemon.ok("POST", "/v1/queues/work/pull", {"max": 2, "lease": "30s"})["messages"]
    assert msgs[0]["body"] == "x" and msgs[0]["headers"]["k"] == "v"
    assert msgs[1]["body_b64"] == raw and "body" not in msgs[1]
    assert daemon.ok("POST", "/v1/queues/work/nack",
                     {"delivery_ids": [msgs[1]["delivery_id"]], "requeue": True}) == {"nacked": 1}
    again = daemon.ok("POST", "/v1/queues/work/pull", {"max": 1})["messages"][0]
    assert again["body_b64"] == raw and again["redelivered"] and again["delivery_count"] == 2
    answer = daemon.post("/v1/queues/work/ack",
                         {"delivery_ids": [msgs[0]["delivery_id"], again["delivery_id"], 987654]})
    assert answer.status == 409
    assert answer.body["unknown"] == [987654] and answer.body["acked"] == 2
    assert "987654" in answer.body["error"]
    assert daemon.ok("POST", "/v1/queues/work/pull", {"max": 5})["messages"] == []


def test_an_expired_lease_redelivers_and_its_old_id_is_a_conflict(daemon: Daemon) -> None:
    daemon.ok("POST", "/v1/queues/leased/messages", {"body": "lease me"}, 202)
    first = daemon.ok("POST", "/v1/queues/leased/pull", {"lease": "200ms"})["messages"][0]
    second = wait_for(
        lambda: daemon.ok("POST", "/v1/queues/leased/pull", {"lease": "30s"})["messages"],
        timeout_s=10,
    )[0]
    assert second["body"] == "lease me" and second["redelivered"]
    assert second["delivery_count"] == 2
    status, message = error_of(daemon, "POST", "/v1/queues/leased/ack",
                               {"delivery_ids": [first["delivery_id"]]})
    assert status == 409 and str(first["delivery_id"]) in message
    daemon.ok("POST", "/v1/queues/leased/ack", {"delivery_ids": [second["delivery_id"]]})


def test_dead_letters_peek_and_replay(daemon: Daemon) -> None:
    daemon.ok("POST", "/v1/queues/fragile/messages", {"body": {"bad": True}, "message_id": "m-1"},
              202)
    msg = daemon.ok("POST", "/v1/queues/fragile/pull", {})["messages"][0]
    daemon.ok("POST", "/v1/queues/fragile/nack",
              {"delivery_ids": [msg["delivery_id"]], "requeue": False})
    peeked = wait_for(lambda: daemon.ok("GET", "/v1/queues/fragile.dlq/peek?n=5")["messages"])
    assert len(peeked) == 1 and peeked[0]["body"] == {"bad": True}
    death = peeked[0]["headers"]["x-dead-letter"]
    assert death["reason"] == "rejected" and death["original_queue"] == "fragile"
    # peek leaves it in place
    assert len(daemon.ok("GET", "/v1/queues/fragile.dlq/peek")["messages"]) == 1
    # a message published straight into the DLQ is no dead letter: it stays, counted
    daemon.ok("POST", "/v1/queues/fragile.dlq/messages", {"body": "plain"}, 202)
    not_dead = "not a dead letter (no x-dead-letter header naming where it died)"
    assert daemon.ok("POST", "/v1/queues/fragile.dlq/replay", {}) == {
        "replayed": 1, "skipped": 1, "skipped_reasons": {not_dead: 1}, "refused": 0,
        "remaining": 1}
    back = daemon.ok("POST", "/v1/queues/fragile/pull", {})["messages"][0]
    assert back["body"] == {"bad": True} and "x-dead-letter" not in back["headers"]
    assert back["headers"]["x-replay-count"] == 1
    daemon.ok("POST", "/v1/queues/fragile/ack", {"delivery_ids": [back["delivery_id"]]})
    done = daemon.cli("dlq", "replay", "fragile.dlq")
    assert (done.returncode, done.stdout) == (
        0, f"replayed 0 message(s) from fragile.dlq\nkept 1 message(s) in fragile.dlq:\n"
           f"  1: {not_dead}\n")
    kept = daemon.ok("POST", "/v1/queues/fragile.dlq/pull", {})["messages"]
    assert [m["body"] for m in kept] == ["plain"]
    daemon.ok("POST", "/v1/queues/fragile.dlq/ack", {"delivery_ids": [kept[0]["delivery_id"]]})
    assert daemon.ok("GET", "/v1/queues/fragile.dlq/peek")["messages"] == []


def test_an_external_group_commits_seeks_and_reports_lag(daemon: Daemon) -> None:
    daemon.ok("POST", "/v1/topics/events/records",
              {"records": [{"value": i, "partition": 0} for i in range(5)]}, 202)
    group = daemon.ok("GET", "/v1/groups/external")
    p0 = [p for p in group["partitions"] if p["topic"] == "events" and p["partition"] == 0][0]
    end = p0["log_end_offset"]
    assert p0["lag"] == end - p0["position"]
    daemon.ok("POST", "/v1/groups/external/commit",
              {"offsets": [{"topic": "events", "partition": 0, "offset": end - 2}]})
    p0 = [p for p in daemon.ok("GET", "/v1/groups/external")["partitions"]
          if p["partition"] == 0][0]
    assert (p0["committed"], p0["lag"]) == (end - 2, 2)
    seek = daemon.ok("POST", "/v1/groups/external/offsets",
                     {"topic": "events", "partition": 0, "offset": 0})
    assert seek == {"topic": "events", "partition": 0, "offset": 0}
    p0 = [p for p in daemon.ok("GET", "/v1/groups/external")["partitions"]
          if p["partition"] == 0][0]
    assert p0["lag"] == end
    by_time = daemon.ok("POST", "/v1/groups/external/offsets",
                        {"topic": "events", "partition": 0, "timestamp": 0})
    assert by_time["offset"] == 0


def test_status_shows_topology_topics_queues_groups(daemon: Daemon) -> None:
    status = daemon.ok("GET", "/v1/status")
    assert status["topology"]["name"] == "e2e-api" and status["topology"]["generation"] == 1
    assert {t["name"] for t in status["topics"]} == {"events", "compacted", "tiny", "metered"}
    events = [t for t in status["topics"] if t["name"] == "events"][0]
    assert [p["partition"] for p in events["partitions"]] == [0, 1, 2]
    assert {"ready", "unacked"} <= set(status["queues"][0])
    assert {q["name"] for q in status["queues"] if q["dead_letter_queue"]} == {"fragile.dlq"}
    assert [g["name"] for g in status["groups"]] == ["external"]


# ------------------------------------------------------------------ error statuses


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "message"),
    [
        ("POST", "/v1/exchanges/orders/messages", {"routing_key": 1, "body": 1}, 400,
         "'routing_key' must be a string, got a number"),
        ("POST", "/v1/queues/work/pull", {"max": 0}, 400,
         "'max' must be an integer between 1 and 1000, got 0"),
        ("POST", "/v1/queues/work/ack", {}, 400,
         "missing field 'delivery_ids' (an array of integers)"),
        ("POST", "/v1/topics/compacted/records", {"value": 1}, 400, None),
        ("POST", "/v1/exchanges/hidden/messages", {"routing_key": "", "body": 1}, 403, None),
        ("POST", "/v1/exchanges/nope/messages", {"routing_key": "", "body": 1}, 404, None),
        ("POST", "/v1/queues/nope/messages", {"body": 1}, 404, None),
        ("POST", "/v1/queues/nope/pull", {}, 404, "queue 'nope' not found"),
        ("GET", "/v1/topics/events/partitions/3/records?offset=0", None, 404,
         "topic 'events' has no partition 3 (it has 3: 0..2)"),
        ("POST", "/v1/topics/events/records", {"value": 1, "partition": 9}, 404,
         "topic 'events' has no partition 9 (it has 3: 0..2)"),
        ("GET", "/v1/groups/nope", None, 404, "consumer group 'nope' not found"),
        ("GET", "/v1/no/such/route", None, 404, "no route GET /v1/no/such/route"),
        ("PUT", "/v1/queues/work/pull", None, 405, "PUT is not allowed on /v1/queues/work/pull "
         "(allowed: POST)"),
        ("POST", "/v1/topics/tiny/records", {"value": "x" * 200}, 413, None),
        ("POST", "/v1/queues/work/messages", {"body": "y" * (1024 * 1024)}, 413, None),
    ],
)
def test_bad_input_is_a_4xx_json_sentence(
    daemon: Daemon, method: str, path: str, body: object, status: int, message: str | None,
) -> None:
    got, text = error_of(daemon, method, path, body)
    assert got == status, text
    if message is not None:
        assert text == message
    assert "unexpected error" not in daemon.log()


def test_malformed_json_is_400(daemon: Daemon) -> None:
    status, text = error_of(daemon, "POST", "/v1/queues/work/messages", raw=b"{oops")
    assert status == 400 and text.startswith("the request body is not valid JSON")


def test_oversized_payloads_suggest_a_reference(daemon: Daemon) -> None:
    _, text = error_of(daemon, "POST", "/v1/topics/tiny/records", {"value": "x" * 200})
    assert text == (
        "the payload is 202 bytes, over the limit of 100 bytes (the topic's max_message_bytes); "
        "store the payload elsewhere (a file or object store) and send a reference to it instead"
    )
    _, text = error_of(daemon, "POST", "/v1/queues/work/messages", {"body": "y" * (1 << 20)})
    assert "over the limit of 1048576 bytes (--max-message-bytes)" in text


def test_a_request_body_over_the_server_limit_is_413_json(daemon: Daemon) -> None:
    big = b'{"messages": [' + b",".join([b'{"body": "' + b"z" * 1000 + b'"}'] * 2100) + b"]}"
    status, text = error_of(daemon, "POST", "/v1/queues/work/messages", raw=big)
    assert status == 413
    assert text.startswith("the request body is over the limit of 2097152 bytes")


def test_overflow_refuses_with_429_retry_after_accepted_and_routed(daemon: Daemon) -> None:
    answer = daemon.post("/v1/exchanges/limits/messages",
                         {"messages": [{"routing_key": "", "body": i} for i in range(4)]})
    assert answer.status == 429, answer.body
    assert answer.headers["Retry-After"] == "1"
    assert answer.body["accepted"] == 2
    assert answer.body["routed"] in ([], ["buddy"])
    status = daemon.ok("GET", "/v1/status")
    depth = {q["name"]: q["ready"] for q in status["queues"]}
    assert depth["full"] == 2
    assert depth["buddy"] == 2 + len(answer.body["routed"])  # nothing after the refusal


def test_a_token_is_required_on_v1_only(daemon: Daemon) -> None:
    answer = daemon.get("/v1/status", token=None)
    assert (answer.status, answer.body) == (
        401, {"error": "missing or wrong bearer token (Authorization: Bearer TOKEN)"}
    )
    assert daemon.get("/v1/status", token="nope").status == 401
    assert daemon.post("/v1/queues/work/messages", {"body": 1}, token=None).status == 401
    for path in ("/healthz", "/readyz", "/metrics"):
        assert daemon.get(path, token=None).status == 200


# ------------------------------------------------------------------ metrics


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_metrics_are_true_after_known_traffic_and_pass_promtool(daemon: Daemon) -> None:
    daemon.ok("POST", "/v1/exchanges/metered-x/messages", {"messages": [
        {"routing_key": "m", "body": i} for i in range(5)] + [{"routing_key": "x", "body": 0}]},
        202)
    msgs = daemon.ok("POST", "/v1/queues/metered-q/pull", {"max": 3})["messages"]
    daemon.ok("POST", "/v1/queues/metered-q/ack", {"delivery_ids": [msgs[0]["delivery_id"]]})
    daemon.ok("POST", "/v1/topics/metered/records",
              {"records": [{"value": i, "partition": 1} for i in range(7)]}, 202)
    # its own lag on events/0: under xdist this module's tests may run on two workers,
    # each with its own daemon (the group test's records were not always here)
    daemon.ok("POST", "/v1/topics/events/records",
              {"records": [{"value": i, "partition": 0} for i in range(5)]}, 202)
    text = daemon.metrics()
    s = _samples(text)

    def v(name: str, **labels: str) -> float:
        return s[(name, tuple(sorted(labels.items())))]

    assert v("runner_exchange_published_total", exchange="metered-x") == 6
    assert v("runner_exchange_unroutable_total", exchange="metered-x") == 1
    assert v("runner_queue_published_total", queue="metered-q") == 5
    assert v("runner_queue_delivered_total", queue="metered-q") == 3
    assert v("runner_queue_acked_total", queue="metered-q") == 1
    assert v("runner_queue_messages_ready", queue="metered-q") == 2
    assert v("runner_queue_messages_unacked", queue="metered-q") == 2
    assert v("runner_topic_partition_log_end_offset", topic="metered", partition="1") == 7
    assert v("runner_topic_partition_log_end_offset", topic="metered", partition="0") == 0
    assert v("runner_topic_records_total", topic="metered") == 7
    assert v("runner_topic_partition_size_bytes", topic="metered", partition="1") > 0
    assert v("runner_queue_dead_lettered_total", queue="metered-q", reason="expired") == 0
    assert v("runner_topology_reloads_total", result="refused") == 0
    assert v("runner_build_info", version=__import__("runner").__version__) == 1
    for part in daemon.ok("GET", "/v1/groups/external")["partitions"]:
        labels = {"group": "external", "topic": part["topic"], "partition": str(part["partition"])}
        expected = part["committed"] if part["committed"] is not None else part["position"]
        assert v("runner_consumer_group_committed_offset", **labels) == expected
        assert v("runner_consumer_group_lag", **labels) == part["lag"]
    assert v("runner_consumer_group_lag", group="external", topic="events", partition="0") >= 5
    result = check_metrics(text)
    assert result.returncode == 0, result.stdout + result.stderr


# ------------------------------------------------------------------ client commands


def test_cli_publish_consume_status_and_dlq(daemon: Daemon, tmp_path: Path) -> None:
    done = daemon.cli("publish", "--queue", "cli-q", '{"hello": "world"}')
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "routed to: cli-q"
    payload = tmp_path / "payload.bin"
    payload.write_bytes(b"\x00raw")
    assert daemon.cli("publish", "--queue", "cli-q", f"@{payload}").returncode == 0
    done = daemon.cli("publish", "--topic", "events", "--key", "k", "--partition", "1", "[1]")
    assert done.returncode == 0 and done.stdout.startswith("events partition 1 offset ")
    done = daemon.cli("publish", "--exchange", "orders", "--routing-key", "orders.cli", "-",
                      stdin=b'{"from": "stdin"}')
    assert done.returncode == 0 and "work" in done.stdout
    done = daemon.cli("consume", "--queue", "cli-q", "--max", "5", "--ack")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert '"body": {"hello": "world"}' in lines[0]
    assert '"body_b64": "AHJhdw=="' in lines[1]
    assert "acked 2 message(s)" in done.stderr
    done = daemon.cli("status")
    assert done.returncode == 0
    assert "topology e2e-api" in done.stdout
    for header in ("TOPICS", "QUEUES", "GROUPS"):
        assert header in done.stdout
    # refusals exit 1 with the daemon's sentence
    done = daemon.cli("publish", "--queue", "nope", "1")
    assert done.returncode == 1
    assert done.stderr == "runner publish: queue 'nope' not found (HTTP 404)\n"
    done = daemon.cli("publish", "--queue", "cli-q", "not json")
    assert done.returncode == 2 and "BODY is not valid JSON" in done.stderr
    # dead letters: list, show, replay
    daemon.ok("POST", "/v1/queues/fragile/messages", {"body": {"order": 7}}, 202)
    msg = daemon.ok("POST", "/v1/queues/fragile/pull", {})["messages"][0]
    daemon.ok("POST", "/v1/queues/fragile/nack",
              {"delivery_ids": [msg["delivery_id"]], "requeue": False})
    wait_for(lambda: daemon.ok("GET", "/v1/queues/fragile.dlq/peek")["messages"])
    done = daemon.cli("dlq", "list")
    assert done.returncode == 0 and "fragile.dlq" in done.stdout
    done = daemon.cli("dlq", "show", "fragile.dlq", "-n", "5")
    assert done.returncode == 0
    assert "reason:        rejected" in done.stdout
    assert "origin:        queue fragile" in done.stdout
    assert 'body:          {"order": 7}' in done.stdout
    done = daemon.cli("dlq", "replay", "fragile.dlq")
    assert (done.returncode, done.stdout.strip()) == (0, "replayed 1 message(s) from fragile.dlq")
    back = daemon.ok("POST", "/v1/queues/fragile/pull", {})["messages"][0]
    daemon.ok("POST", "/v1/queues/fragile/ack", {"delivery_ids": [back["delivery_id"]]})
    done = daemon.cli("status", "--token", "wrong")
    assert done.returncode == 1
