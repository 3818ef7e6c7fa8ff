"""The topology a data directory was last run with, and the check at start.

The daemon records the topology it applied in `<data dir>/topology.json`
(`runner.fs.write_atomic`: a temporary file, synced, renamed, directory synced) at start
and after every applied reload. At the next start the new topology is
planned against the recorded one exactly as a reload would be: an unsafe
change refuses the start (`StartRefused`, carrying the plan) unless
`--allow-unsafe`; a data directory recorded for another topology name is
refused naming both (also overridden by `--allow-unsafe`, which then takes the
directory over). A data directory without a record (new, or from before this
file existed) starts as before and gets one.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from runner import fs
from runner.engine.contract import Backend
from runner.errors import EngineError, RunnerError, StorageError, UnsafeChange
from runner.topology.diff import Plan
from runner.topology.model import Topology
from runner.topology.snapshot import SnapshotError, from_document, to_document

log = logging.getLogger(__name__)

RECORD_FILE = "topology.json"
FORMAT = 1


class StartRefused(RunnerError):
    """The daemon will not start on this data directory with this topology."""

    def __init__(self, message: str, plan: Plan | None = None) -> None:
        super().__init__(message)
        self.plan = plan


@dataclass(frozen=True, slots=True)
class Recorded:
    name: str | None
    content_hash: str
    topology: Topology


def shown_name(name: str | None) -> str:
    return f"'{name}'" if name else "(unnamed)"


def read_record(data_dir: Path) -> Recorded | None:
    """The recorded topology of `data_dir`; None when there is none.
    StorageError when the record cannot be read or is not one."""
    path = Path(data_dir) / RECORD_FILE
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StorageError(f"cannot read {path}: {exc.strerror}") from exc
    try:
        doc = json.loads(raw)
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise SnapshotError("unknown record format")
        topology = from_document(doc["topology"])
        return Recorded(doc.get("name"), str(doc.get("hash", "")), topology)
    except (ValueError, KeyError) as exc:
        raise StorageError(
            f"{path} is not a topology record ({exc}); move it away to start without the check"
        ) from exc


def write_record(data_dir: Path, topology: Topology, content_hash: str) -> None:
    """Record `topology` as the one applied to `data_dir` (durably, atomically)."""
    data_dir = Path(data_dir)
    doc: dict[str, Any] = {"format": FORMAT, "name": topology.name, "hash": content_hash,
                           "topology": to_document(topology)}
    path = data_dir / RECORD_FILE
    data = json.dumps(doc, indent=1, sort_keys=True).encode() + b"\n"
    try:
        fs.make_dirs(fs.LOCAL, data_dir)
        fs.write_atomic(fs.LOCAL, path, data)
    except OSError as exc:
        raise StorageError(f"cannot record the topology in {path}: {exc.strerror}") from exc


def check_name(recorded: Recorded, new: Topology, data_dir: Path) -> None:
    """StartRefused when `data_dir` was recorded for a topology of another name."""
    if recorded.name != new.name:
        raise StartRefused(
            f"data directory {data_dir} holds topology {shown_name(recorded.name)}, not "
            f"{shown_name(new.name)}: give this topology its own --data-dir "
            f"(or --allow-unsafe to take the directory over)"
        )


def check_plan(plan: Plan, data_dir: Path) -> None:
    """StartRefused when the plan from the recorded topology has unsafe changes."""
    unsafe = plan.unsafe
    if unsafe:
        raise StartRefused(
            f"refused to start: {len(unsafe)} unsafe change(s) against the topology recorded "
            f"in {data_dir} (the plan is above); revert them, or pass --allow-unsafe",
            plan,
        )


def holds_nothing(backend: Backend, kind: str, name: str) -> bool:
    """Whether a queue or topic holds nothing (removing it is then safe)."""
    try:
        if kind.startswith("queue"):
            info = backend.queue_info(name)
            return info.ready + info.unacked + info.delayed == 0
        return all(p.log_end_offset == p.log_start_offset for p in backend.partitions(name))
    except EngineError:
        return True


B = TypeVar("B", bound=Backend)


def open_checked(
    new: Topology, data_dir: Path, *, allow_unsafe: bool,
    open_backend: Callable[[Topology], B], diff: Callable[..., Plan],
) -> B:
    """Open the backend on `data_dir` for `new`, planned against the recorded topology
    (see the module text); StartRefused, with nothing changed, when it may not."""
    recorded = read_record(data_dir)
    if recorded is None:
        return open_backend(new)
    if recorded.name != new.name:
        if not allow_unsafe:
            check_name(recorded, new, data_dir)
        log.warning("taking over data directory %s of topology %s for %s (--allow-unsafe)",
                    data_dir, shown_name(recorded.name), shown_name(new.name),
                    extra={"event": "data_dir_taken_over"})
    backend = open_backend(recorded.topology)
    plan: Plan | None = None
    try:
        plan = diff(recorded.topology, new,
                    is_empty=lambda kind, name: holds_nothing(backend, kind, name))
        if plan.unsafe:
            if not allow_unsafe:
                check_plan(plan, data_dir)
            log.warning("starting with %d unsafe change(s) against the topology recorded in "
                        "%s (--allow-unsafe)", len(plan.unsafe), data_dir,
                        extra={"event": "unsafe_start"})
        if not plan.empty:
            log.info("%d change(s) since the topology recorded in %s", len(plan.changes),
                     data_dir, extra={"event": "start_plan", "changes": len(plan.changes)})
        backend.apply(new, force=allow_unsafe)
    except UnsafeChange as exc:
        backend.close()
        if not allow_unsafe:
            raise StartRefused(f"refused to start: {exc}", plan) from exc
        return open_backend(new)  # what the engine refuses to change in place
    except BaseException:
        backend.close()
        raise
    return backend
