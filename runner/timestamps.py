"""Record timestamps a producer sets: one rule for every layer (a base module).

The log refuses them on append, the HTTP codec on input and a handler's
`ctx.append(timestamp=...)` when it is called, all with the same sentence.
"""

from __future__ import annotations

from runner.errors import InvalidRequest

MAX_TIMESTAMP_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z


def check_timestamp_ms(value: object, where: str = "timestamp") -> int:
    """A record timestamp set by a producer: epoch milliseconds, an integer from 0 to
    MAX_TIMESTAMP_MS; InvalidRequest naming `where` and the value otherwise."""
    if isinstance(value, bool) or not isinstance(value, int) or not (
            0 <= value <= MAX_TIMESTAMP_MS):
        shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
        raise InvalidRequest(
            f"{where} must be epoch milliseconds, an integer between 0 and "
            f"{MAX_TIMESTAMP_MS} (9999-12-31T23:59:59.999Z), got {shown}")
    return value
