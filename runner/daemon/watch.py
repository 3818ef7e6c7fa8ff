"""The topology watcher: file events on the topology path, debounced, posted to the loop.

A watchdog observer thread watches the topology file's directory (or the
topology directory, not recursively), and the files of the handler modules
(`watch_files`, updated after each applied reload: an edited handler reloads
like an edited topology). Its thread never touches daemon state:
each relevant event only posts `Debouncer.poke` to the event loop with
`call_soon_threadsafe`. The debouncer fires once the files have been quiet
for `delay_s`, so an editor's save burst (write temp, rename, chmod) is one
reload.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

log = logging.getLogger(__name__)


class Debouncer:
    """Calls `fire` once, `delay_s` after the last `poke` (loop thread only)."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, delay_s: float, fire: Callable[[], None]
    ) -> None:
        self._loop = loop
        self._delay_s = delay_s
        self._fire = fire
        self._timer: asyncio.TimerHandle | None = None

    def poke(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_later(self._delay_s, self._run)

    def _run(self) -> None:
        self._timer = None
        self._fire()

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def is_topology_file(path: str) -> bool:
    """A file a topology directory merges (editor files are skipped)."""
    name = os.path.basename(path)
    if name.startswith((".", "#")) or name.endswith("~"):
        return False
    return name.endswith((".yaml", ".yml"))


def handler_files(refs: Iterable[str]) -> frozenset[Path]:
    """The source files of the (imported) modules of handler references
    `module:callable`; modules not imported or without a file are left out."""
    out: set[Path] = set()
    for ref in refs:
        module = sys.modules.get(ref.partition(":")[0])
        path = getattr(module, "__file__", None)
        if path:
            out.add(Path(path).resolve())
    return frozenset(out)


def sources_digest(paths: Iterable[Path]) -> str:
    """A hash over the files' names and contents (a missing file hashes as absent)."""
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(os.fsencode(path) + b"\0")
        try:
            digest.update(hashlib.sha256(path.read_bytes()).digest())
        except OSError:
            digest.update(b"absent")
    return digest.hexdigest()


class _Events(FileSystemEventHandler):
    def __init__(self, relevant: Callable[[str], bool], post: Callable[[], None]) -> None:
        self._relevant = relevant
        self._post = post

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.is_directory or event.event_type in ("opened", "closed_no_write"):
            return
        paths = [os.fsdecode(event.src_path)]
        dest = getattr(event, "dest_path", "")
        if dest:
            paths.append(os.fsdecode(dest))
        if any(self._relevant(p) for p in paths):
            self._post()


class TopologyWatcher:
    """Watches a topology file or directory; calls `on_change` on the loop, debounced."""

    def __init__(
        self,
        path: Path,
        loop: asyncio.AbstractEventLoop,
        on_change: Callable[[], None],
        *,
        debounce_s: float = 0.1,
    ) -> None:
        self._path = path.resolve()
        self._loop = loop
        self._debouncer = Debouncer(loop, debounce_s, on_change)
        self._observer: Observer | None = None  # type: ignore[valid-type]
        self._events = _Events(self._relevant, self._post)
        self._dirs: set[Path] = set()
        self._files: frozenset[Path] = frozenset()

    def _relevant(self, path: str) -> bool:
        resolved = Path(path).resolve()
        if resolved in self._files:
            return True
        if self._path.is_dir():
            return resolved.parent == self._path and is_topology_file(path)
        return resolved == self._path

    def _post(self) -> None:
        # RuntimeError: the loop is closing; nothing is left to reload
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._debouncer.poke)

    def start(self) -> None:
        watched = self._path if self._path.is_dir() else self._path.parent
        observer = Observer()
        observer.daemon = True
        observer.schedule(self._events, str(watched), recursive=False)
        self._dirs.add(watched)
        observer.start()
        self._observer = observer
        log.info(
            "watching %s for topology changes", watched,
            extra={"event": "watching", "path": str(watched)},
        )
        self.watch_files(self._files)

    def watch_files(self, files: frozenset[Path]) -> None:
        """Also reload when one of `files` (handler modules' sources) changes."""
        self._files = files
        observer = self._observer
        if observer is None:
            return
        for directory in sorted({f.parent for f in files} - self._dirs):
            try:
                observer.schedule(self._events, str(directory), recursive=False)
            except OSError as exc:  # gone, or out of inotify watches: reload still works
                log.warning("cannot watch %s for handler changes: %s", directory, exc)
                continue
            self._dirs.add(directory)
            log.info("watching %s for handler changes", directory,
                     extra={"event": "watching", "path": str(directory)})

    def stop(self) -> None:
        self._debouncer.cancel()
        observer = self._observer
        if observer is not None:
            observer.stop()
            observer.join(timeout=5)
            self._observer = None
