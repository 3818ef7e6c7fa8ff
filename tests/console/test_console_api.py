"""The console's HTTP side over a real daemon: sessions, the CSRF and read-only gates,
peek, replay and purge of dead letters (also across a restart), offset reset with a
dry run, the event stream, the assets and the security headers."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from tests.console.conftest import Session
from tests.console.topology import shared, start
from tests.e2e.conftest import Daemon, wait_for

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):  # type: ignore[no-untyped-def]
    """One daemon for the tests that read, or change what no other test here reads."""
    yield from shared(tmp_path_factory)


def _fail_payments(d: Daemon, n: int) -> None:
    (d.workdir / "gateway-down").write_text("")
    for i in range(n):
        d.ok("POST", "/v1/exchanges/payments/messages",
             {"routing_key": "pay", "body": {"n": i}}, status=202)
    wait_for(lambda: d.ok("GET", "/v1/queues/payments.dlq/peek?n=100")["messages"]
             if len(d.ok("GET", "/v1/queues/payments.dlq/peek?n=100")["messages"]) == n else None)


def test_root_serves_the_page_to_browsers_and_an_index_to_others(daemon) -> None:
    d = daemon
    html = d.get("/", headers={"Accept": "text/html,application/xhtml+xml"})
    assert html.status == 200 and html.headers["Content-Type"].startswith("text/html")
    assert b'<script type="module" src="/ui/static/app.js">' in html.raw
    assert "script-src 'self'" in html.headers["Content-Security-Policy"]
    assert d.get("/ui/").raw == html.raw
    index = d.get("/")
    assert index.status == 200 and index.body["links"]["queues"] == "/v1/queues"
    js = d.get("/ui/static/app.js")
    assert js.status == 200 and js.headers["Content-Type"].startswith("text/javascript")
    assert d.get("/ui/static/app.js", headers={"If-None-Match": js.headers["ETag"]}).status == 304
    missing = d.get("/ui/static/..%2f..%2fhttp.py")
    assert missing.status == 404


def test_without_a_token_a_session_opens_and_changes_need_its_csrf_token(daemon) -> None:
    d = daemon
    s = Session(d)
    assert s.get("overview")[0] == 401
    info = s.open()
    assert info == {"token_required": False, "authenticated": True, "read_only": False,
                    "csrf": info["csrf"]}
    status, body = s.get("overview")
    assert status == 200 and body["name"] == "console-shop"
    assert s.post("dlq/payments.dlq/replay", {"all": True}, csrf=False) == (
        403, {"error": "missing or wrong X-CSRF-Token header (reload the page)"})
    status, body, _ = s.call("POST", "/ui/api/dlq/payments.dlq/replay", {"all": True},
                             {"X-CSRF-Token": s.csrf or "", "Origin": "http://evil.example"})
    assert (status, body) == (403, {"error": "cross-origin request refused "
                                             "(Origin 'http://evil.example')"})
    assert s.post("dlq/payments.dlq/replay", {"all": True}) == (
        200, {"replayed": 0, "skipped": 0, "skipped_reasons": {}})


def test_with_a_token_the_console_needs_a_login_and_never_takes_a_bearer(start_daemon) -> None:
    d = start(start_daemon, token="s3cret-token")
    s = Session(d)
    assert s.open() == {"token_required": True, "authenticated": False, "read_only": False,
                        "csrf": None}
    status, body, _ = s.call("GET", "/ui/api/overview",
                             headers={"Authorization": "Bearer s3cret-token"})
    assert (status, body) == (401, {"error": "log in to the console first (the daemon's token)"})
    assert s.login("wrong") == (401, {"error": "wrong token"})
    assert s.login("") == (400, {"error": "missing field 'token' (the daemon's token)"})
    status, body = s.login("s3cret-token")
    assert status == 200 and body["authenticated"] is True
    cookie = [c for c in s.cookies if c.startswith("runner_console_")]
    assert cookie == [f"runner_console_{d.port}"]
    assert s.get("overview")[0] == 200
    assert s.post("logout", {})[0] == 200
    assert s.get("overview")[0] == 401
    # the bearer API is unchanged: the session cookie does not open /v1/
    status, _, _ = Session(d).call("GET", "/v1/status")
    assert status == 401
    req = urllib.request.Request(d.url + "/ui/api/login", data=b'{"token": "s3cret-token"}',
                                 method="POST", headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        cookie = resp.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie


def test_read_only_console_shows_but_refuses_changes(start_daemon) -> None:
    d = start(start_daemon, args=["--console", "read-only"])
    s = Session(d)
    assert s.open()["read_only"] is True
    assert s.get("dlq")[0] == 200
    assert s.post("dlq/payments.dlq/purge", {"all": True, "confirm": "payments.dlq"}) == (
        403, {"error": "the console is read-only (started with --console read-only)"})
    assert s.post("groups/reporting/reset", {"to": "earliest"}) == (
        403, {"error": "the console is read-only (started with --console read-only)"})


def test_console_off_serves_nothing(start_daemon) -> None:
    d = start(start_daemon, args=["--console", "off"])
    assert d.get("/ui/").status == 404
    assert d.get("/ui/api/session").status == 404


def test_peek_leaves_messages_in_place(daemon) -> None:
    d = daemon
    for i in range(3):
        d.ok("POST", "/v1/queues/shipping/messages",
             {"body": {"i": i}, "priority": i, "headers": {"h": str(i)}}, status=202)
    s = Session(d)
    s.open()
    for _ in range(2):
        status, body = s.get("queues/shipping/messages?n=10")
        assert status == 200
        assert [(m["body"], m["priority"], m["headers"]["h"]) for m in body["messages"]] == [
            ({"i": 2}, 2, "2"), ({"i": 1}, 1, "1"), ({"i": 0}, 0, "0")]
    assert s.get("queues/shipping/messages?n=0") == (
        400, {"error": "query parameter 'n' must be an integer between 1 and 1000, got 0"})
    assert s.get("queues/nope/messages")[0] == 404


def test_replay_a_selection_then_purge_a_selection_survives_a_restart(start_daemon) -> None:
    d = start(start_daemon)
    _fail_payments(d, 4)
    s = Session(d)
    s.open()
    status, body = s.get("dlq/payments.dlq")
    assert status == 200 and body["kind"] == "queue" and body["choose"] is True
    assert "note" not in body
    letters = body["letters"]
    assert [m["body"] for m in letters] == [{"n": 0}, {"n": 1}, {"n": 2}, {"n": 3}]
    death = letters[0]["death"]
    assert death["reason"] == "handler_error"
    assert death["error"]["type"] == "console_handlers.GatewayDown"
    assert "in charge" in death["error"]["stack_trace"]
    assert death["original_queue"] == "payments-q"
    # replay one (it fails again while the gateway is down, so fix it first)
    (d.workdir / "gateway-down").unlink()
    assert s.post("dlq/payments.dlq/replay", {"ids": [letters[1]["id"]]}) == (
        200, {"replayed": 1, "skipped": 0, "skipped_reasons": {}})
    wait_for(lambda: d.ok("GET", "/v1/status") and _depth(d, "payments-q") == 0)
    status, body = s.get("dlq/payments.dlq")
    assert [m["body"] for m in body["letters"]] == [{"n": 0}, {"n": 2}, {"n": 3}]
    # purge needs the queue's name as confirmation
    ids = [body["letters"][0]["id"], body["letters"][2]["id"]]
    assert s.post("dlq/payments.dlq/purge", {"ids": ids}) == (
        400, {"error": 'purging deletes messages for good: confirm with "confirm": '
                       '"payments.dlq"'})
    assert s.post("dlq/payments.dlq/purge", {"ids": ids, "confirm": "payments.dlq"}) == (
        200, {"purged": 2})
    d.stop()
    d.start()
    s = Session(d)
    s.open()
    status, body = s.get("dlq/payments.dlq")
    assert [m["body"] for m in body["letters"]] == [{"n": 2}]


def _depth(d: Daemon, queue: str) -> int:
    q = next(q for q in d.ok("GET", "/v1/status")["queues"] if q["name"] == queue)
    return int(q["ready"] + q["unacked"] + q["delayed"])


@pytest.mark.parametrize(("body", "error"), [
    ({}, "give either 'ids' (a list of dead-letter ids) or 'all': true"),
    ({"ids": [1], "all": True}, "give either 'ids' (a list of dead-letter ids) or 'all': true"),
    ({"ids": []}, "'ids' must be a non-empty list of dead-letter ids"),
    ({"ids": ["x"]}, "ids[0] must be an integer between 0 and 9223372036854775807, got \"x\""),
    ({"all": True, "max": 3}, "unknown field 'max' (known fields: all, confirm, ids, records)"),
])
def test_bad_replay_requests_name_the_problem(daemon, body, error) -> None:
    d = daemon
    s = Session(d)
    s.open()
    assert s.post("dlq/payments.dlq/replay", body) == (400, {"error": error})


def test_replay_and_purge_of_unknown_queue_are_404(daemon) -> None:
    d = daemon
    s = Session(d)
    s.open()
    assert s.post("dlq/nope/replay", {"all": True}) == (404, {"error": "queue 'nope' not found"})
    assert s.get("dlq/nope") == (404, {"error": "no queue or topic named 'nope'"})


def test_offset_reset_dry_run_changes_nothing_then_applies(daemon) -> None:
    d = daemon
    for i in range(9):
        d.ok("POST", "/v1/topics/order-events/records",
             {"value": {"order_id": f"o{i}"}, "partition": i % 3}, status=202)
    d.ok("POST", "/v1/groups/reporting/commit", {"offsets": [
        {"topic": "order-events", "partition": p, "offset": 3} for p in range(3)]})
    s = Session(d)
    s.open()
    status, body = s.post("groups/reporting/reset", {"to": "earliest", "partition": 1})
    assert status == 200 and body["dry_run"] is True
    assert body["partitions"] == [{
        "topic": "order-events", "partition": 1, "current": 3, "target": 0,
        "log_start_offset": 0, "log_end_offset": 3, "lag_before": 0, "lag_after": 3}]
    assert d.ok("GET", "/v1/groups/reporting")["lag"] == 0
    status, body = s.post("groups/reporting/reset", {"to": "offset", "offset": 99,
                                                     "dry_run": False})
    assert status == 200 and [p["target"] for p in body["partitions"]] == [3, 3, 3]
    status, body = s.post("groups/reporting/reset", {"to": "earliest", "dry_run": False})
    assert [p["target"] for p in body["partitions"]] == [0, 0, 0]
    assert d.ok("GET", "/v1/groups/reporting")["lag"] == 9


@pytest.mark.parametrize(("body", "status", "error"), [
    ({"to": "yesterday"}, 400,
     "'to' must be one of earliest, latest, offset, timestamp, got 'yesterday'"),
    ({"to": "offset"}, 400, "missing field 'offset' (an integer)"),
    ({"to": "earliest", "topic": "audit"}, 404,
     "consumer group 'reporting' does not read topic 'audit'"),
    ({"to": "earliest", "partition": 7}, 404, "consumer group 'reporting' has no partition 7"),
    ({"to": "earliest", "dry_run": "no"}, 400, "'dry_run' must be true or false, got \"no\""),
])
def test_bad_offset_resets_name_the_problem(daemon, body, status, error) -> None:
    d = daemon
    s = Session(d)
    s.open()
    assert s.post("groups/reporting/reset", body) == (status, {"error": error})


def test_event_stream_sends_snapshots_of_the_engine_counters(daemon) -> None:
    d = daemon
    s = Session(d)
    s.open()
    d.ok("POST", "/v1/queues/audit.dlq/messages", {"body": "x"}, status=202)
    req = urllib.request.Request(d.url + "/ui/api/events", headers={
        "Cookie": "; ".join(f"{k}={v}" for k, v in s.cookies.items())})
    snaps = []
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.headers["Content-Type"] == "text/event-stream"
        assert resp.readline() == b"retry: 2000\n"
        # the first snapshot may be up to one interval old; the next ones follow each second
        while not snaps or snaps[-1]["q"]["audit.dlq"]["ready"] != 1:
            assert resp.readline() == b"event: snapshot\n"
            snaps.append(json.loads(resp.readline().removeprefix(b"data: ")))
            assert resp.readline() == b"\n"
            assert len(snaps) <= 3, snaps
    snap = snaps[-1]
    assert set(snap["t_"]) == {"order-events", "audit"} and set(snap["g"]) == {
        "reporting", "auditor"}
    req = urllib.request.Request(d.url + "/ui/api/events")
    try:
        urllib.request.urlopen(req, timeout=10)
        raise AssertionError("the stream answered without a session")
    except urllib.error.HTTPError as exc:
        assert exc.code == 401


def test_a_dead_letter_topic_replays_and_purges_all_or_by_record(start_daemon) -> None:
    from tests.e2e.test_e2e_topic_dlq import HANDLERS, TOPOLOGY

    d = start_daemon(TOPOLOGY, modules={"dlq_handlers": HANDLERS})
    (d.workdir / "fail").write_text("")
    d.ok("POST", "/v1/topics/t/records", {"records": [{"value": "r0"}, {"value": "r1"}]}, 202)
    wait_for(lambda: d.ok("GET", "/v1/topics/t.dlq/dead-letters")["depth"] == 2)
    s = Session(d)
    s.open()
    status, body = s.get("dlq")
    assert status == 200
    row = next(r for r in body["dead_letter_queues"] if r["name"] == "t.dlq")
    assert row["kind"] == "topic" and row["depth"] == 2 and row["age_s"] >= 0
    status, body = s.get("dlq/t.dlq")
    assert status == 200 and [m["value"] for m in body["letters"]] == ["r0", "r1"]
    assert body["letters"][0]["death"]["original_group"] == "g"
    assert s.post("dlq/t.dlq/replay", {"ids": [0]}) == (400, {"error": (
        "'t.dlq' is a dead-letter topic: choose its letters with 'records' (partition and "
        "offset) or 'all': true")})
    assert s.post("dlq/t.dlq/replay", {"all": True, "records": [
        {"partition": 0, "offset": 0}]}) == (400, {"error": (
            "give either 'records' (partition and offset of each) or 'all': true")})
    assert s.post("dlq/qa/replay", {"records": [{"partition": 0, "offset": 0}]}) == (
        400, {"error": "'records' chooses dead letters of a dead-letter topic; give 'ids' "
              "for queue 'qa'"})
    assert s.post("dlq/t.dlq/purge", {"records": [{"partition": 0, "offset": 0}]}) == (
        400, {"error": 'purging deletes messages for good: confirm with "confirm": "t.dlq"'})
    first = {"partition": body["letters"][0]["partition"], "offset": body["letters"][0]["offset"]}
    assert s.post("dlq/t.dlq/purge", {"records": [first], "confirm": "t.dlq"}) == (
        200, {"purged": 1})
    assert s.post("dlq/t.dlq/purge", {"records": [first], "confirm": "t.dlq"})[0] == 409
    assert [m["value"] for m in s.get("dlq/t.dlq")[1]["letters"]] == ["r1"]
    assert s.post("dlq/t/replay", {"all": True}) == (400, {"error": (
        "topic 't' is not a dead-letter topic (no dlq_policy has it as dead_letter_queue)")})
    assert s.post("dlq/t.dlq/purge", {"all": True}) == (400, {"error": (
        'purging deletes messages for good: confirm with "confirm": "t.dlq"')})
    assert s.post("dlq/t.dlq/replay", {"all": True, "max": 1})[0] == 400
    (d.workdir / "fail").unlink()  # else the replayed records die again, as they should
    assert s.post("dlq/t.dlq/replay", {"all": True}) == (
        200, {"replayed": 1, "skipped": 0, "skipped_reasons": {}})
    assert s.get("dlq/t.dlq")[1]["letters"] == []
    wait_for(lambda: (d.workdir / "done.txt").exists()
             and sorted((d.workdir / "done.txt").read_text().split()) == ["r1"])
    assert s.post("dlq/t.dlq/purge", {"all": True, "confirm": "t.dlq"}) == (
        200, {"purged": 0})
