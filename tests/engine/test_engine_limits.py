"""Issue 17 leftovers in the engine: message ids the topic store remembers count in
the broker's memory budget; the embedded backend caps the copies handler outputs
create (--max-fanout)."""

from __future__ import annotations

from pathlib import Path

import pytest

from runner.engine import Engine, FsyncPolicy, OutMessage
from runner.engine.contract import OutMessage as ContractMessage
from runner.engine.contract import OutRecord, Step
from runner.engine.embedded import open_embedded
from runner.errors import FanoutTooLarge
from runner.log.store import id_memory
from runner.topology.model import Binding, Exchange, ExchangeType, Queue, Topic, Topology


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


def test_the_embedded_backend_caps_the_copies_one_write_of_outputs_creates(
    tmp_path: Path,
) -> None:
    """--max-fanout on handler outputs (issue 17 leftover): a publish counts each message
    once per queue and topic it reaches, puts and appends one each, an exactly-once
    step as a whole; past the cap FanoutTooLarge and nothing is stored."""
    topo = Topology(
        topics=(("t", Topic("t")),),
        exchanges=(("x", Exchange("x", ExchangeType.FANOUT)),),
        queues=tuple((f"q{i}", Queue(f"q{i}")) for i in range(3)),
        bindings=tuple(Binding("x", queue=f"q{i}") for i in range(3)),
    )
    b = open_embedded(topo, tmp_path, fsync=FsyncPolicy.NEVER)
    b.max_fanout = 5
    try:
        m = ContractMessage(b"1")
        b.publish("x", [m])  # 3 copies
        with pytest.raises(FanoutTooLarge) as exc:
            b.publish("x", [m, m])
        assert str(exc.value) == (
            "the handler's outputs would create 6 message copies (2 messages through "
            "exchange 'x', up to 3 destinations each), over the limit of 5 a handler call "
            "(--max-fanout); nothing of them was stored: publish fewer messages a call")
        with pytest.raises(FanoutTooLarge, match="would create 6 message copies, over"):
            b.put("q0", [m] * 6)
        with pytest.raises(FanoutTooLarge, match="would create 6 message copies, over"):
            b.append("t", [OutRecord(b"v")] * 6)
        with pytest.raises(FanoutTooLarge, match="would create 6 message copies"):
            b.commit_step(Step(publishes=(("x", (m,)),), puts=(("q0", (m, m, m)),)))
        assert [b.queue_info(f"q{i}").ready for i in range(3)] == [1, 1, 1]
        b.put("q0", [m] * 5)  # at the cap
        b.commit_step(Step(publishes=(("x", (m,)),), puts=(("q0", (m, m)),)))
        assert b.queue_info("q0").ready == 9
    finally:
        b.close()
