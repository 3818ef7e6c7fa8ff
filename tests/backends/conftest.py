"""The real local RabbitMQ: a fresh vhost per test (`tests.rmq.fresh_vhost`, created
and deleted through the management API). Without a reachable broker the tests skip
locally with one line and FAIL when `CI` is set."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from runner.backends.rabbitmq.url import Target
from tests.rmq import fresh_vhost


@pytest.fixture
def vhost() -> Iterator[Target]:
    """A new vhost on the local broker (guest may do everything in it), deleted after."""
    with fresh_vhost() as target:
        yield target
