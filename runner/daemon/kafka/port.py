"""The backend as the Kafka listener sees it: the one module that calls into it.

Everything the listener does to topics, records and group offsets goes
through `EnginePort`, on the engine contract (`runner.engine.contract`): a
`Backend` that also serves `WireTopics`, since Kafka records carry raw header
bytes and may repeat a header name (the contract's records decode headers
into a mapping). How a backend stores such headers is its own business (the
embedded engine's: `runner.engine.records.HEADER_TYPES`). The listener's
external group commits are the contract's `Coordinator.commit` without a
member (refused for a group this runner runs with a handler).

Like every caller of the backend it runs on the daemon's asyncio loop (the
backend's single owner), and its appends are as durable on return as the
`--fsync` policy promises.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from runner.engine.contract import Backend, TopicPartition, WireRecord, WireStored, WireTopics
from runner.errors import InvalidRequest
from runner.topology.model import ConsumerGroup

KAFKA_PRODUCER_PREFIX = "kafka-producer-"
EPOCH_SHIFT = 32  # the engine's sequence of a Kafka batch: epoch << 32 | Kafka sequence
MAX_EPOCH = 2**15 - 1  # Kafka's producer epoch is an int16
WRAP = 2**31  # Kafka's sequences wrap from 2^31 - 1 to 0


class ProducerFenced(InvalidRequest):
    """A batch from an older epoch of an idempotent producer (INVALID_PRODUCER_EPOCH)."""


# a stored record: (offset, timestamp_ms, key, value, headers) -- a plain tuple,
# the shape `batches.encode_batch` takes (one per record of a fetch: kept cheap)
StoredRecord = WireStored


class KafkaBackend(Backend, WireTopics, Protocol):
    """What the listener needs: a contract Backend that serves `WireTopics` too."""


@dataclass(frozen=True, slots=True)
class Offsets:
    log_start: int
    log_end: int


class NewRecord(Protocol):
    """A record to append (`batches.KafkaRecord` is one)."""

    @property
    def key(self) -> bytes | None: ...

    @property
    def value(self) -> bytes | None: ...

    @property
    def headers(self) -> tuple[tuple[str, bytes | None], ...]: ...

    @property
    def timestamp_ms(self) -> int: ...


class EnginePort:
    """Topics, records and group offsets of the running engine."""

    def __init__(self, backend: Callable[[], KafkaBackend], notify: Callable[[], None]) -> None:
        self._backend = backend
        self._notify = notify

    # ------------------------------------------------------------ topics
    def topics(self) -> dict[str, int]:
        """Every declared topic and its partition count."""
        return self._backend().topic_partitions()

    def partition_count(self, topic: str) -> int:
        """0 for an unknown topic."""
        return self._backend().topic_partitions().get(topic, 0)

    def offsets(self, topic: str, partition: int) -> Offsets:
        """NotFound for an unknown topic or partition."""
        return Offsets(*self._backend().log_offsets(topic, partition))

    def offset_for_time(self, topic: str, partition: int, timestamp_ms: int) -> int:
        """The first offset with a timestamp >= `timestamp_ms` (the log end if none)."""
        return self._backend().offset_for_time(topic, partition, timestamp_ms)

    # ------------------------------------------------------------ records
    def append(
        self, topic: str, partition: int, records: Sequence[NewRecord], *,
        producer_id: int = -1, producer_epoch: int = -1, base_sequence: int = -1,
    ) -> int:
        """Append to one partition; the offset of the first record.

        An idempotent producer's batch (id, epoch, base sequence) is checked as
        Kafka's broker checks it, per producer and partition: an epoch older than
        the newest one seen raises `ProducerFenced`; a newer epoch must start at
        sequence 0 (its sequences start afresh); within an epoch an exact retry
        gets the original offsets (nothing is stored again) and a sequence out of
        order raises InvalidRequest "... out of order sequence ...". The engine
        keeps the epoch in the high 32 bits of the sequence it stores, so the
        newest epoch is known again after a restart. Other errors as
        `Producer.append`."""
        producer = f"{KAFKA_PRODUCER_PREFIX}{producer_id}" if producer_id >= 0 else None
        seq = base_sequence if producer is not None and base_sequence >= 0 else None
        backend = self._backend()
        new_epoch = wrapped = False
        if producer is not None and seq is not None:
            last = backend.producer_sequence(topic, partition, producer)
            new_epoch = self._check_epoch(last, topic, partition, producer_id, producer_epoch,
                                          seq)
            # the engine counts a batch's sequences on from its first (a batch may run
            # past 2^31 - 1); the batch after one that ran to or past it starts at the
            # wrapped value, which continues the producer's sequence
            low = last & (2**EPOCH_SHIFT - 1)
            wrapped = (not new_epoch and last >= 0 and last >> EPOCH_SHIFT == producer_epoch
                       and low >= WRAP - 1 and seq == low + 1 - WRAP)
            seq |= producer_epoch << EPOCH_SHIFT
        out = [WireRecord(r.key, r.value, r.headers,
                          # Kafka's "no timestamp" (-1): the append time
                          r.timestamp_ms if r.timestamp_ms >= 0 else None)
               for r in records]
        first = backend.append_wire(topic, partition, out, producer_id=producer,
                                    base_sequence=seq, allow_gap=new_epoch, restart=wrapped)
        self._notify()
        return first

    @staticmethod
    def _check_epoch(last: int, topic: str, partition: int, producer_id: int, epoch: int,
                     sequence: int) -> bool:
        """Whether the batch starts a new epoch; ProducerFenced or InvalidRequest
        when it may not be appended (see `append`)."""
        where = f"producer {producer_id} on {topic}/{partition}"
        if not 0 <= epoch <= MAX_EPOCH:
            raise ProducerFenced(f"{where}: epoch {epoch} is not a producer epoch "
                                 f"(0 to {MAX_EPOCH})")
        if last < 0:
            return False
        newest = last >> EPOCH_SHIFT
        if epoch < newest:
            raise ProducerFenced(
                f"{where}: epoch {epoch} is older than the producer's epoch {newest} "
                "(fenced: a newer instance of this producer has written)")
        if epoch > newest and sequence != 0:
            raise InvalidRequest(
                f"{where}: out of order sequence {sequence}: a new epoch ({epoch}, "
                f"after {newest}) starts at sequence 0")
        return epoch > newest

    def read(self, topic: str, partition: int, offset: int, *, max_bytes: int,
             max_records: int = 10_000) -> list[StoredRecord]:
        """Records from `offset`; OffsetOutOfRange outside the log."""
        return self._backend().read_wire(topic, partition, offset, max_records=max_records,
                                         max_bytes=max_bytes)

    # ------------------------------------------------------------ groups
    def group(self, name: str) -> ConsumerGroup | None:
        """The declared group `name`, or None."""
        return self._backend().topology.group_map().get(name)

    def groups(self) -> Mapping[str, ConsumerGroup]:
        return self._backend().topology.group_map()

    def position(self, group: str, topic: str, partition: int) -> int:
        """The group's committed offset, else its reset position (`offset_reset`)."""
        return self._backend().position(group, TopicPartition(topic, partition))

    def group_members(self, group: str) -> list[str]:
        """The members the backend knows (a handler group's workers)."""
        return list(self._backend().group_info(group).members)

    async def commit(self, group: str, offsets: Mapping[tuple[str, int], int]) -> None:
        """Commit next offsets to read, returning once durable (per the fsync policy;
        the loop serves others meanwhile): a commit from outside (no member),
        refused with Conflict for a handler's group."""
        backend = self._backend()
        ticket = backend.commit(
            group, {TopicPartition(t, p): off for (t, p), off in offsets.items()})
        self._notify()
        await backend.durable(ticket)
