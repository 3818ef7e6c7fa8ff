"""The idempotency window: keys of messages a consumer already processed.

`idempotency: {key, window}` makes a consumer skip (ack without running the
handler) a message whose key it processed successfully within `window`. The
keys live in a small durable log per consumer, `<dir>/<consumer>.keys`:

    line  := crc32(hex, 8 chars) " " json([expires_at_s, key]) "\\n"

Recovery reads lines until the first one whose CRC fails (a torn write) and
truncates there. Expired keys are dropped at load, and the file is rewritten
(temp file, fsync, rename) when most of its lines are stale.
"""

from __future__ import annotations

import logging
import os
import zlib
from collections import OrderedDict
from pathlib import Path
from typing import Any

import orjson

from runner.clock import Clock
from runner.errors import StorageError
from runner.pipeline.message import Message
from runner.topology.model import Idempotency

log = logging.getLogger(__name__)

_COMPACT_MIN_LINES = 1024


def key_of(message: Message, spec: Idempotency) -> str | None:
    """The idempotency key of `message`: its message_id, or a dotted payload path."""
    if spec.key == "message_id":
        return message.message_id
    value: Any = message.body
    for part in spec.key.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    if value is None:
        return None
    return value if isinstance(value, str) else orjson.dumps(value).decode()


def _encode(expires: float, key: str) -> bytes:
    body = orjson.dumps([expires, key])
    return b"%08x %s\n" % (zlib.crc32(body), body)


class IdempotencyStore:
    """Processed keys with their expiry, durable across restarts."""

    __slots__ = ("path", "_clock", "_window", "_fsync", "_keys", "_lines", "_file")

    def __init__(self, path: Path, *, window_s: float, clock: Clock, fsync: bool = True) -> None:
        self.path = path
        self._clock = clock
        self._window = window_s
        self._fsync = fsync
        self._keys: OrderedDict[str, float] = OrderedDict()  # key -> expires_at, oldest first
        self._lines = 0
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._load()
            self._file = open(path, "ab")  # noqa: SIM115 - kept open for appends
        except OSError as exc:
            raise StorageError(f"idempotency store {path}: {exc}") from exc

    def _load(self) -> None:
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        good = 0
        now = self._clock.time()
        for line in data.splitlines(keepends=True):
            if not line.endswith(b"\n") or len(line) < 10:
                break
            crc, body = line[:8], line[9:-1]
            try:
                ok = int(crc, 16) == zlib.crc32(body)
                expires, key = orjson.loads(body) if ok else (0.0, "")
            except (ValueError, orjson.JSONDecodeError):
                ok = False
            if not ok:
                break
            good += len(line)
            self._lines += 1
            if expires > now:
                self._keys[key] = expires
                self._keys.move_to_end(key)
        if good < len(data):
            log.warning("idempotency store %s: torn tail of %d bytes dropped",
                        self.path, len(data) - good)
            with open(self.path, "r+b") as f:
                f.truncate(good)

    def _expire(self) -> None:
        now = self._clock.time()
        while self._keys:
            key, expires = next(iter(self._keys.items()))
            if expires > now:
                break
            del self._keys[key]

    def seen(self, key: str) -> bool:
        """True when `key` was recorded within the window."""
        expires = self._keys.get(key)
        return expires is not None and expires > self._clock.time()

    def record(self, key: str) -> None:
        """Remember `key` as processed (durable when the store fsyncs)."""
        expires = self._clock.time() + self._window
        self._keys[key] = expires
        self._keys.move_to_end(key)
        try:
            self._file.write(_encode(expires, key))
            self._file.flush()
            if self._fsync:
                os.fsync(self._file.fileno())
        except OSError as exc:
            raise StorageError(f"idempotency store {self.path}: {exc}") from exc
        self._lines += 1
        self._expire()
        if self._lines > _COMPACT_MIN_LINES and self._lines > 2 * len(self._keys):
            self._compact()

    def _compact(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            f.writelines(_encode(exp, key) for key, exp in self._keys.items())
            f.flush()
            os.fsync(f.fileno())
        self._file.close()
        os.replace(tmp, self.path)
        self._file = open(self.path, "ab")  # noqa: SIM115
        self._lines = len(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def close(self) -> None:
        self._file.close()
