"""A topic partition: one SegmentedLog plus its topic's policies and counters.

Retention (`delete` cleanup policy) removes whole closed segments, oldest
first, never the active one, advancing the log start offset:

* by time: a segment goes when its newest record is older than
  `retention.time_s` (Kafka's `retention.ms` against the segment's largest
  timestamp). So that an idle partition's data ages out too, the active
  segment is rolled (closed) when its newest record is past retention or its
  first record is older than min(retention, 7 days) (Kafka's `segment.ms`);
  when everything expired the log start reaches the log end;
* by bytes: the oldest segment goes while the partition stays at or above
  `retention.bytes` without it (Kafka's `retention.bytes`, per partition);
  `retention.bytes: 0` keeps nothing: the active segment is rolled and deleted
  like the others.

Retention and compaction of one partition never overlap (`maintenance` lock).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

from runner.clock import Clock
from runner.fs import LOCAL, FileSystem
from runner.log.cache import ReadCache
from runner.log.commits import GroupCommit
from runner.log.record import Fsync, Item, LogRecord
from runner.log.segment import SegmentedLog
from runner.topology.model import Topic

ROLL_MS = 7 * 86_400_000  # the longest an active segment stays open under time retention


class TopicPartition(NamedTuple):
    """A partition of a topic (equal to `runner.engine.TopicPartition` as a tuple)."""

    topic: str
    partition: int


class Partition:
    """One partition of a topic."""

    def __init__(
        self, directory: Path, topic: Topic, number: int, *, fsync: Fsync, clock: Clock,
        cache_bytes: int = 1024 * 1024, fsync_interval_ms: float = 5.0,
        cache: ReadCache | None = None, fs: FileSystem = LOCAL,
        group: GroupCommit | None = None,
    ) -> None:
        self.topic = topic
        self.number = number
        self.directory = directory
        self.log = SegmentedLog(directory, segment_bytes=topic.segment_bytes, fsync=fsync,
                                clock=clock, cache_bytes=cache_bytes,
                                fsync_interval_ms=fsync_interval_ms, cache=cache, fs=fs,
                                group=group)
        self.maintenance = threading.Lock()
        self.records_appended = 0

    def configure(self, topic: Topic) -> None:
        """New policies for the same partition (retention, compaction, segment size)."""
        self.topic = topic
        self.log.segment_bytes = topic.segment_bytes

    # counters for metrics
    @property
    def log_start_offset(self) -> int:
        return self.log.start_offset

    @property
    def log_end_offset(self) -> int:
        return self.log.end_offset

    @property
    def size_bytes(self) -> int:
        return self.log.size_bytes

    @property
    def oldest_timestamp_ms(self) -> int | None:
        """Timestamp of the first record at the log start; None when empty."""
        return self.log.first_timestamp()

    def append(self, items: Sequence[Item], *, producer_id: int = -1, sequence: int = -1,
               allow_gap: bool = False, restart: bool = False) -> int:
        end = self.log.end_offset
        first = self.log.append(items, producer_id=producer_id, sequence=sequence,
                                allow_gap=allow_gap, restart=restart)
        self.records_appended += self.log.end_offset - end
        return first

    def read(self, offset: int, *, max_records: int = 100, max_bytes: int = 1024 * 1024,
             ) -> list[LogRecord]:
        return self.log.read(offset, max_records=max_records, max_bytes=max_bytes)

    def read_from(self, offset: int, *, max_records: int = 100, max_bytes: int = 1024 * 1024,
                  ) -> tuple[list[LogRecord], int]:
        """Records from `offset` and the offset to read next (see SegmentedLog.read_from)."""
        return self.log.read_from(offset, max_records=max_records, max_bytes=max_bytes)

    def enforce_retention(self, now_ms: int) -> int:
        """Delete the segments retention allows; returns how many went."""
        if not self.topic.delete:
            return 0
        if not self.maintenance.acquire(blocking=False):
            return 0  # compaction is running; next tick
        try:
            return self._retain(now_ms)
        finally:
            self.maintenance.release()

    def _retain(self, now_ms: int) -> int:
        retention = self.topic.retention
        if retention.time_s is not None:
            # an idle partition's active segment must age out too: roll it when its
            # newest record is past retention or its first one older than the roll
            # interval (min(retention, 7 days), Kafka's segment.ms), then it can go
            span = self.log.active_timestamps()
            limit_ms = retention.time_s * 1000
            roll_ms = min(limit_ms, ROLL_MS)
            if span is not None and (span[1] < now_ms - limit_ms or span[0] < now_ms - roll_ms):
                self.log.roll()
        if retention.bytes == 0:
            self.log.roll()  # keep nothing: the active segment goes like the others
        closed = self.log.closed_segments()
        upto = None
        size = self.log.size_bytes
        for seg in closed:
            too_old = (retention.time_s is not None
                       and seg.max_timestamp < now_ms - retention.time_s * 1000)
            too_big = retention.bytes is not None and size - seg.size >= retention.bytes
            if not (too_old or too_big):
                break
            upto = seg.next_base
            size -= seg.size
        return self.log.delete_before(upto) if upto is not None else 0

    def close(self) -> None:
        self.log.close()
