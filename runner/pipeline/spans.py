"""The spans of one handler call: deliver (consumer), handle and settle under it,
and of a `ctx.request` (client) under the handle span.

Made only when tracing is on (runner.pipeline.otel). The message's
`traceparent` is the deliver span's remote parent and its link; what the
handler sends carries the handle span as parent (`outgoing`), so the next
stage's deliver span hangs under this handler's handle span: one trace.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from runner.pipeline.message import Message, QueueMessage
from runner.pipeline.otel import Spans
from runner.pipeline.tracing import TraceContext, of_headers


def _attributes(consumer: str, message: Message) -> dict[str, Any]:
    attrs: dict[str, Any] = {"messaging.consumer.group.name": consumer}
    if isinstance(message, QueueMessage):
        attrs["messaging.destination.name"] = message.queue
        attrs["messaging.rabbitmq.destination.routing_key"] = message.routing_key
    else:
        attrs["messaging.destination.name"] = message.topic
        attrs["messaging.destination.partition.id"] = str(message.partition)
        attrs["messaging.kafka.offset"] = message.offset
    if message.message_id is not None:
        attrs["messaging.message.id"] = message.message_id
    if message.correlation_id is not None:
        attrs["messaging.message.conversation_id"] = message.correlation_id
    attrs["messaging.runner.attempt"] = message.delivery_count
    return attrs


class CallSpans:
    """deliver -> handle, settle for one call of one message."""

    __slots__ = ("_spans", "_attrs", "_deliver", "_handle", "outgoing")

    def __init__(
        self, spans: Spans, consumer: str, message: Message, incoming: TraceContext | None,
    ) -> None:
        self._spans = spans
        self._attrs = _attributes(consumer, message)
        where = self._attrs["messaging.destination.name"]
        self._deliver = spans.start(
            f"deliver {where}", kind="consumer", parent=incoming, link=incoming,
            attributes={**self._attrs, "messaging.operation.name": "deliver",
                        "messaging.operation.type": "receive"})
        self._handle = spans.start(
            f"handle {consumer}", kind="internal", parent=self._deliver,
            attributes={**self._attrs, "messaging.operation.name": "handle",
                        "messaging.operation.type": "process"})
        state = incoming.state if incoming is not None else None
        self.outgoing = spans.context_of(self._handle, state)

    def handled(self, error: BaseException | None) -> None:
        self._spans.end(self._handle, error)

    def settled(self, how: str, error: BaseException | None = None,
                event: Mapping[str, Any] | None = None) -> None:
        """The settle span (`how`: ack, commit, retry, dead_letter, ...), then the end
        of the deliver span. `event`: attributes of a span event named `how` on
        the settle span (a retry's attempt and delay, a dead letter's reason)."""
        where = self._attrs["messaging.destination.name"]
        settle = self._spans.start(
            f"settle {where}", kind="internal", parent=self._deliver,
            attributes={**self._attrs, "messaging.operation.name": "settle",
                        "messaging.operation.type": "settle", "messaging.runner.settle": how})
        if event is not None:
            self._spans.event(settle, how, event)
        self._spans.end(settle)
        self._spans.end(self._deliver, error)


def retry_event(attempt: int, delay_s: float) -> dict[str, Any]:
    """The `retry` event of a failed attempt's settle span."""
    return {"messaging.runner.attempt": attempt, "messaging.runner.retry.delay_s": delay_s,
            "messaging.runner.retry.next_attempt": attempt + 1}


def dead_letter_event(attempt: int, reason: str, why: str, target: str | None
                      ) -> dict[str, Any]:
    """The `dead_letter` (or `drop`: no target) event of the last attempt's settle span."""
    return {"messaging.runner.attempt": attempt, "messaging.runner.dead_letter.reason": reason,
            "messaging.runner.dead_letter.why": why,
            "messaging.runner.dead_letter.target": target or ""}


def request_span(
    spans: Spans, exchange: str, routing_key: str, headers: dict[str, Any],
    correlation_id: str, timeout_s: float,
) -> Any:
    """The client span of a `ctx.request`: child of what `headers` carry (the
    handler's handle span), and the request message now carries it instead, so
    the answering handler's deliver span hangs under it. End it with the reply."""
    parent = of_headers(headers)
    span = spans.start(f"request {exchange}", kind="client", parent=parent, attributes={
        "messaging.destination.name": exchange, "messaging.operation.name": "request",
        "messaging.operation.type": "send",
        "messaging.rabbitmq.destination.routing_key": routing_key,
        "messaging.message.conversation_id": correlation_id,
        "messaging.runner.timeout_s": timeout_s})
    spans.context_of(span, parent.state if parent is not None else None).write(headers)
    return span
