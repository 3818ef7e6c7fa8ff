"""The topology watcher: file events on the topology path, debounced, posted to the loop.

A watchdog observer thread watches the topology file's directory (or the
topology directory, not recursively). Its thread never touches daemon state:
each relevant event only posts `Debouncer.poke` to the event loop with
`call_soon_threadsafe`. The debouncer fires once the files have been quiet
for `delay_s`, so an editor's save burst (write temp, rename, chmod) is one
reload.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
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

    def _relevant(self, path: str) -> bool:
        resolved = Path(path).resolve()
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
        observer.schedule(_Events(self._relevant, self._post), str(watched), recursive=False)
        observer.start()
        self._observer = observer
        log.info(
            "watching %s for topology changes", watched,
            extra={"event": "watching", "path": str(watched)},
        )

    def stop(self) -> None:
        self._debouncer.cancel()
        observer = self._observer
        if observer is not None:
            observer.stop()
            observer.join(timeout=5)
            self._observer = None
