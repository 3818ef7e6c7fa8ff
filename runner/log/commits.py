"""Group commit: the fsyncs of one data directory, batched so each dirty log syncs once.

Under `Fsync.ALWAYS` a `SegmentedLog.append` returns after an fsync that
covers its bytes. Two blocks change that, on the thread that opened them:

* `GroupCommit.deferred()`: `append` returns once its bytes are written, and
  the log is noted as dirty; when the outermost block ends, every dirty log is
  synced ONCE, in the order it was first written, before the block's caller
  goes on. So an operation that writes several records to one log (an
  exactly-once step whose outputs and acks land in the same queue, a dead
  letter and its source) pays one fsync for that log, and the order of the
  syncs is the order of the writes (a dead-letter target is synced before its
  source, as without the block).

* `GroupCommit.ticketed()` (the daemon's event loop): the block returns
  without any fsync and hands out a ticket (`box.seq`); a round -- the
  loop's own, its fdatasyncs run by the kernel (see "Rounds on the event
  loop"), else the data dir's flusher thread's -- syncs each log dirtied since
  the last round ONCE and then resolves every ticket of the round
  (`when_durable(seq)`, a concurrent.futures.Future: the loop awaits it
  without blocking). A failed
  fsync fails that round's tickets only (with the log's LogFailed; the log
  refuses everything from then on, as without the block); later rounds of
  other logs succeed. Tickets are ordered: the round that resolves ticket N
  has synced everything written by tickets < N.

  Only a block that wrote ONE log is left to the flusher: its writes depend on
  nothing else that is unsynced. A block that wrote several logs (a fanout,
  a dead letter and its source) may need them synced in its write order, so
  it syncs them itself at its end, as `deferred()` does -- unless it says
  their order does not matter (`ticketed(ordered=False)`: the apply of an
  exactly-once step whose journal record is already durable, which replays
  whatever part a power cut lost).

Rounds on the event loop: an event loop that hands out tickets (the daemon's;
`run_on_loop`, hooked by the engine's `ticketed`) runs their rounds itself
where the file system can fsync asynchronously (`runner.fs.Syncer`: Linux
native AIO on the real disk). The first ticket of a turn schedules ONE round
(`loop.call_soon(run_round)`), which takes everything pending, starts the
fdatasync of its first log (`SegmentedLog.start_sync`) and returns; the
kernel runs it on its own worker while the loop goes on serving. Each end
starts the next log's (one after the other, in the order they were first
written, as the flusher thread syncs them); after the last, the loop resolves
the round's tickets and, if more was written meanwhile, starts the next
round. So no Python thread waits for the disk and no round is handed to a
thread and back (waking it, both taking turns at the GIL, waking the loop
again): 16 HTTP clients' single-message publishes under `--fsync always`
gained 1.32-1.42x on a 2-core machine (docs/engine.md). Tickets of another
thread, of a loop not hooked, or on a file system without asynchronous
fsyncs go to the flusher thread as before. One round at a time, whoever runs
it: the thread waits for a loop round in flight; `wait_idle` and `close`
(perhaps on the loop itself, which could not wait for its own round) take it
over and sync its logs on the calling thread, and its late end changes
nothing.

Ordering with everything else: a write that syncs now (an append outside any
block, the end of a `deferred()` block) first syncs everything the flusher
has pending (`flush_pending`), in write order. So durability follows the write
order of the data dir as without tickets: nothing written later (e.g. an
exactly-once step's journal record, or a message a consumer pulled before its
publish was synced) becomes durable before what it may depend on.

Nothing becomes visible as durable earlier than without the blocks: topic
reads stop at the synced end (`SegmentedLog.high_watermark`), and a caller
answers only after its block ended (`deferred`) or its ticket resolved
(`ticketed`).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import heapq
import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Protocol

from runner.fs import SyncEnded, Syncer

log = logging.getLogger(__name__)


class Dirty(Protocol):
    """A log that can be synced up to a written position (`SegmentedLog`)."""

    def sync_to(self, target: int) -> None: ...

    def start_sync(self, target: int, syncer: Syncer, done: SyncEnded) -> bool:
        """Start an asynchronous fsync of at least the first `target` bytes through
        `syncer`; `done(error)` is called when it ended. False (and no call) when
        they are synced already."""
        ...


_IDLE, _SYNC, _ASYNC = 0, 1, 2  # GroupCommit._busy


class TicketBox:
    """What a `ticketed()` block hands out: `seq` is set when the block ends
    (0 = nothing to wait for)."""

    __slots__ = ("seq",)

    def __init__(self) -> None:
        self.seq = 0


class GroupCommit:
    """Batches the fsyncs of the logs of one data directory (see the module)."""

    def __init__(self) -> None:
        self._owner: int | None = None
        self._ticketing = False  # the owner's block is a ticketed() one
        self._dirty: dict[Dirty, int] = {}  # log -> bytes written to sync, in write order
        self.rounds = 0  # deferred blocks ended (for tests and stats)
        # ticketed writes, handed to the flusher thread
        self._cond = threading.Condition(threading.Lock())
        self._pending: dict[Dirty, int] = {}  # not yet taken by a round, in write order
        self._running: dict[Dirty, int] = {}  # the round being synced
        self._running_upto = 0  # its last ticket (0: no round running)
        self._issued = 0  # last ticket handed out
        self._done = 0  # every ticket <= this is resolved
        self._failed: list[tuple[int, int, BaseException]] = []  # (after, upto, error)
        self._waiters: list[tuple[int, int, concurrent.futures.Future[None]]] = []
        self._thread: threading.Thread | None = None
        self._closed = False
        self.flush_rounds = 0  # flusher rounds run (for tests and stats)
        # called on the flusher thread after each round (an event loop's
        # call_soon_threadsafe: one wake-up per round, not one per waiter)
        self.on_round: Callable[[], None] | None = None
        self.flushed_tickets = 0  # tickets those rounds resolved
        # the event loop's own rounds (see "Rounds on the event loop")
        self._on_loop: Callable[[], bool] | None = None  # is the caller the loop now?
        self._schedule: Callable[[], None] | None = None  # run `run_round` there soon
        self._syncer: Syncer | None = None  # the loop's asynchronous fdatasync
        self._soon = False  # a round is scheduled on the loop
        self._for_thread = False  # something pending was handed to the flusher thread
        self._busy = _IDLE  # the round running: _SYNC (a thread's) or _ASYNC (the loop's)
        self._async_round = 0  # the loop round in flight (a stale completion is ignored)
        self.loop_rounds = 0  # rounds the loop ran (for tests and stats)

    # ------------------------------------------------------------ blocks
    def deferring(self) -> bool:
        """True on the thread inside a `deferred()` or `ticketed()` block."""
        return self._owner is not None and self._owner == threading.get_ident()

    def in_deferred(self) -> bool:
        """True on the thread inside a `deferred()` block (not a `ticketed()` one):
        its end syncs every log written in it, whatever their fsync policy."""
        return self.deferring() and not self._ticketing

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
        self._enter(ticketing=False)
        failed = True
        try:
            yield
            failed = False
        finally:
            dirty = self._leave()
            self._sync_all(dirty, failed)

    @contextlib.contextmanager
    def ticketed(self, *, ordered: bool = True) -> Iterator[TicketBox]:
        """Writes inside return without their fsync; at the end the block gets a
        ticket (`box.seq`) that `when_durable` resolves once the flusher synced
        them (see the module). Inside a `deferred()` block it joins that block
        (the box stays 0: the outer block's end syncs). `ordered=False`: several
        logs written need no order among them, the flusher syncs them all."""
        box = TicketBox()
        if self.deferring():
            yield box
            return
        self._enter(ticketing=True)
        failed = True
        try:
            yield box
            failed = False
        finally:
            dirty = self._leave()
            if len(dirty) > 1 and ordered:
                self._sync_all(dirty, failed)  # write order matters: sync now
                box.seq = self._current()
            elif dirty:
                box.seq = self._hand_over(dirty)
            else:
                box.seq = self._current()  # an answer may rest on pending writes

    def _enter(self, *, ticketing: bool) -> None:
        if self._owner is not None:
            raise RuntimeError("GroupCommit.deferred is used by another thread")
        self._owner = threading.get_ident()
        self._ticketing = ticketing

    def _leave(self) -> dict[Dirty, int]:
        self._owner = None
        self._ticketing = False
        dirty, self._dirty = self._dirty, {}
        self.rounds += 1
        return dirty

    def _sync_all(self, dirty: dict[Dirty, int], failed: bool) -> None:
        if not dirty:
            return
        try:
            self.flush_pending()
            for wal, target in dirty.items():
                wal.sync_to(target)
        except Exception:
            if not failed:
                raise
            # the block's own error is the one to report; the log is failed
            # (and says so on its next use)
            log.exception("fsync after a failed operation failed too")

    # ------------------------------------------------------------ the flusher
    def _current(self) -> int:
        with self._cond:
            return self._issued if self._issued > self._done else 0

    def run_on_loop(self, on_loop: Callable[[], bool], schedule: Callable[[], None],
                    syncer: Syncer) -> None:
        """Let an event loop run the rounds of the tickets it hands out (see "Rounds
        on the event loop" in the module): `on_loop()` tells whether the calling
        thread is running that loop now, `schedule()` makes the loop call
        `run_round` soon (`loop.call_soon`), and `syncer` starts fdatasyncs whose
        ends the loop is told of."""
        self.detach_loop()
        with self._cond:
            self._on_loop, self._schedule, self._syncer = on_loop, schedule, syncer

    def detach_loop(self) -> None:
        """No event loop runs rounds any more (another is hooked, or its fdatasyncs
        cannot start): a round it has in flight or scheduled is taken over and
        synced here, and later tickets go to the thread until `run_on_loop`."""
        with self._cond:
            self._forget_loop()
            stranded = self._busy == _ASYNC or bool(self._pending)
        if stranded:
            self._round()

    def _forget_loop(self) -> None:
        """(Under `_cond`.) No loop runs rounds: later tickets go to the thread."""
        self._on_loop = self._schedule = self._syncer = None
        self._soon = False

    def _hand_over(self, dirty: dict[Dirty, int]) -> int:
        on_loop = self._on_loop
        inline = on_loop is not None and on_loop()
        with self._cond:
            if self._closed:
                raise RuntimeError("the data directory's group commit is closed")
            for wal, target in dirty.items():
                if self._pending.get(wal, -1) < target:
                    self._pending[wal] = target
            self._issued += 1
            seq = self._issued
            if not inline:
                self._wake_thread()
                return seq
            if self._soon or self._busy == _ASYNC:
                # the round scheduled takes it, or the loop's next one (scheduled
                # when the one in flight ended)
                return seq
            if self._busy == _SYNC:  # a thread's round: the thread takes it after
                self._wake_thread()
                return seq
            self._soon = True
        self._schedule_round()
        return seq

    def _schedule_round(self) -> None:
        """Ask the loop to run `run_round` (`_soon` is set); if it cannot (it is
        closing), the thread takes the round."""
        schedule = self._schedule
        try:
            assert schedule is not None
            schedule()
        except Exception:
            log.debug("cannot schedule a round on the event loop", exc_info=True)
            with self._cond:
                self._soon = False
                self._wake_thread()

    def _wake_thread(self) -> None:
        """(Under `_cond`.) Start the flusher thread, or wake it for `_pending`."""
        self._for_thread = True
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="group-commit",
                                            daemon=True)
            self._thread.start()
        self._cond.notify_all()

    def run_round(self) -> None:
        """The event loop's round (scheduled by `_hand_over`): start an asynchronous
        fsync of each log pending and return; the last one to end resolves the
        round's tickets (on the loop) and schedules the next round when more is
        pending by then."""
        syncer = self._syncer
        with self._cond:
            self._soon = False
            if self._busy or not self._pending or syncer is None:
                return  # the round running takes what is pending
            batch, self._pending = self._pending, {}
            self._running = batch
            after, upto = self._done, self._issued
            self._running_upto = upto
            self._busy = _ASYNC
            self._async_round += 1
            this = self._async_round
        todo = iter(batch.items())
        errors: list[BaseException] = []

        def next_sync(error: BaseException | None = None) -> None:
            # one log after the other, in the order they were first written
            if error is not None:
                errors.append(error)
            for wal, target in todo:
                if self._async_round != this or self._busy != _ASYNC:
                    return  # taken over (close, wait_idle): synced there
                try:
                    if wal.start_sync(target, syncer, next_sync):
                        return  # goes on when it ended
                except OSError as exc:  # could not be started: synced here instead,
                    # and the thread takes the rounds from now on (a kernel or file
                    # system without asynchronous fdatasync would refuse them all)
                    log.warning("an asynchronous fdatasync could not start (%s): synced "
                                "on the event loop, and the flusher thread runs the "
                                "rounds from now on", exc)
                    with self._cond:
                        self._forget_loop()
                    try:
                        wal.sync_to(target)
                    except Exception as failed:  # the log is failed and says so
                        errors.append(failed)
                except Exception as exc:  # the log is failed (and says so)
                    errors.append(exc)
            self._end_async(this, after, upto, errors[0] if errors else None)

        next_sync()

    def _end_async(self, this: int, after: int, upto: int,
                   error: BaseException | None) -> None:
        with self._cond:
            if self._busy != _ASYNC or self._async_round != this:
                return  # taken over and resolved by a synchronous round (close)
            self._busy = _SYNC  # resolving: nobody takes it over any more
        self.loop_rounds += 1
        self._resolve(after, upto, error)  # also marks the round ended
        with self._cond:
            if not self._pending or self._soon or self._busy or self._closed:
                return
            if self._schedule is None:  # the loop runs no more rounds (refused starts)
                self._wake_thread()
                return
            self._soon = True
        self._schedule_round()

    def _run(self) -> None:
        while True:
            with self._cond:
                # only what was handed to it (a loop's pending is the loop's round)
                while not (self._pending and self._for_thread) and not self._closed:
                    self._cond.wait()
                if not self._pending:
                    return  # closed and nothing left
                self._for_thread = False
            self._round()

    def _round(self) -> bool:
        """Sync each log pending once and resolve the round's tickets, on the calling
        thread; False when nothing was pending. One round at a time: a thread's
        waits for the one running; any other caller (close, wait_idle: perhaps on
        the loop itself, which cannot wait for its own round) takes over a loop
        round in flight and syncs its logs here."""
        flusher = threading.current_thread() is self._thread
        with self._cond:
            while self._busy == _SYNC or (
                    self._busy == _ASYNC and flusher and not self._closed):
                self._cond.wait()
            if self._busy == _ASYNC:
                # taken over (its late end is ignored), with what came since
                batch = self._unsynced()
                self._pending = {}
                after, upto = self._done, self._issued
            elif not self._pending:
                return False
            else:
                batch, self._pending = self._pending, {}
                after, upto = self._done, self._issued
            self._running = batch
            self._running_upto = upto
            self._busy = _SYNC
        error: BaseException | None = None
        for wal, target in batch.items():
            try:
                wal.sync_to(target)
            except Exception as exc:  # the log is failed and says so
                if error is None:
                    error = exc
        self._resolve(after, upto, error)
        if not flusher:
            with self._cond:
                if self._pending:  # handed out meanwhile, seeing this round busy
                    self._wake_thread()
        return True

    def _resolve(self, after: int, upto: int, error: BaseException | None) -> None:
        ready: list[concurrent.futures.Future[None]] = []
        with self._cond:
            self._busy = _IDLE
            self._running = {}
            self._running_upto = 0
            self._done = upto
            if error is not None:
                self._failed.append((after, upto, error))
                del self._failed[:-64]  # old failures: waiters registered long ago
            while self._waiters and self._waiters[0][0] <= upto:
                ready.append(heapq.heappop(self._waiters)[2])
            self.flush_rounds += 1
            self.flushed_tickets += upto - after
            self._cond.notify_all()
        for fut in ready:
            if fut.done():
                continue
            with contextlib.suppress(concurrent.futures.InvalidStateError):  # cancelled
                if error is not None:
                    fut.set_exception(error)
                else:
                    fut.set_result(None)
        hook = self.on_round
        if hook is not None:
            try:
                hook()
            except Exception:  # e.g. the loop closed
                log.debug("group commit round hook failed", exc_info=True)

    def error_of(self, seq: int) -> BaseException | None:
        """The error of the failed round that held resolved ticket `seq`, else None."""
        with self._cond:
            for after, upto, error in self._failed:
                if after < seq <= upto:
                    return error
        return None

    @property
    def done(self) -> int:
        """Every ticket up to this one is resolved."""
        return self._done

    def holds_back(self, seq: int) -> bool:
        """Whether bytes written now would miss the round that syncs ticket `seq`:
        the ticket is unresolved and its round is being synced, or the flusher is
        idle and about to take it. False when it waits behind an earlier round the
        flusher is busy with (what is written meanwhile joins its round) and once it
        is resolved. A hint read without the lock."""
        running = self._running_upto
        return self._done < seq and not 0 < running < seq

    def when_durable(self, seq: int) -> concurrent.futures.Future[None]:
        """A future resolved when ticket `seq`'s writes are synced (or failed with
        the round's error)."""
        fut: concurrent.futures.Future[None] = concurrent.futures.Future()
        with self._cond:
            if seq > self._done:
                heapq.heappush(self._waiters, (seq, id(fut), fut))
                return fut
        error = self.error_of(seq)
        if error is not None:
            fut.set_exception(error)
        else:
            fut.set_result(None)
        return fut

    def flush_pending_of(self, wals: Iterable[Dirty]) -> None:
        """`flush_pending` for `wals` only: sync what the flusher holds of them."""
        with self._cond:
            todo: dict[Dirty, int] = {}
            for wal in wals:
                target = max(self._running.get(wal, -1), self._pending.get(wal, -1))
                if target >= 0:
                    todo[wal] = target
        _sync_each(todo)

    def flush_pending(self) -> None:
        """Sync everything the flusher has not synced yet, in write order, on the
        calling thread (see "Ordering" in the module). A failing log is left to
        its tickets and its next use."""
        with self._cond:
            todo = self._unsynced()
        _sync_each(todo)

    def _unsynced(self) -> dict[Dirty, int]:
        """(Under `_cond`.) The round running's logs and what is pending, in write
        order, each up to its furthest target."""
        todo = dict(self._running)
        for wal, target in self._pending.items():
            if todo.get(wal, -1) < target:
                todo[wal] = target
        return todo

    def wait_idle(self, timeout_s: float | None = None) -> bool:
        """Wait until every ticket handed out is resolved (tests, close). What
        waits for a round on the event loop is synced here (the loop may be the
        caller)."""
        self._round()
        with self._cond:
            return self._cond.wait_for(lambda: self._done >= self._issued, timeout_s)

    def close(self) -> None:
        """Let the flusher finish its pending rounds and stop."""
        with self._cond:
            self._closed = True
            thread = self._thread
            self._cond.notify_all()
        if thread is not None and thread is not threading.current_thread():
            thread.join()
        self._round()  # a round scheduled on a loop that will not run it


def _sync_each(todo: dict[Dirty, int]) -> None:
    """Sync each log up to its target on the calling thread; a failing log is left
    to its tickets and its next use."""
    for wal, target in todo.items():
        try:
            wal.sync_to(target)
        except Exception:
            log.debug("pending fsync failed", exc_info=True)
