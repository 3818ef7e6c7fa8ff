"""Fanout of a publish request: the message copies it creates, capped, stored in slices.

One request of 10,000 messages through a fanout exchange bound to 200 queues
made 2,000,000 queue messages in one 18 s step, `/healthz` stalled all along
(issue 17 item 3). Now a request may create at most `--max-fanout` copies
(messages x the queues and topics each reaches; 413 past it, nothing stored),
and what it may create is stored in slices of at most SLICE_COPIES copies,
the event loop serving other requests between two slices.

Slices keep the request's order and its answer: a refusal (429) in a later
slice reports `accepted` counted from the request's first message (header
values decoded from JSON are always storable, so no slice is refused for a
header after earlier slices were stored). Between slices other requests
run (another producer's messages may interleave, a reload may change the
routes of the slices still to come).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator, Sequence
from typing import Protocol, TypeVar

from runner.errors import Refused, TooLarge

SLICE_COPIES = 10_000  # ~20-60 ms of work on the loop (measured: 10,000 copies)

M = TypeVar("M")
M_contra = TypeVar("M_contra", contravariant=True)

Publish = Callable[[str, Sequence[M]], list[list[str]]]


class Counter(Protocol[M_contra]):
    """What counts copies: a backend's `fanout` (`runner.engine.contract.FanoutCounter`
    for contract messages; the embedded engine's own for its messages)."""

    def fanout(self, exchange: str, messages: Sequence[M_contra]) -> list[int]: ...


def copies(counter: Counter[M], exchange: str | None, msgs: Sequence[M]) -> list[int]:
    """Copies each message creates: 1 each straight into a queue (`exchange` None),
    else the queues and topics the exchange routes it to."""
    if exchange is None:
        return [1] * len(msgs)
    return counter.fanout(exchange, msgs)


def check(counts: Sequence[int], limit: int, where: str) -> None:
    """TooLarge (413) when the request creates more than `limit` copies."""
    total = sum(counts)
    if total > limit:
        widest = max(counts)
        raise TooLarge(
            f"the request would create {total} message copies ({len(counts)} messages "
            f"through {where}, up to {widest} destinations each), over the limit of "
            f"{limit} a request (--max-fanout); send fewer messages a request"
        )


def slices(counts: Sequence[int], size: int = SLICE_COPIES) -> Iterator[tuple[int, int]]:
    """(start, end) runs of messages of at most `size` copies each (a message that
    alone makes more is a slice of its own)."""
    start = 0
    n = len(counts)
    while start < n:
        end = start + 1
        total = counts[start]
        while end < n and total + counts[end] <= size:
            total += counts[end]
            end += 1
        yield start, end
        start = end


async def publish(
    publish_fn: Publish[M], name: str, msgs: Sequence[M], counts: Sequence[int],
) -> list[list[str]]:
    """Store `msgs` slice by slice, yielding to the loop between slices."""
    routed: list[list[str]] = []
    for n, (start, end) in enumerate(slices(counts)):
        if n:
            await asyncio.sleep(0)
        try:
            routed.extend(publish_fn(name, msgs[start:end]))
        except Refused as exc:
            if not start:
                raise
            raise Refused(str(exc), accepted=start + exc.accepted, routed=exc.routed) from exc
    return routed
