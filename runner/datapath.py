"""Entity names as file names, and deletes that never leave the data directory.

A base module beside `runner.fs` (no layer of its own): the storage layers
(log, broker, engine) and the pipeline's idempotency files all name files with it.

A topic, queue or consumer name is user input: it must never be used as a path
component as it stands. `dir_name` is the one function that turns an entity
name into a file name, and it is:

* safe: never empty, `.` or `..`, never holding a `/`, at most 200 bytes (so
  a partition suffix and a temporary suffix still fit NAME_MAX = 255);
* collision-free, also on a case-insensitive file system (macOS, Windows):
  lower-case letters, digits, `_`, `-` and `.` stand for themselves, and every
  other byte of the name's UTF-8 (upper-case letters included) is written
  `%XX` in upper-case hex, so `Orders` -> `%4Frders` and `orders` -> `orders`
  stay apart; a name whose encoding is longer than the limit keeps a prefix and
  adds `~` and a SHA-256 digest of the whole name (`~` never appears otherwise);
* stable for the names most data directories hold: an all-lower-case name is
  its own directory name, so existing data directories open unchanged, and
  `entity_path` moves a legacy directory (the name used as it was, i.e. with
  upper-case letters) to its new name once, on first open.

`remove_tree` is the one recursive delete of the storage layers: it refuses
(StorageError) any target that is not strictly inside the data directory,
after resolving symlinks and `..`. Both go through the file-system seam
(`runner.fs`): the move and the delete are durable in their directory on return.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from pathlib import Path

from runner import fs as files
from runner.errors import StorageError
from runner.fs import LOCAL, FileSystem

log = logging.getLogger(__name__)

MAX_NAME_BYTES = 200
_PLAIN = frozenset(b"abcdefghijklmnopqrstuvwxyz0123456789_-.")
_KEEP = 150  # bytes of the encoded name kept before a digest


def dir_name(name: str) -> str:
    """The file name that stands for entity `name` (see the module docstring).

    >>> dir_name("orders.created"), dir_name("Orders"), dir_name("..")
    ('orders.created', '%4Frders', '%2E%2E')
    """
    raw = name.encode("utf-8", "surrogatepass")
    if raw.strip(b".") == b"":  # "", ".", "..", "...": never a path of its own
        encoded = "".join(f"%{b:02X}" for b in raw) or "%"
    else:
        encoded = "".join(chr(b) if b in _PLAIN else f"%{b:02X}" for b in raw)
    if len(encoded) > MAX_NAME_BYTES:
        digest = hashlib.sha256(raw).hexdigest()[:40]
        encoded = f"{encoded[:_KEEP]}~{digest}"
    return encoded


def entity_path(parent: Path, name: str, suffix: str = "", *, fs: FileSystem = LOCAL) -> Path:
    """`parent / (dir_name(name) + suffix)`; a legacy file or directory named
    `name + suffix` (as written before names were encoded) is renamed to it first."""
    path = parent / f"{dir_name(name)}{suffix}"
    legacy_name = f"{name}{suffix}"
    if legacy_name == path.name or "/" in legacy_name or legacy_name in (".", ".."):
        return path
    legacy = parent / legacy_name
    try:
        if fs.exists(legacy) and not fs.exists(path):
            files.rename(fs, legacy, path)
            log.info("moved %s to %s (entity names are encoded now)", legacy, path)
    except OSError as exc:
        raise StorageError(f"cannot move {legacy} to {path}: {exc.strerror}") from exc
    return path


def inside(path: Path, root: Path) -> bool:
    """Whether `path` is strictly inside `root` once both are resolved (symlinks, `..`)."""
    target = Path(os.path.realpath(path))
    base = Path(os.path.realpath(root))
    return target != base and base in target.parents


def remove_tree(path: Path, *, root: Path, fs: FileSystem = LOCAL) -> None:
    """Delete the directory tree `path` (missing is fine), durably
    (`runner.fs.remove_tree`); StorageError, deleting nothing, when `path` is not
    strictly inside the data directory `root`."""
    if not inside(path, root):
        raise StorageError(
            f"refusing to delete {path}: it is not inside the data directory {root}")
    with contextlib.suppress(OSError):  # as before: a failed delete is not an error
        files.remove_tree(fs, path)
