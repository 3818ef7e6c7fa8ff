"""Idempotent producers' state of one log (Kafka's ProducerStateManager): the last
batches of each producer id, to answer a retried batch with its first offset, and
the per-segment snapshot it is recovered from."""

from __future__ import annotations

import json
from collections import deque
from pathlib import Path

from runner.fs import FileSystem, read_bytes, write_atomic

PRODUCER_HISTORY = 8  # batches remembered per producer to answer retries (Kafka: 5)


class ProducerState:
    """One producer id's last sequence and its last PRODUCER_HISTORY batches."""

    __slots__ = ("last_seq", "batches")

    def __init__(self) -> None:
        self.last_seq = -1
        self.batches: deque[tuple[int, int, int]] = deque(maxlen=PRODUCER_HISTORY)

    def record(self, base_seq: int, count: int, base_offset: int) -> None:
        """A batch appended (called in log order): its last sequence is the
        producer's last, also when it restarted lower (Kafka wraps at 2^31 - 1)."""
        self.batches.append((base_seq, count, base_offset))
        self.last_seq = base_seq + count - 1

    def retry_of(self, base_seq: int, count: int) -> int:
        """The first offset of a remembered batch with exactly this first sequence
        and count (a retry), else -1."""
        for seq, n, base_offset in self.batches:
            if seq == base_seq and n == count:
                return base_offset
        return -1


def load_producers(fs: FileSystem, path: Path, producers: dict[int, ProducerState]) -> None:
    """Add the state a segment's snapshot file holds (none when it is missing or bad)."""
    try:
        state = json.loads(read_bytes(fs, path))
    except (FileNotFoundError, ValueError):
        return
    for pid, batches in state.items():
        prod = producers.setdefault(int(pid), ProducerState())
        for base_seq, count, base_offset in batches:
            prod.record(base_seq, count, base_offset)


def write_producers(fs: FileSystem, path: Path, producers: dict[int, ProducerState]) -> None:
    """The snapshot written when a segment is created (atomic, durable in its directory)."""
    state = {str(pid): list(p.batches) for pid, p in producers.items()}
    write_atomic(fs, path, json.dumps(state).encode())
