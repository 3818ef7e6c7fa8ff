"""Per-record settling of a dead-letter topic on a real engine (issue 13): the markers
of records settled above the replay position live in the hidden queue
`__dlq.<topic>`, the position skips them when it gets there, and they are dropped
once it has passed them all."""

from __future__ import annotations

from pathlib import Path

import pytest

from runner.daemon import dlq_ops
from runner.engine import Engine, FsyncPolicy, OutRecord, TopicPartition, dlq_settled_queue
from runner.engine.embedded import EmbeddedBackend
from runner.errors import Conflict
from runner.topology.model import DlqPolicy, Queue, Topic, Topology

TOPO = Topology(topics=(("t.dlq", Topic("t.dlq")),), queues=(("parking", Queue("parking")),),
                dlq_policies=(("p", DlqPolicy("p", dead_letter_queue="t.dlq")),))
DEATH = {"x-dead-letter": {"reason": "rejected", "original_queue": "parking",
                           "original_routing_key": "parking", "death_count": 1}}


def test_markers_are_skipped_then_dropped(tmp_path: Path) -> None:
    e = Engine.open(TOPO, tmp_path, fsync=FsyncPolicy.NEVER)
    b = EmbeddedBackend(e)  # the tools' backend: the engine through the contract
    try:
        e.append("t.dlq", [OutRecord(value=b"%d" % i, headers=DEATH) for i in range(5)])
        hidden = dlq_settled_queue("t.dlq")
        tp = TopicPartition("t.dlq", 0)

        assert dlq_ops.purge_records(b, "t.dlq", [(0, 2), (0, 3)])["remaining"] == 3
        assert e.queue_info(hidden).ready == 2 and e.dlq_settled("t.dlq") == {0: {2, 3}}
        assert e.position("__dlq.t.dlq", tp) == 0
        assert [r.offset for r in dlq_ops.topic_letters(b, "t.dlq", 10)] == [0, 1, 4]
        assert e.stats().dlq_settled == {tp: 2}

        out = dlq_ops.replay_records(b, TOPO, "t.dlq", [(0, 1)])
        assert (out["replayed"], out["remaining"]) == (1, 2)
        assert e.position("__dlq.t.dlq", tp) == 0 and e.queue_info(hidden).ready == 3

        # the first pending one: the position jumps over 1, 2 and 3, the markers go
        assert dlq_ops.replay_records(b, TOPO, "t.dlq", [(0, 0)])["remaining"] == 1
        assert e.position("__dlq.t.dlq", tp) == 4
        assert e.queue_info(hidden).ready == 0 and e.dlq_settled("t.dlq") == {}
        assert [d.body for d in e.peek("parking", 10)] == [b"1", b"0"]
        with pytest.raises(Conflict):
            dlq_ops.purge_records(b, "t.dlq", [(0, 3)])
        assert dlq_ops.replay_topic(b, TOPO, "t.dlq", 10)["replayed"] == 1
        assert [d.body for d in e.peek("parking", 10)] == [b"1", b"0", b"4"]
    finally:
        e.close()
