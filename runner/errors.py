"""The exception tree of topology-runner.

    RunnerError
    +-- TopologyError            a topology could not be loaded (problems attached)
    +-- EngineError              the embedded engine refused or failed an operation
    |   +-- NotFound             unknown topic / partition / exchange / queue / group   (HTTP 404)
    |   +-- InvalidRequest       malformed input, e.g. keyless record on a compacted topic (400)
    |   +-- Forbidden            publish to an internal exchange                          (403)
    |   +-- Conflict             unknown or expired delivery ids, state conflicts        (409)
    |   +-- TooLarge             record / message over its size limit                     (413)
    |   |   +-- FanoutTooLarge   a handler call's outputs over --max-fanout message copies
    |   +-- Refused              overflow `reject-publish`, disk budget exhausted         (429)
    |   +-- UnsafeChange         a topology change the engine will not apply (PRECONDITION_FAILED)
    |   +-- OffsetOutOfRange     reading below the log start offset                       (404/416)
    |   +-- StorageError         I/O or corruption; `retriable` tells whether to try again
    |       +-- CorruptSegment   a bad batch in the middle of a log (path and file offset)
    |       +-- LogFailed        a log whose fsync failed: refuses all until reopened (503)
    +-- HandlerImportError       a handler reference that does not resolve

Foreign exceptions (yaml, jsonschema, OSError, aiohttp, pika) are translated
where they are caught, with `raise ... from`.
"""

from __future__ import annotations


class RunnerError(Exception):
    """Base of every error raised on purpose by topology-runner."""

    retriable: bool = False


class TopologyError(RunnerError):
    """A topology could not be loaded or is invalid; `problems` says why."""

    def __init__(self, message: str, problems: tuple[object, ...] = ()) -> None:
        super().__init__(message)
        self.problems = problems


class EngineError(RunnerError):
    """The embedded engine refused or failed an operation."""


class NotFound(EngineError):
    """An unknown topic, partition, exchange, queue, group or message."""


class InvalidRequest(EngineError):
    """The request is malformed for this entity."""


class Forbidden(EngineError):
    """The operation is not allowed on this entity (e.g. internal exchange)."""


class Conflict(EngineError):
    """The request conflicts with current state (unknown delivery ids...)."""

    def __init__(self, message: str, *, unknown: tuple[object, ...] = ()) -> None:
        super().__init__(message)
        self.unknown = unknown


class TooLarge(EngineError):
    """A record or message is over its size limit."""


class FanoutTooLarge(TooLarge):
    """What one handler call publishes would create more message copies (messages x
    the queues and topics each reaches) than the daemon's --max-fanout."""


class Refused(EngineError):
    """A publish was refused by overflow or an exhausted budget; retry later."""

    retriable = True

    def __init__(self, message: str, *, accepted: int = 0, routed: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.accepted = accepted
        self.routed = routed


class UnsafeChange(EngineError):
    """A topology change that would lose data or break semantics."""


class OffsetOutOfRange(EngineError):
    """A read below the log start offset (or above the end)."""

    def __init__(self, message: str, *, log_start: int = 0, log_end: int = 0) -> None:
        super().__init__(message)
        self.log_start = log_start
        self.log_end = log_end


class StorageError(EngineError):
    """Disk I/O failed or data is corrupt."""


class CorruptSegment(StorageError):
    """A corrupt batch in the middle of a log: never silently skipped."""

    def __init__(self, message: str, *, path: str, position: int) -> None:
        super().__init__(message)
        self.path = path
        self.position = position


class LogFailed(StorageError):
    """A log whose fsync failed. The kernel may have dropped the unsynced pages, so
    nothing written since the last good fsync is trusted: the log refuses every
    write and read until it is reopened, which recovers from what is on disk."""

    retriable = True

    def __init__(self, message: str, *, path: str) -> None:
        super().__init__(message)
        self.path = path


class HandlerImportError(RunnerError):
    """A handler reference `module:callable` that does not resolve."""
