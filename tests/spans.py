"""OpenTelemetry spans for the tracing tests, without touching the process's global
tracer provider."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter


@contextlib.contextmanager
def in_memory_spans() -> Iterator[InMemorySpanExporter]:
    """Daemons started inside see an SDK provider whose spans land in the exporter
    yielded. The global provider is never set (OpenTelemetry sets it once per
    process), so the tests that run after, in the same process, are not traced: a
    traced daemon neither merges writes nor takes the fast lane, and their tests
    failed after a module that had set it."""
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    with pytest.MonkeyPatch.context() as patched:
        patched.setattr(trace, "get_tracer_provider", lambda: provider)
        yield spans
    spans.shutdown()
