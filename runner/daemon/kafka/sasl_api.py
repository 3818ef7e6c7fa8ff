"""SaslHandshake and SaslAuthenticate: SASL/PLAIN with the daemon's bearer token.

With a token configured (`--token-file` or `RUNNER_TOKEN`) a connection must
authenticate before anything but ApiVersions and the SASL requests: mechanism
PLAIN, any user name, the token as the password (compared in constant time).
Without a token every connection is let in and SASL still succeeds, so a
client configured for SASL/PLAIN works against either.

SaslHandshake v1 is followed by SaslAuthenticate requests; v0 by one raw,
size-prefixed PLAIN token (the pre-KIP-152 way), answered by an empty frame.
"""

from __future__ import annotations

import hmac
import logging
from typing import Any

from runner.daemon.kafka.protocol import ErrorCode
from runner.daemon.kafka.session import Session

log = logging.getLogger(__name__)

MECHANISMS = ["PLAIN"]


async def handshake_api(session: Session, body: Any, version: int) -> dict[str, Any]:
    if body.mechanism not in MECHANISMS:
        return {"error_code": ErrorCode.unsupported_sasl_mechanism, "mechanisms": MECHANISMS}
    session.mechanism = body.mechanism
    session.raw_sasl_next = version == 0
    return {"error_code": 0, "mechanisms": MECHANISMS}


def check_plain(session: Session, token: bytes) -> str | None:
    """None when the PLAIN token authenticates, else why not."""
    parts = token.split(b"\0")
    if len(parts) != 3:
        return "a SASL/PLAIN token is authzid NUL user NUL password"
    _, user, password = parts
    expected = session.broker.token
    if expected is not None and not hmac.compare_digest(password, expected.encode()):
        return "wrong password: it must be the daemon's bearer token"
    session.user = user.decode(errors="replace")
    session.authenticated = True
    return None


async def authenticate_api(session: Session, body: Any, version: int) -> dict[str, Any]:
    if session.mechanism is None:
        return {"error_code": ErrorCode.illegal_sasl_state,
                "error_message": "SaslHandshake must come first", "auth_bytes": b""}
    problem = check_plain(session, bytes(body.auth_bytes))
    if problem is not None:
        log.warning("kafka: SASL authentication of %s failed: %s", session.peer, problem,
                    extra={"event": "kafka_auth_failed", "peer": session.peer})
        return {"error_code": ErrorCode.sasl_authentication_failed,
                "error_message": f"authentication failed: {problem}", "auth_bytes": b""}
    return {"error_code": 0, "error_message": None, "auth_bytes": b"",
            "session_lifetime": 0}
