"""Request-reply against the real daemon over HTTP: `POST ...messages?wait=` answers
with the handler's reply (200), its error reply (502), nothing in time (504), a
request routed nowhere (404), bad waits (400); a consumer outside the daemon replies
by publishing to the private reply address; `runner publish --wait` prints the reply;
1,000 requests wait at once without a thread or a queue each."""

from __future__ import annotations

import asyncio
import os
import re
from typing import Any

import aiohttp
import pytest

from tests.e2e.conftest import Daemon, error_of, module_daemon, wait_for

pytestmark = pytest.mark.e2e

TOPOLOGY = """\
version: 1
name: rpc
exchanges:
  rpc: {type: direct}
queues:
  work: {}
  raw: {}
  slow: {}
  manual: {}
  dlq: {}
bindings:
  - {exchange: rpc, queue: work, routing_key: double}
  - {exchange: rpc, queue: manual, routing_key: manual}
dlq_policies:
  once: {max_retries: 0, dead_letter_queue: dlq}
consumers:
  doubler: {queue: work, handler: "rpc_handlers:double", dlq_policy: once, concurrency: 4}
  raw: {queue: raw, handler: "rpc_handlers:raw", dlq_policy: once}
  slow: {queue: slow, handler: "rpc_handlers:slow", dlq_policy: once}
"""

HANDLERS = """\
import asyncio

class OrderError(ValueError):
    pass

async def double(msg):
    if msg.body.get("fail"):
        raise OrderError(f"cannot double {msg.body['n']}")
    return {"doubled": msg.body["n"] * 2, "correlation_id": msg.correlation_id}

def raw(msg):
    return b"\\x00\\xffraw"

async def slow(msg):
    await asyncio.sleep(1)  # five times the longest wait below (200 ms)
    return "late"
"""


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    yield from module_daemon(
        tmp_path_factory.mktemp("rpc"), TOPOLOGY, modules={"rpc_handlers": HANDLERS},
        args=["--fsync", "never"],
    )


def _metric(d: Daemon, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} (\S+)$", d.metrics(), re.M)
    assert match, name
    return float(match.group(1))


def test_a_request_over_http_is_answered_with_the_handlers_reply(daemon: Daemon) -> None:
    got = daemon.post("/v1/exchanges/rpc/messages?wait=5s",
                      {"routing_key": "double", "body": {"n": 21}, "correlation_id": "req-1"})
    assert got.status == 200, got.body
    assert got.body == {
        "correlation_id": "req-1", "routed": ["work"],
        "body": {"doubled": 42, "correlation_id": "req-1"},
        "headers": {"x-correlation-id": "req-1"},
    }
    # straight into a queue too; a correlation id is made up when none is given
    got = daemon.post("/v1/queues/work/messages?wait=5s", {"body": {"n": 1}})
    assert got.status == 200, got.body
    cid = got.body["correlation_id"]
    assert re.fullmatch(r"[0-9a-f]{16}", cid)
    assert got.body["body"] == {"doubled": 2, "correlation_id": cid}


def test_a_bytes_reply_comes_back_as_body_b64(daemon: Daemon) -> None:
    got = daemon.post("/v1/queues/raw/messages?wait=5s", {"body": {}})
    assert got.status == 200, got.body
    assert got.body["body_b64"] == "AP9yYXc="
    assert "body" not in got.body


def test_an_error_reply_is_a_502_with_the_handlers_error(daemon: Daemon) -> None:
    got = daemon.post("/v1/exchanges/rpc/messages?wait=5s",
                      {"routing_key": "double", "body": {"n": 3, "fail": True},
                       "correlation_id": "bad-1"})
    assert got.status == 502
    assert got.body == {
        "error": "the handler failed for good: rpc_handlers.OrderError: cannot double 3",
        "reply_error": {"type": "rpc_handlers.OrderError", "message": "cannot double 3"},
        "routed": ["work"], "correlation_id": "bad-1",
    }
    # and the dead letter is there as well
    peeked = daemon.ok("GET", "/v1/queues/dlq/peek?n=100")["messages"]
    assert any(m["correlation_id"] == "bad-1" for m in peeked)


def test_no_reply_within_the_wait_is_a_504_and_the_late_reply_is_dropped(
    daemon: Daemon,
) -> None:
    dropped = _metric(daemon, 'runner_replies_total{result="dropped"}')
    got = daemon.post("/v1/queues/slow/messages?wait=200ms", {"body": {}, "correlation_id": "s"})
    assert got.status == 504
    assert got.body == {
        "error": "no reply within 0.2s; the request stays published and a later reply is "
        "dropped", "routed": ["slow"], "correlation_id": "s",
    }
    wait_for(lambda: _metric(daemon, 'runner_replies_total{result="dropped"}') == dropped + 1,
             timeout_s=20)
    assert _metric(daemon, 'runner_replies_total{result="timed_out"}') >= 1


def test_a_request_routed_nowhere_is_a_404_at_once(daemon: Daemon) -> None:
    status, sentence = error_of(daemon, "POST", "/v1/exchanges/rpc/messages?wait=5s",
                                {"routing_key": "nobody", "body": 1})
    assert (status, sentence) == (
        404, "the request was routed nowhere (no binding of 'rpc' matched its routing key), "
        "so no reply can come")


@pytest.mark.parametrize(("query", "body", "sentence"), [
    ("wait=soon", {"body": 1},
     "query parameter 'wait' must be a duration like \"5s\" or \"250ms\", got 'soon'"),
    ("wait=", {"body": 1},
     "query parameter 'wait' must be a duration like \"5s\" or \"250ms\", got ''"),
    ("wait=0s", {"body": 1},
     "query parameter 'wait' must be more than 0s and at most 300s (5m), got '0s'"),
    ("wait=6m", {"body": 1},
     "query parameter 'wait' must be more than 0s and at most 300s (5m), got '6m'"),
    ("wait=5s", {"messages": [{"body": 1}]},
     "'wait' takes one message, not a batch: send each request on its own"),
    ("wait=5s", {"body": 1, "reply_to": "work"},
     "a request with 'wait' gets a private reply address; leave out 'reply_to' (or publish "
     "without 'wait')"),
    ("", {"body": 1, "reply_to": ""},
     "'reply_to' must be a queue name or 'exchange/routing_key', got ''"),
    ("", {"body": 1, "reply_to": 5},
     "'reply_to' must be a queue name or 'exchange/routing_key', got 5"),
    ("", {"body": 1, "reply_to": "q" * 513},
     "'reply_to' is 513 characters, over the limit of 512"),
    ("", {"body": 1, "correlation_id": ["x"]},
     "'correlation_id' must be a non-empty string, got ['x']"),
    ("", {"messages": [{"body": 1, "correlation_id": "c" * 256}]},
     "message 0: 'correlation_id' is 256 characters, over the limit of 255"),
])
def test_bad_request_reply_input_is_a_400_naming_it(
    daemon: Daemon, query: str, body: Any, sentence: str,
) -> None:
    assert error_of(daemon, "POST", f"/v1/queues/manual/messages?{query}", body) == (
        400, sentence)


def test_a_consumer_outside_the_daemon_replies_to_the_private_address(daemon: Daemon) -> None:
    async def go() -> Any:
        async with aiohttp.ClientSession() as http:
            ask = asyncio.ensure_future(http.post(
                f"{daemon.url}/v1/exchanges/rpc/messages?wait=10s",
                json={"routing_key": "manual", "body": {"q": "?"}, "correlation_id": "m-1"}))
            pulled: list[Any] = []
            while not pulled:
                async with http.post(f"{daemon.url}/v1/queues/manual/pull",
                                     json={"max": 1}) as r:
                    pulled = (await r.json())["messages"]
            (msg,) = pulled
            assert msg["correlation_id"] == "m-1"
            address = msg["reply_to"]
            assert address.startswith("runner.reply-to.")
            async with http.post(f"{daemon.url}/v1/queues/{address}/messages",
                                 json={"body": {"a": "!"}, "correlation_id": "m-1"}) as r:
                assert (r.status, await r.json()) == (202, {"routed": [address]})
            async with http.post(f"{daemon.url}/v1/queues/manual/ack",
                                 json={"delivery_ids": [msg["delivery_id"]]}):
                pass
            async with http.post(f"{daemon.url}/v1/queues/{address}/messages",
                                 json={"body": "again"}) as r:
                again = (r.status, await r.json())
            async with await ask as answer:
                return answer.status, await answer.json(), again

    status, body, again = asyncio.run(go())
    assert (status, body["body"], body["correlation_id"]) == (200, {"a": "!"}, "m-1")
    assert again[0] == 404
    assert again[1]["error"].startswith("no request waits for reply address 'runner.reply-to.")


def test_runner_publish_wait_prints_the_reply(daemon: Daemon) -> None:
    done = daemon.cli("publish", "--exchange", "rpc", "--routing-key", "double", "--wait", "5s",
                      "--correlation-id", "cli-1", '{"n": 5}')
    assert (done.returncode, done.stdout, done.stderr) == (
        0, '{"doubled": 10, "correlation_id": "cli-1"}\n', "")
    done = daemon.cli("publish", "--queue", "slow", "--wait", "100ms", "{}")
    assert done.returncode == 1
    assert done.stderr.startswith("runner publish: no reply within 0.1s;")
    assert done.stderr.rstrip().endswith("(HTTP 504)")
    done = daemon.cli("publish", "--exchange", "rpc", "--routing-key", "double", "--wait", "5s",
                      '{"n": 1, "fail": true}')
    assert (done.returncode, done.stderr) == (
        1, "runner publish: the handler failed for good: rpc_handlers.OrderError: cannot "
        "double 1 (HTTP 502)\n")
    done = daemon.cli("publish", "--topic", "t", "--wait", "5s", "{}")
    assert (done.returncode, done.stderr) == (
        2, "runner publish: --wait is for exchanges and queues, not topics\n")


def _threads(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        return int(next(line.split()[1] for line in fh if line.startswith("Threads:")))


def test_a_thousand_requests_wait_at_once_without_a_thread_or_queue_each(
    daemon: Daemon,
) -> None:
    n = 1000
    assert daemon.proc is not None
    pid = daemon.proc.pid
    threads_before = _threads(pid)
    queues_before = [q["name"] for q in daemon.ok("GET", "/v1/queues")["queues"]]

    async def go() -> list[tuple[int, Any]]:
        connector = aiohttp.TCPConnector(limit=0)
        timeout = aiohttp.ClientTimeout(total=120)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
            async def ask(i: int) -> tuple[int, Any]:
                async with http.post(f"{daemon.url}/v1/exchanges/rpc/messages?wait=60s",
                                     json={"routing_key": "manual", "body": {"i": i},
                                           "correlation_id": f"k-{i}"}) as r:
                    return r.status, await r.json()

            asking = [asyncio.ensure_future(ask(i)) for i in range(n)]

            async def waiting() -> float:
                async with http.get(f"{daemon.url}/metrics") as r:
                    text = await r.text()
                return float(re.search(r"^runner_requests_waiting (\S+)$", text, re.M)[1])

            while await waiting() < n:
                await asyncio.sleep(0.1)
            # every request waits now: no thread and no queue was made for any of them
            assert _threads(pid) <= threads_before + 2
            async with http.get(f"{daemon.url}/v1/queues") as r:
                assert [q["name"] for q in (await r.json())["queues"]] == queues_before
            # a remote consumer answers them all, each through its private address
            answered = 0
            while answered < n:
                async with http.post(f"{daemon.url}/v1/queues/manual/pull",
                                     json={"max": 500}) as r:
                    msgs = (await r.json())["messages"]
                for m in msgs:
                    async with http.post(
                        f"{daemon.url}/v1/queues/{m['reply_to']}/messages",
                        json={"body": {"echo": m["body"]["i"]},
                              "correlation_id": m["correlation_id"]},
                    ) as r:
                        assert r.status == 202
                async with http.post(f"{daemon.url}/v1/queues/manual/ack",
                                     json={"delivery_ids": [m["delivery_id"] for m in msgs]}):
                    pass
                answered += len(msgs)
            return list(await asyncio.gather(*asking))

    results = asyncio.run(go())
    assert [status for status, _ in results] == [200] * n
    assert [body["body"] for _, body in results] == [{"echo": i} for i in range(n)]
    assert [body["correlation_id"] for _, body in results] == [f"k-{i}" for i in range(n)]
    assert _metric(daemon, "runner_requests_waiting") == 0
    assert os.path.exists(f"/proc/{pid}")
