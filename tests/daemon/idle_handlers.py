"""Handlers for the idle-cost test: each call notes when it ran (monotonic)."""

from __future__ import annotations

import time
from typing import Any

calls: list[float] = []


async def note(msg: Any) -> None:
    calls.append(time.monotonic())
