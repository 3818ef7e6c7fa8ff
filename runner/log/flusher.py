"""The flusher: a background thread that gives `Fsync.INTERVAL` its few milliseconds.

Every `interval_ms` it calls `maybe_sync()` on each registered syncable (a
`SegmentedLog`, `OffsetStore` or `StepJournal`); a log with nothing unsynced
costs one comparison.
"""

from __future__ import annotations

import logging
import threading
from typing import Protocol

log = logging.getLogger(__name__)


class Syncable(Protocol):
    def maybe_sync(self) -> bool: ...


class Flusher:
    """Background interval fsync for a changing set of logs."""

    def __init__(self, interval_ms: float = 5.0) -> None:
        self.interval_ms = interval_ms
        self._items: list[Syncable] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.failures = 0
        self._thread = threading.Thread(target=self._run, name="log-flusher", daemon=True)
        self._thread.start()

    def add(self, item: Syncable) -> None:
        with self._lock:
            self._items.append(item)

    def remove(self, item: Syncable) -> None:
        with self._lock:
            if item in self._items:
                self._items.remove(item)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_ms / 1000.0):
            with self._lock:
                items = list(self._items)
            for item in items:
                try:
                    item.maybe_sync()
                except Exception:
                    self.failures += 1
                    log.exception("interval fsync failed")

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
