"""Fixtures for the log tests: a manual clock and a log factory that closes what it opens."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from runner.clock import ManualClock
from runner.log.record import Fsync
from runner.log.segment import SegmentedLog


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def open_log(tmp_path: Path, clock: ManualClock) -> Iterator[Callable[..., SegmentedLog]]:
    opened: list[SegmentedLog] = []

    def factory(directory: Path | None = None, **kw: Any) -> SegmentedLog:
        kw.setdefault("fsync", Fsync.NEVER)
        kw.setdefault("clock", clock)
        log = SegmentedLog(directory or tmp_path / "log", **kw)
        opened.append(log)
        return log

    yield factory
    for log in opened:
        log.close()
