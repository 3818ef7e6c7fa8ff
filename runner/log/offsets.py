"""Committed offsets: an internal compacted log `__consumer_offsets`.

Records (key -> value), the latest per key wins:

* `b"o" + JSON [group, topic, partition]` -> 8-byte little-endian committed
  offset (the next offset to read), or null (tombstone) when forgotten;
* `b"r" + JSON [group, topic, partition]` -> 8-byte reset position fixed when
  the group first saw the partition (`latest`: the log end at that time).

Everything is loaded into a dict at open (small: one entry per group and
partition). The log is compacted at open, and again whenever the records
written since the last compaction exceed `compact_after` and twice the live keys.
"""

from __future__ import annotations

import json
import logging
import struct
from collections.abc import Iterable, Mapping
from pathlib import Path

from runner.clock import Clock, now_ms
from runner.errors import LogFailed, StorageError
from runner.fs import LOCAL, FileSystem
from runner.log.commits import GroupCommit
from runner.log.compaction import compact
from runner.log.partition import TopicPartition
from runner.log.record import Fsync, Item
from runner.log.segment import SegmentedLog

log = logging.getLogger(__name__)

_OFFSET = struct.Struct("<q")
GroupTP = tuple[str, TopicPartition]


def _key(kind: bytes, group: str, tp: TopicPartition) -> bytes:
    return kind + json.dumps([group, tp.topic, tp.partition], separators=(",", ":")).encode()


class OffsetStore:
    """Durable committed offsets and reset positions of consumer groups."""

    def __init__(
        self, directory: Path, *, fsync: Fsync, clock: Clock, compact_after: int = 10_000,
        segment_bytes: int = 4 * 1024 * 1024, fs: FileSystem = LOCAL,
        group: GroupCommit | None = None,
    ) -> None:
        self.clock = clock
        self.compact_after = compact_after
        self._log = SegmentedLog(directory, fsync=fsync, clock=clock, segment_bytes=segment_bytes,
                                 fs=fs, group=group)
        self.committed: dict[GroupTP, int] = {}
        self.resets: dict[GroupTP, int] = {}
        self._since_compaction = 0
        offset = self._log.start_offset
        count = 0
        while offset < self._log.end_offset:
            for rec in self._log.read(offset, max_records=5000, max_bytes=4 * 1024 * 1024):
                count += 1
                offset = rec.offset + 1
                if rec.key is None:
                    continue
                name, topic, partition = json.loads(rec.key[1:])
                gtp = (name, TopicPartition(topic, partition))
                table = self.committed if rec.key[:1] == b"o" else self.resets
                if rec.value is None:
                    table.pop(gtp, None)
                else:
                    table[gtp] = _OFFSET.unpack(rec.value)[0]
        if count > 2 * (len(self.committed) + len(self.resets)) + 100:
            try:
                self.compact()
            except StorageError as exc:  # e.g. a full disk: a start goes on uncompacted
                log.warning("not compacting %s at open: %s", directory, exc)

    def _append(self, items: list[Item]) -> None:
        if items:
            self._log.append(items)
            self._since_compaction += len(items)
            live = len(self.committed) + len(self.resets)
            if self._since_compaction > max(self.compact_after, 2 * live):
                self.compact()

    def commit(self, offsets: Mapping[GroupTP, int]) -> None:
        """Store committed offsets as one durable batch."""
        ts = now_ms(self.clock)
        items: list[Item] = [(_key(b"o", g, tp), _OFFSET.pack(off), (), ts)
                             for (g, tp), off in offsets.items()]
        self._append(items)
        self.committed.update(offsets)

    def set_resets(self, positions: Mapping[GroupTP, int]) -> None:
        """Fix reset positions (only ones not set before are written)."""
        new = {k: v for k, v in positions.items() if k not in self.resets}
        ts = now_ms(self.clock)
        self._append([(_key(b"r", g, tp), _OFFSET.pack(off), (), ts)
                      for (g, tp), off in new.items()])
        self.resets.update(new)

    def forget(self, keys: Iterable[GroupTP]) -> None:
        """Drop committed offsets and reset positions (tombstones)."""
        ts = now_ms(self.clock)
        items: list[Item] = []
        for gtp in keys:
            if self.committed.pop(gtp, None) is not None:
                items.append((_key(b"o", *gtp), None, (), ts))
            if self.resets.pop(gtp, None) is not None:
                items.append((_key(b"r", *gtp), None, (), ts))
        self._append(items)

    def compact(self) -> None:
        """Roll the active segment and compact everything (tombstones dropped at once)."""
        self._log.roll()
        compact(self._log, now_ms=now_ms(self.clock), delete_retention_ms=0)
        self._since_compaction = 0

    @property
    def size_bytes(self) -> int:
        return self._log.size_bytes

    @property
    def failed(self) -> LogFailed | None:
        """Why the store refuses everything (a failed fsync), or None."""
        return self._log.failed

    def sync(self) -> None:
        self._log.sync()

    def maybe_sync(self) -> bool:
        return self._log.maybe_sync()

    def close(self) -> None:
        self._log.close()
