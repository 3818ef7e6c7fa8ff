"""The engine's next timer (`next_due`): TTL expiries of ready messages and delayed
retries, answered from each queue's heap tops (`MessageQueue.next_due`, dropping
the entries of messages that left) instead of a scan of every waiting message.

A random run of puts with TTLs, deliveries, acks, requeues, delayed retries and
ticks checks after every operation that the answer equals the earliest due time
found by scanning every entry, and that the heaps never lose a live entry."""

from __future__ import annotations

import random
from pathlib import Path

from runner.broker.message import DELAYED, READY
from runner.clock import ManualClock
from runner.engine import Engine, FsyncPolicy, OutMessage
from runner.engine.contract import Ack, Requeue, Retry
from runner.engine.embedded import EmbeddedBackend
from runner.topology.model import Queue, Topology

TOPO = Topology(queues=(("a", Queue("a")), ("b", Queue("b", message_ttl_s=30.0))))


def _scanned(engine: Engine) -> float | None:
    """The earliest due time by a scan of every entry (what next_due answered before)."""
    due = [t for mq in engine.broker.queues.values() for t, _, m in mq.expiries
           if m.state == READY]
    due += [t for mq in engine.broker.queues.values() for t, _, m in mq.delayed
            if m.state == DELAYED]
    return min(due) if due else None


def _live_entries_kept(engine: Engine) -> bool:
    """Every ready message with a TTL and every delayed message has a heap entry."""
    for mq in engine.broker.queues.values():
        expiring = {id(m) for _, _, m in mq.expiries}
        delayed = {id(m) for _, _, m in mq.delayed}
        for m in mq.live():
            if m.state == READY and m.expires_at is not None and id(m) not in expiring:
                return False
            if m.state == DELAYED and id(m) not in delayed:
                return False
    return True


def test_next_due_matches_a_full_scan_through_a_random_run(tmp_path: Path) -> None:
    clock = ManualClock()
    engine = Engine.open(TOPO, tmp_path, fsync=FsyncPolicy.NEVER, clock=clock)
    backend = EmbeddedBackend(engine)
    rng = random.Random(7)
    held: dict[str, list[int]] = {"a": [], "b": []}
    checked_due = 0
    try:
        for step in range(1500):
            queue = rng.choice(("a", "b"))
            op = rng.random()
            if op < 0.35:
                ttl = rng.choice((None, 1.0, 5.0, 60.0))
                backend.put(queue, [OutMessage(body=b"m%d" % step, ttl_s=ttl)])
            elif op < 0.55:
                got = backend.fetch(queue, rng.randint(1, 4), lease_s=600, consumer_id="c")
                held[queue] += [d.delivery_id for d in got]
            elif op < 0.8 and held[queue]:
                did = held[queue].pop(rng.randrange(len(held[queue])))
                outcome = rng.choice((Ack(did), Requeue(did), Retry(did, rng.choice((0.5, 3.0)))))
                backend.settle(queue, [outcome])
            elif op < 0.9:
                clock.advance(rng.choice((0.3, 1.0, 2.5)))
                backend.tick()
            else:
                engine.broker.next_due()  # asked again with nothing changed
            scanned = _scanned(engine)
            assert engine.broker.next_due() == scanned, step
            assert _live_entries_kept(engine), step
            checked_due += scanned is not None
        assert checked_due > 500  # the run mostly had timers to find
    finally:
        engine.close()
