"""The step journal: a durable write-ahead log of steps for exactly-once.

A step (whatever bytes the caller chooses, e.g. JSON of acks, commits and
appends) is written first and made durable; the caller then applies it and
marks it done. After a crash `pending()` lists the steps written but not
marked done, oldest first, and the caller re-applies them idempotently.

On disk it is a `SegmentedLog` (one storage engine): a step is a record with
key `b"s"` and the payload as value; its step id is the record's offset. A
done mark is a record with key `b"d"` and the step ids as value (8-byte
little-endian each). A step is synced when written (policies ALWAYS and
INTERVAL; NEVER leaves it to the OS); done marks are not synced on their own:
losing one only replays a step, which the caller must tolerate anyway. Segments wholly below
the oldest pending step are deleted.
"""

from __future__ import annotations

import struct
from pathlib import Path

from runner.clock import Clock, SystemClock, now_ms
from runner.errors import LogFailed
from runner.fs import LOCAL, FileSystem
from runner.log.record import Fsync
from runner.log.segment import SegmentedLog

_STEP = b"s"
_DONE = b"d"
_ID = struct.Struct("<q")


class StepJournal:
    """Durable write-ahead journal of steps: write, apply, mark done, replay pending."""

    def __init__(
        self, directory: Path, *, fsync: Fsync = Fsync.ALWAYS, clock: Clock | None = None,
        segment_bytes: int = 4 * 1024 * 1024, fs: FileSystem = LOCAL,
    ) -> None:
        self.clock = clock or SystemClock()
        self.fsync = Fsync(fsync)
        self._log = SegmentedLog(directory, fsync=Fsync.NEVER, clock=self.clock,
                                 segment_bytes=segment_bytes, fs=fs)
        self._pending: dict[int, bytes] = {}
        offset = self._log.start_offset
        while offset < self._log.end_offset:
            for rec in self._log.read(offset, max_records=1000, max_bytes=4 * 1024 * 1024):
                if rec.key == _STEP:
                    self._pending[rec.offset] = rec.value or b""
                elif rec.key == _DONE and rec.value:
                    for (sid,) in _ID.iter_unpack(rec.value):
                        self._pending.pop(sid, None)
                offset = rec.offset + 1

    def write(self, payload: bytes) -> int:
        """Write a step; durable on return unless the policy is NEVER (INTERVAL too:
        the caller applies the step next, and a background flusher may make its
        effects durable any moment, so the record must be on disk first: a
        write-ahead log). Returns its step id."""
        sid = self._log.append([(_STEP, payload, (), now_ms(self.clock))])
        self._pending[sid] = payload
        if self.fsync is not Fsync.NEVER:
            self._log.sync()
        return sid

    def mark_done(self, step_id: int, *more: int) -> None:
        """The step(s) are fully applied: never replay them."""
        ids = (step_id, *more)
        self._log.append([(_DONE, b"".join(_ID.pack(i) for i in ids), (), now_ms(self.clock))])
        for sid in ids:
            self._pending.pop(sid, None)
        self._trim()

    def pending(self) -> list[tuple[int, bytes]]:
        """Steps written but not marked done, oldest first: replay these at recovery."""
        return sorted(self._pending.items())

    def _trim(self) -> None:
        oldest = min(self._pending, default=self._log.end_offset)
        if self._log.segment_count > 1:
            self._log.delete_before(oldest)

    @property
    def next_id(self) -> int:
        """The step id the next `write` returns (ids only grow)."""
        return self._log.end_offset

    def sync(self) -> None:
        self._log.sync()

    def maybe_sync(self) -> bool:
        return self._log.maybe_sync()

    @property
    def size_bytes(self) -> int:
        return self._log.size_bytes

    @property
    def failed(self) -> LogFailed | None:
        """Why the journal refuses everything (a failed fsync), or None."""
        return self._log.failed

    def close(self) -> None:
        self._log.close()
