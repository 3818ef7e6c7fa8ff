"""Merged writes: the small puts and publishes of one turn of the event loop
stored as one write each queue (or exchange) and made durable under one ticket
(the daemon's single-message HTTP path).

Sixteen HTTP clients that each put one message per request hand the daemon
sixteen requests that its event loop parses in the same turn. Stored one by
one, each pays the engine's whole write path: a broker call, its journal
record (`pwrite`), a ticket handed to a group-commit round, and a wait of its
own. `WriteMerger.put` / `publish` instead take the request's messages and
return a future; at the end of the turn (`loop.call_soon`, which runs after
every callback of the turn, so after every request parsed in it) all the
messages taken for one queue (or one exchange) are stored as ONE batch: one
broker call, one journal record and one ticket, and one `durable` wait
resolves every request of the turn (a database's group commit; a Kafka
producer's batch per partition, built on the server side).

What each caller sees is what its own write + `durable` would have shown:

* its routes, once its messages are durable (the highest ticket of the turn
  is awaited, then each caller's own ticket is asked whether its flusher
  round failed);
* Refused (a full `reject-publish` queue) with `accepted` counted in its own
  messages, once what it took is durable; the callers merged before it are
  stored (with their routes, from the broker's PublishRefused), the callers
  after it are stored again (each on its own merit: a queue that took
  nothing more refuses them too);
* any other refusal of a merged batch (an unknown queue or exchange, a bad
  header, the fanout cap) stores each caller's messages alone, so only the
  caller whose messages are at fault gets the error -- those refusals store
  nothing (they are checked before the first message is stored), so nothing
  is stored twice;
* the storage error of a failed log: every caller of the batch gets it, and
  a failed fsync fails every caller whose ticket was in that flusher round
  (as without merging).

While the flusher is syncing the round that holds the last merged batch (or is
idle and about to take it), the callers that come are held, not stored: their
bytes could not make that round anyway. When the batch is durable (the round
ended) they are stored as one write (one batch per destination again) and
make the next round. Under load this merges the requests of several turns of
the loop, not one: one write, one ticket and one flusher round for all the
requests that arrived during a round (16 clients: about 7 requests a round
instead of 1-3 writes a round). The same holds when the round runs on the
event loop itself (`runner.log.commits`, "Rounds on the event loop"): it is
scheduled when the batch's ticket is handed out, the callers of the turns
before it runs are held, and they are stored as one write once it ran.
While the last batch's ticket still waits for a round (the flusher busy with
other writes: acks, steps, big publishes), callers are stored at the end of
their turn as before and share the batch's round. A held caller whose request
was cancelled meanwhile is dropped, not stored: nobody is answered for it.

A merged batch of appends puts its keyless records on ONE partition, the next
batch on the next (Kafka's sticky partitioner, KIP-480; counted apart from the
record-by-record round robin), so its round syncs one log, not one per
partition; a caller stored alone keeps the round robin record by record.

Callers are merged per destination in the order they came; two requests of
one client are never in one turn (it waits for the first answer), and
requests in flight together have no order between them. A merged batch
makes at most `max_copies` message copies (the daemon's --max-fanout).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from runner.broker.results import PublishRefused
from runner.engine.contract import Appended, OutMessage, OutRecord, Producer, Ticket
from runner.errors import EngineError, Refused, StorageError

log = logging.getLogger(__name__)

Routes = tuple[tuple[str, ...], ...]  # per message, the queues and topics it reached
Positions = tuple[tuple[int, int], ...]  # per record, its partition and offset
Item = OutMessage | OutRecord
Results = tuple[Any, ...]  # Routes or Positions


class WriteTarget(Producer, Protocol):
    """What the merger stores through (the embedded backend): the contract's
    Producer, and the backend's tickets."""

    def append_together(self, topic: str, records: Sequence[OutRecord]) -> Appended:
        """`append`, the keyless records all on one partition (the next of the sticky
        writes' own round robin): a merged batch of many requests' records is one
        log to sync."""
        ...

    def taken(self) -> Ticket: ...

    async def durable(self, ticket: Ticket) -> None: ...

    def holds_back(self, ticket: Ticket) -> bool:
        """Whether bytes written now would miss the fsync round of `ticket` (being
        synced, or about to be taken by an idle flusher)."""
        ...


class _Caller:
    __slots__ = ("copies", "future", "items", "outcome", "ticket")

    def __init__(self, items: Sequence[Item], copies: int,
                 future: asyncio.Future[Any]) -> None:
        self.items = items
        self.copies = copies
        self.future = future
        self.outcome: Results | BaseException | None = None
        self.ticket = Ticket.DONE  # what it took is durable once this is


PUT, PUBLISH, APPEND = "put", "publish", "append"


class WriteMerger:
    """Merges the puts, publishes and appends of one turn of the event loop (see the
    module)."""

    def __init__(self, target: WriteTarget, *, max_copies: int = 1000) -> None:
        self._target = target
        self.max_copies = max_copies  # a merged batch makes at most this many copies
        # (kind, destination, 0; or a number of its own for a caller kept alone)
        self._pending: dict[tuple[str, str, int], list[_Caller]] = {}
        self._alone = 0
        self._scheduled = False
        self._settling: set[asyncio.Task[None]] = set()
        # the ticket of the last merged batch: while the flusher syncs its round,
        # callers are held and stored as one batch once it is durable (see the module)
        self._last = Ticket.DONE
        self.batches = 0  # merged batches tried (for tests and stats)
        self.callers = 0  # callers that merged batches stored

    def put(self, queue: str, messages: Sequence[OutMessage]) -> asyncio.Future[Routes]:
        """The routes of `messages` put into `queue`, once they are durable (see the
        module for the errors)."""
        return self._take(PUT, queue, messages, len(messages))

    def publish(self, exchange: str, messages: Sequence[OutMessage],
                copies: int) -> asyncio.Future[Routes]:
        """The routes of `messages` published through `exchange`, once they are
        durable; `copies`: how many they make (the queues and topics reached)."""
        return self._take(PUBLISH, exchange, messages, copies)

    def append(self, topic: str, records: Sequence[OutRecord]) -> asyncio.Future[Positions]:
        """Each record's (partition, offset) appended to `topic`, once they are durable.
        Records of an idempotent producer (`producer_id`) are not merged: its
        sequence numbers are checked per batch."""
        alone = any(r.producer_id is not None for r in records)
        return self._take(APPEND, topic, records, len(records), alone=alone)

    def _take(self, kind: str, name: str, items: Sequence[Item], copies: int, *,
              alone: bool = False) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        key = (kind, name, 0)
        if alone:
            self._alone += 1
            key = (kind, name, self._alone)
        callers = self._pending.get(key)
        if callers is None:
            callers = self._pending[key] = []
        callers.append(_Caller(items, copies, future))
        if not self._scheduled and not self._held():
            self._scheduled = True
            loop.call_soon(self._flush)
        return future

    def _held(self) -> bool:
        """Whether new callers wait for the last batch's round to end (they would miss
        it): its task stores them when it is durable."""
        last = self._last
        return bool(last.seq) and self._target.holds_back(last)

    # ------------------------------------------------------------------ storing
    def _flush(self) -> None:
        self._scheduled = False
        pending: dict[tuple[str, str, int], list[_Caller]] = {}
        for key, callers in self._pending.items():
            # a caller whose request was cancelled while held is not stored
            live = [c for c in callers if not c.future.done()]
            if live:
                pending[key] = live
        self._pending = {}
        done = [c for callers in pending.values() for c in callers]
        ticket = Ticket.DONE
        try:
            for (kind, name, _), callers in pending.items():
                ticket = ticket.max(self._store(kind, name, callers))
        except BaseException as exc:  # a bug, or the loop stopping: answer everyone
            log.exception("merged writes failed")
            for c in done:
                if c.outcome is None:
                    c.outcome = exc
            if not isinstance(exc, Exception):
                self._settle_now(done)
                raise
        if not ticket.seq:
            self._settle_now(done)
            return
        task = asyncio.get_running_loop().create_task(self._settle_when_durable(ticket, done))
        self._last = Ticket(ticket.seq)
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)

    def _store(self, kind: str, name: str, callers: list[_Caller]) -> Ticket:
        """Store the callers' messages in batches; set each one's outcome; the ticket
        covering what was taken."""
        store = self._store_fn(kind)
        store_merged = self._store_fn(kind, merged=True)
        ticket = Ticket.DONE
        i = 0
        while i < len(callers):
            first = i
            chunk = [callers[i]]
            size = callers[i].copies
            for c in callers[i + 1:]:
                if size + c.copies > self.max_copies:
                    break
                chunk.append(c)
                size += c.copies
            i += len(chunk)
            if len(chunk) == 1:
                ticket = ticket.max(self._store_alone(store, name, chunk[0]))
                continue
            messages = [m for c in chunk for m in c.items]
            self.batches += 1
            try:
                results, stored = store_merged(name, messages)
            except Refused as exc:
                taken = self._taken()
                ticket = ticket.max(taken)
                # the callers after the refused one took nothing: put them again
                i = first + self._split_refused(kind, name, chunk, exc, taken)
                continue
            except StorageError as exc:  # a failed log: nothing more goes in
                for c in chunk:
                    c.outcome = exc
                continue
            except EngineError:
                # refused whole before anything was stored: find whose it is
                for c in chunk:
                    ticket = ticket.max(self._store_alone(store, name, c))
                continue
            except Exception as exc:  # not the engine's: what was stored is not known
                log.exception("a merged write to '%s' failed", name)
                for c in chunk:
                    c.outcome = exc
                ticket = ticket.max(self._taken())
                continue
            self.callers += len(chunk)
            ticket = ticket.max(stored)
            start = 0
            for c in chunk:
                end = start + len(c.items)
                c.outcome = results[start:end]
                c.ticket = stored
                start = end
        return ticket

    def _store_fn(self, kind: str, *, merged: bool = False) -> _Store:
        """The backend write of `kind`: (results per item, ticket). `merged`: of
        several callers' items (their keyless records go to one partition)."""
        target = self._target
        if kind == APPEND:
            write_records = target.append_together if merged else target.append

            def append(name: str, items: Sequence[Any]) -> tuple[Results, Ticket]:
                appended = write_records(name, items)
                return appended.positions, appended.ticket
            return append
        write = target.put if kind == PUT else target.publish

        def put_or_publish(name: str, items: Sequence[Any]) -> tuple[Results, Ticket]:
            published = write(name, items)
            return published.routes, published.ticket
        return put_or_publish

    def _store_alone(self, store: _Store, name: str, caller: _Caller) -> Ticket:
        try:
            results, stored = store(name, caller.items)
        except Refused as exc:
            caller.outcome = exc
            caller.ticket = self._taken()
            return caller.ticket
        except EngineError as exc:
            caller.outcome = exc
            return Ticket.DONE
        except Exception as exc:  # not the engine's: what was stored is not known
            log.exception("a write to '%s' failed", name)
            caller.outcome = exc
            return self._taken()
        caller.outcome = results
        caller.ticket = stored
        return stored

    def _taken(self) -> Ticket:
        """The ticket of everything taken so far (what a write refused part-way
        stored is durable once it is); DONE when even that fails (a closed engine)."""
        try:
            return self._target.taken()
        except Exception:  # noqa: BLE001 - the caller's own error is the one to report
            log.debug("no ticket for what was taken", exc_info=True)
            return Ticket.DONE

    def _split_refused(self, kind: str, name: str, chunk: list[_Caller], exc: Refused,
                       taken: Ticket) -> int:
        """A merged batch refused at message `exc.accepted`: the callers before it are
        stored with their routes, the one holding it is refused with its own count;
        the ones after it took nothing. How many callers of `chunk` are settled."""
        stored: Sequence[tuple[str, ...]] = (
            [tuple(r.destinations) for r in exc.routes] if isinstance(exc, PublishRefused)
            else [(name,) if kind == PUT else ()] * exc.accepted)  # a put's route: its queue
        start = 0
        for n, c in enumerate(chunk):
            end = start + len(c.items)
            c.ticket = taken
            if exc.accepted < end:
                c.outcome = Refused(str(exc), accepted=exc.accepted - start, routed=exc.routed)
                return n + 1
            c.outcome = tuple(stored[start:end])
            start = end
        log.warning("a merged put refused past its last message: %s", exc)
        return len(chunk)

    async def _settle_when_durable(self, ticket: Ticket, callers: list[_Caller]) -> None:
        target = self._target
        failed: dict[int, BaseException | None] = {}
        try:
            # every ticket of the turn is resolved then; each caller's own round is
            # asked below (the combined ticket would fail them all for one)
            await target.durable(Ticket(ticket.seq))
        except Exception:  # noqa: BLE001, S110 - the round's error, per ticket below
            pass
        except BaseException:  # cancelled: a closing loop; what waited is not stored
            held, self._pending = self._pending, {}
            self._last = Ticket.DONE  # nothing is held behind a batch nobody settles
            for c in [*callers, *(c for waiting in held.values() for c in waiting)]:
                if not c.future.done():
                    c.future.cancel()
            raise
        if self._pending and not self._scheduled:
            # what came while this batch's round was synced: one write now
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)
        for c in callers:
            seq = c.ticket.seq
            if seq in failed or not seq:
                continue
            try:  # resolved already: only asks whether its flusher round failed
                await target.durable(c.ticket)
                failed[seq] = None
            except Exception as exc:  # noqa: BLE001 - a failed fsync of its round
                failed[seq] = exc
        for c in callers:
            error = failed.get(c.ticket.seq)
            _settle_one(c, error if error is not None else c.outcome)

    def _settle_now(self, callers: list[_Caller]) -> None:
        for c in callers:
            _settle_one(c, c.outcome)


_Store = Callable[[str, Sequence[Any]], tuple[Results, Ticket]]


def _settle_one(c: _Caller, outcome: Results | BaseException | None) -> None:
    if c.future.done():  # its request was cancelled meanwhile
        return
    if outcome is None:  # never stored (cannot happen: every caller gets an outcome)
        outcome = StorageError("the write was not stored")
    if isinstance(outcome, BaseException):
        c.future.set_exception(outcome)
    else:
        c.future.set_result(outcome)
