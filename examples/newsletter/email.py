"""The newsletter sender: one queued email per message.

The message body is JSON: `{"to": "ann@example.com", "subject": "...",
"text": "..."}`. Sending is simulated (logged); an invalid address raises
`ValueError`, which the `email-retries` policy retries and then dead-letters.
"""

from __future__ import annotations

import logging
import re
from typing import Any

log = logging.getLogger(__name__)

ADDRESS = re.compile(r"[^@\s]+@[^@\s]+\.[A-Za-z]{2,}")


def send(msg: Any) -> str:
    """Send one email (simulated); returns the address it went to."""
    body = msg.body
    if not isinstance(body, dict):
        raise ValueError(f"an email must be a JSON object, got {type(body).__name__}")
    to = body.get("to")
    if not isinstance(to, str) or not ADDRESS.fullmatch(to):
        raise ValueError(f"invalid email address: {to!r}")
    subject = body.get("subject") or "(no subject)"
    log.info("sent %r to %s (priority %s)", subject, to, getattr(msg, "priority", None))
    return to
