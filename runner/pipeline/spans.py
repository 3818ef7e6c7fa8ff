"""The spans of one handler call: deliver (consumer), handle and settle under it.

Made only when tracing is on (runner.pipeline.otel). The message's
`traceparent` is the deliver span's remote parent and its link; what the
handler sends carries the handle span as parent (`outgoing`), so the next
stage's deliver span hangs under this handler's handle span: one trace.
"""

from __future__ import annotations

from typing import Any

from runner.pipeline.message import Message, QueueMessage
from runner.pipeline.otel import Spans
from runner.pipeline.tracing import TraceContext


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

    def settled(self, how: str, error: BaseException | None = None) -> None:
        where = self._attrs["messaging.destination.name"]
        settle = self._spans.start(
            f"settle {where}", kind="internal", parent=self._deliver,
            attributes={**self._attrs, "messaging.operation.name": "settle",
                        "messaging.operation.type": "settle", "messaging.runner.settle": how})
        self._spans.end(settle)
        self._spans.end(self._deliver, error)
