"""What an API handler is given: the listener's shared state and its connection's own.

`Broker` is shared by every connection of one listener (the engine port, the
node it advertises, the group coordinator, the append signal, limits);
`Session` is one client connection (who it is, whether SASL authenticated it,
the address it reached us on, which Metadata advertises back to it).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from runner.clock import Clock
from runner.daemon.kafka.coordinator import Coordinator
from runner.daemon.kafka.port import EnginePort

NODE_ID = 0
CLUSTER_ID = "topology-runner"
MAX_PRODUCERS = 100_000  # producer ids whose newest epoch the listener remembers


class AppendSignal:
    """Wakes long-polling fetches when records are appended (or offsets move)."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def wake(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    async def wait(self, timeout_s: float) -> None:
        """Return at the next append, or after `timeout_s`."""
        if timeout_s <= 0:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._event.wait(), timeout_s)


@dataclass(slots=True)
class Broker:
    port: EnginePort
    clock: Clock
    appended: AppendSignal
    coordinator: Coordinator
    token: str | None = None
    max_request_bytes: int = 64 * 1024 * 1024
    max_message_bytes: int = 1024 * 1024  # --max-message-bytes: a record, as over HTTP
    advertise: tuple[str, int] | None = None  # None: the address each connection reached
    next_producer_id: int = 0
    # the newest epoch of each producer id given out or produced with since the
    # start (InitProducerId bumps only these); the oldest forgotten past the cap
    producer_epochs: dict[int, int] = field(default_factory=dict)

    def note_epoch(self, producer_id: int, epoch: int) -> None:
        epochs = self.producer_epochs
        if epochs.get(producer_id, -1) < epoch:
            epochs.pop(producer_id, None)
            epochs[producer_id] = epoch
            if len(epochs) > MAX_PRODUCERS:
                del epochs[next(iter(epochs))]


@dataclass(slots=True)
class Session:
    broker: Broker
    peer: str
    host: str  # the address this connection reached (advertised in Metadata)
    port: int
    authenticated: bool = False
    mechanism: str | None = None
    user: str | None = None
    raw_sasl_next: bool = False  # SaslHandshake v0: the next frame is a raw SASL token
    extra: dict[str, Any] = field(default_factory=dict)


Handler = Callable[[Session, Any, int], Awaitable[dict[str, Any] | None]]


def millis(value: Any) -> int:
    """A kio duration (timedelta) or plain int as milliseconds."""
    if isinstance(value, datetime.timedelta):
        return int(value / datetime.timedelta(milliseconds=1))
    return int(value)
