"""What the console changes: replay and purge dead letters, reset a group's offsets.

Every change is the backend's own operation through the engine contract
(`replay`, `purge_page`, `seek`, and the DLQ tools of `runner.daemon.dlq_ops`);
this module only reads the console's request, checks it, and says what it did.
An offset reset is planned first (`plan_reset`): the same plan is what the dry
run shows and what the apply step carries out.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from runner.daemon import codec, dlq_ops, dlq_records
from runner.daemon.dlq_ops import DlqBackend
from runner.engine.contract import Backend, TopicPartition
from runner.errors import NotFound
from runner.topology.model import Topology

RESET_TARGETS = ("earliest", "latest", "offset", "timestamp")
SELECTION_FIELDS = frozenset({"ids", "records", "all", "confirm"})
RESET_FIELDS = frozenset({"topic", "partition", "to", "offset", "timestamp", "dry_run"})

T = TypeVar("T")


class OffLoop(Protocol):
    """Runs backend calls where the daemon's backend may be called (`ConsoleHost.off_loop`)."""

    def __call__(self, read: Callable[[], T], /) -> Awaitable[T]: ...


async def _inline(read: Callable[[], T], /) -> T:
    return read()


@dataclass(frozen=True, slots=True)
class Selection:
    """Which messages of a queue an action touches: `ids`, or all when None."""

    ids: frozenset[int] | None


def selection(body: dict[str, Any]) -> Selection:
    """`{"ids": [...]}` or `{"all": true}`, exactly one."""
    ids = body.get("ids")
    every = codec.bool_field(body, "all", default=False)
    if (ids is None) == (not every):
        raise codec.BadInput("give either 'ids' (a list of dead-letter ids) or 'all': true")
    if ids is None:
        return Selection(None)
    if not isinstance(ids, list) or not ids:
        raise codec.BadInput("'ids' must be a non-empty list of dead-letter ids")
    return Selection(frozenset(codec.check_int(v, f"ids[{i}]") for i, v in enumerate(ids)))


def _queue(topology: Topology, name: str) -> None:
    if name not in topology.queue_map():
        raise NotFound(f"queue '{name}' not found")


def _topic(topology: Topology, name: str, body: dict[str, Any]) -> bool:
    """True for a dead-letter topic: its letters are chosen by `records` (partition
    and offset, `dlq_records`) or `all`; 400 for a topic that is no DLQ, `ids` on
    one, or `records` on a queue."""
    if name not in topology.topic_map() or name in topology.queue_map():
        if body.get("records") is not None:
            raise codec.BadInput(f"'records' chooses dead letters of a dead-letter topic; "
                                 f"give 'ids' for queue '{name}'")
        return False
    if name not in topology.dead_letter_topics():
        raise codec.BadInput(f"topic '{name}' is not a dead-letter topic (no dlq_policy has "
                             "it as dead_letter_queue)")
    if body.get("ids") is not None:
        raise codec.BadInput(f"'{name}' is a dead-letter topic: choose its letters with "
                             "'records' (partition and offset) or 'all': true")
    return True


def _topic_records(body: dict[str, Any], topology: Topology, name: str) -> dlq_records.Chosen:
    """The `records` of a topic selection (exclusive with `all`)."""
    if codec.bool_field(body, "all", default=False):
        raise codec.BadInput("give either 'records' (partition and offset of each) or "
                             "'all': true")
    return dlq_records.chosen_records(body, topology, name)


def replay(
    backend: DlqBackend, topology: Topology, name: str, body: dict[str, Any],
) -> dict[str, Any]:
    codec.check_fields(body, SELECTION_FIELDS)
    topic = _topic(topology, name, body)
    if topic and body.get("records") is not None:
        out = dlq_ops.replay_records(backend, topology, name,
                                     _topic_records(body, topology, name))
        return {"replayed": out["replayed"], "skipped": out["skipped"],
                "skipped_reasons": out["skipped_reasons"]}
    chosen = selection(body)
    if topic:
        replayed = 0
        while True:  # every pending letter, a page at a time
            out = dlq_ops.replay_topic(backend, topology, name, dlq_ops.PAGE)
            replayed += out["replayed"]
            if not out["replayed"] or out["remaining"] <= out["skipped"]:
                return {"replayed": replayed, "skipped": out["skipped"],
                        "skipped_reasons": out["skipped_reasons"]}
    _queue(topology, name)
    outcome = backend.replay(name, None, only=chosen.ids)
    return {"replayed": outcome.replayed, "skipped": outcome.skipped,
            "skipped_reasons": dict(outcome.reasons)}


PURGE_PAGE = 10_000  # messages a purge step; the loop serves others between steps


async def purge(
    backend: DlqBackend, topology: Topology, name: str, body: dict[str, Any], *,
    off_loop: OffLoop = _inline,
) -> dict[str, Any]:
    codec.check_fields(body, SELECTION_FIELDS)
    topic = _topic(topology, name, body)
    records = (_topic_records(body, topology, name)
               if topic and body.get("records") is not None else None)
    chosen = selection(body) if records is None else Selection(None)
    if not topic:
        _queue(topology, name)
    if body.get("confirm") != name:
        raise codec.BadInput(
            f"purging deletes messages for good: confirm with \"confirm\": \"{name}\""
        )
    if records is not None:
        chosen_records = records
        out = await off_loop(lambda: dlq_ops.purge_records(backend, name, chosen_records))
        return {"purged": out["purged"]}
    if topic:
        return {"purged": await off_loop(lambda: dlq_ops.purge_topic(backend, name))}
    total = 0
    while done := await off_loop(lambda: backend.purge_page(name, chosen.ids, PURGE_PAGE)):
        total += done
        await asyncio.sleep(0)
    return {"purged": total}


@dataclass(frozen=True, slots=True)
class ResetRow:
    topic: str
    partition: int
    current: int
    target: int
    log_start_offset: int
    log_end_offset: int

    def as_json(self) -> dict[str, Any]:
        return {
            "topic": self.topic, "partition": self.partition, "current": self.current,
            "target": self.target, "log_start_offset": self.log_start_offset,
            "log_end_offset": self.log_end_offset,
            "lag_before": max(0, self.log_end_offset - self.current),
            "lag_after": max(0, self.log_end_offset - self.target),
        }


def plan_reset(
    backend: Backend, topology: Topology, group: str, body: dict[str, Any]
) -> list[ResetRow]:
    """Where each partition of `group` (or of one topic / partition) would move."""
    codec.check_fields(body, RESET_FIELDS)
    spec = topology.group_map().get(group)
    if spec is None:
        raise NotFound(f"consumer group '{group}' not found")
    topic = body.get("topic")
    if topic is not None and topic not in spec.topics:
        raise NotFound(f"consumer group '{group}' does not read topic {topic!r}")
    partition = None
    if body.get("partition") is not None:
        partition = codec.int_field(body, "partition")
    to = body.get("to")
    if to not in RESET_TARGETS:
        raise codec.BadInput(f"'to' must be one of {', '.join(RESET_TARGETS)}, got {to!r}")
    offset = codec.int_field(body, "offset") if to == "offset" else None
    stamp = codec.int_field(body, "timestamp") if to == "timestamp" else None
    rows = []
    for p in backend.group_info(group).partitions:
        if (topic is not None and p.topic != topic) or (
            partition is not None and p.partition != partition
        ):
            continue
        info = next(i for i in backend.partitions(p.topic) if i.partition == p.partition)
        start, end = info.log_start_offset, info.log_end_offset
        if to == "earliest":
            target = start
        elif to == "latest":
            target = end
        elif offset is not None:
            target = min(max(offset, start), end)  # Kafka's tool clamps into the log
        else:
            assert stamp is not None
            target = backend.offset_for_time(p.topic, p.partition, stamp)
        rows.append(ResetRow(p.topic, p.partition, p.position, target, start, end))
    if not rows:
        where = f"topic {topic!r} " if topic else ""
        raise NotFound(f"consumer group '{group}' has no {where}partition {partition}")
    return rows


def reset(
    backend: Backend, topology: Topology, group: str, body: dict[str, Any],
) -> dict[str, Any]:
    dry_run = codec.bool_field(body, "dry_run", default=True)
    rows = plan_reset(backend, topology, group, body)
    if not dry_run:
        for row in rows:
            backend.seek(group, TopicPartition(row.topic, row.partition), offset=row.target)
    return {"group": group, "dry_run": dry_run, "partitions": [r.as_json() for r in rows]}
