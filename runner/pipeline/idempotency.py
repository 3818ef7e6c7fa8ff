"""The idempotency window: keys of messages a consumer already processed.

`idempotency: {key, window}` makes a consumer skip (ack without running the
handler) a message whose key it processed successfully within `window`. The
keys live in a small durable log per consumer, `<dir>/<consumer>.keys`:

    line  := crc32(hex, 8 chars) " " json([expires_at_s, key]) "\\n"

Every file call goes through the file-system seam (`runner.fs`), as the
engine's do. Durability: the directory and the file are durable in their
parents when the store opens (`make_dirs`, `create`); with `fsync` (the
daemon's `--fsync always`) `record` returns only after its line was fsynced,
so a key recorded before a power cut is there after it; without, the lines
reach the disk when the OS writes them back. Recovery reads lines until the
first one whose CRC fails (a torn or half-written tail) and truncates there
(synced before anything else is written). Expired keys are dropped at load,
and the file is rewritten when most of its lines are stale
(`runner.fs.write_atomic`: temp file synced, renamed, directory synced), so a
cut during a rewrite leaves the old file or the new one.
"""

from __future__ import annotations

import contextlib
import logging
import zlib
from collections import OrderedDict
from pathlib import Path
from typing import Any

import orjson

from runner.clock import Clock
from runner.errors import StorageError
from runner.fs import LOCAL, FileSystem, create, make_dirs, read_bytes, write_all, write_atomic
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

    __slots__ = ("path", "_clock", "_window", "_fsync", "_keys", "_lines", "_fs", "_fd",
                 "_size")

    def __init__(self, path: Path, *, window_s: float, clock: Clock, fsync: bool = True,
                 fs: FileSystem = LOCAL) -> None:
        self.path = path
        self._clock = clock
        self._window = window_s
        self._fsync = fsync
        self._fs = fs
        self._keys: OrderedDict[str, float] = OrderedDict()  # key -> expires_at, oldest first
        self._lines = 0
        self._fd = -1
        try:
            make_dirs(fs, path.parent)
            self._fd = create(fs, path)
            self._size = fs.size(self._fd)
            self._load()
        except OSError as exc:
            if self._fd >= 0:
                fs.close(self._fd)
            raise StorageError(f"idempotency store {path}: {exc}") from exc

    def _load(self) -> None:
        data = read_bytes(self._fs, self.path)
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
            self._fs.truncate(self._fd, good)
            self._fs.sync(self._fd)
        self._size = good

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
        """Remember `key` as processed (durable on return when the store fsyncs).
        StorageError when it cannot be written; the file is then as before."""
        expires = self._clock.time() + self._window
        line = _encode(expires, key)
        try:
            write_all(self._fs, self._fd, line, self._size)
            if self._fsync:
                self._fs.sync(self._fd)
        except OSError as exc:
            with contextlib.suppress(OSError):
                self._fs.truncate(self._fd, self._size)
            raise StorageError(f"idempotency store {self.path}: {exc}") from exc
        self._size += len(line)
        self._keys[key] = expires
        self._keys.move_to_end(key)
        self._lines += 1
        self._expire()
        if self._lines > _COMPACT_MIN_LINES and self._lines > 2 * len(self._keys):
            self._compact()

    def _compact(self) -> None:
        data = b"".join(_encode(exp, key) for key, exp in self._keys.items())
        try:
            write_atomic(self._fs, self.path, data)
            fd = self._fs.open(self.path)
        except OSError as exc:  # the old file is untouched: go on appending to it
            log.warning("idempotency store %s: cannot rewrite it: %s", self.path, exc)
            return
        self._fs.close(self._fd)
        self._fd = fd
        self._size = len(data)
        self._lines = len(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def close(self) -> None:
        if self._fd >= 0:
            self._fs.close(self._fd)
            self._fd = -1
