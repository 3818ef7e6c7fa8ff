"""The engine's events: who waits for what, and the calls that tell them.

The engine fires an `Event` (runner.engine.contract) right after the call
that caused it -- a publish makes its queues ready and its topics appended, a
rebalance changes a group's assignment, a seek moves its offsets, a retry
with a delay or a lease moves the next timer. Consumers subscribe instead of
polling; a callback runs on the engine's owner thread and must be cheap (set
an asyncio.Event). Events are hints: spurious ones are fine, missing ones are
bugs. Firing an event nobody waits for costs one dict lookup.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Callable, Iterable

from runner.engine.contract import Event, EventKind

Callback = Callable[[Event], None]

TIMERS = Event(EventKind.TIMERS)


class Subscription:
    """One callback's interest in some events; `close` ends it."""

    __slots__ = ("_hub", "_events", "_callback", "closed")

    def __init__(self, hub: Hub, events: tuple[Event, ...], callback: Callback) -> None:
        self._hub = hub
        self._events = events
        self._callback = callback
        self.closed = False

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._hub.remove(self._events, self._callback)


class Hub:
    """Who waits for which event."""

    __slots__ = ("callbacks", "fired")

    def __init__(self) -> None:
        self.callbacks: dict[Event, list[Callback]] = defaultdict(list)
        self.fired = 0  # events delivered to at least one callback (tests count them)

    def add(self, events: Iterable[Event], callback: Callback) -> Subscription:
        evs = tuple(events)
        for ev in evs:
            self.callbacks[ev].append(callback)
        return Subscription(self, evs, callback)

    def remove(self, events: tuple[Event, ...], callback: Callback) -> None:
        for ev in events:
            cbs = self.callbacks.get(ev)
            if cbs is None:
                continue
            with contextlib.suppress(ValueError):
                cbs.remove(callback)
            if not cbs:
                del self.callbacks[ev]

    def fire(self, event: Event) -> None:
        cbs = self.callbacks.get(event)
        if cbs:
            self.fired += 1
            for cb in list(cbs):
                cb(event)

    def fire_names(self, kind: EventKind, names: Iterable[str]) -> None:
        for name in names:
            self.fire(Event(kind, name))

    def fire_all(self, kind: EventKind) -> None:
        """Every subscribed event of `kind` (whatever a call may have touched)."""
        for ev in [e for e in self.callbacks if e.kind is kind]:
            self.fire(ev)

    def fire_routes(self, routes: Iterable[Iterable[str]], topics: Iterable[str]) -> None:
        """A publish's destinations: topics appended, queues ready."""
        topic_names = set(topics)
        seen: set[str] = set()
        for names in routes:
            seen.update(names)
        for name in seen:
            kind = EventKind.RECORDS_APPENDED if name in topic_names else EventKind.QUEUE_READY
            self.fire(Event(kind, name))
