"""Pipeline test fixtures: every test starts with the test handlers' shared state cleared."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.pipeline import pipeline_handlers as ph


@pytest.fixture(autouse=True)
def _reset_handlers() -> Iterator[None]:
    """Clear what the handlers saw; at the end, free any handler still blocked."""
    ph.reset()
    yield
    ph.RELEASE.set()
