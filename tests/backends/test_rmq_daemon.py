"""`runner run PATH --backend amqp://...`: real daemon processes over the real RabbitMQ,
each test in a vhost of its own: handlers, retries with real delays, dead letters with
the x-dead-letter header, two daemons sharing a queue, a daemon killed mid-work."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

import pika
import pytest
from prometheus_client.parser import text_string_to_metric_families

from runner.backends.rabbitmq.url import Target
from runner.daemon.remote import SERVED, embedded_routes
from runner.log.partitioner import partition_for_key
from tests.e2e.conftest import RUNNER, Daemon, make_daemon, wait_for
from tests.rmq import kill_connections, read_stream, restart_broker, url

HANDLERS = '''\
import json
import os
import time


def _log(name, **fields):
    with open(name, "a") as fh:
        fh.write(json.dumps(fields) + "\\n")


def amo(msg):
    _log("amo.log", body=msg.body, count=msg.delivery_count)
    if msg.body == "fail":
        raise RuntimeError("at-most-once failure")


def alo(msg):
    _log("alo.log", body=msg.body, count=msg.delivery_count, redelivered=msg.redelivered,
         t=time.time())
    if msg.body == "flaky" and msg.delivery_count == 1:
        raise ConnectionError("first attempt fails")


class OrderError(ValueError):
    pass


def always_fail(msg):
    _log("fail.log", body=msg.body, count=msg.delivery_count, t=time.time())
    raise OrderError(f"Invalid order {msg.body['id']}")


def forward(msg, ctx):
    _log("forward.log", body=msg.body, count=msg.delivery_count)
    ctx.publish("to-full", "", msg.body)


def emit(msg, ctx):
    ctx.append("events", {"id": msg.body, "n": 1})


def work(msg):
    time.sleep(float(os.environ.get("WORK_S", "0.02")))
    _log(os.environ.get("WORK_LOG", "work.log"), body=msg.body, pid=os.getpid())
'''

TOPOLOGY = """\
version: 1
name: rmq-daemon
topics:
  events: {partitions: 2, key: id}
  audit: {partitions: 1}
exchanges:
  orders: {type: topic}
  to-full: {type: fanout}
queues:
  emit: {}
  full: {max_length: 1, overflow: reject-publish}
  fwd: {}
  parked: {}
  amo: {}
  alo: {}
  retry-q: {}
  retry.dlq: {}
  work: {}
bindings:
  - {exchange: orders, queue: work, routing_key: "work.#"}
  - {exchange: to-full, queue: full}
  - {exchange: orders, topic: audit, routing_key: "work.#"}
dlq_policies:
  fast:
    max_retries: 2
    backoff: [100ms, 200ms]
    dead_letter_queue: retry.dlq
consumers:
  amo-c: {queue: amo, handler: "handlers_rmq:amo", delivery: at-most-once, dlq_policy: fast}
  alo-c: {queue: alo, handler: "handlers_rmq:alo", delivery: at-least-once, dlq_policy: fast}
  retry-c: {queue: retry-q, handler: "handlers_rmq:always_fail", dlq_policy: fast}
  fwd-c: {queue: fwd, handler: "handlers_rmq:forward", dlq_policy: fast}
  emit-c: {queue: emit, handler: "handlers_rmq:emit"}
  work-c: {queue: work, handler: "handlers_rmq:work", prefetch: 4, concurrency: 1}
"""


class Daemons:
    def __init__(self, tmp_path: Any, target: Target) -> None:
        self.tmp_path = tmp_path
        self.target = target
        self.started: list[Daemon] = []

    def start(self, *, env: dict[str, str] | None = None, topology: str = TOPOLOGY) -> Daemon:
        d = make_daemon(self.tmp_path / f"d{len(self.started)}", topology,
                        modules={"handlers_rmq": HANDLERS},
                        args=["--backend", url(self.target), "--no-watch"])
        d.env.update(env or {})
        self.started.append(d)
        d.start()
        return d


@pytest.fixture
def daemons(tmp_path: Any, vhost: Target) -> Iterator[Daemons]:
    ds = Daemons(tmp_path, vhost)
    yield ds
    for d in ds.started:
        if d.running:
            d.stop()


def lines(d: Daemon, name: str) -> list[dict[str, Any]]:
    path = d.workdir / name
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def get_all(target: Target, queue: str) -> list[tuple[Any, bytes]]:
    """Take every message out of `queue` (basic_get, acked): (properties, body)."""
    conn = pika.BlockingConnection(pika.ConnectionParameters(
        host=target.host, port=target.port, virtual_host=target.vhost))
    try:
        ch = conn.channel()
        out = []
        while True:
            method, props, body = ch.basic_get(queue, auto_ack=True)
            if method is None:
                return out
            out.append((props, body))
    finally:
        conn.close()


def depth(target: Target, queue: str) -> int:
    conn = pika.BlockingConnection(pika.ConnectionParameters(
        host=target.host, port=target.port, virtual_host=target.vhost))
    try:
        return int(conn.channel().queue_declare(queue, passive=True).method.message_count)
    finally:
        conn.close()


def metric(d: Daemon, name: str, **labels: str) -> float | None:
    for family in text_string_to_metric_families(d.metrics()):
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return float(s.value)
    return None


def test_handlers_retry_with_real_delays_and_dead_letter_with_the_header(
    daemons: Daemons,
) -> None:
    d = daemons.start()
    target = daemons.target
    assert d.ok("POST", "/v1/queues/retry-q/messages",
                {"body": {"id": 42}, "message_id": "o-42"}, 202) == {"routed": ["retry-q"]}
    d.ok("POST", "/v1/queues/amo/messages",
         {"messages": [{"body": "a"}, {"body": "fail"}, {"body": "b"}]}, 202)
    d.ok("POST", "/v1/queues/alo/messages", {"messages": [{"body": "flaky"},
                                                          {"body": "fine"}]}, 202)
    wait_for(lambda: len(lines(d, "fail.log")) == 3 and len(lines(d, "alo.log")) == 3
             and len(lines(d, "amo.log")) == 3, timeout_s=30)
    letters: list[tuple[Any, bytes]] = []

    def two_letters() -> bool:
        letters.extend(get_all(target, "retry.dlq"))
        return len(letters) >= 2

    wait_for(two_letters, timeout_s=30)
    calls = lines(d, "fail.log")
    assert [c["count"] for c in calls] == [1, 2, 3]
    gaps = [float(calls[i + 1]["t"]) - float(calls[i]["t"]) for i in range(2)]
    assert gaps[0] >= 0.09 and gaps[1] >= 0.19, gaps  # the delay queues' real TTLs
    by_body = {body: props for props, body in letters}
    assert set(by_body) == {b'{"id":42}', b'"fail"'}  # JSON bodies as published
    props = by_body[b'{"id":42}']
    death = props.headers["x-dead-letter"]
    assert props.message_id == "o-42"
    assert death["reason"] == "handler_error"
    assert death["error"]["type"] == "handlers_rmq.OrderError"
    assert death["error"]["message"] == "Invalid order 42"
    assert "always_fail" in death["error"]["stack_trace"]
    assert death["retry_count"] == 2
    assert (death["original_queue"], death["original_exchange"],
            death["original_routing_key"]) == ("retry-q", "", "retry-q")
    assert death["death_count"] == 1
    assert death["consumer_id"].startswith("retry-c-1@")
    assert death["first_attempt"].endswith("Z") and death["last_attempt"].endswith("Z")
    assert death["first_attempt"] < death["last_attempt"]
    assert not any(k.startswith("x-runner-") for k in props.headers)
    amo_death = by_body[b'"fail"'].headers["x-dead-letter"]
    assert (amo_death["reason"], amo_death["retry_count"], amo_death["error"]["type"]) == (
        "handler_error", 0, "RuntimeError")
    assert sorted(str(c["body"]) for c in lines(d, "amo.log")) == ["a", "b", "fail"]
    flaky = [c for c in lines(d, "alo.log") if c["body"] == "flaky"]
    assert [(c["count"], c["redelivered"]) for c in flaky] == [(1, False), (2, True)]
    assert float(flaky[1]["t"]) - float(flaky[0]["t"]) >= 0.09
    assert metric(d, "runner_handler_retries_total", consumer="retry-c") == 2
    assert metric(d, "runner_handler_errors_total", consumer="retry-c",
                  error_type="handlers_rmq.OrderError") == 3
    # the broker's statistics lag by up to 5 s
    wait_for(lambda: metric(d, "runner_queue_published_total", queue="retry-q") == 1,
             timeout_s=20, every_s=0.5)
    assert metric(d, "runner_queue_messages_ready", queue="alo") == 0


def test_an_output_the_broker_refuses_fails_the_call_instead_of_acking_it(
    daemons: Daemons,
) -> None:
    """At-least-once: the input is acked only once its outputs are confirmed; a nack
    (a full reject-publish queue) fails the call: retried, then dead-lettered."""
    d = daemons.start()
    d.ok("POST", "/v1/queues/full/messages", {"body": "filler"}, 202)
    d.ok("POST", "/v1/queues/fwd/messages", {"body": "m"}, 202)
    letters: list[tuple[Any, bytes]] = []

    def dead() -> bool:
        letters.extend(get_all(daemons.target, "retry.dlq"))
        return bool(letters)

    wait_for(dead, timeout_s=30)
    assert [c["count"] for c in lines(d, "forward.log")] == [1, 2, 3]
    ((props, body),) = letters
    death = props.headers["x-dead-letter"]
    assert (body, death["reason"], death["retry_count"], death["original_queue"]) == (
        b'"m"', "handler_error", 2, "fwd")
    assert death["error"]["type"] == "runner.errors.Refused"  # as on the embedded engine
    assert death["error"]["message"] == (
        "the broker refused a message to exchange 'to-full' key '' (nack: a queue it routes "
        "to is full with overflow reject-publish); the 0 message(s) before it were stored, "
        "it and the rest were not")
    assert depth(daemons.target, "full") == 1


def test_a_full_reject_publish_queue_answers_429_like_the_embedded_engine(
    daemons: Daemons,
) -> None:
    d = daemons.start()
    answer = d.post("/v1/queues/full/messages", {"messages": [{"body": i} for i in range(3)]})
    assert answer.status == 429, answer.body
    assert answer.body == {
        "error": "the broker refused a message to queue 'full' (nack: a queue it routes to "
                 "is full with overflow reject-publish); the 1 message(s) before it were "
                 "stored, it and the rest were not",
        "accepted": 1, "routed": []}
    assert answer.headers["Retry-After"]
    assert [body for _, body in get_all(daemons.target, "full")] == [b"0"]  # nothing else
    d.ok("POST", "/v1/queues/full/messages", {"body": "room again"}, 202)


def test_a_lost_connection_is_reconnected_and_the_daemon_goes_on(daemons: Daemons) -> None:
    d = daemons.start()
    d.signal(signal.SIGHUP)  # a reload of the same file: applied, the daemon goes on
    wait_for(lambda: "reload applied (sighup)" in d.log())
    d.ok("POST", "/v1/queues/work/messages", {"messages": [{"body": i} for i in range(3)]}, 202)
    wait_for(lambda: len(lines(d, "work.log")) == 3)
    assert kill_connections(daemons.target) >= 1  # closed from the broker's side
    wait_for(lambda: "connection lost" in d.log())
    wait_for(lambda: d.get("/readyz").status == 200)
    d.ok("POST", "/v1/queues/work/messages",
         {"messages": [{"body": i} for i in range(3, 6)]}, 202)
    wait_for(lambda: len(lines(d, "work.log")) >= 6)
    assert sorted({int(x["body"]) for x in lines(d, "work.log")}) == list(range(6))
    wait_for(lambda: depth(daemons.target, "work") == 0)


def test_http_consumers_pull_ack_and_nack_with_leases(daemons: Daemons) -> None:
    d = daemons.start()
    d.ok("POST", "/v1/queues/retry.dlq/messages",
         {"messages": [{"body": "p1"}, {"body": "p2"}]}, 202)
    got = d.ok("POST", "/v1/queues/retry.dlq/pull", {"max": 2, "lease": "10s"})["messages"]
    assert [m["body"] for m in got] == ["p1", "p2"]
    one, two = (m["delivery_id"] for m in got)
    assert d.ok("POST", "/v1/queues/retry.dlq/ack", {"delivery_ids": [one]}) == {"acked": 1}
    assert d.ok("POST", "/v1/queues/retry.dlq/nack", {"delivery_ids": [two]}) == {"nacked": 1}
    answer = d.post("/v1/queues/retry.dlq/ack", {"delivery_ids": [one]})
    assert (answer.status, answer.body) == (409, {
        "error": f"1 delivery id(s) of queue 'retry.dlq' are unknown or their lease expired: "
                 f"{one}; the other 0 were acked", "unknown": [one], "acked": 0})
    (again,) = d.ok("POST", "/v1/queues/retry.dlq/pull", {"lease": "500ms"})["messages"]
    assert (again["body"], again["redelivered"]) == ("p2", True)
    # nothing to pull until the 500 ms lease runs out and the runtime gives p2 back
    leased_at = time.monotonic()
    (third,) = wait_for(lambda: d.ok("POST", "/v1/queues/retry.dlq/pull", {})["messages"])
    assert time.monotonic() - leased_at >= 0.3  # not before its lease ran out
    assert third["body"] == "p2" and third["delivery_id"] != again["delivery_id"]
    assert d.post("/v1/queues/retry.dlq/ack",
                  {"delivery_ids": [again["delivery_id"]]}).status == 409  # expired
    assert d.ok("POST", "/v1/queues/retry.dlq/ack",
                {"delivery_ids": [third["delivery_id"]]}) == {"acked": 1}
    assert d.ok("POST", "/v1/queues/retry.dlq/pull", {})["messages"] == []
    answer = d.post("/v1/queues/nope/ack", {"delivery_ids": [1]})
    assert (answer.status, answer.body["error"]) == (404, "queue 'nope' not found")
    # a queue nobody consumes (pulling retry.dlq made this daemon consume it: what it
    # buffers is not ready on the broker and is not purged)
    d.ok("POST", "/v1/queues/parked/messages",
         {"messages": [{"body": i} for i in range(5)]}, 202)
    assert d.ok("DELETE", "/v1/queues/parked/messages") == {"purged": 5}
    assert depth(daemons.target, "parked") == 0
    answer = d.request("DELETE", "/v1/queues/nope/messages")
    assert (answer.status, answer.body["error"]) == (404, "queue 'nope' not found")


def test_publish_through_an_exchange_and_the_routes_not_served(daemons: Daemons) -> None:
    d = daemons.start()
    answer = d.post("/v1/exchanges/orders/messages",
                    {"messages": [{"routing_key": "work.1", "body": 1},
                                  {"routing_key": "other", "body": 2}]})
    assert (answer.status, answer.body) == (202, {"routed": [["work", "audit"], []]})
    wait_for(lambda: len(lines(d, "work.log")) == 1)
    ((_, audit),) = read_stream(daemons.target, "audit.0", 1)  # the topic's one stream
    assert audit == b"1"
    answer = d.post("/v1/exchanges/nope/messages", {"routing_key": "k", "body": 1})
    assert (answer.status, answer.body["error"]) == (404, "exchange 'nope' not found")
    answer = d.post("/v1/queues/nope/messages", {"body": 1})
    assert (answer.status, answer.body["error"]) == (404, "queue 'nope' not found")
    backend = f"amqp://guest@127.0.0.1:5672/{daemons.target.vhost}"
    # every route of the embedded daemon is served over RabbitMQ now (a new one would
    # answer 501 until it is: the loop at the end)
    assert sorted(set(embedded_routes()) - SERVED) == []
    assert d.get("/readyz").body == {"status": "ready", "backend": backend}
    queues = d.ok("GET", "/v1/queues")["queues"]
    assert [q["name"] for q in queues] == sorted(
        ["alo", "amo", "emit", "full", "fwd", "parked", "retry-q", "retry.dlq", "work"])
    work = next(q for q in queues if q["name"] == "work")
    assert (work["consumers"], work["ready"], work["durable"]) == (["work-c"], 0, True)
    exchanges = d.ok("GET", "/v1/exchanges")["exchanges"]
    assert [(e["name"], e["type"], e["bindings"]) for e in exchanges] == [
        ("orders", "topic", 2), ("to-full", "fanout", 1)]
    assert [(b["exchange"], b["destination"]) for b in d.ok("GET", "/v1/bindings")[
        "bindings"]] == [("orders", "work"), ("to-full", "full"), ("orders", "audit")]
    listed = d.cli("queues")
    assert listed.returncode == 0 and "retry.dlq" in listed.stdout, listed
    assert d.get("/healthz").status == 200
    assert d.ok("GET", "/")["service"] == "topology-runner"
    for method, path in embedded_routes():  # every route answers: served, or 501
        if (method, path) in SERVED:
            continue
        concrete = path.replace("{name}", "work").replace("{group}", "g").replace("{p}", "0")
        assert d.request(method, concrete, {} if method == "POST" else None).status == 501, (
            method, path)


def test_handlers_append_to_topics_as_streams(daemons: Daemons) -> None:
    d = daemons.start()
    ids = [f"o{i}" for i in range(10)]
    d.ok("POST", "/v1/queues/emit/messages", {"messages": [{"body": i} for i in ids]}, 202)
    by_partition = {}
    for p in range(2):
        mine = [i for i in ids if partition_for_key(i.encode(), 2) == p]
        got = read_stream(daemons.target, f"events.{p}", len(mine))
        by_partition[p] = sorted(json.loads(body)["id"] for _, body in got)
        assert by_partition[p] == sorted(mine)  # murmur2 of the topic's key field
        assert {bytes(props.headers["x-runner-key"]) for props, _ in got} == {
            i.encode() for i in mine}
    wait_for(lambda: depth(daemons.target, "emit") == 0)
    # the same records through the HTTP API, read back from the streams
    for p in range(2):
        start = d.ok("GET", "/v1/topics/events")["partition_offsets"][p]["log_start_offset"]
        got = d.ok("GET", f"/v1/topics/events/partitions/{p}/records?offset={start}&limit=100")
        assert sorted(r["value"]["id"] for r in got["records"]) == by_partition[p]
        assert {r["key"] for r in got["records"]} == set(by_partition[p])
        assert got["next_offset"] == got["records"][-1]["offset"] + 1
    topics = d.ok("GET", "/v1/topics")["topics"]
    assert [(t["name"], t["partitions"]) for t in topics] == [("audit", 1), ("events", 2)]
    answer = d.get("/v1/topics/nope")
    assert (answer.status, answer.body["error"]) == (404, "topic 'nope' not found")
    answer = d.get("/v1/topics/events/partitions/2/records?offset=0")
    assert (answer.status, answer.body["error"]) == (
        404, "topic 'events' has no partition 2 (it has 2: 0..1)")
    answer = d.get("/v1/topics/events/partitions/x/records?offset=0")
    assert (answer.status, answer.body["error"]) == (
        400, "the partition must be an integer, got 'x'")
    end = d.ok("GET", "/v1/topics/events")["partition_offsets"][0]["log_end_offset"]
    answer = d.get(f"/v1/topics/events/partitions/0/records?offset={end + 5}")
    assert (answer.status, answer.body["error"]) == (
        416, f"offset {end + 5} is above the log end offset {end} of topic 'events' "
        f"partition 0; read from at most {end}")


def test_two_daemons_share_a_queue(daemons: Daemons) -> None:
    env = {"WORK_S": "0.05"}
    a = daemons.start(env=env)
    b = daemons.start(env=env)
    n = 40
    a.ok("POST", "/v1/queues/work/messages", {"messages": [{"body": i} for i in range(n)]}, 202)

    def handled() -> list[dict[str, Any]]:
        return lines(a, "work.log") + lines(b, "work.log")

    wait_for(lambda: len(handled()) >= n, timeout_s=30)
    time.sleep(0.3)
    done = handled()
    assert sorted(int(x["body"]) for x in done) == list(range(n))  # each once
    assert lines(a, "work.log") and lines(b, "work.log")  # both took a share
    assert {x["pid"] for x in lines(a, "work.log")} != {x["pid"] for x in lines(b, "work.log")}


def test_a_daemon_killed_mid_work_loses_nothing_acknowledged(daemons: Daemons) -> None:
    env = {"WORK_S": "0.1"}
    first = daemons.start(env=env)
    n = 30
    first.ok("POST", "/v1/queues/work/messages",
             {"messages": [{"body": i} for i in range(n)]}, 202)
    wait_for(lambda: len(lines(first, "work.log")) >= 5, timeout_s=30)
    first.kill()  # SIGKILL: prefetched and in-flight deliveries were never acked
    before = {int(x["body"]) for x in lines(first, "work.log")}
    assert len(before) < n
    second = daemons.start(env=env)
    wait_for(lambda: {int(x["body"]) for x in lines(second, "work.log")} | before
             >= set(range(n)), timeout_s=60)
    wait_for(lambda: depth(daemons.target, "work") == 0, timeout_s=20)
    after = [int(x["body"]) for x in lines(second, "work.log")]
    # what the killed daemon finished may be redone (its ack may not have been sent);
    # what it never got to is done by the survivor; nothing is missing
    assert set(after) | before == set(range(n))
    assert len(after) == len(set(after))


@pytest.mark.serial  # restarts the broker every other test shares
def test_a_broker_restart_in_the_middle_loses_nothing_acknowledged(daemons: Daemons) -> None:
    env = {"WORK_S": "0.05"}
    d = daemons.start(env=env)
    n = 20
    d.ok("POST", "/v1/queues/work/messages", {"messages": [{"body": i} for i in range(n)]}, 202)
    wait_for(lambda: len(lines(d, "work.log")) >= 3, timeout_s=30)
    seen: list[int] = []
    stop = threading.Event()

    def watch_readyz() -> None:  # while the broker is down the daemon says it is not ready
        while not stop.is_set():
            seen.append(d.get("/readyz").status)
            time.sleep(0.2)

    watcher = threading.Thread(target=watch_readyz)
    watcher.start()
    try:
        restart_broker(down_s=2.0)
    finally:
        stop.set()
        watcher.join()
    assert 503 in seen and set(seen) <= {200, 503}, seen
    wait_for(lambda: d.get("/readyz").status == 200, timeout_s=60)
    assert "connection lost" in d.log()
    # acknowledged before the restart: durable queue, persistent messages, unacked ones
    # redelivered; published after it: handled too
    d.ok("POST", "/v1/queues/work/messages",
         {"messages": [{"body": i} for i in range(n, 2 * n)]}, 202)
    wait_for(lambda: {int(x["body"]) for x in lines(d, "work.log")} >= set(range(2 * n)),
             timeout_s=60)
    wait_for(lambda: depth(daemons.target, "work") == 0, timeout_s=30)
    handled = [int(x["body"]) for x in lines(d, "work.log")]
    # at-least-once: only what was in flight at the restart may be handled twice
    assert len(handled) - len(set(handled)) <= 4 + 1  # prefetch 4 + the one in hand
    assert d.running


def test_run_backend_usage_errors(tmp_path: Any) -> None:
    (tmp_path / "t.yaml").write_text(TOPOLOGY)
    (tmp_path / "handlers_rmq.py").write_text(HANDLERS)

    def run(*args: str, topology: str = "t.yaml") -> tuple[int, str]:
        done = subprocess.run([str(RUNNER), "run", topology, "--listen", "127.0.0.1:0",
                               *args], cwd=tmp_path, capture_output=True, text=True,
                              timeout=60, check=False)
        return done.returncode, done.stderr.strip().splitlines()[-1]

    assert run("--backend", "http://x") == (
        2, "runner run: --backend 'http://x': the backend must be an amqp:// URL "
        "(amqp://user:pass@host[:port]/vhost)")
    assert run("--backend", "amqp://guest:guest@127.0.0.1/x", "--kafka-listen",
               "127.0.0.1:0") == (
        2, "runner run: --kafka-listen serves the embedded engine's topics; it cannot be "
        "used with --backend")
    assert run("--backend", "amqp://guest:guest@127.0.0.1:1/x?management_port=1") == (
        1, "runner run: the management API at http://127.0.0.1:1 does not answer (<urlopen "
        "error [Errno 111] Connection refused>); is the rabbitmq_management plugin enabled?")
