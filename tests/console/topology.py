"""The console tests' topology and handlers: exchanges, queues, a topic, groups,
consumers and dead-letter queues, with a handler that fails while a flag file exists."""

from __future__ import annotations

TOPOLOGY = """\
version: 1
name: console-shop
topics:
  order-events: {partitions: 3, key: order_id}
  audit: {partitions: 1}
exchanges:
  orders: {type: topic}
  payments: {type: direct}
queues:
  payments-q: {}
  payments.dlq: {}
  shipping: {max_priority: 5}
  audit.dlq: {}
bindings:
  - {exchange: orders, topic: order-events, routing_key: "orders.#"}
  - {exchange: payments, queue: payments-q, routing_key: pay}
  - {exchange: orders, queue: shipping, routing_key: "orders.paid"}
dlq_policies:
  no-retry: {max_retries: 0, dead_letter_queue: payments.dlq}
  audit-policy: {max_retries: 0, dead_letter_queue: audit.dlq}
consumers:
  payment-worker: {queue: payments-q, handler: "console_handlers:pay", dlq_policy: no-retry}
consumer_groups:
  reporting: {topic: order-events}
  auditor: {topic: audit, handler: "console_handlers:audit", dlq_policy: audit-policy}
"""

HANDLERS = '''\
import os


class GatewayDown(RuntimeError):
    pass


def charge(body):
    if os.path.exists("gateway-down"):
        raise GatewayDown(f"payment gateway down for {body!r}")


def pay(msg):
    charge(msg.body)


def audit(msg):
    pass
'''

ENTITIES = {
    "exchange": {"orders", "payments"},
    "queue": {"payments-q", "payments.dlq", "shipping", "audit.dlq"},
    "topic": {"order-events", "audit"},
    "consumer": {"payment-worker"},
    "group": {"reporting", "auditor"},
}


def start(start_daemon, **kw):  # type: ignore[no-untyped-def]
    return start_daemon(TOPOLOGY, modules={"console_handlers": HANDLERS}, **kw)


def shared(tmp_path_factory):  # type: ignore[no-untyped-def]
    """One daemon for a test module (yield from it in a module-scoped fixture)."""
    from tests.e2e.conftest import module_daemon

    yield from module_daemon(tmp_path_factory.mktemp("console"), TOPOLOGY,
                             modules={"console_handlers": HANDLERS})
