"""Console sessions: the token login, the session cookie and the CSRF check.

The token never travels in a URL: the login form POSTs it in a JSON body, and
the answer sets an `HttpOnly`, `SameSite=Strict` cookie naming a random
session. Each session has its own CSRF token, handed to the page by
`GET /ui/api/session` (readable only by same-origin script); every mutating
console call must echo it in the `X-CSRF-Token` header and, when the browser
sends an `Origin`, come from the daemon's own origin. Without a configured
token, `GET /ui/api/session` opens a session for whoever asks (the HTTP API
is open too), and the CSRF rules still apply.
"""

from __future__ import annotations

import hmac
import secrets
from collections import OrderedDict
from dataclasses import dataclass
from urllib.parse import urlsplit

from aiohttp import web

from runner.clock import Clock

COOKIE_PREFIX = "runner_console_"  # + the listener's port: two daemons on one host keep apart
CSRF_HEADER = "X-CSRF-Token"
SESSION_TTL_S = 12 * 3600.0
MAX_SESSIONS = 1000  # the oldest session is forgotten past this (no unbounded growth)


@dataclass(frozen=True, slots=True)
class Session:
    csrf: str
    expires_s: float


class Denied(Exception):
    """A console call refused by the gate: `status` (401 or 403) and a sentence."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Sessions:
    """The console's sessions (in memory: a restart asks for the token again)."""

    def __init__(self, token: str | None, clock: Clock) -> None:
        self._token = token.encode() if token else None
        self._clock = clock
        self._open: OrderedDict[str, Session] = OrderedDict()

    @property
    def token_required(self) -> bool:
        return self._token is not None

    def token_ok(self, given: str) -> bool:
        return self._token is not None and hmac.compare_digest(given.encode(), self._token)

    def open(self) -> tuple[str, Session]:
        """A new session: (its id for the cookie, the session)."""
        now = self._clock.time()
        for sid in [s for s, v in self._open.items() if v.expires_s <= now]:
            del self._open[sid]
        while len(self._open) >= MAX_SESSIONS:
            self._open.popitem(last=False)
        sid = secrets.token_urlsafe(32)
        session = Session(secrets.token_urlsafe(32), now + SESSION_TTL_S)
        self._open[sid] = session
        return sid, session

    def close(self, sid: str | None) -> None:
        if sid:
            self._open.pop(sid, None)

    def find(self, request: web.Request) -> Session | None:
        """The live session named by the request's cookie, if any."""
        sid = request.cookies.get(cookie_name(request))
        session = self._open.get(sid) if sid else None
        if session is None or session.expires_s <= self._clock.time():
            return None
        return session

    def require(self, request: web.Request, *, mutating: bool) -> Session:
        """The request's session; Denied when there is none or, for a change,
        when the CSRF token or the origin is wrong."""
        session = self.find(request)
        if session is None:
            raise Denied(401, "log in to the console first (the daemon's token)")
        if mutating:
            check_origin(request)
            given = request.headers.get(CSRF_HEADER, "")
            if not hmac.compare_digest(given.encode(), session.csrf.encode()):
                raise Denied(403, f"missing or wrong {CSRF_HEADER} header (reload the page)")
        return session


def check_origin(request: web.Request) -> None:
    """Denied when the browser says the request comes from another site."""
    origin = request.headers.get("Origin")
    if origin is None:
        return
    if origin == "null" or urlsplit(origin).netloc != request.host:
        raise Denied(403, f"cross-origin request refused (Origin {origin!r})")


def cookie_name(request: web.Request) -> str:
    """The session cookie's name (cookies ignore ports; daemons on one host must not)."""
    return f"{COOKIE_PREFIX}{request.url.port or 80}"


def set_cookie(request: web.Request, response: web.StreamResponse, sid: str) -> None:
    response.set_cookie(
        cookie_name(request), sid, max_age=int(SESSION_TTL_S), path="/", httponly=True,
        samesite="Strict",
    )


def clear_cookie(request: web.Request, response: web.StreamResponse) -> None:
    response.del_cookie(cookie_name(request), path="/")
