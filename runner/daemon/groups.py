"""Resetting a consumer group's offsets, as `kafka-consumer-groups --reset-offsets` does.

`POST /v1/groups/{group}/reset` with `{"to": "earliest" | "latest" | "offset" |
"timestamp" | "shift", "offset"?, "timestamp"?, "by"?, "topic"?, "dry_run"?}`
plans the new position of every partition of the group (or of one of its
topics), clamped to the log like Kafka (a note says so), and, unless
`dry_run`, seeks the group there. The answer lists each partition's old and
new position.
"""

from __future__ import annotations

from typing import Any

from runner.daemon import codec
from runner.engine.contract import Backend, TopicPartition
from runner.errors import NotFound
from runner.topology.model import ConsumerGroup

RESET_FIELDS = frozenset({"to", "offset", "timestamp", "by", "topic", "dry_run"})
RESET_TARGETS = ("earliest", "latest", "offset", "timestamp", "shift")
_NEEDS = {"offset": "offset", "timestamp": "timestamp", "shift": "by"}


def reset(backend: Backend, group: ConsumerGroup, body: dict[str, Any]) -> dict[str, Any]:
    """Plan (and unless `dry_run` apply) a reset of `group`; the answer document."""
    codec.check_fields(body, RESET_FIELDS)
    to = codec.str_field(body, "to")
    if to not in RESET_TARGETS:
        raise codec.BadInput(f"'to' must be one of {', '.join(RESET_TARGETS)}, got {to!r}")
    for target, field in _NEEDS.items():
        if field in body and to != target:
            raise codec.BadInput(f"'{field}' goes with \"to\": \"{target}\", not \"{to}\"")
    value = 0
    if to in _NEEDS:
        low = -codec.MAX_INT if to == "shift" else 0
        value = codec.int_field(body, _NEEDS[to], low=low)
    dry_run = codec.bool_field(body, "dry_run", default=False)
    topics = list(group.topics)
    if body.get("topic") is not None:
        topic = codec.str_field(body, "topic")
        if topic not in topics:
            raise NotFound(f"consumer group '{group.name}' does not read topic '{topic}' "
                           f"(it reads {', '.join(topics)})")
        topics = [topic]
    info = {(p.topic, p.partition): p for p in backend.group_info(group.name).partitions}
    out = []
    for topic in topics:
        for part in backend.partitions(topic):
            old = info[(topic, part.partition)].position
            start, end = part.log_start_offset, part.log_end_offset
            if to == "earliest":
                wanted = start
            elif to == "latest":
                wanted = end
            elif to == "offset":
                wanted = value
            elif to == "shift":
                wanted = old + value
            else:
                wanted = backend.offset_for_time(topic, part.partition, value)
            new = min(max(wanted, start), end)
            row: dict[str, Any] = {
                "topic": topic, "partition": part.partition, "old": old, "new": new,
                "log_start_offset": start, "log_end_offset": end,
            }
            if new != wanted:
                side = "above the log end" if wanted > end else "below the log start"
                row["note"] = f"{wanted} is {side}; set to {new}"
            out.append(row)
    if not dry_run:
        for row in out:
            backend.seek(group.name, TopicPartition(row["topic"], row["partition"]),
                        offset=row["new"])
    return {"group": group.name, "dry_run": dry_run, "partitions": out}
