"""Order handlers: processing, analytics and fraud checks over `order-events`.

Each handler gets one record whose `body` is the order as JSON, e.g.

    {"order_id": "ORD-1042", "customer": "c-17", "country": "DE",
     "items": [{"sku": "BOOK-1", "qty": 2, "price": 12.5}], "status": "created"}

Raising is failure: `ValueError` for an order that can never succeed (the
topology lists it in `no_retry_on`, so it goes straight to the DLQ). `process`
chains the next stages: it asks for a payment through the `payments` exchange
and writes the order to the `audit-log` topic, both only when it succeeds.
"""

from __future__ import annotations

import logging
import re
from typing import Any

log = logging.getLogger(__name__)

ORDER_ID = re.compile(r"ORD-[0-9]{1,12}")
FRAUD_LIMIT = 5000.0
HIGH_RISK_COUNTRIES = frozenset({"XX", "ZZ"})


def _order(msg: Any) -> dict[str, Any]:
    body = msg.body
    if not isinstance(body, dict):
        raise ValueError(f"an order must be a JSON object, got {type(body).__name__}")
    order_id = body.get("order_id")
    if not isinstance(order_id, str) or not ORDER_ID.fullmatch(order_id):
        raise ValueError(f"Invalid order_id format: {order_id!r}")
    return body


def order_total(order: dict[str, Any]) -> float:
    """Sum of quantity x price over the order's items."""
    total = 0.0
    for item in order.get("items") or ():
        qty, price = item.get("qty", 1), item.get("price", 0)
        if not isinstance(qty, int) or qty < 1:
            raise ValueError(f"order {order['order_id']}: invalid quantity {qty!r}")
        if not isinstance(price, int | float) or price < 0:
            raise ValueError(f"order {order['order_id']}: invalid price {price!r}")
        total += qty * price
    return round(total, 2)


def process(msg: Any, ctx: Any) -> None:
    """Validate the order, ask for its payment and write it to the audit log."""
    order = _order(msg)
    if not order.get("items"):
        raise ValueError(f"order {order['order_id']} has no items")  # no retry: ValueError
    total = order_total(order)
    ctx.publish("payments", "payment.requested", {"order_id": order["order_id"], "amount": total})
    ctx.append("audit-log", {"order_id": order["order_id"], "total": total})
    log.info("processed order %s: total %.2f", order["order_id"], total)


def analytics(msg: Any) -> dict[str, Any]:
    """Turn the order into a metrics data point (revenue per country and status)."""
    order = _order(msg)
    point = {
        "order_id": order["order_id"],
        "country": order.get("country", "unknown"),
        "status": order.get("status", "created"),
        "revenue": order_total(order),
    }
    log.debug("analytics data point %s", point)
    return point


def fraud(msg: Any) -> bool:
    """Flag suspicious orders; True when the order looks fraudulent."""
    order = _order(msg)
    total = order_total(order)
    suspicious = total > FRAUD_LIMIT or order.get("country") in HIGH_RISK_COUNTRIES
    if suspicious:
        log.warning("order %s flagged for review (total %.2f)", order["order_id"], total)
    return suspicious
