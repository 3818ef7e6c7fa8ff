"""Engine.peek_ids, purge and replay_detail(only=...): acting on chosen messages of a
queue (the console's replay one / a selection, purge a selection or all), durably."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from runner.engine import Engine, FsyncPolicy, OutMessage, ReplayOutcome
from runner.topology.model import Queue, Topology

TOPO = Topology(queues=(("dlq", Queue("dlq")), ("work", Queue("work"))))


def _death() -> dict[str, Any]:
    return {"x-dead-letter": {"reason": "rejected", "original_queue": "work",
                              "original_exchange": "", "original_routing_key": "work",
                              "death_count": 1}}


def _open(path: Path) -> Engine:
    return Engine.open(TOPO, path, fsync=FsyncPolicy.ALWAYS)


def test_peek_ids_names_messages_in_delivery_order_and_leaves_them(tmp_path: Path) -> None:
    e = _open(tmp_path)
    try:
        e.publish_to_queue("dlq", [OutMessage(b"%d" % i, headers=_death()) for i in range(4)])
        first = e.peek_ids("dlq", 10)
        assert [d.body for _, d in first] == [b"0", b"1", b"2", b"3"]
        assert len({uid for uid, _ in first}) == 4
        assert e.peek_ids("dlq", 10) == first  # nothing taken
        assert [d.body for d in e.peek("dlq", 10)] == [b"0", b"1", b"2", b"3"]
        assert e.peek_ids("dlq", 2) == first[:2]
    finally:
        e.close()


def test_replay_only_the_chosen_dead_letters(tmp_path: Path) -> None:
    e = _open(tmp_path)
    try:
        e.publish_to_queue("dlq", [OutMessage(b"%d" % i, headers=_death()) for i in range(4)])
        ids = [uid for uid, _ in e.peek_ids("dlq", 10)]
        assert e.replay_detail("dlq", only={ids[1], ids[3]}) == ReplayOutcome(2, 0, {})
        assert [m.body for m in e.peek("work", 10)] == [b"1", b"3"]
        assert [d.body for _, d in e.peek_ids("dlq", 10)] == [b"0", b"2"]
        assert e.replay_detail("dlq", only={999_999}) == ReplayOutcome(0, 0, {})
    finally:
        e.close()


def test_purge_a_selection_then_all_survives_a_reopen(tmp_path: Path) -> None:
    e = _open(tmp_path)
    try:
        e.publish_to_queue("dlq", [OutMessage(b"%d" % i) for i in range(5)])
        ids = [uid for uid, _ in e.peek_ids("dlq", 10)]
        assert e.purge("dlq", {ids[0], ids[2], 123_456}) == 2
        assert [d.body for d in e.peek("dlq", 10)] == [b"1", b"3", b"4"]
        got = e.pull("dlq", 1, lease_s=30, consumer_id="c")  # delivered ones stay
        assert [d.body for d in got] == [b"1"]
        assert e.purge("dlq") == 2
        assert e.queue_info("dlq").ready == 0 and e.queue_info("dlq").unacked == 1
    finally:
        e.close()
    e = _open(tmp_path)
    try:
        # after a restart the unacked message is ready again; the purged ones stay gone
        assert [d.body for d in e.peek("dlq", 10)] == [b"1"]
    finally:
        e.close()
