"""Group commit: the fsyncs of one data directory, batched so each dirty log syncs once.

Under `Fsync.ALWAYS` a `SegmentedLog.append` returns after an fsync that
covers its bytes. Inside `GroupCommit.deferred()` (on the thread that opened
it) it returns once its bytes are written instead, and the log is noted as
dirty; when the outermost `deferred()` block ends, every dirty log is synced
ONCE, in the order it was first written, before the block's caller goes on.
So an operation that writes several records to one log (an exactly-once step
whose outputs and acks land in the same queue, a dead letter and its source)
pays one fsync for that log, and the order of the syncs is the order of the
writes (a dead-letter target is synced before its source, as without the
block).

Nothing becomes visible as durable earlier than without the block: topic
reads stop at the synced end (`SegmentedLog.high_watermark`), and the block's
caller answers only after it ended.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from typing import Protocol

log = logging.getLogger(__name__)


class Dirty(Protocol):
    """A log that can be synced up to a written position (`SegmentedLog`)."""

    def sync_to(self, target: int) -> None: ...


class GroupCommit:
    """Batches the fsyncs of the logs of one data directory (see the module)."""

    def __init__(self) -> None:
        self._owner: int | None = None
        self._dirty: dict[Dirty, int] = {}  # log -> bytes written to sync, in write order
        self.rounds = 0  # deferred blocks ended (for tests and stats)

    def deferring(self) -> bool:
        """True on the thread inside a `deferred()` block."""
        return self._owner is not None and self._owner == threading.get_ident()

    def add(self, wal: Dirty, target: int) -> None:
        """`wal` wrote up to `target` bytes that the end of the block must sync."""
        if self._dirty.get(wal, -1) < target:
            self._dirty[wal] = target

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        """Writes inside return without their fsync; each dirty log syncs once at
        the end (also when the block raised: what was written stays written, as
        without the block). Nested blocks join the outermost one."""
        if self.deferring():
            yield
            return
        if self._owner is not None:
            raise RuntimeError("GroupCommit.deferred is used by another thread")
        self._owner = threading.get_ident()
        failed = True
        try:
            yield
            failed = False
        finally:
            self._owner = None
            dirty, self._dirty = self._dirty, {}
            self.rounds += 1
            try:
                for wal, target in dirty.items():
                    wal.sync_to(target)
            except Exception:
                if not failed:
                    raise
                # the block's own error is the one to report; the log is failed
                # (and says so on its next use)
                log.exception("fsync after a failed operation failed too")
