"""Handlers: resolving `module:callable` references and calling them with a timeout.

Resolving re-imports a handler module whose source file changed (mtime) since
it was imported, so a reload picks up edited handler code.

A sync handler runs in the daemon's thread pool, an `async def` handler on the
loop. Both are bounded by the consumer's `timeout`. (`Handler.call` does one
call; the pipeline's workers run sync calls in batches, see sync_batch.py.) A sync
handler that overruns counts as failed at once, but Python cannot kill its
thread: it keeps running in the pool until it returns on its own, and whatever
it stages after that is refused (its context is closed).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import importlib
import inspect
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from runner.errors import HandlerImportError
from runner.pipeline.message import Context, Message
from runner.topology.model import Topology
from runner.topology.problems import Problem, Severity

HandlerFn = Callable[..., Any]
SOURCE_MTIME_ATTR = "__runner_source_mtime__"  # set on handler modules: reload detection

log = logging.getLogger(__name__)


class HandlerTimeout(TimeoutError):
    """A handler ran longer than its consumer's `timeout`."""


def _ensure_cwd_on_path() -> None:
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)


def _source_mtime(module: ModuleType) -> int | None:
    path = getattr(module, "__file__", None)
    if not path:
        return None
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return None


def _import_fresh(name: str) -> ModuleType:
    """Import `name`; a module imported before whose source file changed since
    (mtime) is re-imported (importlib.reload), so a reload sees new code."""
    module = sys.modules.get(name)
    if module is None:
        module = importlib.import_module(name)
        setattr(module, SOURCE_MTIME_ATTR, _source_mtime(module))
        return module
    now = _source_mtime(module)
    seen = getattr(module, SOURCE_MTIME_ATTR, None)
    if seen is None:  # imported by someone else first: from now on it is watched
        setattr(module, SOURCE_MTIME_ATTR, now)
    elif now is not None and now != seen:
        log.info("handler module %s changed on disk: re-importing it", name,
                 extra={"event": "handler_reimported", "handler_module": name})
        importlib.invalidate_caches()
        module = importlib.reload(module)
        setattr(module, SOURCE_MTIME_ATTR, now)
    return module


def resolve(ref: str, *, consumer: str | None = None) -> HandlerFn:
    """Import `package.module:callable` (the callable may be a dotted attribute path)."""
    who = f"consumer {consumer!r}: " if consumer else ""
    module_name, sep, attr_path = ref.partition(":")
    if not sep or not module_name or not attr_path:
        raise HandlerImportError(
            f"{who}handler {ref!r} is not of the form 'package.module:callable'"
        )
    _ensure_cwd_on_path()
    try:
        obj: Any = _import_fresh(module_name)
    except (Exception, SystemExit) as exc:  # any import-time failure of user code
        where = ""
        if isinstance(exc, ModuleNotFoundError) and exc.name and (
            module_name == exc.name or module_name.startswith(exc.name + ".")
        ):  # the module itself is not found (not one it imports): say where we looked
            searched = [p or "." for p in sys.path if os.path.exists(p or ".")]
            where = (f" (searched sys.path: {', '.join(searched)}; "
                     "run from the directory that holds it or pass --pythonpath DIR)")
        raise HandlerImportError(
            f"{who}handler {ref!r}: cannot import module {module_name!r}: "
            f"{type(exc).__name__}: {exc}{where}"
        ) from exc
    for part in attr_path.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError as exc:
            raise HandlerImportError(
                f"{who}handler {ref!r}: module {module_name!r} has no attribute {attr_path!r}"
            ) from exc
    if not callable(obj):
        raise HandlerImportError(
            f"{who}handler {ref!r}: {attr_path!r} is a {type(obj).__name__}, not a callable"
        )
    fn: HandlerFn = obj
    problem = signature_problem(fn)
    if problem is not None:
        raise HandlerImportError(f"{who}handler {ref!r} {problem}; {SIGNATURE_HINT}")
    return fn


SIGNATURE_HINT = "it must take (msg) or (msg, ctx)"


def signature_problem(fn: HandlerFn) -> str | None:
    """Why `fn` cannot be called as fn(msg) nor fn(msg, ctx); None when it can
    (or when it has no inspectable signature, e.g. some builtins). The one
    check: `runner validate --check-handlers`, start and reload all use it."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return None
    params = list(sig.parameters.values())
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    required = [p for p in positional if p.default is p.empty]
    keyword_only = [p.name for p in params if p.kind is p.KEYWORD_ONLY and p.default is p.empty]
    star = any(p.kind is p.VAR_POSITIONAL for p in params)
    if len(required) > 2:
        return f"takes {len(required)} required parameters"
    if not positional and not star:
        return "takes no positional parameter"
    if keyword_only:
        plural = "s" if len(keyword_only) > 1 else ""
        return f"has the required keyword-only parameter{plural} {', '.join(keyword_only)}"
    return None


HANDLER_RULE = "handler"  # the rule id of a handler that does not resolve


def handler_problems(topology: Topology, failures: list[tuple[str, str, str]]) -> list[Problem]:
    """`check_handlers` failures as problems at the handler's line (rule `handler`)."""
    groups = topology.group_map()
    out = []
    for name, _ref, message in failures:
        path = f"{'consumer_groups' if name in groups else 'consumers'}.{name}.handler"
        pos = topology.position(path)
        out.append(Problem(pos.file, pos.line, pos.column, path, HANDLER_RULE, Severity.ERROR,
                           message))
    return out


def check_handlers(topology: Topology) -> list[tuple[str, str, str]]:
    """Import every handler of `topology`; (consumer or group, ref, error) for each failure."""
    # an empty reference only comes from a partial topology, where it is already an error
    refs: list[tuple[str, str]] = [(c.name, c.handler) for _, c in topology.consumers
                                   if c.handler]
    refs += [(g.name, g.handler) for _, g in topology.consumer_groups if g.handler]
    failures: list[tuple[str, str, str]] = []
    for name, ref in refs:
        try:
            resolve(ref, consumer=name)
        except HandlerImportError as exc:
            failures.append((name, ref, str(exc)))
    return failures


def _wants_context(fn: HandlerFn) -> bool:
    """True when the callable accepts a second positional argument."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return False
    positional = 0
    for p in sig.parameters.values():
        if p.kind is p.VAR_POSITIONAL:
            return True
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            positional += 1
    return positional >= 2


def _is_async(fn: HandlerFn) -> bool:
    target = fn.func if isinstance(fn, functools.partial) else fn
    return inspect.iscoroutinefunction(target) or inspect.iscoroutinefunction(
        getattr(target, "__call__", None)  # noqa: B004 - async __call__ of an instance
    )


@dataclass(frozen=True, slots=True)
class Handler:
    """A resolved handler and how to call it."""

    ref: str
    fn: HandlerFn
    is_async: bool
    wants_context: bool

    @classmethod
    def load(cls, ref: str, *, consumer: str | None = None) -> Handler:
        fn = resolve(ref, consumer=consumer)
        return cls(ref=ref, fn=fn, is_async=_is_async(fn), wants_context=_wants_context(fn))

    async def call(
        self, message: Message, ctx: Context, *, timeout_s: float,
        executor: concurrent.futures.Executor,
    ) -> Any:
        """Run once; what the handler returned, or raises what it raised, or HandlerTimeout.

        The timeout counts from the moment the handler starts: a sync call
        waiting for a free pool thread is not charged for the wait."""
        args: tuple[Any, ...] = (message, ctx) if self.wants_context else (message,)
        work: asyncio.Future[Any] | None = None
        if not self.is_async:
            work = await self._start_in_pool(args, executor)
        try:
            async with asyncio.timeout(timeout_s) as deadline:
                result = await (work if work is not None else self.fn(*args))
                if inspect.isawaitable(result):  # a sync callable that returned an awaitable
                    result = await result
                return result
        except TimeoutError:
            if deadline.expired():
                raise HandlerTimeout(
                    f"handler {self.ref!r} did not finish within {timeout_s:g}s") from None
            raise  # the handler's own TimeoutError is a plain failure

    async def _start_in_pool(
        self, args: tuple[Any, ...], executor: concurrent.futures.Executor,
    ) -> asyncio.Future[Any]:
        """Submit a sync call and wait until a pool thread has started it."""
        loop = asyncio.get_running_loop()
        started: asyncio.Future[None] = loop.create_future()

        def begin() -> None:
            if not started.done():
                started.set_result(None)

        def run() -> Any:
            loop.call_soon_threadsafe(begin)
            return self.fn(*args)

        # an executor thread cannot be stopped: on timeout it runs to its end
        work = loop.run_in_executor(executor, run)
        try:
            await asyncio.wait({started, work}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            work.cancel()  # not started yet: it never will be
            raise
        return work
