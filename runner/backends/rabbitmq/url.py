"""A broker address: `amqp://user:pass@host[:port]/vhost` as a `Target`.

The vhost is the URL's path, percent-decoded (`/%2f` and an empty path are
`/`, `/shop` is `shop`). The management API is on the same host at port
15672 unless the query says `?management_port=N`.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit

AMQP_PORT = 5672
MANAGEMENT_PORT = 15672


class BadURL(ValueError):
    """A backend URL that is not `amqp://user:pass@host[:port]/vhost`."""


@dataclass(frozen=True, slots=True)
class Target:
    host: str
    port: int = AMQP_PORT
    vhost: str = "/"
    user: str = "guest"
    password: str = "guest"
    management_port: int = MANAGEMENT_PORT

    def __str__(self) -> str:
        """The URL without the password (for messages)."""
        vhost = "%2f" if self.vhost == "/" else self.vhost
        return f"amqp://{self.user}@{self.host}:{self.port}/{vhost}"

    @property
    def management_url(self) -> str:
        return f"http://{self.host}:{self.management_port}"


def parse(url: str) -> Target:
    """The target of `url`; BadURL says what is wrong with it."""
    parts = urlsplit(url)
    if parts.scheme != "amqp":
        raise BadURL(f"{url!r}: the backend must be an amqp:// URL "
                     "(amqp://user:pass@host[:port]/vhost)")
    try:
        port = parts.port or AMQP_PORT
    except ValueError as exc:
        raise BadURL(f"{url!r}: the port is not a number from 1 to 65535") from exc
    if not parts.hostname:
        raise BadURL(f"{url!r}: no host (amqp://user:pass@host[:port]/vhost)")
    path = parts.path[1:] if parts.path.startswith("/") else parts.path
    if "/" in path:
        raise BadURL(f"{url!r}: a vhost containing '/' is written %2f")
    vhost = unquote(path) or "/"
    management_port = MANAGEMENT_PORT
    for key, values in parse_qs(parts.query, keep_blank_values=True).items():
        if key != "management_port":
            raise BadURL(f"{url!r}: unknown option {key!r} (known: management_port)")
        if not values[-1].isdigit() or not 0 < int(values[-1]) < 65536:
            raise BadURL(f"{url!r}: management_port must be a port number")
        management_port = int(values[-1])
    return Target(
        host=parts.hostname, port=port, vhost=vhost,
        user=unquote(parts.username) if parts.username is not None else "guest",
        password=unquote(parts.password) if parts.password is not None else "guest",
        management_port=management_port,
    )
