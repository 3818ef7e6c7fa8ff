"""The web console of `runner run --backend amqp://...`: the same pages, sessions and
gates as on the embedded daemon, reading the real RabbitMQ (each test in a vhost of its
own, real daemon processes over real HTTP); what RabbitMQ cannot do is a 409 with a
sentence, never a 500."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from runner.backends.rabbitmq.url import Target
from tests.console.conftest import Session
from tests.e2e.conftest import Daemon, make_daemon, wait_for
from tests.rmq import url

# tests/console's shop, as RabbitMQ can run it (no exchange binding into a topic of
# several partitions)
TOPOLOGY = """\
version: 1
name: console-rmq
topics:
  order-events: {partitions: 3, key: order_id}
  audit: {partitions: 1}
exchanges:
  orders: {type: topic}
  payments: {type: direct}
queues:
  payments-q: {}
  payments.dlq: {}
  shipping: {max_priority: 5}
  audit.dlq: {}
  counted: {delivery_limit: 3}
bindings:
  - {exchange: payments, queue: payments-q, routing_key: pay}
  - {exchange: orders, queue: shipping, routing_key: "orders.paid"}
dlq_policies:
  no-retry: {max_retries: 0, dead_letter_queue: payments.dlq}
  audit-policy: {max_retries: 0, dead_letter_queue: audit.dlq}
consumers:
  payment-worker: {queue: payments-q, handler: "shop:pay", dlq_policy: no-retry}
consumer_groups:
  reporting: {topic: order-events}
  auditor: {topic: audit, handler: "shop:audit", dlq_policy: audit-policy}
"""

HANDLERS = '''\
import os


class GatewayDown(RuntimeError):
    pass


def pay(msg):
    if os.path.exists("gateway-down"):
        raise GatewayDown(f"payment gateway down for {msg.body!r}")


def audit(msg):
    pass
'''

READ_ONLY = "the console is read-only (started with --console read-only)"


@pytest.fixture
def start(tmp_path: Path, vhost: Target) -> Iterator[Any]:
    """Start daemons over the test's vhost; each stops cleanly at teardown."""
    started: list[Daemon] = []

    def run(*args: str, token: str | None = None) -> Daemon:
        d = make_daemon(tmp_path / f"d{len(started)}", TOPOLOGY, modules={"shop": HANDLERS},
                        args=["--backend", url(vhost), "--no-watch", *args], token=token)
        started.append(d)
        d.start()
        return d

    yield run
    for d in started:
        if d.running:
            d.stop()
        assert "Traceback" not in d.log() and "unexpected error" not in d.log(), d.log()


def _ok(s: Session, path: str) -> Any:
    status, body = s.get(path)
    assert status == 200, (path, status, body)
    return body


def _post(s: Session, path: str, body: Any) -> Any:
    status, answer = s.post(path, body)
    assert status == 200, (path, status, answer)
    return answer


def test_every_page_reads_the_broker_and_changes_go_through_it(start: Any) -> None:
    d = start()
    html = d.get("/", headers={"Accept": "text/html,application/xhtml+xml"})
    assert html.status == 200 and html.headers["Content-Type"].startswith("text/html")
    assert b'<script type="module" src="/ui/static/app.js">' in html.raw
    assert "script-src 'self'" in html.headers["Content-Security-Policy"]
    assert d.get("/ui/").raw == html.raw
    assert d.get("/").body["links"]["queues"] == "/v1/queues"  # programs: the JSON index
    assert d.get("/ui/static/app.js").status == 200
    s = Session(d)
    assert s.get("overview")[0] == 401
    info = s.open()
    assert info == {"token_required": False, "authenticated": True, "read_only": False,
                    "csrf": info["csrf"]}

    (d.workdir / "gateway-down").write_text("")
    for i in range(3):
        d.ok("POST", "/v1/exchanges/payments/messages",
             {"routing_key": "pay", "body": {"n": i}}, status=202)
        d.ok("POST", "/v1/queues/shipping/messages", {"body": {"i": i}, "priority": i},
             status=202)
    for i in range(9):
        d.ok("POST", "/v1/topics/order-events/records",
             {"value": {"order_id": f"o{i}"}, "partition": i % 3}, status=202)

    overview = _ok(s, "overview")
    assert (overview["name"], overview["healthy"], overview["generation"]) == (
        "console-rmq", True, 1)
    assert overview["counts"] == {"exchanges": 2, "queues": 5, "bindings": 2, "topics": 2,
                                  "groups": 2, "consumers": 1, "dlq_policies": 2}
    # the live numbers: queue counts from the management API, offsets from the streams
    assert overview["snapshot"]["t_"]["order-events"]["p"] == [[0, 3, 0]] * 3
    assert overview["snapshot"]["g"]["reporting"] == {"lag": 9, "members": 0, "rate": 0.0}
    flow = _ok(s, "flow")
    assert {n["name"] for n in flow["nodes"] if n["dlq"]} == {"payments.dlq", "audit.dlq"}
    queues = {q["name"]: q for q in _ok(s, "queues")["queues"]}
    assert set(queues) == {"payments-q", "payments.dlq", "shipping", "audit.dlq", "counted"}
    assert queues["payments-q"]["dead_letter_to"] == "payments.dlq"

    for _ in range(2):  # a peek gives every message back, in the broker's priority order
        peeked = _ok(s, "queues/shipping/messages?n=10")["messages"]
        assert [(m["body"], m["priority"]) for m in peeked] == [
            ({"i": 2}, 2), ({"i": 1}, 1), ({"i": 0}, 0)]
    assert s.get("queues/nope/messages") == (404, {"error": "queue 'nope' not found"})
    assert s.get("queues/counted/messages") == (409, {"unknown": [], "error": (
        "queue 'counted' has a delivery_limit (a RabbitMQ quorum queue): the broker counts "
        "every message a peek gives back as a delivery, so peeking would use up their "
        "deliveries and dead-letter them; pull and nack instead")})

    topics = {t["name"]: t for t in _ok(s, "topics")["topics"]}
    assert [(p["log_start_offset"], p["log_end_offset"])
            for p in topics["order-events"]["partition_info"]] == [(0, 3)] * 3
    records = _ok(s, "topics/order-events/records?partition=1")
    assert [(r["offset"], r["key"]) for r in records["records"]] == [
        (0, "o1"), (1, "o4"), (2, "o7")]
    groups = {g["name"]: g for g in _ok(s, "groups")["groups"]}
    assert [(p["partition"], p["lag"], p["member"]) for p in groups["reporting"]["partitions"]
            ] == [(0, 3, None), (1, 3, None), (2, 3, None)]
    assert len(groups["auditor"]["members"]) == 1

    # dead letters: the broker's statistics lag up to 5 s; the letters are peeked
    wait_for(lambda: {q["name"]: q["depth"] for q in _ok(s, "dlq")["dead_letter_queues"]}
             == {"payments.dlq": 3, "audit.dlq": 0}, timeout_s=20)
    letters = _ok(s, "dlq/payments.dlq")
    assert (letters["kind"], letters["choose"], letters["note"]) == ("queue", False, (
        "This backend replays and purges a queue's dead letters all at once: it has no ids "
        "to choose single messages by."))  # the page hides its checkboxes and shows this
    assert [(m["id"], m["body"]) for m in letters["letters"]] == [
        (1, {"n": 0}), (2, {"n": 1}), (3, {"n": 2})]
    death = letters["letters"][0]["death"]
    assert (death["reason"], death["error"]["type"], death["original_queue"]) == (
        "handler_error", "shop.GatewayDown", "payments-q")

    # what RabbitMQ cannot do: a sentence the page shows, not a 500
    assert s.post("dlq/payments.dlq/replay", {"ids": [2]}) == (409, {"error": (
        "the RabbitMQ backend cannot replay chosen messages (RabbitMQ has no ids to choose "
        "them by); replay them all")})
    assert s.post("dlq/payments.dlq/purge", {"ids": [2], "confirm": "payments.dlq"}) == (
        409, {"error": "the RabbitMQ backend cannot purge chosen messages (RabbitMQ purges a "
                       "whole queue); purge them all"})
    assert s.post("dlq/payments.dlq/replay", {"all": True}, csrf=False) == (
        403, {"error": "missing or wrong X-CSRF-Token header (reload the page)"})

    (d.workdir / "gateway-down").unlink()
    assert _post(s, "dlq/payments.dlq/replay", {"all": True}) == {
        "replayed": 3, "skipped": 0, "skipped_reasons": {}}
    wait_for(lambda: _ok(s, "overview")["snapshot"]["c"]["payment-worker"]["handled"] == 6)
    assert _ok(s, "dlq/payments.dlq")["letters"] == []

    assert _post(s, "dlq/shipping/purge", {"all": True, "confirm": "shipping"}) == {
        "purged": 3}
    assert _ok(s, "queues/shipping/messages?n=10")["messages"] == []

    dry = _post(s, "groups/reporting/reset", {"to": "latest"})
    assert dry["dry_run"] is True and [(p["current"], p["target"]) for p in dry["partitions"]
                                       ] == [(0, 3)] * 3
    assert d.ok("GET", "/v1/groups/reporting")["lag"] == 9
    done = _post(s, "groups/reporting/reset", {"to": "latest", "dry_run": False})
    assert [p["lag_after"] for p in done["partitions"]] == [0, 0, 0]
    assert d.ok("GET", "/v1/groups/reporting")["lag"] == 0


def test_the_event_stream_samples_the_broker(start: Any) -> None:
    d = start()
    s = Session(d)
    s.open()
    d.ok("POST", "/v1/topics/audit/records", {"value": "x"}, status=202)
    req = urllib.request.Request(d.url + "/ui/api/events", headers={
        "Cookie": "; ".join(f"{k}={v}" for k, v in s.cookies.items())})
    snaps = []
    with urllib.request.urlopen(req, timeout=20) as resp:
        assert resp.headers["Content-Type"] == "text/event-stream"
        assert resp.readline() == b"retry: 2000\n"
        while len(snaps) < 3:  # the first at once, then one a second while it listens
            assert resp.readline() == b"event: snapshot\n"
            snaps.append(json.loads(resp.readline().removeprefix(b"data: ")))
            assert resp.readline() == b"\n"
    assert [snap["t_"]["audit"]["p"] for snap in snaps] == [[[0, 1, 0]]] * 3
    assert set(snaps[-1]["q"]) == {"payments-q", "payments.dlq", "shipping", "audit.dlq",
                                   "counted"}
    assert snaps[-1]["health"]["accepting"] is True
    assert snaps[0]["t"] < snaps[1]["t"] < snaps[2]["t"]


def test_read_only_console_needs_the_token_and_refuses_changes(start: Any) -> None:
    d = start("--console", "read-only", token="s3cret-token")
    s = Session(d)
    assert s.open() == {"token_required": True, "authenticated": False, "read_only": True,
                        "csrf": None}
    status, body, _ = s.call("GET", "/ui/api/overview",
                             headers={"Authorization": "Bearer s3cret-token"})
    assert (status, body) == (401, {"error": "log in to the console first (the daemon's token)"})
    assert s.login("wrong") == (401, {"error": "wrong token"})
    assert s.login("s3cret-token")[0] == 200
    assert [c for c in s.cookies if c.startswith("runner_console_")] == [
        f"runner_console_{d.port}"]
    assert _ok(s, "overview")["name"] == "console-rmq"
    assert _ok(s, "dlq")["dead_letter_queues"][0]["name"] == "audit.dlq"
    assert s.post("dlq/payments.dlq/replay", {"all": True}) == (403, {"error": READ_ONLY})
    assert s.post("dlq/payments.dlq/purge", {"all": True, "confirm": "payments.dlq"}) == (
        403, {"error": READ_ONLY})
    assert s.post("groups/reporting/reset", {"to": "earliest"}) == (403, {"error": READ_ONLY})
    assert _post(s, "logout", {}) == {"authenticated": False}
    assert s.get("overview")[0] == 401
    assert Session(d).call("GET", "/v1/status")[0] == 401  # the bearer API is unchanged


def test_console_off_serves_no_page(start: Any) -> None:
    d = start("--console", "off")
    assert d.get("/ui/").status == 404
    assert d.get("/ui/api/session").status == 404
    index = d.get("/", headers={"Accept": "text/html"})
    assert index.status == 200 and index.body["links"]["queues"] == "/v1/queues"
