"""The Kafka wire-protocol listener: Kafka clients reading and writing the topology's topics.

`runner run PATH --kafka-listen HOST:PORT` serves the declared topics (with
their partitions) to kafka-python, aiokafka, confluent-kafka, kcat and any
other Kafka client, beside the HTTP API and on the same loop and engine.

Modules: `protocol` (frames and message bodies, from Kafka's own message
definitions through the `kio` library), `batches` (the record batch format),
`compression` (gzip, snappy, lz4, zstd), `port` (the one adapter into the
engine), `session` (shared and per-connection state), the API handlers
(`cluster_api`, `records_api`, `groups_api`, `sasl_api`), `coordinator`
(consumer group membership) and `server` (connections). See docs/kafka.md.
"""

from __future__ import annotations

from collections.abc import Callable

from runner.clock import Clock
from runner.daemon.kafka.coordinator import Coordinator
from runner.daemon.kafka.port import EnginePort, KafkaBackend
from runner.daemon.kafka.server import KafkaListener
from runner.daemon.kafka.session import AppendSignal, Broker

__all__ = ["AppendSignal", "KafkaListener", "build_listener"]


def build_listener(
    backend: Callable[[], KafkaBackend], *, notify: Callable[[], None], clock: Clock,
    token: str | None, max_request_bytes: int, advertise: tuple[str, int] | None = None,
    max_message_bytes: int = 1024 * 1024,
) -> tuple[KafkaListener, AppendSignal]:
    """A listener on the running backend, and the signal to wake its fetches
    (call `wake()` whenever records may have been appended)."""
    signal = AppendSignal()
    broker = Broker(EnginePort(backend, notify), clock, signal, coordinator=Coordinator(clock),
                    token=token, max_request_bytes=max_request_bytes,
                    max_message_bytes=max_message_bytes, advertise=advertise)
    return KafkaListener(broker), signal
