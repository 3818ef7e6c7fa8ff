"""The HTTP API in-process: real aiohttp server, real supervisor, the embedded engine underneath.

Statuses and the exact sentences a caller sees; the end-to-end suite repeats
the important ones against the real daemon and engine.
"""

from __future__ import annotations

import base64
import logging
from pathlib import Path

import pytest

from tests.daemon.harness import Client, run_daemon

TOPOLOGY = """\
version: 1
name: api
topics:
  events: {partitions: 2}
  compacted: {cleanup_policy: compact}
  tiny: {max_message_bytes: 100B}
exchanges:
  orders: {type: topic}
  hidden: {type: fanout, internal: true}
queues:
  work: {}
  full: {max_length: 1, overflow: reject-publish}
bindings:
  - {exchange: orders, queue: work, routing_key: "orders.#"}
  - {exchange: orders, queue: full, routing_key: "orders.full"}
  - {exchange: orders, topic: events, routing_key: "orders.*"}
consumer_groups:
  external: {topic: events}
"""


def scenario_test(tmp_path: Path, body: object, **kw: object) -> None:
    run_daemon(tmp_path, TOPOLOGY, body, **kw)  # type: ignore[arg-type]


def test_publish_single_and_batch_report_routes(tmp_path: Path) -> None:
    async def scenario(c: Client) -> None:
        status, body, _ = await c.call(
            "POST", "/v1/exchanges/orders/messages", {"routing_key": "orders.new", "body": {"a": 1}}
        )
        assert (status, body) == (202, {"routed": ["work", "events"]})
        status, body, _ = await c.call(
            "POST", "/v1/exchanges/orders/messages",
            {"messages": [{"routing_key": "orders.x.y", "body": 1},
                          {"routing_key": "nope", "body": 2}]},
        )
        assert (status, body) == (202, {"routed": [["work"], []]})
        assert c.pipeline.notified >= 2
        status, body, _ = await c.call("POST", "/v1/queues/work/messages", {"body": "direct"})
        assert (status, body) == (202, {"routed": ["work"]})

    scenario_test(tmp_path, scenario)


def test_pull_ack_nack_and_unknown_ids(tmp_path: Path) -> None:
    async def scenario(c: Client) -> None:
        raw = base64.b64encode(b"\x00\x01").decode()
        await c.call("POST", "/v1/queues/work/messages",
                     {"messages": [{"body": {"n": 1}}, {"body_b64": raw}]})
        status, body, _ = await c.call("POST", "/v1/queues/work/pull", {"max": 5, "lease": "5s"})
        assert status == 200
        first, second = body["messages"]
        assert first["body"] == {"n": 1} and first["delivery_count"] == 1
        assert second["body_b64"] == raw and "body" not in second
        status, body, _ = await c.call(
            "POST", "/v1/queues/work/ack", {"delivery_ids": [first["delivery_id"], 999]}
        )
        assert status == 409
        assert body == {
            "error": "1 delivery id(s) of queue 'work' are unknown or their lease expired: 999; "
            "the other 1 were acked",
            "unknown": [999],
            "acked": 1,
        }
        status, body, _ = await c.call(
            "POST", "/v1/queues/work/nack", {"delivery_ids": [second["delivery_id"]],
                                             "requeue": True}
        )
        assert (status, body) == (200, {"nacked": 1})
        status, body, _ = await c.call("POST", "/v1/queues/work/pull", {})
        assert body["messages"][0]["redelivered"] is True
        assert body["messages"][0]["delivery_count"] == 2

    scenario_test(tmp_path, scenario)


def test_topic_append_read_and_group_offsets(tmp_path: Path) -> None:
    async def scenario(c: Client) -> None:
        status, body, _ = await c.call(
            "POST", "/v1/topics/events/records",
            {"records": [{"key": "k", "value": {"v": 1}, "partition": 1},
                         {"value": None, "partition": 1}]},
        )
        assert (status, body) == (
            202, {"offsets": [{"partition": 1, "offset": 0}, {"partition": 1, "offset": 1}]}
        )
        status, body, _ = await c.call(
            "GET", "/v1/topics/events/partitions/1/records?offset=0&limit=10"
        )
        assert status == 200 and body["next_offset"] == 2
        assert [r["value"] for r in body["records"]] == [{"v": 1}, None]
        assert body["records"][0]["key"] == "k"
        status, body, _ = await c.call(
            "POST", "/v1/groups/external/commit",
            {"offsets": [{"topic": "events", "partition": 1, "offset": 1}]},
        )
        assert (status, body) == (200, {"committed": 1})
        status, body, _ = await c.call("GET", "/v1/groups/external")
        assert status == 200
        p1 = [p for p in body["partitions"] if p["partition"] == 1][0]
        assert (p1["committed"], p1["lag"]) == (1, 1)
        status, body, _ = await c.call(
            "POST", "/v1/groups/external/offsets", {"topic": "events", "partition": 1,
                                                    "offset": 0}
        )
        assert (status, body) == (200, {"topic": "events", "partition": 1, "offset": 0})

    scenario_test(tmp_path, scenario)


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "message"),
    [
        ("POST", "/v1/exchanges/orders/messages", {"body": 1}, 400,
         "missing field 'routing_key' (a string; \"\" is allowed)"),
        ("POST", "/v1/exchanges/nope/messages", {"routing_key": "", "body": 1}, 404,
         "exchange 'nope' not found"),
        ("POST", "/v1/exchanges/hidden/messages", {"routing_key": "", "body": 1}, 403,
         "exchange 'hidden' is internal: only other exchanges may publish to it"),
        ("POST", "/v1/queues/nope/pull", {}, 404, "queue 'nope' not found"),
        ("POST", "/v1/queues/work/pull", {"max": 1001}, 400,
         "'max' must be an integer between 1 and 1000, got 1001"),
        ("POST", "/v1/queues/work/pull", {"lease": 30}, 400,
         "'lease' must be a duration string like \"30s\", got 30"),
        ("POST", "/v1/queues/work/ack", {"delivery_ids": "1"}, 400,
         "'delivery_ids' must be an array of integers, got a string"),
        ("POST", "/v1/queues/work/nack", {"delivery_ids": [], "requeue": "yes"}, 400,
         "'requeue' must be true or false, got \"yes\""),
        ("GET", "/v1/queues/work/peek?n=0", None, 400,
         "query parameter 'n' must be an integer between 1 and 1000, got 0"),
        ("POST", "/v1/topics/nope/records", {"value": 1}, 404, "topic 'nope' not found"),
        ("POST", "/v1/topics/events/records", {"value": 1, "partition": 2}, 404,
         "topic 'events' has no partition 2 (it has 2: 0..1)"),
        ("POST", "/v1/topics/compacted/records", {"value": 1}, 400,
         "topic 'compacted' is compacted: every record needs a 'key' or 'key_b64'"),
        ("GET", "/v1/topics/events/partitions/7/records?offset=0", None, 404,
         "topic 'events' has no partition 7 (it has 2: 0..1)"),
        ("GET", "/v1/topics/events/partitions/x/records?offset=0", None, 400,
         "the partition must be an integer, got 'x'"),
        ("GET", "/v1/topics/events/partitions/0/records", None, 400,
         "query parameter 'offset' is required (an integer)"),
        ("GET", "/v1/topics/events/partitions/0/records?offset=0&limit=10001", None, 400,
         "query parameter 'limit' must be an integer between 1 and 10000, got 10001"),
        ("GET", "/v1/groups/nope", None, 404, "consumer group 'nope' not found"),
        ("POST", "/v1/groups/external/offsets", {"topic": "events", "partition": 0}, 400,
         "give exactly one of 'offset' or 'timestamp' (milliseconds)"),
        ("POST", "/v1/groups/external/offsets", {"topic": "tiny", "partition": 0, "offset": 1},
         404, "consumer group 'external' does not read topic 'tiny'"),
        ("POST", "/v1/groups/external/commit", {}, 400,
         "missing field 'offsets' (an array of {\"topic\", \"partition\", \"offset\"})"),
        ("POST", "/v1/groups/external/commit",
         {"offsets": [{"topic": "events", "partition": 0}]}, 400,
         "offsets[0]: missing field 'offset' (an integer)"),
        ("GET", "/v1/nothing", None, 404, "no route GET /v1/nothing"),
        ("DELETE", "/v1/status", None, 405,
         "DELETE is not allowed on /v1/status (allowed: GET, HEAD)"),
    ],
)
def test_bad_input_gets_a_4xx_with_a_sentence(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, method: str, path: str, body: object,
    status: int, message: str,
) -> None:
    async def scenario(c: Client) -> None:
        got, answer, _ = await c.call(method, path, body)
        assert (got, answer) == (status, {"error": message})

    with caplog.at_level(logging.ERROR):
        scenario_test(tmp_path, scenario)
    assert "unexpected error" not in caplog.text  # bad input never reaches the catch-all


def test_malformed_json_and_wrong_top_level_types(tmp_path: Path) -> None:
    async def scenario(c: Client) -> None:
        status, body, _ = await c.call("POST", "/v1/queues/work/messages", raw=b"{not json")
        assert status == 400 and body["error"].startswith("the request body is not valid JSON")
        status, body, _ = await c.call("POST", "/v1/queues/work/messages", raw=b"[1,2]")
        assert (status, body) == (
            400, {"error": "the request body must be a JSON object, got an array"}
        )

    scenario_test(tmp_path, scenario)


def test_too_large_messages_records_and_requests_are_413(tmp_path: Path) -> None:
    async def scenario(c: Client) -> None:
        status, body, _ = await c.call(
            "POST", "/v1/queues/work/messages", {"body": "x" * 2000}
        )
        assert status == 413
        assert body["error"] == (
            "the payload is 2002 bytes, over the limit of 1024 bytes (--max-message-bytes); "
            "store the payload elsewhere (a file or object store) and send a reference to it "
            "instead"
        )
        status, body, _ = await c.call("POST", "/v1/topics/tiny/records", {"value": "y" * 200})
        assert status == 413 and "(the topic's max_message_bytes)" in body["error"]
        status, body, _ = await c.call(
            "POST", "/v1/queues/work/messages",
            {"messages": [{"body": "z" * 1000} for _ in range(80)]},
        )
        assert status == 413
        assert body["error"].startswith("the request body is over the limit of 65536 bytes")
        assert c.backend.queue_info("work").ready == 0  # nothing of a refused batch is stored

    scenario_test(tmp_path, scenario)


def test_overflow_refusal_is_429_with_accepted_and_retry_after(tmp_path: Path) -> None:
    async def scenario(c: Client) -> None:
        status, body, headers = await c.call(
            "POST", "/v1/exchanges/orders/messages",
            {"messages": [{"routing_key": "orders.full", "body": i} for i in range(3)]},
        )
        assert status == 429
        assert headers["Retry-After"] == "1"
        # the second message reached work and events before full refused it
        assert body == {"error": "queue 'full' is full (max_length 1, overflow reject-publish): "
                                 "publish refused", "accepted": 1, "routed": ["work", "events"]}

    scenario_test(tmp_path, scenario)


def test_a_bearer_token_guards_v1_but_not_health_or_metrics(tmp_path: Path) -> None:
    async def scenario(c: Client) -> None:
        status, body, _ = await c.call("GET", "/v1/status", token=None)
        assert (status, body) == (
            401, {"error": "missing or wrong bearer token (Authorization: Bearer TOKEN)"}
        )
        assert (await c.call("GET", "/v1/status", token="wrong"))[0] == 401
        assert (await c.call("GET", "/v1/status"))[0] == 200
        for open_path in ("/healthz", "/readyz", "/metrics"):
            assert (await c.call("GET", open_path, token=None))[0] == 200

    scenario_test(tmp_path, scenario, token="s3cret")


def test_status_lists_every_entity(tmp_path: Path) -> None:
    async def scenario(c: Client) -> None:
        await c.call("POST", "/v1/queues/work/messages", {"body": 1})
        status, body, _ = await c.call("GET", "/v1/status")
        assert status == 200
        assert body["topology"]["name"] == "api" and body["topology"]["generation"] == 1
        assert len(body["topology"]["hash"]) >= 16
        assert {q["name"] for q in body["queues"] if q["dead_letter_queue"]} == set()
        assert [t["name"] for t in body["topics"]] == ["compacted", "events", "tiny"]
        work = [q for q in body["queues"] if q["name"] == "work"][0]
        assert (work["ready"], work["unacked"]) == (1, 0)
        assert [g["name"] for g in body["groups"]] == ["external"]

    scenario_test(tmp_path, scenario)


def test_an_unexpected_failure_is_a_logged_500_json(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario(c: Client) -> None:
        def broken(queue: str, n: int) -> list[object]:
            raise RuntimeError("disk on fire")

        c.backend.peek_ids = broken  # type: ignore[method-assign,assignment]
        status, body, _ = await c.call("GET", "/v1/queues/work/peek")
        assert (status, body) == (500, {"error": "internal error; the daemon log has the details"})

    with caplog.at_level(logging.ERROR):
        scenario_test(tmp_path, scenario)
    assert "unexpected error serving GET /v1/queues/work/peek" in caplog.text
    assert "disk on fire" in caplog.text
