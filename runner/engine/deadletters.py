"""Topic dead letters: a failed record as a dead letter, and dead letters replayed.

A topic record a group failed goes to a dead-letter topic as a record, or to
a dead-letter queue as a message (`dead_letter_step`). Replaying a queue of
dead letters puts queue messages back into their queue and topic records into
the replay queue of the group that failed them (`__replay.<group>`), where
`replayed_record` turns them back into the record (`replay`).
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping
from typing import Any

from runner.broker.broker import Broker
from runner.broker.deadletter import DEATH_HEADER as DEAD_LETTER_HEADER
from runner.broker.deadletter import REPLAY_HEADER as REPLAY_COUNT_HEADER
from runner.broker.deadletter import (
    dead_letter_id,
    death_header,
    deaths_before,
    iso_utc,
    queue_origin,
    replay_target,
    topic_origin,
)
from runner.broker.message import Message
from runner.engine.contract import (
    DLQ_POSITION_PREFIX,
    REPLAY_PREFIX,
    dlq_position_group,
    dlq_settled_queue,
    marker_of,
    replay_queue_name,
)
from runner.engine.records import (
    MESSAGE_ID_HEADER,
    NULL_VALUE_HEADER,
    ORIGINAL_KEY_B64_HEADER,
    ORIGINAL_KEY_HEADER,
    ORIGINAL_TIMESTAMP_HEADER,
    RECORD_OFFSET_HEADER,
    RECORD_PARTITION_HEADER,
    RECORD_TOPIC_HEADER,
    b64,
    content_type,
    unb64,
)
from runner.engine.values import (
    OutMessage,
    OutRecord,
    QueueDelivery,
    Record,
    ReplayOutcome,
    Step,
)
from runner.errors import InvalidRequest
from runner.topology.model import ConsumerGroup, Topology

log = logging.getLogger(__name__)

__all__ = [
    "DEAD_LETTER_HEADER", "REPLAY_COUNT_HEADER", "REPLAY_NOT_A_DEAD_LETTER", "REPLAY_PREFIX",
    "REPLAY_QUEUE_FULL", "dead_letter_id", "dead_letter_step", "deaths_before", "iso_utc",
    "replay", "replay_queue_name", "replayed_record", "DLQ_POSITION_PREFIX",
    "dlq_position_group", "dlq_position_groups", "death_header",
    "queue_origin", "topic_origin", "dlq_settled_queue", "settled_marker", "marker_of",
]

REPLAY_NOT_A_DEAD_LETTER = "not a dead letter (no x-dead-letter header naming where it died)"
# + "queue 'q' is full (max_length 2, overflow reject-publish)": a dead letter its
# queue would not keep stays in the dead-letter queue (neither refused-and-dead-
# lettered nor dropped), and so do the later ones for that queue (their order)
REPLAY_QUEUE_FULL = "original {why}: kept in the dead-letter queue for a later replay"


def settled_marker(partition: int, offset: int) -> OutMessage:
    """The marker of dead letter `partition`/`offset` (see `dlq_settled_queue`)."""
    return OutMessage(body=b"", routing_key=f"{partition}:{offset}",
                      message_id=f"{partition}:{offset}")


def dlq_position_groups(topology: Topology) -> dict[str, ConsumerGroup]:
    """The hidden position groups of every dead-letter topic of `topology` (no
    handler, reset `earliest`: a fresh DLQ topic has everything pending)."""
    return {dlq_position_group(t): ConsumerGroup(dlq_position_group(t), (t,))
            for t in sorted(topology.dead_letter_topics())}


def dead_letter_step(
    group: str, record: Record, death: Mapping[str, Any], *,
    to_queue: str | None = None, to_topic: str | None = None,
) -> Step:
    """The Step that dead-letters a topic record (see `Engine.dead_letter_step`)."""
    death = dict(death)
    death.setdefault("original_group", group)
    headers = dict(record.headers)
    headers[DEAD_LETTER_HEADER] = death
    step = Step()
    if to_topic is not None:
        step.appends.append((to_topic, [OutRecord(value=record.value, key=record.key,
                                                  headers=headers)]))
        return step
    if to_queue is None:
        raise InvalidRequest(f"dead letter of group {group!r} needs to_queue or to_topic")
    if record.key is not None:
        try:
            headers[ORIGINAL_KEY_HEADER] = record.key.decode()
        except UnicodeDecodeError:
            headers[ORIGINAL_KEY_B64_HEADER] = b64(record.key)
    headers[ORIGINAL_TIMESTAMP_HEADER] = record.timestamp_ms
    if record.value is None:
        headers[NULL_VALUE_HEADER] = True
    own = headers.get(MESSAGE_ID_HEADER)
    base = str(own) if own is not None else f"{record.topic}/{record.partition}/{record.offset}"
    mid = dead_letter_id(group, base, death.get("death_count", 1))
    step.queue_puts.append((to_queue, [OutMessage(
        body=record.value or b"", routing_key=record.topic, headers=headers,
        message_id=mid, content_type=content_type(record.value))]))
    return step


def replayed_record(delivery: QueueDelivery) -> Record:
    """The topic record carried by a delivery from a replay queue."""
    h = dict(delivery.headers)
    topic = str(h.pop(RECORD_TOPIC_HEADER, ""))
    partition = int(h.pop(RECORD_PARTITION_HEADER, -1) or 0)
    offset = int(h.pop(RECORD_OFFSET_HEADER, -1) or 0)
    key_text = h.pop(ORIGINAL_KEY_HEADER, None)
    key_b64 = h.pop(ORIGINAL_KEY_B64_HEADER, None)
    key = (str(key_text).encode() if key_text is not None
           else unb64(str(key_b64)) if key_b64 is not None else None)
    ts = h.pop(ORIGINAL_TIMESTAMP_HEADER, None)
    ts_ms = int(ts) if isinstance(ts, int) else delivery.timestamp_ms
    value = None if h.pop(NULL_VALUE_HEADER, None) is True else delivery.body
    return Record(topic, partition, offset, ts_ms, key, value, h)


def replay(
    broker: Broker, queue: str, max_messages: int | None = None, *,
    only: Collection[int] | None = None,
) -> ReplayOutcome:
    """Dead letters in `queue` back to where they died (see `Engine.replay_detail`)."""
    info = broker.queue_info(queue)
    reasons: dict[str, int] = {}

    def skip(reason: str, n: int = 1) -> None:
        reasons[reason] = reasons.get(reason, 0) + n

    targets = 0
    gone_queues = 0
    look = info.ready if max_messages is None or only is not None else min(
        info.ready, max_messages + 1000)
    for uid, d in broker.peek_ids(queue, look) if look else ():
        if only is not None and uid not in only:
            continue
        target = replay_target(d.headers)
        if target is None:
            skip(REPLAY_NOT_A_DEAD_LETTER)
            continue
        if max_messages is not None and targets >= max_messages:
            break
        targets += 1
        if target.queue is not None and target.queue not in broker.queues:
            skip(f"original queue '{target.queue}' no longer exists")
            gone_queues += 1
    result = broker.replay(queue, max_messages, only=only)
    placed = 0
    kept = 0
    for letter in result.topic_letters:
        group = letter.death.get("original_group")
        target_q = replay_queue_name(str(group)) if group else None
        msg = letter.message
        if target_q is not None and target_q in broker.queues:
            headers = dict(msg.headers)
            headers[RECORD_TOPIC_HEADER] = letter.target.topic
            headers[RECORD_PARTITION_HEADER] = letter.target.partition
            headers[RECORD_OFFSET_HEADER] = letter.target.offset
            broker.publish_to_queue(target_q, [Message(
                msg.body, msg.routing_key, headers, msg.priority, None, None,
                msg.content_type)])
            placed += 1
            continue
        log.warning("replay from %s: no group %r to return a %s record to; kept",
                    queue, group, letter.target.topic)
        skip(f"consumer group '{group}' no longer exists" if group
             else "a topic record without its consumer group")
        kept += 1
        headers = dict(msg.headers)
        headers.pop(REPLAY_COUNT_HEADER, None)
        headers[DEAD_LETTER_HEADER] = dict(letter.death)
        broker.publish_to_queue(queue, [Message(
            msg.body, msg.routing_key, headers, msg.priority, None, None,
            msg.content_type)])
    for why, n in result.refused.items():
        skip(REPLAY_QUEUE_FULL.format(why=why), n)
    return ReplayOutcome(result.replayed + placed, sum(reasons.values()), reasons,
                         sum(result.refused.values()))
