"""The shared idempotency window's own logic (runner.backends.rabbitmq.keys), without a
broker: what a tail delivers becomes keys for the window, a chunk's earlier records
are dropped, only this window's markers end a catch-up. The broker side is
tests/backends/test_rmq_idempotency.py."""

from __future__ import annotations

import asyncio
import datetime
from typing import Any

import pika

from runner.backends.rabbitmq.keys import MARKER_HEADER, TIMESTAMP_HEADER, SharedWindow
from runner.clock import ManualClock
from runner.engine.contract import Ticket


class Written:
    def __init__(self) -> None:
        self.records: list[tuple[str, bytes, Any]] = []

    def __call__(self, stream: str, body: bytes, props: pika.BasicProperties) -> Ticket:
        self.records.append((stream, body, props))
        return Ticket(len(self.records))


def delivery(offset: int, headers: dict[str, Any]) -> Any:
    return pika.BasicProperties(headers={"x-stream-offset": offset, **headers})


def test_keys_read_from_the_stream_are_in_the_window_until_it_passes() -> None:
    clock = ManualClock()
    w = SharedWindow("c", 60.0, clock=clock, write=Written(), token="me")
    start = w.attach_offset()
    assert start == datetime.datetime.fromtimestamp(int(clock.time() - 60), tz=datetime.UTC)
    recorded_ms = int((clock.time() - 50) * 1000)  # by another daemon, 50 s ago
    w.delivered(delivery(0, {TIMESTAMP_HEADER: recorded_ms}), b"k-old")
    w.delivered(delivery(1, {TIMESTAMP_HEADER: int(clock.time() * 1000)}), b"k-new")
    w.delivered(delivery(2, {TIMESTAMP_HEADER: int((clock.time() - 61) * 1000)}), b"k-gone")
    assert (w.seen("k-old"), w.seen("k-new"), w.seen("k-gone")) == (True, True, False)
    clock.advance(11)
    assert (w.seen("k-old"), w.seen("k-new")) == (False, True)
    assert w.next_offset == 3


def test_recording_a_key_shows_it_here_at_once_and_writes_it_to_the_stream() -> None:
    clock = ManualClock()
    written = Written()
    w = SharedWindow("c", 60.0, clock=clock, write=written, token="me")
    assert w.record("k1") == Ticket(1)
    assert w.seen("k1")
    ((stream, body, props),) = written.records
    assert (stream, body, props.delivery_mode) == ("__runner.idem.c", b"k1", 2)
    assert props.headers == {TIMESTAMP_HEADER: int(clock.time() * 1000)}


def test_a_reattached_tail_drops_the_records_of_its_chunk_before_where_it_stopped() -> None:
    clock = ManualClock()
    w = SharedWindow("c", 60.0, clock=clock, write=Written(), token="me")
    w.attach_offset()
    now_ms = int(clock.time() * 1000)
    w.delivered(delivery(5, {TIMESTAMP_HEADER: now_ms}), b"a")
    assert w.attach_offset() == 6
    w.delivered(delivery(4, {TIMESTAMP_HEADER: now_ms}), b"before")
    w.delivered(delivery(9, {TIMESTAMP_HEADER: now_ms}), b"after-a-gap")
    assert (w.seen("before"), w.seen("after-a-gap"), w.next_offset) == (False, True, 10)


def test_a_catch_up_ends_when_the_tail_delivers_its_own_marker() -> None:
    clock = ManualClock()
    written = Written()
    w = SharedWindow("c", 60.0, clock=clock, write=written, token="me")
    w.attach_offset()

    async def scenario() -> list[str]:
        done: list[str] = []
        task = asyncio.create_task(w.catch_up())
        task.add_done_callback(lambda _: done.append("caught up"))
        await asyncio.sleep(0)
        ((_, body, props),) = written.records
        assert (body, props.headers) == (b"", {MARKER_HEADER: "me:1"})
        w.delivered(delivery(0, {MARKER_HEADER: "other:1"}), b"")  # another daemon's
        w.delivered(delivery(1, {TIMESTAMP_HEADER: int(clock.time() * 1000)}), b"k")
        await asyncio.sleep(0.01)
        assert done == [] and w.seen("k")
        w.delivered(delivery(2, {MARKER_HEADER: b"me:1"}), b"")
        await asyncio.wait_for(task, 5)
        return done

    assert asyncio.run(scenario()) == ["caught up"]
