"""A reload that changes a consumer's `prefetch` over RabbitMQ: the daemon's consumer of
the queue is replaced on its channel by one under the new basic.qos (the broker's
management API shows it), the deliveries the old one had handed over are settled as
before, and every message is handled once."""

from __future__ import annotations

from typing import Any

from runner.backends.rabbitmq import live
from runner.backends.rabbitmq.url import Target
from tests.e2e.conftest import Daemon, make_daemon, wait_for
from tests.rmq import url

HANDLERS = '''\
import time


def slow(msg):
    time.sleep(0.1)
    with open("handled.log", "a") as fh:
        fh.write(f"{msg.body}\\n")
'''

TOPOLOGY = """\
version: 1
name: rmq-prefetch
queues:
  work: {}
  other: {}
consumers:
  work-c: {queue: work, handler: "h:slow", prefetch: 2}
  other-c: {queue: other, handler: "h:slow", prefetch: 3}
"""


def prefetches(target: Target, queue: str) -> list[int]:
    """The prefetch of each consumer of `queue`, as the broker reports them."""
    rows = live.request(target, "GET", f"/api/consumers/{live.vhost_path(target.vhost)}")
    return [int(c["prefetch_count"]) for c in rows or () if c["queue"]["name"] == queue]


def handled(d: Daemon) -> list[int]:
    path = d.workdir / "handled.log"
    return [int(x) for x in path.read_text().split()] if path.exists() else []


def test_a_reload_applies_a_changed_prefetch_to_the_running_consumer(
        tmp_path: Any, vhost: Target) -> None:
    d = make_daemon(tmp_path / "d", TOPOLOGY, modules={"h": HANDLERS},
                    args=["--backend", url(vhost), "--no-watch"])
    d.start()
    try:
        wait_for(lambda: prefetches(vhost, "work") == [2] and prefetches(vhost, "other") == [3],
                 timeout_s=20)
        d.ok("POST", "/v1/queues/work/messages",
             {"messages": [{"body": i} for i in range(30)]}, status=202)
        wait_for(lambda: len(handled(d)) >= 3, timeout_s=20)
        d.topology.write_text(TOPOLOGY.replace("prefetch: 2", "prefetch: 7"))
        answer = d.post("/v1/admin/reload")
        assert answer.status == 200, answer.body
        assert [(c["kind"], c["entity"], c["name"]) for c in answer.body["changes"]] == [
            ("changed", "consumer", "work-c")]
        assert len(handled(d)) < 30  # the change came while the queue was being worked
        wait_for(lambda: prefetches(vhost, "work") == [7], timeout_s=20)
        assert prefetches(vhost, "other") == [3]  # the other consumer is left alone
        wait_for(lambda: len(handled(d)) >= 30, timeout_s=60)
        # each message once: the old consumer's deliveries were acked on the channel
        assert sorted(handled(d)) == list(range(30))
        wait_for(lambda: [(q["ready"], q["unacked"]) for q in d.ok("GET", "/v1/queues")[
            "queues"] if q["name"] == "work"] == [(0, 0)], timeout_s=20)
        # a reload that changes it back goes the same way
        d.topology.write_text(TOPOLOGY)
        assert d.post("/v1/admin/reload").status == 200
        wait_for(lambda: prefetches(vhost, "work") == [2], timeout_s=20)
        d.ok("POST", "/v1/queues/work/messages", {"body": 30}, status=202)
        wait_for(lambda: len(handled(d)) == 31, timeout_s=20)
        assert sorted(handled(d)) == list(range(31))
    finally:
        d.stop()
