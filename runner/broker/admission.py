"""Admission: whether a message may be stored, decided in one place.

Every rule that can refuse, drop or spill a message on its way into a queue
lives here, and every way in (a publish, a run of plain messages, a step's
dry run, a dead letter, a replay) asks it:

* the broker's budgets (`Budgets`): the disk budget (the queue logs' bytes)
  and the memory budget (`MemoryBudget`: what cannot spill fills it) refuse a
  publish or a step before anything is stored;
* a queue's length limits (`room`): `max_length` / `max_length_bytes` and the
  overflow behaviour say whether one more message (or a step's n messages)
  fits, makes room by dropping heads (`drop-head`), dies on arrival (alone
  over the limits under `drop-head`) or is refused (`reject-publish`,
  `reject-publish-dlx`); `full_sentence` is the refusal's wording;
* a stored message's memory (`MemoryBudget.admit`): its overhead and headers
  always count; its body stays in memory while the budget has room, else it
  is spilled to disk when the queue can spill.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import Enum

from runner.broker.message import MESSAGE_OVERHEAD, QueuedMessage, headers_memory
from runner.errors import Refused
from runner.topology.model import Overflow, Queue


class MemoryBudget:
    """Memory held by the queued messages of all queues of a broker: MESSAGE_OVERHEAD
    a message, their headers (`headers_memory`) and the bodies kept in memory
    (`used`), how many messages (`count`), and what stays in memory whatever is
    spilled (`fixed`: the overheads, the headers, and what others `hold`, such as
    the broker's remembered message ids).

    A body that would pass `limit` is spilled to disk; what `fixed` counts cannot
    be, so once it alone reaches `limit` publishes are refused (`full`)."""

    __slots__ = ("limit", "used", "count", "headers", "held", "ids")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.count = 0
        self.headers = 0  # headers_memory of the counted messages
        self.held = 0  # bytes others hold against the budget (`hold`)
        self.ids = 0  # the message ids remembered for deduplication `held` counts

    @property
    def fixed(self) -> int:
        """Bytes that stay in memory however many bodies are spilled."""
        return self.count * MESSAGE_OVERHEAD + self.headers + self.held

    @property
    def full(self) -> bool:
        """The memory that cannot spill fills the budget: no more messages fit. A
        budget of 0 (the broker's tests) spills every body and never fills; the daemon
        refuses budgets under 1 MiB."""
        return self.fixed >= self.limit > 0

    def hold(self, nbytes: int, ids: int = 0) -> None:
        """Count (or, negative, give back) memory kept outside the queues: `ids`
        remembered message ids (`message.id_memory` each) of `nbytes` in all."""
        self.held += nbytes
        self.used += nbytes
        self.ids += ids

    def exhausted(self) -> str:
        """The sentence of a refusal while `full`."""
        head = (f"memory budget exhausted: {self.count} queued messages hold "
                f"{self.count * MESSAGE_OVERHEAD}")
        if not self.headers and not self.held:
            return (f"{head} bytes of {self.limit} besides their bodies ({MESSAGE_OVERHEAD} "
                    "bytes a message); publish refused until consumers catch up")
        parts = [f"{head} bytes ({MESSAGE_OVERHEAD} bytes a message)"]
        if self.headers:
            parts.append(f"their headers {self.headers} bytes")
        if self.held:
            parts.append(f"{self.ids} message ids remembered for deduplication "
                         f"{self.held} bytes")
        until = "consumers catch up" + (
            " or remembered message ids leave the dedup window" if self.held else "")
        return (f"{', '.join(parts)}: {self.fixed} bytes of {self.limit} besides the "
                f"bodies; publish refused until {until}")

    def admit(self, headers: int, size: int, can_spill: bool) -> bool:
        """Count a message being stored, with `headers` bytes of headers
        (`headers_memory`) and a body of `size` bytes; True to keep the body in
        memory, False to spill it (past the limit, when the queue `can_spill`)."""
        self.count += 1
        self.headers += headers
        fixed = MESSAGE_OVERHEAD + headers
        if can_spill and self.used + fixed + size > self.limit:
            self.used += fixed
            return False
        self.used += fixed + size
        return True

    def take(self, msg: QueuedMessage) -> None:
        """Count a message recovered or restored as it is (its body counts when
        it is in memory)."""
        h = headers_memory(msg.headers)
        self.count += 1
        self.headers += h
        self.used += MESSAGE_OVERHEAD + h + (msg.size if isinstance(msg.body, bytes) else 0)

    def release(self, msg: QueuedMessage) -> None:
        """A counted message leaves memory."""
        h = headers_memory(msg.headers)
        self.count -= 1
        self.headers -= h
        self.used -= MESSAGE_OVERHEAD + h + (msg.size if isinstance(msg.body, bytes) else 0)


class Budgets:
    """The broker-wide checks before anything of a publish or a step is stored."""

    __slots__ = ("memory", "disk_budget_bytes", "_disk_used")

    def __init__(
        self, memory: MemoryBudget, disk_budget_bytes: int | None,
        disk_used: Callable[[], int],
    ) -> None:
        self.memory = memory
        self.disk_budget_bytes = disk_budget_bytes
        self._disk_used = disk_used

    def check_publish(self) -> None:
        """Refused when the disk budget is exhausted, then when the memory budget is."""
        self.check_disk()
        if self.memory.full:
            raise Refused(self.memory.exhausted())

    def check_disk(self) -> None:
        """Refused when the queue logs (and spills) use the disk budget up."""
        budget = self.disk_budget_bytes
        if budget is None:
            return
        used = self._disk_used()
        if used >= budget:
            raise Refused(
                f"disk budget exhausted: queue logs use {used} bytes of {budget}; "
                "publish refused until consumers catch up"
            )


class Room(Enum):
    """What a queue does with more messages (`room`)."""

    FITS = "fits"  # stored as they are
    DROP_HEAD = "drop-head"  # stored after dropping heads (dead-lettered `maxlen`)
    DROP_NEW = "drop-new"  # drop-head, but over the limits alone: every head and it go
    REFUSE = "refuse"  # reject-publish(-dlx): refused (-dlx: dead-lettered `maxlen`)


def unlimited(spec: Queue) -> bool:
    """No length limit: nothing is ever refused or dropped for length."""
    return spec.max_length is None and spec.max_length_bytes is None


def refuses_when_full(spec: Queue) -> bool:
    """A length limit with `reject-publish` or `reject-publish-dlx` overflow."""
    return not unlimited(spec) and spec.overflow is not Overflow.DROP_HEAD


def over(spec: Queue, ready: int, ready_bytes: int, extra_msgs: int, extra_bytes: int) -> bool:
    """Would `extra_msgs` more messages of `extra_bytes` pass the length limits?"""
    if spec.max_length is not None and ready + extra_msgs > spec.max_length:
        return True
    return spec.max_length_bytes is not None and ready_bytes + extra_bytes > spec.max_length_bytes


def room(spec: Queue, ready: int, ready_bytes: int, extra_msgs: int, extra_bytes: int) -> Room:
    """What the queue does with `extra_msgs` more messages of `extra_bytes` in all
    (published one after the other, nothing consumed in between). DROP_NEW only
    for one message (`extra_msgs` == 1) too big for the queue even when empty."""
    if not over(spec, ready, ready_bytes, extra_msgs, extra_bytes):
        return Room.FITS
    if spec.overflow is not Overflow.DROP_HEAD:
        return Room.REFUSE
    if extra_msgs == 1 and over(spec, 0, 0, 1, extra_bytes):
        return Room.DROP_NEW
    return Room.DROP_HEAD


def limit_text(spec: Queue) -> str:
    """The queue's length limits as a refusal names them."""
    parts = []
    if spec.max_length is not None:
        parts.append(f"max_length {spec.max_length}")
    if spec.max_length_bytes is not None:
        parts.append(f"max_length_bytes {spec.max_length_bytes}")
    return ", ".join(parts)


def full_sentence(spec: Queue) -> str:
    """"queue 'q' is full (max_length 3, overflow reject-publish)"."""
    return f"queue '{spec.name}' is full ({limit_text(spec)}, overflow {spec.overflow.value})"
