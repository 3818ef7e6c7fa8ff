"""The read cache: a bounded LRU of raw segment reads, one cap shared by many logs.

A `Store` gives every partition's `SegmentedLog` the same `ReadCache`, so the
memory held for reads is bounded per store (`cache_bytes_total`), not per
partition. Entries are keyed by (owner, segment base, file position); an owner
(one log) drops its entries when its segments are deleted, replaced or closed.
Thread-safe: the compaction thread reads through it too.
"""

from __future__ import annotations

import itertools
import threading
from collections import OrderedDict


class ReadCache:
    """A bounded LRU of byte chunks; one entry is at most a quarter of the capacity."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._lru: OrderedDict[tuple[int, int, int], bytes] = OrderedDict()
        self._size = 0
        self._held: dict[int, int] = {}
        self._lock = threading.Lock()
        self._tokens = itertools.count()

    def owner(self) -> int:
        """A new owner id (one per log)."""
        with self._lock:
            return next(self._tokens)

    @property
    def size(self) -> int:
        """Bytes held, at most `capacity`."""
        return self._size

    def held(self, owner: int) -> int:
        """Bytes held for `owner`."""
        return self._held.get(owner, 0)

    def get(self, owner: int, segment: int, pos: int) -> bytes | None:
        key = (owner, segment, pos)
        with self._lock:
            hit = self._lru.get(key)
            if hit is not None:
                self._lru.move_to_end(key)
            return hit

    def put(self, owner: int, segment: int, pos: int, data: bytes) -> None:
        if not self.capacity or len(data) > self.capacity // 4:
            return
        key = (owner, segment, pos)
        with self._lock:
            old = self._lru.pop(key, None)
            if old is not None:
                self._forget(key, old)
            self._lru[key] = data
            self._size += len(data)
            self._held[owner] = self._held.get(owner, 0) + len(data)
            while self._size > self.capacity:
                k, v = self._lru.popitem(last=False)
                self._forget(k, v)

    def _forget(self, key: tuple[int, int, int], data: bytes) -> None:
        self._size -= len(data)
        left = self._held[key[0]] - len(data)
        if left:
            self._held[key[0]] = left
        else:
            del self._held[key[0]]

    def drop(self, owner: int) -> None:
        """Forget every entry of `owner`."""
        with self._lock:
            if owner not in self._held:
                return
            for key in [k for k in self._lru if k[0] == owner]:
                self._forget(key, self._lru.pop(key))
