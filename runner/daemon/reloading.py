"""What every daemon's reload does before it plans: one attempt at a time, the
topology files read and the handler modules imported each in a thread of their own
under `--load-timeout`, an unchanged watch event passed over, every counted attempt
logged and kept for the console.

Shared by the embedded daemon (runner.daemon.supervisor) and the daemon over
RabbitMQ (runner.daemon.remote); each plans and applies on its own backend.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from runner.clock import Clock
from runner.daemon.reload import (
    ReloadCounters,
    ReloadEntry,
    ReloadResult,
    changes_json,
    problem_json,
    problem_line,
)
from runner.daemon.watch import sources_digest
from runner.errors import EngineError, RunnerError, UnsafeChange
from runner.pipeline.handler import handler_problems
from runner.pipeline.runtime import WorkerChanges
from runner.topology.diff import Plan, unsafe_sentence
from runner.topology.model import Topology
from runner.topology.problems import Problem

log = logging.getLogger(__name__)

RELOAD_LOG_SIZE = 20  # reload attempts the console lists


async def switch_topology(
    plan: Plan, generation: int, old: Topology, new: Topology, *,
    apply: Callable[[Topology, bool], Awaitable[None]],
    start: Callable[[Topology], Awaitable[WorkerChanges]],
    show: Callable[[Topology], None],
    where: str,
) -> ReloadResult | WorkerChanges:
    """One reload's change, for both daemons: refuse the plan's unsafe changes;
    `apply(new, False)` to the backend (its refusal answered as such); `show(new)` to
    the HTTP API; `start(new)` the pipeline on it, and if the pipeline refuses, show
    and `apply(old, True)` the old topology again (`where`: "in the engine", "on the
    broker", for the log line of a failed restore). The workers' changes when
    applied, else the result to answer."""
    changes = changes_json(plan.changes)
    unsafe = list(plan.unsafe)
    if unsafe:
        reasons = "; ".join(unsafe_sentence(c) for c in unsafe)
        return ReloadResult("refused", generation, changes=changes,
                            error=f"refused {len(unsafe)} unsafe change(s): {reasons}")
    try:
        await apply(new, False)
    except UnsafeChange as exc:
        return ReloadResult("refused", generation, changes=changes, error=f"refused: {exc}")
    except EngineError as exc:
        return ReloadResult("refused", generation, changes=changes,
                            error=f"engine refused: {exc}")
    show(new)
    try:
        return await start(new)
    except Exception as exc:
        if isinstance(exc, RunnerError):
            log.error("pipeline refused the new topology (%s); restoring the previous", exc)
        else:
            log.exception("pipeline.apply failed; restoring the previous topology")
        show(old)
        try:
            await apply(old, True)
        except Exception:
            log.exception("restoring the previous topology %s failed", where)
        return ReloadResult("invalid", generation, changes=changes,
                            error=f"pipeline refused: {exc}")


class Loaded(Protocol):
    """A load result (runner.topology.load.LoadResult)."""

    @property
    def topology(self) -> Topology | None: ...

    @property
    def problems(self) -> Sequence[Problem]: ...

    @property
    def content_hash(self) -> str: ...


@dataclass(frozen=True, slots=True)
class Candidate:
    """A topology read for a reload: valid, its handlers import."""

    loaded: Loaded
    topology: Topology


class Reloads:
    """A daemon's reloads up to the plan: `run` one attempt at a time and count it,
    `read` the files and import the handlers for it."""

    def __init__(
        self, path: Path, *, load_timeout_s: float, load: Callable[[str], Loaded],
        check_handlers: Callable[[Topology], list[tuple[str, str, str]]], clock: Clock,
        seen: tuple[str, str],
    ) -> None:
        self.path = path
        self.load_timeout_s = load_timeout_s
        self._load = load
        self._check_handlers = check_handlers
        self._clock = clock
        # what the files held at the last attempt: (topology hash, handler sources);
        # a watch event that finds the same is no reload
        self.seen = seen
        self.counters = ReloadCounters()
        self.entries: deque[ReloadEntry] = deque(maxlen=RELOAD_LOG_SIZE)
        self.last_error: str | None = None
        self.last_result: str | None = None
        self._lock = asyncio.Lock()
        self.loading: asyncio.Future[Any] | None = None  # a read that may still hang
        self._tasks: set[asyncio.Future[ReloadResult]] = set()

    async def run(
        self, trigger: str, attempt: Callable[[str], Awaitable[ReloadResult]],
    ) -> ReloadResult:
        """`attempt(trigger)` alone, then counted, logged and kept (not when unchanged)."""
        async with self._lock:
            result = await attempt(trigger)
        if result.result != "unchanged":
            now = self._clock.time()
            self.counters.count(result.result, now)
            self.entries.append(ReloadEntry(now, trigger, result))
            self.last_result = result.result
            self.last_error = result.error
            level = logging.INFO if result.result == "applied" else logging.ERROR
            log.log(
                level,
                "reload %s (%s)%s",
                result.result,
                trigger,
                f": {result.error}" if result.error else "",
                extra={
                    "event": "reload",
                    "result": result.result,
                    "trigger": trigger,
                    "generation": result.generation,
                    "changes": len(result.changes),
                },
            )
        return result

    def background(self, reload: Coroutine[Any, Any, ReloadResult]) -> None:
        """Run a reload (SIGHUP, a file event) as a task kept here, its failure logged."""
        task = asyncio.ensure_future(reload)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Future[ReloadResult]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("reload failed unexpectedly", exc_info=task.exception())

    def _in_thread(self, path: str, work: Callable[[str], Any]) -> asyncio.Future[Any]:
        """`work(path)` in a daemon thread of its own: a read that hangs (a dead NFS
        server), or a handler module that blocks at import, can be given up without
        blocking shutdown, as an executor's worker would (asyncio.run waits for the
        default executor's threads)."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()

        def settle(value: Any, exc: BaseException | None) -> None:
            if fut.done():
                return
            if exc is not None:
                fut.set_exception(exc)
            else:
                fut.set_result(value)

        def run() -> None:
            try:
                value = work(path)
            except BaseException as exc:  # handed to the loop, raised by the await there
                loop.call_soon_threadsafe(settle, None, exc)
            else:
                loop.call_soon_threadsafe(settle, value, None)

        # a result nobody awaits any more (given up) must not be logged as never retrieved
        fut.add_done_callback(lambda f: f.cancelled() or f.exception())
        threading.Thread(target=run, name="topology-load", daemon=True).start()
        return fut

    async def read(
        self, trigger: str, generation: int, handler_files: Iterable[Path],
    ) -> Candidate | ReloadResult:
        """The topology files for a reload: a valid topology whose handlers import, or
        the "invalid" (or, for a watch event that finds the same, "unchanged")
        result. `handler_files`: the modules the running topology uses."""
        path = self.path
        limit = self.load_timeout_s
        if self.loading is not None and not self.loading.done():
            return ReloadResult(
                "invalid", generation,
                error=f"{path}: the previous read of the topology has not finished "
                "(a hung file system?); the running topology stays",
            )
        self.loading = self._in_thread(str(path), self._load)
        try:
            loaded = await asyncio.wait_for(asyncio.shield(self.loading), limit)
        except TimeoutError:
            log.error("reading %s did not finish within %gs", path, limit)
            return ReloadResult(
                "invalid", generation,
                error=f"{path}: reading the topology did not finish within {limit:g}s "
                "(--load-timeout; a hung file system?); the running topology stays",
            )
        except FileNotFoundError:
            return ReloadResult(
                "invalid", generation, error=f"{path}: the topology path does not exist"
            )
        except Exception as exc:  # the loader returns problems as data; be safe anyway
            log.exception("loading %s failed", path)
            return ReloadResult("invalid", generation, error=f"{path}: {exc}")
        seen = (loaded.content_hash, sources_digest(handler_files))
        if seen == self.seen and trigger == "watch":
            return ReloadResult("unchanged", generation)
        self.seen = seen  # a fix saved after a failed attempt is an attempt again
        errors = [p for p in loaded.problems if p.is_error]
        new = loaded.topology
        if errors or new is None:
            first = problem_line(errors[0]) if errors else f"{path}: the topology is invalid"
            return ReloadResult(
                "invalid",
                generation,
                error=f"invalid topology: {first}",
                problems=[problem_json(p) for p in errors],
            )
        # a handler module that blocks at import must not hold the reload lock for
        # good either: the imports run in a thread of their own under the same limit
        topology = new
        self.loading = self._in_thread(str(path), lambda _: self._check_handlers(topology))
        try:
            failures = await asyncio.wait_for(asyncio.shield(self.loading), limit)
        except TimeoutError:
            log.error("importing the handlers of %s did not finish within %gs", path, limit)
            return ReloadResult(
                "invalid", generation,
                error=f"{path}: importing the handler modules did not finish within "
                f"{limit:g}s (--load-timeout; a handler module that blocks at import?); "
                "the running topology stays",
            )
        if failures:
            problems = handler_problems(new, failures)
            return ReloadResult(
                "invalid",
                generation,
                error=f"handler import failed: {problem_line(problems[0])}",
                problems=[problem_json(p) for p in problems],
            )
        return Candidate(loaded, new)
