"""Request-reply in the pipeline on a real Engine: a message with `x-reply-to` gets
its handler's return value as the reply (a queue, `exchange/routing_key`, or a request
waiting in memory), with its correlation id, atomically with the ack under
exactly-once; a handler that fails for good sends an error reply besides the dead
letter; `ctx.request` calls another handler from an async handler."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import pytest

from runner.pipeline.replies import (
    CORRELATION_HEADER,
    REPLY_ERROR_HEADER,
    REPLY_TO_HEADER,
    ReplyTimeout,
)
from runner.topology.model import (
    Binding,
    Consumer,
    ConsumerGroup,
    Delivery,
    DlqPolicy,
    Exchange,
    ExchangeType,
    Queue,
    Topic,
)
from tests.pipeline import pipeline_handlers as ph
from tests.pipeline.harness import H, bodies, msg, rec, running, topology, wait_until

NO_RETRY = DlqPolicy("once", max_retries=0, dead_letter_queue="dlq")


def _topo(handler: str = "double", delivery: Delivery = Delivery.AT_LEAST_ONCE,
          **kw: Any) -> Any:
    return topology(
        queues=(Queue("work"), Queue("replies"), Queue("dlq"), Queue("routed-replies")),
        exchanges=(Exchange("rpc", ExchangeType.DIRECT),),
        bindings=(Binding("rpc", queue="work", routing_key="double"),
                  Binding("rpc", queue="routed-replies", routing_key="answer")),
        policies=(NO_RETRY,),
        consumers=(Consumer("c", "work", f"{H}:{handler}", delivery=delivery,
                            dlq_policy="once"),),
        **kw,
    )


def _request(body: Any, reply_to: str, cid: str | None = "c-1") -> Any:
    headers = {REPLY_TO_HEADER: reply_to}
    if cid is not None:
        headers[CORRELATION_HEADER] = cid
    return msg(body, headers=headers)


@pytest.mark.parametrize("delivery", list(Delivery))
@pytest.mark.parametrize("handler", ["double", "async_double"])
def test_the_return_value_is_the_reply_with_the_correlation_id_in_every_delivery_mode(
    tmp_path: Path, delivery: Delivery, handler: str,
) -> None:
    async def go() -> None:
        async with running(_topo(handler, delivery), tmp_path) as r:
            r.engine.publish_to_queue("work", [_request({"n": 21}, "replies")])
            r.pipeline.notify()
            await wait_until(lambda: r.engine.queue_info("replies").ready == 1)
            (reply,) = r.engine.peek("replies", 10)
            assert orjson.loads(reply.body) == {"doubled": 42}
            assert reply.content_type == "application/json"
            assert reply.headers == {CORRELATION_HEADER: "c-1"}
            assert reply.routing_key == "replies"
            info = r.engine.queue_info("work")
            assert (info.ready, info.unacked) == (0, 0)

    asyncio.run(go())


def test_a_reply_to_exchange_slash_key_is_routed_and_bytes_go_as_they_are(
    tmp_path: Path,
) -> None:
    async def go() -> None:
        async with running(_topo("raw_reply"), tmp_path) as r:
            r.engine.publish_to_queue("work", [_request({}, "rpc/answer", cid=None)])
            r.pipeline.notify()
            await wait_until(lambda: r.engine.queue_info("routed-replies").ready == 1)
            (reply,) = r.engine.peek("routed-replies", 10)
            assert (reply.body, reply.content_type, dict(reply.headers)) == (b"\x00raw", None, {})
            assert (reply.exchange, reply.routing_key) == ("rpc", "answer")

    asyncio.run(go())


def test_a_message_without_reply_to_sends_no_reply(tmp_path: Path) -> None:
    async def go() -> None:
        async with running(_topo(), tmp_path) as r:
            r.publish("work", {"n": 1})
            await wait_until(lambda: r.pipeline.stats().consumers["c"].succeeded == 1)
            assert r.engine.queue_info("replies").ready == 0
            assert r.engine.queue_info("routed-replies").ready == 0

    asyncio.run(go())


@pytest.mark.parametrize("delivery", list(Delivery))
def test_a_handler_that_fails_for_good_sends_an_error_reply_besides_the_dead_letter(
    tmp_path: Path, delivery: Delivery,
) -> None:
    async def go() -> None:
        async with running(_topo(delivery=delivery), tmp_path) as r:
            r.engine.publish_to_queue("work", [_request({"n": 3, "fail": True}, "replies")])
            r.pipeline.notify()
            await wait_until(lambda: r.engine.queue_info("replies").ready == 1)
            (reply,) = r.engine.peek("replies", 10)
            assert orjson.loads(reply.body) == {"error": {
                "type": "tests.pipeline.pipeline_handlers.ValidationError",
                "message": "cannot double 3"}}
            assert reply.headers == {CORRELATION_HEADER: "c-1", REPLY_ERROR_HEADER: True}
            await wait_until(lambda: r.engine.queue_info("dlq").ready == 1)

    asyncio.run(go())


def test_a_return_value_json_cannot_encode_fails_the_call_and_the_error_is_the_reply(
    tmp_path: Path,
) -> None:
    async def go() -> None:
        async with running(_topo("unencodable_reply"), tmp_path) as r:
            r.engine.publish_to_queue("work", [_request({}, "replies")])
            r.pipeline.notify()
            await wait_until(lambda: r.engine.queue_info("replies").ready == 1)
            (reply,) = r.engine.peek("replies", 10)
            error = orjson.loads(reply.body)["error"]
            assert error["type"] == "TypeError"
            assert error["message"].startswith("cannot encode set as JSON")
            assert r.engine.queue_info("dlq").ready == 1

    asyncio.run(go())


@pytest.mark.parametrize("delivery", list(Delivery))
def test_a_group_handler_replies_to_a_record_that_asks(
    tmp_path: Path, delivery: Delivery,
) -> None:
    topo = _topo(topics=(Topic("asks", partitions=1),), groups=(ConsumerGroup(
        "g", ("asks",), handler=f"{H}:double", delivery=delivery, dlq_policy="once"),))

    async def go() -> None:
        async with running(topo, tmp_path) as r:
            headers = {REPLY_TO_HEADER: "replies", CORRELATION_HEADER: "r-9"}
            r.engine.append("asks", [rec({"n": 5}, headers=headers),
                                     rec({"n": 6, "fail": True}, headers=headers)])
            r.pipeline.notify()
            await wait_until(lambda: r.engine.queue_info("replies").ready == 2)
            first, second = r.engine.peek("replies", 10)
            assert orjson.loads(first.body) == {"doubled": 10}
            assert orjson.loads(second.body)["error"]["message"] == "cannot double 6"
            assert second.headers[REPLY_ERROR_HEADER] is True
            assert first.headers[CORRELATION_HEADER] == second.headers[CORRELATION_HEADER] == "r-9"

    asyncio.run(go())


def test_a_private_reply_goes_to_the_waiting_request_in_memory_and_nowhere_else(
    tmp_path: Path,
) -> None:
    async def go() -> None:
        async with running(_topo(), tmp_path) as r:
            replies = r.pipeline.replies
            waiting = replies.open("mine")
            try:
                r.engine.publish_to_queue("work", [_request({"n": 4}, waiting.address, "mine")])
                r.pipeline.notify()
                reply = await replies.wait(waiting, 5.0)
            finally:
                replies.close(waiting)
            assert orjson.loads(reply.body) == {"doubled": 8}
            assert reply.correlation_id == "mine" and not reply.is_error
            assert len(replies) == 0 and replies.delivered == 1
            assert r.engine.queue_info("replies").ready == 0
            # a reply nobody waits for any more is dropped and counted
            r.engine.publish_to_queue("work", [_request({"n": 4}, waiting.address)])
            r.pipeline.notify()
            await wait_until(lambda: replies.dropped == 1)

    asyncio.run(go())


def test_a_request_with_nobody_replying_times_out(tmp_path: Path) -> None:
    async def go() -> None:
        async with running(_topo(), tmp_path) as r:
            waiting = r.pipeline.replies.open()
            try:
                with pytest.raises(ReplyTimeout, match=r"no reply within 0.05s"):
                    await r.pipeline.replies.wait(waiting, 0.05)
            finally:
                r.pipeline.replies.close(waiting)
            assert len(r.pipeline.replies) == 0 and r.pipeline.replies.timed_out == 1

    asyncio.run(go())


def _callers(**kw: Any) -> Any:
    return topology(
        queues=(Queue("work"), Queue("callers"), Queue("dlq")),
        exchanges=(Exchange("rpc", ExchangeType.DIRECT),),
        bindings=(Binding("rpc", queue="work", routing_key="double"),),
        policies=(NO_RETRY,),
        consumers=(Consumer("c", "work", f"{H}:double", dlq_policy="once"),
                   Consumer("caller", "callers", f"{H}:asks_double", dlq_policy="once"),),
        **kw,
    )


def test_ctx_request_calls_another_handler_and_gets_its_reply_or_its_error(
    tmp_path: Path,
) -> None:
    async def go() -> list[Any]:
        async with running(_callers(), tmp_path) as r:
            r.publish("callers", {"n": 7}, {"n": 8, "fail": True})
            await wait_until(lambda: r.engine.queue_info("outbox").ready == 2)
            return sorted(bodies(r.engine, "outbox"), key=lambda b: b["asked"])

    assert asyncio.run(go()) == [
        {"asked": 7, "got": {"doubled": 14}},
        {"asked": 8, "got": {"raised": "ReplyError", "text":
                             "tests.pipeline.pipeline_handlers.ValidationError: cannot double 8"}},
    ]


def test_ctx_request_times_out_and_refuses_a_request_routed_nowhere(tmp_path: Path) -> None:
    topo = _callers()
    # nobody answers "double" any more: the request is routed to a queue without a consumer
    topo = topology(
        queues=(Queue("work"), Queue("callers"), Queue("dlq")),
        exchanges=(Exchange("rpc", ExchangeType.DIRECT),),
        bindings=(Binding("rpc", queue="work", routing_key="double"),),
        policies=(NO_RETRY,),
        consumers=(topo.consumer_map()["caller"],),
    )

    async def go() -> list[Any]:
        async with running(topo, tmp_path) as r:
            r.publish("callers", {"n": 1, "timeout": 0.1})
            await wait_until(lambda: r.engine.queue_info("outbox").ready == 1)
            r.engine.purge("work")
            assert len(r.pipeline.replies) == 0  # the waiting entry is gone after the timeout
            return bodies(r.engine, "outbox")

    assert asyncio.run(go()) == [
        {"asked": 1, "got": {"raised": "ReplyTimeout", "text": "no reply within 0.1s"}}]


def test_ctx_request_in_a_sync_handler_says_it_is_for_async_handlers(tmp_path: Path) -> None:
    topo = topology(queues=(Queue("callers"),),
                    consumers=(Consumer("caller", "callers", f"{H}:sync_asks"),))

    async def go() -> None:
        async with running(topo, tmp_path) as r:
            r.publish("callers", {"n": 1})
            await wait_until(lambda: r.pipeline.stats().consumers["caller"].succeeded == 1)

    asyncio.run(go())
    assert ph.SEEN == [{"raised": (
        "ctx.request is for async handlers (async def): a sync handler runs in a pool "
        "thread, and waiting there for a reply would hold the thread (and could starve the "
        "handlers that answer); publish with ctx.publish and a reply_to instead, or make "
        "the handler async")}]
