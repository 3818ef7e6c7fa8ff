"""OpenTelemetry spans (the optional `otel` extra): publish, route, deliver, handle, settle,
request (with retry, dead_letter and reply events).

The only module that imports opentelemetry. `from_environment()` returns
`Spans` when the extra is installed and tracing is configured, else None, and
every caller checks for None first: without the extra (or with it unset)
tracing costs a dictionary lookup per message (the `traceparent` header) and
nothing else.

Configured means, in this order: the process already has an SDK
TracerProvider (an application embedding the runner, or a test with the
SDK's in-memory exporter), or the standard environment asks for one:
`OTEL_TRACES_EXPORTER` = `console` or `otlp` (`otlp` needs
opentelemetry-exporter-otlp), read with `OTEL_SERVICE_NAME`,
`OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER` and the OTLP variables by
the SDK itself. `OTEL_SDK_DISABLED=true` turns it off.

Spans follow OpenTelemetry's messaging semantic conventions
(`messaging.system`, `messaging.operation.name` / `.type`,
`messaging.destination.name`, `messaging.message.id`,
`messaging.message.conversation_id`, `messaging.consumer.group.name`); a
message's `traceparent` is the remote parent of its deliver span (and a
link), so one trace runs from an HTTP publish through every handler stage.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

from runner.pipeline.tracing import TraceContext

log = logging.getLogger(__name__)

SYSTEM = "topology-runner"
KINDS = ("producer", "consumer", "internal", "client")


class Spans:
    """Starts and ends spans on one OpenTelemetry tracer."""

    def __init__(self, tracer: Any) -> None:
        from opentelemetry import trace

        self._tracer = tracer
        self._trace = trace
        self._kinds = {"producer": trace.SpanKind.PRODUCER, "consumer": trace.SpanKind.CONSUMER,
                       "internal": trace.SpanKind.INTERNAL, "client": trace.SpanKind.CLIENT}

    def start(
        self, name: str, *, kind: str, parent: TraceContext | Any | None,
        attributes: Mapping[str, Any], link: TraceContext | None = None,
    ) -> Any:
        """A started span; `parent` is a TraceContext (remote) or a span of ours."""
        trace = self._trace
        context = None
        if isinstance(parent, TraceContext):
            context = trace.set_span_in_context(trace.NonRecordingSpan(_span_context(parent)))
        elif parent is not None:
            context = trace.set_span_in_context(parent)
        links = [trace.Link(_span_context(link))] if link is not None else None
        attrs = {"messaging.system": SYSTEM, **attributes}
        return self._tracer.start_span(name, context=context, kind=self._kinds[kind],
                                       attributes=attrs, links=links)

    @staticmethod
    def event(span: Any, name: str, attributes: Mapping[str, Any]) -> None:
        """A span event (a retry, a dead letter, a reply) on a started span."""
        span.add_event(name, attributes=dict(attributes))

    def end(self, span: Any, error: BaseException | None = None) -> None:
        if error is not None:
            span.record_exception(error)
            span.set_status(self._trace.Status(self._trace.StatusCode.ERROR,
                                               f"{type(error).__name__}: {error}"))
            span.set_attribute("error.type", type(error).__name__)
        span.end()

    @staticmethod
    def context_of(span: Any, state: str | None = None) -> TraceContext:
        """Where a message this span sends sits in the trace."""
        sc = span.get_span_context()
        return TraceContext(f"{sc.trace_id:032x}", f"{sc.span_id:016x}",
                            f"{int(sc.trace_flags):02x}", state)


def _span_context(ctx: TraceContext) -> Any:
    from opentelemetry import trace

    state = trace.TraceState.from_header([ctx.state]) if ctx.state else None
    return trace.SpanContext(int(ctx.trace_id, 16), int(ctx.span_id, 16), is_remote=True,
                             trace_flags=trace.TraceFlags(int(ctx.flags, 16)),
                             trace_state=state)


def from_environment(environ: Mapping[str, str] | None = None) -> Spans | None:
    """Spans when the extra is installed and tracing is configured, else None."""
    env = os.environ if environ is None else environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    try:
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
    except ImportError:
        return None
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        exporter = _exporter(env.get("OTEL_TRACES_EXPORTER", "none").strip().lower())
        if exporter is None:
            return None
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        provider = TracerProvider()  # reads OTEL_SERVICE_NAME, OTEL_TRACES_SAMPLER, ...
        provider.add_span_processor(BatchSpanProcessor(exporter))
        trace.set_tracer_provider(provider)
    from runner import __version__

    return Spans(provider.get_tracer("topology-runner", __version__))


def _exporter(name: str) -> Any:
    if name in ("", "none"):
        return None
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    if name == "otlp":
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # type: ignore[import-not-found,unused-ignore]
                OTLPSpanExporter,
            )
        except ImportError:
            log.warning("OTEL_TRACES_EXPORTER=otlp needs opentelemetry-exporter-otlp-proto-http; "
                        "no spans are exported (trace context still travels in headers)")
            return None
        return OTLPSpanExporter()
    log.warning("OTEL_TRACES_EXPORTER=%s is not supported (console, otlp, none); no spans "
                "are exported (trace context still travels in headers)", name)
    return None


def flush() -> None:
    """Export what is buffered (at shutdown)."""
    try:
        from opentelemetry import trace
    except ImportError:
        return
    provider: Any = trace.get_tracer_provider()
    if hasattr(provider, "force_flush"):
        provider.force_flush()
