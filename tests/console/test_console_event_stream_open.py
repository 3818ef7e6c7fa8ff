"""The console's event stream sends each snapshot once, also one sampled while the
stream was opening: it is queued for the new listener and is also the stream's
first snapshot (seen over RabbitMQ: two snapshots with the same time in a row)."""

from __future__ import annotations

import asyncio

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from runner.daemon.console.routes import Console


class RacingFeed:
    """A feed whose sample lands while a stream opens: it is published to the
    listeners registered so far and becomes the latest snapshot at once."""

    def __init__(self) -> None:
        self.listeners: list[asyncio.Queue[bytes | None]] = []

    def listen(self) -> asyncio.Queue[bytes | None]:
        queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.listeners.append(queue)
        return queue

    def forget(self, queue: asyncio.Queue[bytes | None]) -> None:
        self.listeners.remove(queue)

    def publish(self, t: int) -> bytes:
        data = b'{"t":%d}' % t
        for queue in self.listeners:
            queue.put_nowait(b"event: snapshot\ndata: " + data + b"\n\n")
        return data

    async def encoded(self) -> bytes:
        data = self.publish(1)  # sampled just now: queued for this stream too
        asyncio.get_running_loop().call_later(0.05, self.publish, 2)
        asyncio.get_running_loop().call_later(0.1, self.publish, 3)
        return data


def test_a_snapshot_sampled_while_the_stream_opens_is_sent_once() -> None:
    async def go() -> list[bytes]:
        console = Console.__new__(Console)
        console.feed = RacingFeed()  # type: ignore[assignment]
        app = web.Application()
        app.router.add_get("/events", console.events)
        async with TestClient(TestServer(app)) as client:
            resp = await client.get("/events")
            assert resp.headers["Content-Type"] == "text/event-stream"
            lines: list[bytes] = []
            while len([x for x in lines if x.startswith(b"data: ")]) < 3:
                lines.append((await asyncio.wait_for(resp.content.readline(), 5)).rstrip(b"\n"))
            resp.close()
            return [x.removeprefix(b"data: ") for x in lines if x.startswith(b"data: ")]

    assert asyncio.run(go()) == [b'{"t":1}', b'{"t":2}', b'{"t":3}']
