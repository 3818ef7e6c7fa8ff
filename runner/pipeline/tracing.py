"""Trace context: W3C `traceparent` / `tracestate` carried in message headers.

A producer's `traceparent` (HTTP request header, or a message header) rides in
the message's headers through routing into the handler (`msg.trace`), and
everything the handler publishes, appends or replies carries the same trace
id with the handler's own span id as parent (`TraceContext.child`). This
module is plain text handling, no third-party code: without the `otel` extra
that is all the runner does for tracing (see runner.pipeline.otel for spans).

    traceparent: 00-<trace-id: 32 hex>-<parent-id: 16 hex>-<flags: 2 hex>

Per the W3C spec a malformed `traceparent` is ignored (as if absent), and
`tracestate` only travels with a valid `traceparent`.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
_TRACEPARENT_RE = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
MAX_TRACESTATE_CHARS = 512  # the spec's limit a vendor must propagate


@dataclass(frozen=True, slots=True)
class TraceContext:
    """One position in a trace: the trace id, the parent span id, flags, vendor state."""

    trace_id: str
    span_id: str
    flags: str = "01"
    state: str | None = None

    @property
    def traceparent(self) -> str:
        return f"00-{self.trace_id}-{self.span_id}-{self.flags}"

    @property
    def sampled(self) -> bool:
        return bool(int(self.flags, 16) & 1)

    def child(self, span_id: str | None = None) -> TraceContext:
        """The same trace with `span_id` (a new random one by default) as the parent."""
        return TraceContext(self.trace_id, span_id or new_span_id(), self.flags, self.state)

    def write(self, headers: dict[str, Any]) -> None:
        """Put this context into message headers (replacing what they held)."""
        headers[TRACEPARENT] = self.traceparent
        if self.state:
            headers[TRACESTATE] = self.state
        else:
            headers.pop(TRACESTATE, None)


def new_span_id() -> str:
    return secrets.token_hex(8)


def new_trace_id() -> str:
    return secrets.token_hex(16)


def parse(traceparent: object, tracestate: object = None) -> TraceContext | None:
    """The context of a `traceparent` value, or None when it is absent or malformed."""
    if isinstance(traceparent, bytes):  # a Kafka client's header
        traceparent = traceparent.decode(errors="replace")
    if not isinstance(traceparent, str):
        return None
    match = _TRACEPARENT_RE.fullmatch(traceparent.strip())
    if match is None:
        return None
    version, trace_id, span_id, flags, rest = match.groups()
    if version == "ff" or (version == "00" and rest) or trace_id == "0" * 32 \
            or span_id == "0" * 16:
        return None
    if isinstance(tracestate, bytes):
        tracestate = tracestate.decode(errors="replace")
    state = tracestate.strip() if isinstance(tracestate, str) else None
    if state is not None and (not state or len(state) > MAX_TRACESTATE_CHARS):
        state = None
    return TraceContext(trace_id, span_id, flags, state)


def of_headers(headers: Mapping[str, Any]) -> TraceContext | None:
    """The trace context in message headers, or None."""
    value = headers.get(TRACEPARENT)
    if value is None:
        return None
    return parse(value, headers.get(TRACESTATE))
