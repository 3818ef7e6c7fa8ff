"""Trace context of an HTTP publish or append: W3C headers in, publish and route spans.

The request's `traceparent` / `tracestate` HTTP headers (else a single
item's own `traceparent` header) go into the headers of every message or
record it stores, unless an item carries its own. With OpenTelemetry on
(runner.pipeline.otel), a `publish <name>` producer span (child of that
context, or a new trace) wraps the request and a `route <name>` span the
engine call; the items then carry the publish span as their parent, so the
handlers' deliver spans join the same trace.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import Any, Protocol, TypeVar

from aiohttp import web

from runner.pipeline.otel import Spans
from runner.pipeline.tracing import TRACEPARENT, TRACESTATE, TraceContext, of_headers, parse

SPANS_KEY = web.AppKey("spans", Spans)

R = TypeVar("R")


class Carrier(Protocol):
    """A message or record being stored: its headers take the trace context (the
    HTTP codec builds each contract value with a dict of its own for this one
    request, `runner.daemon.codec`; headers of another kind are left alone)."""

    @property
    def headers(self) -> Mapping[str, Any]: ...


class Traced:
    """The tracing of one publish/append request (a context manager around it)."""

    __slots__ = ("_spans", "_publish", "_name")

    def __init__(
        self, request: web.Request, kind: str, name: str,
        items: Sequence[Carrier],
    ) -> None:
        self._spans = request.app.get(SPANS_KEY)
        self._publish: Any = None
        self._name = name
        incoming: TraceContext | None = None
        if TRACEPARENT in request.headers:
            incoming = parse(request.headers[TRACEPARENT], request.headers.get(TRACESTATE))
        elif len(items) == 1:
            incoming = of_headers(items[0].headers)
        if self._spans is None:
            outgoing = incoming
        elif items:
            self._publish = self._spans.start(
                f"publish {name}", kind="producer", parent=incoming, attributes={
                    "messaging.destination.name": name, "messaging.operation.name": "publish",
                    "messaging.operation.type": "send",
                    "messaging.batch.message_count": len(items),
                    "messaging.runner.destination.kind": kind})
            outgoing = self._spans.context_of(
                self._publish, incoming.state if incoming is not None else None)
        else:
            outgoing = None
        if outgoing is not None:
            for item in items:
                headers = item.headers
                if isinstance(headers, dict) and TRACEPARENT not in headers:
                    outgoing.write(headers)

    def __enter__(self) -> Traced:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._spans is not None and self._publish is not None:
            self._spans.end(self._publish, exc if isinstance(exc, Exception) else None)

    def wrap(self, store: Callable[[str, Any], R]) -> Callable[[str, Any], R]:
        """`store` (the engine's publish or append) inside a `route` span when tracing."""
        spans, parent = self._spans, self._publish
        if spans is None or parent is None:
            return store

        def routed(name: str, items: Any) -> R:
            span = spans.start(f"route {name}", kind="internal", parent=parent, attributes={
                "messaging.destination.name": name, "messaging.operation.name": "route",
                "messaging.operation.type": "send"})
            try:
                result = store(name, items)
            except Exception as exc:
                spans.end(span, exc)
                raise
            if isinstance(result, list) and result and isinstance(result[0], list):
                span.set_attribute("messaging.runner.routed",
                                   sorted({d for dests in result for d in dests}))
            spans.end(span)
            return result

        return routed
