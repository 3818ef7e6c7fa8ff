"""Request-reply over `runner run --backend amqp://...`: real daemon processes over the
real RabbitMQ, each test in a vhost of its own. `?wait=` answers as on the embedded
daemon (200 / 502 / 504 / 400 / 404); a reply reaches the daemon that waits even when
another daemon's handler (or HTTP consumer) answers, through that daemon's reply queue."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import re
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from runner.backends.rabbitmq import live
from runner.backends.rabbitmq.url import Target
from runner.daemon.remote_replies import MAX_OUTBOX_BYTES
from tests.daemon.promtool import check_metrics
from tests.e2e.conftest import Daemon, make_daemon, wait_for
from tests.rmq import close_connection, kill_connections, max_connections, url

HANDLERS = '''\
import json
import os
import time


def price(msg):
    with open("price.log", "a") as fh:
        fh.write(json.dumps({"body": msg.body, "pid": os.getpid()}) + "\\n")
    if msg.body == "slow":
        time.sleep(1.5)
    if msg.body == "boom":
        raise ValueError("no price for boom")
    time.sleep(0.002)
    return {"sku": msg.body, "price": 7}


async def quote(msg, ctx):
    price = await ctx.request("rpc", "price.get", msg.body, timeout=10)
    return {"quote": price, "by": os.getpid()}
'''

TOPOLOGY = """\
version: 1
name: rmq-rpc
exchanges:
  rpc: {type: topic}
queues:
  price: {}
  parked: {}
  dead: {}
  quote: {}
bindings:
  - {exchange: rpc, queue: price, routing_key: "price.#"}
dlq_policies:
  once:
    max_retries: 0
    dead_letter_queue: dead
consumers:
  price-c: {queue: price, handler: "handlers_rpc:price", dlq_policy: once, prefetch: 50,
            concurrency: 8}
  quote-c: {queue: quote, handler: "handlers_rpc:quote", prefetch: 20, concurrency: 20}
"""


@pytest.fixture
def start(tmp_path: Any, vhost: Target) -> Iterator[Any]:
    started: list[Daemon] = []

    def run() -> Daemon:
        d = make_daemon(tmp_path / f"d{len(started)}", TOPOLOGY,
                        modules={"handlers_rpc": HANDLERS},
                        args=["--backend", url(vhost), "--no-watch"])
        started.append(d)
        d.start()
        return d

    yield run
    for d in started:
        if d.running:
            d.stop()


def test_wait_answers_the_reply_an_error_reply_or_504(start: Any) -> None:
    d = start()
    answer = d.post("/v1/exchanges/rpc/messages?wait=5s",
                    {"routing_key": "price.get", "body": "B-1", "correlation_id": "c-1"})
    assert answer.status == 200, answer.body
    assert answer.body["body"] == {"sku": "B-1", "price": 7}
    assert (answer.body["correlation_id"], answer.body["routed"]) == ("c-1", ["price"])
    answer = d.post("/v1/queues/price/messages?wait=5s", {"body": "Q-1"})
    assert answer.status == 200 and answer.body["body"] == {"sku": "Q-1", "price": 7}
    assert answer.body["correlation_id"]  # the daemon made one up

    answer = d.post("/v1/exchanges/rpc/messages?wait=5s",
                    {"routing_key": "price.get", "body": "boom"})
    assert answer.status == 502, answer.body
    assert answer.body["error"] == "the handler failed for good: ValueError: no price for boom"
    assert answer.body["reply_error"] == {"type": "ValueError", "message": "no price for boom"}
    assert answer.body["routed"] == ["price"]

    answer = d.post("/v1/exchanges/rpc/messages?wait=300ms",
                    {"routing_key": "price.get", "body": "slow"})
    assert (answer.status, answer.body["error"]) == (
        504, "no reply within 0.3s; the request stays published and a later reply is dropped")

    answer = d.post("/v1/exchanges/rpc/messages?wait=5s",
                    {"routing_key": "other", "body": 1})
    assert (answer.status, answer.body["routed"]) == (404, [])
    assert answer.body["error"] == ("the request was routed nowhere (no binding of 'rpc' "
                                    "matched its routing key), so no reply can come")
    answer = d.post("/v1/exchanges/rpc/messages?wait=6m", {"routing_key": "price.get",
                                                           "body": 1})
    assert (answer.status, answer.body["error"]) == (
        400, "query parameter 'wait' must be more than 0s and at most 300s (5m), got '6m'")
    answer = d.post("/v1/exchanges/rpc/messages?wait=5s",
                    {"messages": [{"routing_key": "price.get", "body": 1}]})
    assert (answer.status, answer.body["error"]) == (
        400, "'wait' takes one message, not a batch: send each request on its own")
    answer = d.post("/v1/exchanges/rpc/messages?wait=5s",
                    {"routing_key": "price.get", "body": 1, "reply_to": "parked"})
    assert answer.status == 400 and "leave out 'reply_to'" in answer.body["error"]
    printed = d.cli("publish", "--exchange", "rpc", "--routing-key", "price.get",
                    "--wait", "5s", '"cli"')
    assert (printed.returncode, printed.stdout) == (0, '{"sku": "cli", "price": 7}\n'), printed
    # the late reply to the timed-out request is dropped, the daemon goes on
    answer = d.post("/v1/exchanges/rpc/messages?wait=5s",
                    {"routing_key": "price.get", "body": "after"})
    assert answer.status == 200 and answer.body["body"] == {"sku": "after", "price": 7}


def test_a_reply_from_an_http_consumer_of_another_daemon(start: Any) -> None:
    a, b = start(), start()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(a.post, "/v1/queues/parked/messages?wait=20s",
                              {"body": {"q": 1}, "correlation_id": "x-1"})
        (got,) = wait_for(lambda: b.ok("POST", "/v1/queues/parked/pull", {})["messages"])
        assert got["correlation_id"] == "x-1"
        address = got["reply_to"]
        assert address.startswith("runner.reply-to.")
        answer = b.post(f"/v1/queues/{address}/messages",
                        {"body": {"answer": 42}, "correlation_id": "x-1"})
        assert (answer.status, answer.body) == (202, {"routed": [address]})
        b.ok("POST", "/v1/queues/parked/ack", {"delivery_ids": [got["delivery_id"]]})
        reply = waiting.result(timeout=20)
    assert reply.status == 200, reply.body
    assert (reply.body["body"], reply.body["correlation_id"]) == ({"answer": 42}, "x-1")
    # a reply address of this daemon nobody waits on any more
    answer = a.post(f"/v1/queues/{address}/messages", {"body": 1})
    assert (answer.status, answer.body["error"]) == (
        404, f"no request waits for reply address '{address}' (it was answered, timed out, "
        "or the daemon restarted since)")


def test_200_concurrent_waiters_answered_by_two_daemons(start: Any) -> None:
    a, b = start(), start()
    n = 200

    async def ask(session: aiohttp.ClientSession, i: int) -> tuple[int, Any]:
        async with session.post(f"{a.url}/v1/exchanges/rpc/messages?wait=30s",
                                json={"routing_key": "price.get", "body": f"s-{i}",
                                      "correlation_id": f"c-{i}"}) as resp:
            return resp.status, await resp.json()

    async def main() -> list[tuple[int, Any]]:
        headers = {"Authorization": f"Bearer {a.token}"} if a.token else {}
        conn = aiohttp.TCPConnector(limit=n)
        async with aiohttp.ClientSession(connector=conn, headers=headers) as session:
            return await asyncio.gather(*(ask(session, i) for i in range(n)))

    answers = asyncio.run(main())
    assert [s for s, _ in answers] == [200] * n, [a for a in answers if a[0] != 200][:3]
    for i, (_, body) in enumerate(answers):
        assert (body["correlation_id"], body["body"]) == (f"c-{i}", {"sku": f"s-{i}",
                                                                     "price": 7})
    handled = [json.loads(x) for d in (a, b) if (d.workdir / "price.log").exists()
               for x in (d.workdir / "price.log").read_text().splitlines()]
    pids = {h["pid"] for h in handled}
    assert len(handled) == n and len(pids) == 2, pids  # b's replies crossed the broker


def test_ctx_request_between_handlers_of_two_daemons(start: Any) -> None:
    a, b = start(), start()
    n = 40
    with concurrent.futures.ThreadPoolExecutor(n) as pool:
        answers = list(pool.map(
            lambda i: a.post("/v1/queues/quote/messages?wait=30s", {"body": f"q-{i}"}),
            range(n)))
    assert [x.status for x in answers] == [200] * n, [x.body for x in answers][:3]
    assert [x.body["body"]["quote"] for x in answers] == [
        {"sku": f"q-{i}", "price": 7} for i in range(n)]
    handled = [json.loads(x) for d in (a, b) if (d.workdir / "price.log").exists()
               for x in (d.workdir / "price.log").read_text().splitlines()]
    pricer = {h["body"]: h["pid"] for h in handled}
    pairs = [(x.body["body"]["by"], pricer[f"q-{i}"]) for i, x in enumerate(answers)]
    crossed = [p for p in pairs if p[0] != p[1]]  # replies that went through the broker
    assert len(handled) == n and crossed, pairs


def value(text: str, metric: str, /, **labels: str) -> float | None:
    """One sample of a scrape (None: no such series)."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == metric and sample.labels == labels:
                return float(sample.value)
    return None


def forwarded(d: Daemon) -> dict[str, float | None]:
    text = d.metrics()
    return {r: value(text, "runner_replies_forwarded_total", result=r)
            for r in ("sent", "received", "unroutable", "refused")}


def reply_queues(vhost: Target) -> list[str]:
    rows = live.request(Target(vhost.host), "GET",
                        f"/api/queues/{quote(vhost.vhost, safe='')}?columns=name")
    return sorted(q["name"] for q in rows if q["name"].startswith("runner.reply-to."))


def test_a_reply_sent_while_the_waiting_daemon_reconnects_arrives(
    start: Any, vhost: Target,
) -> None:
    """The reply queue is not exclusive: it outlives the lost connection, so a reply that
    another daemon sends before the queue is consumed again waits there (with an
    exclusive queue it was dropped and the request got 504)."""
    a, b = start(), start()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(a.post, "/v1/queues/parked/messages?wait=15s",
                              {"body": {"q": 1}, "correlation_id": "r-1"})
        (got,) = wait_for(lambda: b.ok("POST", "/v1/queues/parked/pull", {})["messages"])
        address = got["reply_to"]
        queue = address.rpartition(".")[0]
        close_connection(vhost, f"runner replies {queue}")  # a's reply connection only
        answer = b.post(f"/v1/queues/{address}/messages",
                        {"body": {"answer": 42}, "correlation_id": "r-1"})
        assert (answer.status, answer.body) == (202, {"routed": [address]})
        reply = waiting.result(timeout=30)
    assert reply.status == 200, reply.body
    assert (reply.body["body"], reply.body["correlation_id"]) == ({"answer": 42}, "r-1")
    assert "reply queue " + queue + ": connection lost" in a.log()
    assert forwarded(b)["sent"] == 1
    assert forwarded(a)["received"] == 1


def test_a_reply_queue_gone_meanwhile_fails_the_waiting_requests_at_once(
    start: Any, vhost: Target,
) -> None:
    """Deleted (as it expires after a long outage): the daemon sees it on reconnecting
    and answers its waiting requests 503 at once instead of 504 after their wait."""
    a = start()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(a.post, "/v1/queues/parked/messages?wait=30s",
                              {"body": 1, "correlation_id": "g-1"})
        wait_for(lambda: value(a.metrics(), "runner_requests_waiting") == 1)
        (queue,) = reply_queues(vhost)
        began = time.monotonic()
        live.request(Target(vhost.host), "DELETE",
                     f"/api/queues/{quote(vhost.vhost, safe='')}/{quote(queue, safe='')}")
        reply = waiting.result(timeout=30)
        took = time.monotonic() - began
    assert reply.status == 503, reply.body
    assert reply.body["error"] == (
        f"this daemon's reply queue '{queue}' was gone when its connection to the broker "
        "came back (away for over 60s, or deleted), so replies sent meanwhile are lost; "
        "send the request again")
    assert (reply.body["correlation_id"], reply.body["routed"]) == ("g-1", ["parked"])
    assert took < 10, took
    assert wait_for(lambda: reply_queues(vhost)) == [queue]  # declared again
    answer = a.post("/v1/exchanges/rpc/messages?wait=10s",
                    {"routing_key": "price.get", "body": "after"})
    assert answer.status == 200 and answer.body["body"] == {"sku": "after", "price": 7}


def test_replies_wait_for_an_unreachable_broker_up_to_a_bound(
    start: Any, vhost: Target,
) -> None:
    """Both daemons lose the broker (the vhost refuses new connections): replies to the
    other daemon wait in memory up to MAX_OUTBOX_BYTES, then 503; once the broker
    takes connections again they are sent, and the waiting request is answered (its
    reply queue outlived the outage)."""
    a, b = start(), start()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(a.post, "/v1/queues/parked/messages?wait=60s",
                              {"body": 1, "correlation_id": "o-1"})
        (got,) = wait_for(lambda: b.ok("POST", "/v1/queues/parked/pull", {})["messages"])
        address = got["reply_to"]
        path = f"/api/vhosts/{quote(vhost.vhost, safe='')}/connections"
        # a's and b's, backend and replies (the management API lists them late)
        wait_for(lambda: len(live.request(Target(vhost.host), "GET", path)) == 4)
        max_connections(vhost, 0)
        try:
            assert kill_connections(vhost) == 4
            wait_for(lambda: b.get("/readyz").status == 503)
            answer = b.post(f"/v1/queues/{address}/messages",
                            {"body": {"answer": 7}, "correlation_id": "o-1"})
            assert answer.status == 202, answer.body
            big = "x" * 900_000
            nobody = address.rpartition(".")[0] + ".999999"  # a's, nobody waits there
            sent = 1
            while (answer := b.post(f"/v1/queues/{nobody}/messages", {"body": big})
                   ).status == 202:
                sent += 1
                assert sent < 100
            assert answer.status == 503, answer.body
            match = re.fullmatch(
                r"the broker is unreachable and (\d+) replies to other daemons \((\d+) bytes, "
                r"the limit is (\d+)\) wait to be sent; retry once it is back",
                answer.body["error"])
            assert match, answer.body
            assert int(match[1]) == sent and int(match[3]) == MAX_OUTBOX_BYTES
            assert int(match[2]) >= MAX_OUTBOX_BYTES
            assert value(b.metrics(), "runner_replies_outbox") == sent
        finally:
            max_connections(vhost, None)
        reply = waiting.result(timeout=60)
    assert reply.status == 200, reply.body
    assert reply.body["body"] == {"answer": 7}

    def flushed() -> str | None:
        text = b.metrics()
        return text if value(text, "runner_replies_outbox") == 0 else None

    text = wait_for(flushed, timeout_s=30)
    assert forwarded(b) == {"sent": sent, "received": 0, "unroutable": 0, "refused": 1}
    got_a = wait_for(lambda: (f := forwarded(a))["received"] == sent and f, timeout_s=30)
    assert got_a["sent"] == 0
    assert value(a.metrics(), "runner_replies_total", result="dropped") == sent - 1
    result = check_metrics(text)  # a real scrape of the remote daemon
    assert result.returncode == 0, result.stdout + result.stderr


def test_1000_waiting_requests_take_no_thread_nor_queue_each(
    start: Any, vhost: Target,
) -> None:
    """1,000 `?wait=` requests wait on daemon A at once, parked in a queue nobody
    consumes: A's threads and the vhost's reply queues stay as they were; then an HTTP
    consumer on daemon B answers each, and every reply crosses the broker to A."""
    a, b = start(), start()
    n = 1000
    threads = len(os.listdir(f"/proc/{a.proc.pid}/task")) if a.proc else 0
    assert a.post("/v1/queues/parked/messages?wait=100ms", {"body": 0}).status == 504
    b.ok("DELETE", "/v1/queues/parked/messages")

    async def ask(session: aiohttp.ClientSession, i: int) -> tuple[int, Any]:
        async with session.post(f"{a.url}/v1/queues/parked/messages?wait=30s",
                                json={"body": i, "correlation_id": f"c-{i}"}) as resp:
            return resp.status, await resp.json()

    async def answer_all(session: aiohttp.ClientSession) -> int:
        answered = 0
        while answered < n:
            async with session.post(f"{b.url}/v1/queues/parked/pull",
                                    json={"max": 1000}) as resp:
                got = (await resp.json())["messages"]

            async def reply(m: Any) -> None:
                async with session.post(f"{b.url}/v1/queues/{m['reply_to']}/messages",
                                        json={"body": {"i": m["body"]},
                                              "correlation_id": m["correlation_id"]}) as r:
                    assert r.status == 202, await r.text()

            for s in range(0, len(got), 100):
                await asyncio.gather(*(reply(m) for m in got[s:s + 100]))
            async with session.post(f"{b.url}/v1/queues/parked/ack", json={
                    "delivery_ids": [m["delivery_id"] for m in got]}) as resp:
                assert resp.status == 200, await resp.text()
            answered += len(got)
        return answered

    async def main() -> tuple[list[tuple[int, Any]], dict[str, Any]]:
        headers = {"Authorization": f"Bearer {a.token}"} if a.token else {}
        conn = aiohttp.TCPConnector(limit=n + 10)
        async with aiohttp.ClientSession(connector=conn, headers=headers) as session:
            asking = [asyncio.ensure_future(ask(session, i)) for i in range(n)]
            seen: dict[str, Any] = {}
            deadline = time.monotonic() + 30
            while value(a.metrics(), "runner_requests_waiting") != n:
                assert time.monotonic() < deadline, "the requests never all waited"
                await asyncio.sleep(0.2)
            seen["threads"] = len(os.listdir(f"/proc/{a.proc.pid}/task")) if a.proc else 0
            seen["queues"] = reply_queues(vhost)
            seen["answered"] = await answer_all(session)
            return await asyncio.gather(*asking), seen

    answers, seen = asyncio.run(main())
    assert [s for s, _ in answers] == [200] * n, [x for x in answers if x[0] != 200][:3]
    for i, (_, body) in enumerate(answers):
        assert (body["correlation_id"], body["body"]) == (f"c-{i}", {"i": i})
    assert seen["answered"] == n
    assert len(seen["queues"]) == 2  # one reply queue per daemon, not per request
    assert seen["threads"] <= threads + 8, (threads, seen["threads"])
    assert forwarded(b)["sent"] == n
    assert forwarded(a)["received"] == n
