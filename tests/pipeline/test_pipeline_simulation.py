"""The Simulation: the daemon's workers on a throw-away engine with a manual clock."""

from __future__ import annotations

from runner.engine import OutMessage, OutRecord
from runner.simulate.simulation import Simulation, Stand
from runner.topology.load import load_text

TOPOLOGY = """\
version: 1
topics: {t: {partitions: 2}}
queues:
  q: {message_ttl: 24h}
  dlq: {}
dlq_policies:
  p: {max_retries: 2, backoff: [10s, 1h], dead_letter_queue: dlq}
consumers:
  c: {queue: q, handler: "nowhere:c", dlq_policy: p}
consumer_groups:
  g: {topic: t, handler: "nowhere:g", dlq_policy: p}
"""


def _sim(**stands: Stand) -> Simulation:
    topology = load_text(TOPOLOGY, filename="t.yaml").topology
    assert topology is not None
    return Simulation(topology, stands=stands, default=lambda _: Stand(real=False))


def test_consumed_messages_leave_no_ttl_for_the_clock_to_jump_to() -> None:
    sim = _sim()
    try:
        sim.publish_to_queue("q", OutMessage(b"1", "q"))
        assert sim.run()
        sim.publish_to_queue("q", OutMessage(b"2", "q"))
        assert sim.run()
        assert [c.at_s for c in sim.log.calls] == [0.0, 0.0]  # not 24h later
        assert sim.engine.next_due() is None
    finally:
        sim.close()


def test_retry_delays_are_simulated_for_queues_and_groups() -> None:
    sim = _sim(c=Stand(real=False, fail=9), g=Stand(real=False, fail=9))
    try:
        sim.publish_to_queue("q", OutMessage(b"1", "q"))
        sim.append("t", OutRecord(b"2", key=b"k"))
        assert sim.run()
        by = {w: [(f.at_s, f.retry, f.delay_s) for f in sim.log.fates if f.worker == w]
              for w in ("c", "g")}
        assert [d for _, _, d in by["c"]] == [10.0, 3600.0, 0.0]
        assert [d for _, _, d in by["g"]] == [10.0, 3600.0, 0.0]
        assert by["c"][-1][1] is False and by["g"][-1][1] is False
        assert len(sim.queue_messages("dlq")) == 2
        assert sim.now() >= 3610.0
    finally:
        sim.close()


def test_close_removes_the_data_directory() -> None:
    sim = _sim()
    data = sim._dir
    assert data.exists()
    sim.close()
    assert not data.exists()
