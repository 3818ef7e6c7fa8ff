"""Problems: what validation found, as data (never exceptions).

A `Problem` carries where (file, line, column, document path), what rule found
it, how bad it is, and a plain sentence for a person.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Severity(str, Enum):
    ERROR = "error"
    WARNING = "warning"


@dataclass(frozen=True, slots=True)
class Problem:
    file: str
    line: int  # 1-based; 0 when the problem is about a whole file
    column: int  # 1-based; 0 when unknown
    path: str  # document path, e.g. "queues.email_queue.dead_letter.exchange"
    rule: str  # short id, e.g. "unknown-key", "missing-reference", "dlx-cycle"
    severity: Severity
    message: str

    @property
    def is_error(self) -> bool:
        return self.severity is Severity.ERROR

    def sort_key(self) -> tuple[str, int, int, str]:
        return (self.file, self.line, self.column, self.message)
