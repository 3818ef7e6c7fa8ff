"""Idempotency over the RabbitMQ backend: the window of keys is the broker's (a keys
stream per consumer), shared by every daemon of the vhost. Real daemons, the real
broker, each test in a vhost of its own; the handlers append to one file, so what
ran is counted across daemons."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pika
import pytest

from runner.backends.rabbitmq import apply as apply_mod
from runner.backends.rabbitmq import live
from runner.backends.rabbitmq.url import Target
from runner.topology.load import load_text
from runner.topology.model import Topology
from tests.e2e.conftest import Daemon, make_daemon, wait_for
from tests.rmq import url

pytestmark = pytest.mark.rabbitmq

HANDLERS = '''\
import asyncio
import base64
import json
import os
import signal
import time
import urllib.request

import pika


def _log(**fields):
    with open(os.environ["HANDLED_LOG"], "a") as fh:
        fh.write(json.dumps(fields) + "\\n")


async def handle(msg):
    _log(id=msg.body["id"], n=msg.body["n"], pid=os.getpid(), redelivered=msg.redelivered)
    await asyncio.sleep(0.02)  # one daemon cannot take all at once
    if msg.body["id"] == os.environ.get("CRASH_ID"):
        for _ in range(5):  # the puller is done with its round (it would flush an ack)
            await asyncio.sleep(0)
        # runs on the daemon's loop right after this call: the loop is blocked, so the
        # daemon cannot ack; its I/O thread goes on and appends the key
        asyncio.get_running_loop().call_soon(_die_before_the_ack, msg.body["id"])


def _unacked(timeout_s):
    """True once the management API counts the message unacked (its counts lag)."""
    request = urllib.request.Request(os.environ["QUEUE_API"])
    auth = base64.b64encode(b"guest:guest").decode()
    request.add_header("Authorization", f"Basic {auth}")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with urllib.request.urlopen(request, timeout=5) as answer:
            if json.loads(answer.read()).get("messages_unacknowledged") == 1:
                return True
        time.sleep(0.2)
    return False


def _key_in_stream(key, timeout_s):
    """True once `key` is a record of the consumer's keys stream."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            conn = pika.BlockingConnection(pika.URLParameters(os.environ["AMQP_URL"]))
        except pika.exceptions.AMQPError:
            time.sleep(0.1)
            continue
        found = []
        try:
            ch = conn.channel()
            ch.basic_qos(prefetch_count=100)

            def on(channel, method, props, body):
                found.append(body)
                channel.basic_ack(method.delivery_tag)

            ch.basic_consume("__runner.idem.idem-c", on, arguments={"x-stream-offset": "first"})
            until = time.monotonic() + 0.5
            while key.encode() not in found and time.monotonic() < until:
                conn.process_data_events(time_limit=0.05)
        except pika.exceptions.AMQPError:
            pass  # no such stream (yet)
        finally:
            if conn.is_open:
                conn.close()
        if key.encode() in found:
            return True
    return False


def _die_before_the_ack(key):
    seen = _key_in_stream(key, 10.0)
    unacked = _unacked(15.0)
    with open(os.environ["CRASH_LOG"], "w") as fh:
        fh.write(json.dumps({"key_seen": seen, "unacked": unacked}))
    while not os.path.exists(os.environ["GO_FILE"]):
        time.sleep(0.02)
    os.kill(os.getpid(), signal.SIGKILL)
'''

TOPOLOGY = """\
version: 1
name: rmq-idempotency
queues:
  orders: {}
consumers:
  idem-c:
    queue: orders
    handler: "handlers_idem:handle"
    prefetch: 2
    idempotency: {key: id, window: 1h}
"""


class Daemons:
    def __init__(self, tmp_path: Path, target: Target) -> None:
        self.tmp_path = tmp_path
        self.target = target
        self.handled = tmp_path / "handled.log"
        self.started: list[Daemon] = []

    def start(self, **env: str) -> Daemon:
        d = make_daemon(self.tmp_path / f"d{len(self.started)}", TOPOLOGY,
                        modules={"handlers_idem": HANDLERS},
                        args=["--backend", url(self.target), "--no-watch"])
        d.env.update({"HANDLED_LOG": str(self.handled), "AMQP_URL": url(self.target), **env})
        self.started.append(d)
        d.start()
        return d

    def lines(self) -> list[dict[str, Any]]:
        if not self.handled.exists():
            return []
        return [json.loads(x) for x in self.handled.read_text().splitlines() if x.strip()]

    def ids(self) -> list[str]:
        return sorted(x["id"] for x in self.lines())


@pytest.fixture
def daemons(tmp_path: Path, vhost: Target) -> Iterator[Daemons]:
    ds = Daemons(tmp_path, vhost)
    yield ds
    for d in ds.started:
        if d.running:
            d.stop()


def topo(text: str) -> Topology:
    result = load_text(text, filename="t.yaml")
    assert result.topology is not None, result.problems
    return result.topology


def consumers(target: Target) -> int:
    """How many consumers the queue has (the broker's exact count, over AMQP)."""
    conn = pika.BlockingConnection(pika.ConnectionParameters(
        host=target.host, port=target.port, virtual_host=target.vhost))
    try:
        return int(conn.channel().queue_declare("orders", passive=True).method.consumer_count)
    finally:
        conn.close()


def publish(d: Daemon, ids: list[str], n: int) -> None:
    d.ok("POST", "/v1/queues/orders/messages",
         {"messages": [{"body": {"id": i, "n": n}} for i in ids]}, 202)


def test_a_key_handled_by_one_daemon_is_skipped_by_the_other(daemons: Daemons) -> None:
    a = daemons.start()
    keys = [f"k{i}" for i in range(10)]
    publish(a, keys, 1)
    wait_for(lambda: daemons.ids() == keys, timeout_s=30)
    b = daemons.start()  # empty data dir: what it knows of a's keys comes from the broker
    wait_for(lambda: consumers(daemons.target) == 2, timeout_s=15)
    publish(b, keys, 2)  # the same keys, far apart: the two daemons share them out
    publish(b, ["end-a", "end-b", "end-c", "end-d"], 2)
    wait_for(lambda: sum(x["id"].startswith("end") for x in daemons.lines()) == 4,
             timeout_s=30)
    assert daemons.ids() == sorted([*keys, "end-a", "end-b", "end-c", "end-d"])
    ends = {x["pid"] for x in daemons.lines() if x["id"].startswith("end")}
    assert len(ends) == 2  # both daemons were taking messages of the queue


def test_a_daemon_killed_after_handling_before_its_ack_is_not_redone_by_the_survivor(
    daemons: Daemons,
) -> None:
    crash_log, go = daemons.tmp_path / "crash.json", daemons.tmp_path / "go"
    queue_api = (f"http://{daemons.target.host}:15672/api/queues/"
                 f"{quote(daemons.target.vhost, safe='')}/orders")
    a = daemons.start(CRASH_ID="k-crash", CRASH_LOG=str(crash_log), GO_FILE=str(go),
                      QUEUE_API=queue_api)
    publish(a, ["k-crash"], 1)
    wait_for(crash_log.exists, timeout_s=30)  # handled; a's loop is blocked: no ack
    # the test checks its own usefulness: a died with the message unacked, after its
    # key was in the stream (on a backend without shared keys the stream never has it)
    crash = json.loads(crash_log.read_text())
    b = daemons.start()
    go.touch()  # a: kill -9, its unacked delivery goes back to the queue, then to b
    wait_for(lambda: a.proc is not None and a.proc.poll() is not None, timeout_s=30)
    a.proc = None
    time.sleep(1.0)  # the broker puts a's delivery back at the head of the queue
    publish(b, ["after"], 1)  # behind the redelivered one: b has decided on it by then
    wait_for(lambda: "after" in daemons.ids(), timeout_s=30)
    assert daemons.ids() == ["after", "k-crash"]  # the handler ran once in total
    assert crash == {"key_seen": True, "unacked": True}


def test_a_restart_of_both_daemons_keeps_the_window(daemons: Daemons) -> None:
    a, b = daemons.start(), daemons.start()
    keys = [f"k{i}" for i in range(6)]
    publish(a, keys, 1)
    wait_for(lambda: daemons.ids() == keys, timeout_s=30)
    for d in (a, b):
        d.stop()
        shutil.rmtree(d.data_dir)  # nothing of the window is local
    for d in (a, b):
        d.start()
    wait_for(lambda: consumers(daemons.target) == 2, timeout_s=15)
    publish(a, keys, 2)
    publish(b, ["end-a", "end-b", "end-c", "end-d"], 2)
    wait_for(lambda: sum(x["id"].startswith("end") for x in daemons.lines()) == 4,
             timeout_s=30)
    assert daemons.ids() == sorted([*keys, "end-a", "end-b", "end-c", "end-d"])


def test_apply_declares_the_keys_stream_and_prune_keeps_it_while_declared(
    vhost: Target,
) -> None:
    topology = topo(TOPOLOGY)
    first = apply_mod.apply(vhost, topology)
    assert "+ queue __runner.idem.idem-c (stream)" in first.lines
    assert apply_mod.apply(vhost, topology, prune=True).lines == ()  # kept, no change
    queues = {q.name: dict(q.arguments) for q in live.read(vhost).definitions.queues}
    assert queues["__runner.idem.idem-c"]["x-max-age"] == "3600s"
    without = topo(TOPOLOGY.replace("    idempotency: {key: id, window: 1h}\n", ""))
    assert apply_mod.apply(vhost, without, prune=True).lines == (
        "- queue __runner.idem.idem-c",)
