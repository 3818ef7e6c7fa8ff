"""Engine.replay_detail: how many dead letters went back, how many stayed and why."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from runner.engine import Engine, FsyncPolicy, OutMessage, Record, ReplayOutcome
from runner.topology.model import ConsumerGroup, Overflow, Queue, Topic, Topology


def _death(queue: str) -> dict[str, Any]:
    return {"x-dead-letter": {"reason": "rejected", "original_queue": queue,
                              "original_exchange": "", "original_routing_key": queue,
                              "death_count": 1}}


def _topo(*, with_old: bool) -> Topology:
    queues = [("dlq", Queue("dlq")), ("full", Queue("full", max_length=1,
                                                   overflow=Overflow.REJECT_PUBLISH)),
              ("work", Queue("work"))]
    groups: list[tuple[str, ConsumerGroup]] = []
    if with_old:
        queues.append(("old", Queue("old")))
        groups.append(("oldg", ConsumerGroup("oldg", ("ev",), handler="m:f")))
    return Topology(topics=(("ev", Topic("ev")),), queues=tuple(sorted(queues)),
                    consumer_groups=tuple(groups))


def test_replay_detail_counts_what_stayed_by_reason(tmp_path: Path) -> None:
    e = Engine.open(_topo(with_old=True), tmp_path, fsync=FsyncPolicy.NEVER)
    try:
        rec = Record("ev", 0, 4, 1, None, b"{}", {})
        e.dead_letter_record("oldg", rec, {"reason": "handler_error", "original_topic": "ev",
                                           "original_partition": 0, "original_offset": 4,
                                           "death_count": 1}, to_queue="dlq")
        e.publish_to_queue("full", [OutMessage(b"filler")])
        e.publish_to_queue("dlq", [
            OutMessage(b"a", headers=_death("work")),
            OutMessage(b"b", headers=_death("old")),
            OutMessage(b"c", headers={"plain": True}),
            OutMessage(b"d", headers=_death("full")),
            OutMessage(b"e", headers=_death("work")),
        ])
        e.apply(_topo(with_old=False), force=True)  # queue `old` and group `oldg` go
        out = e.replay_detail("dlq")
        # the full queue keeps only its own letter (`d`) back: `e` goes to `work`
        assert out == ReplayOutcome(2, 4, {
            "consumer group 'oldg' no longer exists": 1,
            "original queue 'old' no longer exists": 1,
            "not a dead letter (no x-dead-letter header naming where it died)": 1,
            "original queue 'full' is full (max_length 1, overflow reject-publish): kept in "
            "the dead-letter queue for a later replay": 1,
        }, 1)
        assert [m.body for m in e.peek("work", 5)] == [b"a", b"e"]
        assert e.queue_info("dlq").ready == 4
        assert e.replay("dlq") == 0  # the old name still answers the count
    finally:
        e.close()


def test_max_limits_what_is_counted(tmp_path: Path) -> None:
    e = Engine.open(_topo(with_old=False), tmp_path, fsync=FsyncPolicy.NEVER)
    try:
        e.publish_to_queue("dlq", [OutMessage(b"%d" % i, headers=_death("work"))
                                   for i in range(3)])
        assert e.replay_detail("dlq", 2) == ReplayOutcome(2, 0, {})
        assert e.queue_info("dlq").ready == 1
    finally:
        e.close()
