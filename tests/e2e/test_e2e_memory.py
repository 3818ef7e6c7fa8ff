"""Memory of the real daemon (issue 17 item 3): what a queued message costs, the memory
budget counting it, and requests that fan out into many messages.

RSS is read from /proc/<pid>/status of the daemon process; bounds are generous
(they fail on the 4.4 KB a message measured before the fix, not on noise).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.e2e.conftest import Daemon

pytestmark = pytest.mark.e2e

TOPOLOGY = """\
version: 1
name: e2e-memory
exchanges:
  x: {type: fanout}
queues:
  q: {}
  d: {durable: true}
bindings:
  - {exchange: x, queue: q}
"""


def rss_bytes(d: Daemon) -> int:
    assert d.proc is not None
    status = Path(f"/proc/{d.proc.pid}/status").read_text()
    match = re.search(r"^VmRSS:\s+(\d+) kB$", status, re.M)
    assert match, status
    return int(match.group(1)) * 1024


def publish_tiny(d: Daemon, queue: str, count: int, batch: int = 5000) -> None:
    for start in range(0, count, batch):
        d.ok("POST", f"/v1/queues/{queue}/messages",
             {"messages": [{"body": i} for i in range(start, start + batch)]}, status=202)


@pytest.mark.parametrize("queue", ["q", "d"])
def test_a_tiny_queued_message_costs_well_under_1_5_kb_of_rss(
    start_daemon: Callable[..., Daemon], queue: str
) -> None:
    d = start_daemon(TOPOLOGY, args=["--fsync", "never"])
    publish_tiny(d, queue, 5000)  # warm up: first-use allocations are not per message
    before = rss_bytes(d)
    publish_tiny(d, queue, 100_000)
    per_message = (rss_bytes(d) - before) / 100_000
    # was 4,365 B (orjson's 4 KiB buffer kept by each body); ~300 B measured after
    assert per_message < 1500, f"{per_message:.0f} bytes of RSS a queued message"
    assert ready(d, queue) == 105_000


def ready(d: Daemon, queue: str) -> int:
    listed = d.ok("GET", "/v1/queues")["queues"]
    return int(next(q["ready"] for q in listed if q["name"] == queue))
