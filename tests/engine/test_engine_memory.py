"""The engine's one memory budget (issue 17 leftover): message ids the topic store
remembers count in the broker's budget beside the queues' messages and ids."""

from __future__ import annotations

from pathlib import Path

from runner.engine import Engine, FsyncPolicy, OutMessage
from runner.log.store import id_memory
from runner.topology.model import Binding, Exchange, ExchangeType, Topic, Topology


def test_a_topics_remembered_ids_count_in_the_same_budget(tmp_path: Path) -> None:
    """The engine's store remembers the ids of messages routed to a topic: they count in
    the broker's budget, also those recovered at open."""
    topo = Topology(
        topics=(("ev", Topic("ev")),),
        exchanges=(("x", Exchange("x", ExchangeType.FANOUT)),),
        bindings=(Binding("x", topic="ev"),),
    )
    e = Engine.open(topo, tmp_path, fsync=FsyncPolicy.NEVER)
    e.publish("x", [OutMessage(b"{}", message_id=f"id{i}") for i in range(10)])
    mem = e.broker.memory
    # the broker's (exchange x) and the store's (topic ev) of each id
    assert (mem.count, mem.ids) == (0, 20)
    assert mem.held == 20 * id_memory("id0")
    e.close()
    e = Engine.open(topo, tmp_path, fsync=FsyncPolicy.NEVER)
    try:
        assert e.broker.memory.ids == 10  # the store's, read back from the records
    finally:
        e.close()
