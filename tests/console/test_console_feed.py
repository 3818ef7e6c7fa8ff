"""The console's live feed: a daemon whose samples cost calls to a broker (RabbitMQ)
samples only while an event stream listens; the embedded daemon samples always."""

from __future__ import annotations

import asyncio

from runner.clock import SystemClock
from runner.daemon.console.live import LiveFeed
from runner.daemon.dlq_ops import DlqBackend
from runner.daemon.metrics import HandlerView
from runner.engine.contract import BackendStats
from runner.topology.load import load_text
from runner.topology.model import Topology

TOPOLOGY = """\
version: 1
name: feed
queues:
  q: {}
"""


class CountingSource:
    """A feed source that counts its samples (the stats are empty)."""

    def __init__(self) -> None:
        loaded = load_text(TOPOLOGY, filename="t.yaml", env={})
        assert loaded.topology is not None, loaded.problems
        self.topology: Topology = loaded.topology
        self.samples = 0
        self.accepting = True
        self.generation = 1
        self.content_hash = "h"

    @property
    def backend(self) -> DlqBackend:
        raise AssertionError("the feed reads live_stats(), not the backend")

    def handler_view(self) -> HandlerView:
        return HandlerView()

    async def live_stats(self) -> BackendStats:
        self.samples += 1
        return BackendStats()


async def _run(idle_sampling: bool) -> tuple[int, int]:
    """(samples in 0.2 s without a listener, samples in the next 0.2 s with one)."""
    src = CountingSource()
    feed = LiveFeed(src, SystemClock(), interval_s=0.02, idle_sampling=idle_sampling)
    feed.start()
    try:
        await asyncio.sleep(0.2)
        idle = src.samples
        listener = feed.listen()
        assert listener is not None
        await asyncio.sleep(0.2)
        assert listener.qsize() > 0  # snapshots were published to it
        return idle, src.samples - idle
    finally:
        await feed.stop()


def test_a_feed_that_does_not_sample_idle_waits_for_a_listener() -> None:
    idle, watched = asyncio.run(_run(idle_sampling=False))
    assert idle == 0 and watched >= 3


def test_the_embedded_feed_samples_with_nobody_listening() -> None:
    idle, watched = asyncio.run(_run(idle_sampling=True))
    assert idle >= 3 and watched >= 3
