"""Sync batches: several calls of a sync handler run back to back in ONE pool thread.

Handing each call of a sync handler to the thread pool on its own costs an
executor submit, two futures, a `call_soon_threadsafe` and a timeout scope per
message. A `SyncBatch` runs a run of calls in one pool thread and the loop
gets all their outcomes from one future. The per-call `timeout` is enforced
by the loop looking at when the call in progress started (`overran`): a call
that overruns is failed at once, its context closed, and the thread starts no
further call of the batch (the worker hands those to a new batch).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from runner.clock import Clock
from runner.pipeline.handler import Handler
from runner.pipeline.message import Context, Message


@dataclass(frozen=True, slots=True)
class CallOutcome:
    """One finished call: what it returned or raised, and how long it took (clock seconds)."""

    error: Exception | None
    result: Any
    elapsed_s: float


class SyncBatch:
    """Calls of one sync handler over `messages`, in order, in one pool thread."""

    __slots__ = ("_handler", "_calls", "_clock", "_stopping", "_lock", "outcomes",
                 "_started", "_clock_started", "abandoned")

    def __init__(
        self, handler: Handler, calls: Sequence[tuple[Message, Context]], *, clock: Clock,
        stopping: Callable[[], bool],
    ) -> None:
        self._handler = handler
        self._calls = calls
        self._clock = clock
        self._stopping = stopping
        self._lock = threading.Lock()
        self.outcomes: list[CallOutcome] = []  # of the first len(outcomes) calls
        self._started: float | None = None  # time.monotonic() of the call in progress
        self._clock_started = 0.0
        self.abandoned = False  # the loop gave up on the batch: start nothing more

    def run(self) -> None:
        """In a pool thread: each call in turn, until done, stopped or abandoned."""
        fn = self._handler.fn
        wants_context = self._handler.wants_context
        clock = self._clock
        for message, ctx in self._calls:
            with self._lock:
                if self.abandoned or self._stopping():
                    return
                self._clock_started = start = clock.monotonic()
                self._started = time.monotonic()
            error: Exception | None = None
            result: Any = None
            try:
                result = fn(message, ctx) if wants_context else fn(message)
            except Exception as exc:  # the handler failed: any exception is a failure
                error = exc
            elapsed = clock.monotonic() - start
            with self._lock:
                if self.abandoned:  # this call timed out meanwhile: its outcome is void
                    return
                self._started = None
                self.outcomes.append(CallOutcome(error, result, elapsed))

    def overran(self, timeout_s: float) -> tuple[bool, float]:
        """On the loop: (True, elapsed clock seconds) when the call in progress has
        run `timeout_s` or more (the batch is then abandoned), else (False, seconds
        left before it could overrun)."""
        with self._lock:
            if self._started is None:  # between calls or not started yet
                return False, timeout_s
            left = self._started + timeout_s - time.monotonic()
            if left > 0:
                return False, left
            self.abandoned = True
            return True, self._clock.monotonic() - self._clock_started

    def abandon(self) -> int:
        """Start nothing more; how many calls finished or are in progress."""
        with self._lock:
            self.abandoned = True
            return len(self.outcomes) + (self._started is not None)
