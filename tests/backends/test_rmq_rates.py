"""Rate limits from the topology on `runner run --backend amqp://...` (real daemon over
the real RabbitMQ, a vhost per test): `publish_rate` on HTTP publishes (429 with
Retry-After, the same body as the embedded daemon, counted) and a consumer's
`rate_limit` pacing its handler."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import Daemon, make_daemon, wait_for
from tests.rmq import fresh_vhost, url

HANDLERS = '''\
import json
import time


def paced(msg):
    with open("paced.log", "a") as fh:
        fh.write(json.dumps({"body": msg.body, "t": time.time()}) + "\\n")
'''

TOPOLOGY = """\
version: 1
name: rmq-rates
queues:
  limited: {publish_rate: 2/s}
  free: {}
  paced: {}
consumers:
  paced-c: {queue: paced, handler: "handlers_rates:paced", rate_limit: 10/s, prefetch: 50,
            concurrency: 4}
"""


@pytest.fixture
def daemon(tmp_path: Any) -> Iterator[Daemon]:
    with fresh_vhost() as target:
        d = make_daemon(tmp_path, TOPOLOGY, modules={"handlers_rates": HANDLERS},
                        args=["--backend", url(target), "--no-watch"])
        d.start()
        try:
            yield d
        finally:
            if d.running:
                d.stop()


def _throttled(d: Daemon, kind: str, name: str) -> float | None:
    for family in text_string_to_metric_families(d.metrics()):
        for s in family.samples:
            if (s.name == "runner_publish_throttled_total"
                    and s.labels == {"kind": kind, "name": name}):
                return float(s.value)
    return None


def _pull(d: Daemon, queue: str) -> list[Any]:
    return d.drain(queue, 100)


def test_past_publish_rate_a_producer_gets_429_with_retry_after(daemon: Daemon) -> None:
    assert _throttled(daemon, "queue", "limited") == 0
    for body in ("a", "b"):  # a 2/s bucket holds two tokens
        daemon.ok("POST", "/v1/queues/limited/messages", {"body": body}, 202)
    refused = daemon.post("/v1/queues/limited/messages", {"messages": [{"body": "c"}]})
    assert refused.status == 429
    assert refused.headers["Retry-After"] == "1"
    assert refused.body == {
        "error": "queue 'limited' takes at most 2/s from one producer (publish_rate); "
        "1 message refused, none stored: retry in 1s",
        "accepted": 0,
        "routed": [],
    }
    assert _throttled(daemon, "queue", "limited") == 1
    assert wait_for(lambda: _pull(daemon, "limited")) == ["a", "b"]
    time.sleep(1.1)  # what Retry-After said
    daemon.ok("POST", "/v1/queues/limited/messages", {"body": "c"}, 202)
    assert wait_for(lambda: _pull(daemon, "limited")) == ["c"]
    for i in range(20):  # no publish_rate: never limited, no series
        daemon.ok("POST", "/v1/queues/free/messages", {"body": i}, 202)
    assert _throttled(daemon, "queue", "free") is None


def test_a_consumers_rate_limit_paces_its_handler(daemon: Daemon) -> None:
    n = 30
    daemon.ok("POST", "/v1/queues/paced/messages",
              {"messages": [{"body": i} for i in range(n)]}, 202)
    log = daemon.workdir / "paced.log"

    def handled() -> list[dict[str, Any]]:
        return [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []

    wait_for(lambda: len(handled()) == n, timeout_s=20)
    times = sorted(h["t"] for h in handled())
    # 10/s with a burst of one second's worth: 10 at once, the other 20 over ~2 s
    assert times[-1] - times[0] >= 1.7, times[-1] - times[0]
    assert times[9] - times[0] < 1.0, times[9] - times[0]
