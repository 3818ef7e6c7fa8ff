"""The step journal: acks + publishes applied as one durable unit.

A step is written to `<data>/steps/` (a SegmentedLog) before it is applied
and marked done after; at open, a step without its done mark is applied
again. Re-applying is harmless: every output carries a message id (one is
made up from the step's offset when the caller gave none) and publishing
deduplicates by id; acks name messages, not deliveries.

Records: key b"T" value = JSON step; key b"C" value = the step's offset.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner.broker.headers import decode_value, encode_value
from runner.broker.message import Message, Publishable
from runner.clock import Clock, now_ms
from runner.fs import LOCAL, FileSystem
from runner.log.record import Fsync
from runner.log.segment import SegmentedLog

Puts = list[tuple[str, list[Message]]]


@dataclass(frozen=True, slots=True)
class Step:
    seq: int
    acks: list[tuple[str, int]]
    publishes: Puts
    queue_puts: Puts


def _enc(m: Message) -> dict[str, Any]:
    return {"b": base64.b64encode(m.body).decode(), "k": m.routing_key,
            "h": encode_value(m.headers), "p": m.priority, "t": m.ttl_s, "i": m.message_id,
            "c": m.content_type}


def _dec(d: dict[str, Any]) -> Message:
    return Message(base64.b64decode(d["b"]), d["k"], decode_value(d["h"]), d["p"], d["t"],
                   d["i"], d["c"])


def _own(seq: int, n: int, msgs: Sequence[Publishable], start: int) -> list[Message]:
    out = []
    for i, m in enumerate(msgs):
        mid = m.message_id if m.message_id is not None else f"__step-{seq}-{start + i}"
        out.append(Message(m.body, m.routing_key, dict(m.headers), m.priority, m.ttl_s, mid,
                           m.content_type))
    return out


class StepLog:
    """Journal of broker steps (see module docstring)."""

    def __init__(self, directory: Path, *, fsync: Fsync, clock: Clock,
                 fs: FileSystem = LOCAL) -> None:
        self.clock = clock
        self.log = SegmentedLog(directory, segment_bytes=4 << 20, fsync=fsync, clock=clock,
                                fs=fs)
        self.open_steps = 0

    def begin(
        self, acks: Sequence[tuple[str, int]],
        publishes: Sequence[tuple[str, Sequence[Publishable]]],
        queue_puts: Sequence[tuple[str, Sequence[Publishable]]],
    ) -> Step:
        seq = self.log.end_offset
        n = 0
        pubs: Puts = []
        for ex, msgs in publishes:
            pubs.append((ex, _own(seq, n, msgs, n)))
            n += len(msgs)
        puts: Puts = []
        for q, msgs in queue_puts:
            puts.append((q, _own(seq, n, msgs, n)))
            n += len(msgs)
        doc = {"a": [[q, t] for q, t in acks],
               "x": [[ex, [_enc(m) for m in ms]] for ex, ms in pubs],
               "q": [[q, [_enc(m) for m in ms]] for q, ms in puts]}
        data = json.dumps(doc, separators=(",", ":")).encode()
        got = self.log.append([(b"T", data, (), now_ms(self.clock))])
        self.open_steps += 1
        return Step(got, list(acks), pubs, puts)

    def done(self, seq: int) -> None:
        self.log.append([(b"C", str(seq).encode(), (), now_ms(self.clock))])
        self.open_steps = max(0, self.open_steps - 1)

    def recover(
        self, apply: Callable[[list[tuple[str, int]], Puts, Puts], object],
    ) -> int:
        """Apply again every step not marked done; returns how many."""
        pending: dict[int, bytes] = {}
        off, end = self.log.start_offset, self.log.end_offset
        while off < end:
            recs = self.log.read(off, max_records=1000)
            if not recs:
                break
            for r in recs:
                if r.key == b"T":
                    pending[r.offset] = r.value or b"{}"
                elif r.key == b"C":
                    pending.pop(int(r.value or b"-1"), None)
            off = recs[-1].offset + 1
        for seq, data in sorted(pending.items()):
            doc = json.loads(data)
            acks = [(str(q), int(t)) for q, t in doc["a"]]
            pubs = [(str(ex), [_dec(m) for m in ms]) for ex, ms in doc["x"]]
            puts = [(str(q), [_dec(m) for m in ms]) for q, ms in doc["q"]]
            apply(acks, pubs, puts)
            self.done(seq)
        return len(pending)

    def trim(self) -> None:
        if self.open_steps == 0:
            self.log.delete_before(self.log.end_offset)

    def close(self) -> None:
        self.log.close()
