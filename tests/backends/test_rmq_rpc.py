"""Request-reply over `runner run --backend amqp://...`: real daemon processes over the
real RabbitMQ, each test in a vhost of its own. `?wait=` answers as on the embedded
daemon (200 / 502 / 504 / 400 / 404); a reply reaches the daemon that waits even when
another daemon's handler (or HTTP consumer) answers, through that daemon's reply queue."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from runner.backends.rabbitmq.url import Target
from tests.e2e.conftest import Daemon, make_daemon, wait_for
from tests.rmq import url

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
