"""One owner for the unsafe-change rule (issue 8, one owner per rule): for the same
change, `runner plan` (topology.diff) and the engine's refusal of a reload say the
same sentence, and a safe change in the plan is applied by the engine."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from runner.engine import Engine, FsyncPolicy, OutMessage, OutRecord
from runner.errors import UnsafeChange
from runner.topology.diff import diff, unsafe_sentence
from runner.topology.model import Exchange, ExchangeType, Queue, Topic, Topology


def _topo(*, exchange: Exchange | None = None, queues: tuple[Queue, ...] | None = None,
          topics: tuple[Topic, ...] | None = None) -> Topology:
    qs = queues if queues is not None else (Queue("q"), Queue("full"))
    ts = topics if topics is not None else (Topic("t", partitions=3), Topic("c", compact=True),
                                            Topic("held"))
    ex = exchange or Exchange("x", ExchangeType.DIRECT)
    return Topology(exchanges=((ex.name, ex),), queues=tuple((q.name, q) for q in qs),
                    topics=tuple((t.name, t) for t in ts))


OLD = _topo()
CHANGES = {
    "exchange type": _topo(exchange=Exchange("x", ExchangeType.FANOUT)),
    "exchange durable": _topo(exchange=Exchange("x", ExchangeType.DIRECT, durable=False)),
    "queue max_priority": _topo(queues=(Queue("q", max_priority=5), Queue("full"))),
    "queue durable": _topo(queues=(Queue("q", durable=False), Queue("full"))),
    "queue removed holding messages": _topo(queues=(Queue("q"),)),
    "fewer partitions": _topo(topics=(Topic("t", partitions=2), Topic("c", compact=True),
                                      Topic("held"))),
    "compact to delete": _topo(topics=(Topic("t", partitions=3), Topic("c"), Topic("held"))),
    "topic removed holding records": _topo(topics=(Topic("t", partitions=3),
                                                   Topic("c", compact=True))),
}


@pytest.mark.parametrize("name", sorted(CHANGES))
def test_plan_and_engine_refuse_a_change_with_one_sentence(tmp_path: Path, name: str) -> None:
    new = CHANGES[name]
    e = Engine.open(OLD, tmp_path, fsync=FsyncPolicy.NEVER)
    try:
        e.publish_to_queue("full", [OutMessage(b"m")])
        e.append("held", [OutRecord(b"r")])

        def is_empty(entity: str, entity_name: str) -> bool:
            if entity == "queue":
                return e.queue_info(entity_name).ready == 0
            return all(p.log_end_offset == p.log_start_offset
                       for p in e.partitions(entity_name))

        plan = diff(OLD, new, is_empty=is_empty)
        planned = [unsafe_sentence(c) for c in plan.unsafe]
        assert len(planned) == 1, planned
        with pytest.raises(UnsafeChange) as refused:
            e.apply(new)
        assert str(refused.value) == planned[0]
        assert e.topology == OLD
    finally:
        e.close()


def test_a_change_the_plan_calls_safe_is_applied(tmp_path: Path) -> None:
    new = replace(OLD, queues=(("q", Queue("q", max_length=5)), ("full", Queue("full"))))
    assert not diff(OLD, new).unsafe
    e = Engine.open(OLD, tmp_path, fsync=FsyncPolicy.NEVER)
    try:
        e.apply(new)
        assert e.topology == new
    finally:
        e.close()
