"""Daemon logging: one line per event on stderr, as text or as JSON objects.

Structured fields ride on `extra={"event": ..., ...}`; the JSON formatter
emits them as keys, the text formatter appends them as `key=value`.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import orjson

_STANDARD = frozenset(
    logging.LogRecord("", 0, "", 0, "", None, None).__dict__.keys()
    | {"message", "asctime", "taskName"}
)


DEFAULT_EVENT = "log"  # lines logged without an event name (by other modules)


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    """The structured fields of a line; `event` first, always present."""
    fields = {k: v for k, v in record.__dict__.items() if k not in _STANDARD}
    return {"event": fields.pop("event", DEFAULT_EVENT), **fields}


class JsonFormatter(logging.Formatter):
    """One JSON object a line: ts, level, logger, message, fields, exception."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        out.update(_fields(record))
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(out, default=str).decode()


class TextFormatter(logging.Formatter):
    """`TIME LEVEL logger: message key=value ...`."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extra = _fields(record)
        if extra:
            line += " " + " ".join(f"{k}={v}" for k, v in extra.items())
        return line


def configure(fmt: str = "text", level: int = logging.INFO) -> None:
    """Send the `runner` loggers to stderr in `fmt` (text or json)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def log_event_loop(log: logging.Logger, loop: Any) -> None:
    """Say which event loop the daemon runs on (`runner run --event-loop`)."""
    name = "uvloop" if type(loop).__module__.split(".")[0] == "uvloop" else "asyncio"
    log.info("event loop: %s", name, extra={"event": "event_loop", "loop": name})
