"""DLQ tools over HTTP beyond the replay to the origin: purge, and replay to another place.

`purge` takes every ready message out of a queue (its unacked ones stay with
their consumers, as in RabbitMQ); `replay_to` moves up to `n` messages from a
dead-letter queue into another queue or topic, without their `x-dead-letter`
header and with `x-replay-count` + 1. Both go through the engine's durable
operations: a purge acks what it pulls; a move is one exactly-once step
(the acks and the puts together), so a crash never loses or doubles a message.
"""

from __future__ import annotations

import asyncio
from typing import Any

from runner.engine import (
    DEAD_LETTER_HEADER,
    ORIGINAL_KEY_HEADER,
    REPLAY_COUNT_HEADER,
    Engine,
    OutMessage,
    OutRecord,
    QueueDelivery,
    Step,
)
from runner.errors import InvalidRequest, NotFound
from runner.topology.model import Topology

PAGE = 10_000  # messages taken per engine call
LEASE_S = 60.0
TOOL_CONSUMER = "runner-dlq-tool"


async def purge(engine: Engine, queue: str) -> int:
    """Remove the ready messages of `queue`; how many went. A page of PAGE messages
    an engine call, the event loop serving other requests between pages (a purge
    of millions held the loop for its whole duration)."""
    total = 0
    while True:
        got = engine.pull(queue, PAGE, lease_s=LEASE_S, consumer_id=TOOL_CONSUMER)
        if not got:
            return total
        engine.ack(queue, [d.delivery_id for d in got])
        total += len(got)
        await asyncio.sleep(0)


def _headers(d: QueueDelivery) -> dict[str, Any]:
    headers = dict(d.headers)
    headers.pop(DEAD_LETTER_HEADER, None)
    count = headers.get(REPLAY_COUNT_HEADER, 0)
    headers[REPLAY_COUNT_HEADER] = (count if isinstance(count, int) else 0) + 1
    return headers


def replay_to(engine: Engine, topology: Topology, source: str, dest: str, n: int) -> int:
    """Move up to `n` ready messages of queue `source` into queue or topic `dest`."""
    is_queue = dest in topology.queue_map()
    if not is_queue and dest not in topology.topic_map():
        raise NotFound(f"queue '{dest}' not found")
    if dest == source:
        raise InvalidRequest(f"'to' names the queue being replayed ('{source}'); give "
                             "another queue or a topic")
    got = engine.pull(source, n, lease_s=LEASE_S, consumer_id=TOOL_CONSUMER)
    if not got:
        return 0
    step = Step(acks=[(source, d.delivery_id) for d in got])
    if is_queue:
        step.queue_puts.append((dest, [
            OutMessage(body=d.body, routing_key=d.routing_key, headers=_headers(d),
                       priority=d.priority, content_type=d.content_type)
            for d in got
        ]))
    else:
        records = []
        for d in got:
            headers = _headers(d)
            key = headers.pop(ORIGINAL_KEY_HEADER, None)
            records.append(OutRecord(value=d.body, key=None if key is None else str(key).encode(),
                                     headers=headers))
        step.appends.append((dest, records))
    try:
        engine.commit_step(step)
    except Exception:
        engine.nack(source, [d.delivery_id for d in got], requeue=True)  # all stay
        raise
    return len(got)
