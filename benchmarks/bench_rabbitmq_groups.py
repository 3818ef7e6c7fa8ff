"""Benchmark of consumer groups over the RabbitMQ backend, side by side in one run.

Run: .venv/bin/python benchmarks/bench_rabbitmq_groups.py [--quick]

The same workload for every row: a backlog of N 200-byte records spread evenly
over a 4-partition topic, drained by a consumer group with a no-op handler
(at-least-once) that notes when it ran; the rate is the records handled per
second between the first and the last one.

1. a plain pika stream reader: one connection, a consumer per partition stream
   (`x-stream-offset: first`, basic_qos 500, an ack each) -- no ownership, no
   commits
2. `runner run --backend amqp://...`: one daemon (one member owning the 4
   partitions, commits in the offset queues)
3. the same, two daemons on the same vhost (each owns 2 partitions)
4. the embedded engine (`runner run`, --fsync always; the backlog appended over
   HTTP in batches of 500 to the daemon without its group, then restarted)

RabbitMQ backlogs are published with pika into the streams `ev.0`..`ev.3`, each run
in a vhost of its own (deleted after). Every number is the median of the repeats.
"""

from __future__ import annotations

import argparse
import http.client
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pika

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench_rabbitmq import Daemon, Vhost, rate, wait_handled  # noqa: E402

from runner.backends.rabbitmq import apply as apply_mod  # noqa: E402
from runner.backends.rabbitmq import live  # noqa: E402
from runner.backends.rabbitmq.url import Target  # noqa: E402
from runner.topology.model import Topic, Topology  # noqa: E402

PARTITIONS = 4
TOPIC_ONLY = f"""\
version: 1
name: bench-rabbitmq-groups
topics:
  ev: {{partitions: {PARTITIONS}}}
"""
TOPOLOGY = TOPIC_ONLY + """\
consumer_groups:
  g: {topic: ev, handler: "bench_handlers:handle", delivery: at-least-once}
"""

LOADER = """
import sys, pika
conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", virtual_host=sys.argv[1]))
ch = conn.channel()
ch.confirm_delivery()
props = pika.BasicProperties(delivery_mode=2, content_type="application/json")
body = b'{"b":"' + b"x" * 186 + b'"}'
for i in range(int(sys.argv[2])):
    ch.basic_publish("", f"ev.{i % int(sys.argv[3])}", body, props)
conn.close()
"""


def prefill(vhost: Vhost, n: int) -> None:
    # the streams as the daemon declares them (runner apply), then the records
    apply_mod.apply(Target("127.0.0.1", vhost=vhost.name),
                    Topology(topics=(("ev", Topic("ev", PARTITIONS)),)))
    done = subprocess.run([sys.executable, "-c", LOADER, vhost.name, str(n), str(PARTITIONS)],
                          check=False)
    if done.returncode != 0:
        raise RuntimeError("the loader failed")


def plain_pika(n: int) -> float:
    vhost = Vhost()
    try:
        prefill(vhost, n)
        conn = pika.BlockingConnection(vhost.params())
        times: list[float] = []
        for p in range(PARTITIONS):
            ch = conn.channel()
            ch.basic_qos(prefetch_count=500)

            def on(channel: object, method: object, props: object, body: bytes) -> None:
                times.append(time.time())
                channel.basic_ack(method.delivery_tag)  # type: ignore[attr-defined]

            ch.basic_consume(f"ev.{p}", on, arguments={"x-stream-offset": "first"})
        deadline = time.monotonic() + 300
        while len(times) < n and time.monotonic() < deadline:
            conn.process_data_events(time_limit=0.1)
        result = rate(times, n)
        conn.close()
        return result
    finally:
        vhost.delete()


def runner_rabbitmq(n: int, daemons: int) -> float:
    vhost = Vhost()
    workdir = Path(tempfile.mkdtemp(prefix="bench-rmq-groups-"))
    started: list[Daemon] = []
    try:
        prefill(vhost, n)
        for i in range(daemons):
            started.append(Daemon(workdir / f"d{i}", ["--backend", vhost.url],
                                  topology=TOPOLOGY))
        wait_handled(started, n)
        return rate([t for d in started for t in d.times()], n)
    finally:
        for d in started:
            d.stop()
        shutil.rmtree(workdir, ignore_errors=True)
        vhost.delete()


def runner_embedded(n: int) -> float:
    """The backlog is appended over HTTP to a daemon without the group, which is then
    restarted with it."""
    workdir = Path(tempfile.mkdtemp(prefix="bench-rmq-groups-embedded-"))
    loader = Daemon(workdir / "d0", ["--fsync", "always"], topology=TOPIC_ONLY)
    total = n // 500 * 500
    try:
        conn = http.client.HTTPConnection("127.0.0.1", loader.port)
        for batch in range(total // 500):
            body = json.dumps({"records": [
                {"value": {"b": "x" * 186}, "partition": (batch * 500 + i) % PARTITIONS}
                for i in range(500)]}).encode()
            conn.request("POST", "/v1/topics/ev/records", body,
                         {"Content-Type": "application/json"})
            answer = conn.getresponse()
            answer.read()
            assert answer.status == 202, answer.status
        conn.close()
    finally:
        loader.stop()
    d = Daemon(workdir / "d0", ["--fsync", "always"], topology=TOPOLOGY)
    try:
        wait_handled([d], total)
        return rate(d.times(), total)
    finally:
        d.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (< 60 s)")
    args = parser.parse_args()
    repeats = 1 if args.quick else 3
    n = 2000 if args.quick else 10000
    try:
        live.request(Target("127.0.0.1"), "GET", "/api/overview")
    except live.Unreachable as exc:
        print(f"RabbitMQ at 127.0.0.1:5672/15672 is not reachable ({exc}); start it to "
              "compare.")
        return 1
    rows = [
        ("plain pika stream reader (4 streams)", [plain_pika(n) for _ in range(repeats)]),
        ("runner run --backend amqp://, 1 daemon", [runner_rabbitmq(n, 1)
                                                    for _ in range(repeats)]),
        ("runner run --backend amqp://, 2 daemons", [runner_rabbitmq(n, 2)
                                                     for _ in range(repeats)]),
        ("runner run (embedded engine, fsync always)", [runner_embedded(n)
                                                        for _ in range(repeats)]),
    ]
    base = statistics.median(rows[0][1])
    print(f"median of {repeats}; {n} 200-byte records over {PARTITIONS} partitions, a "
          "consumer group with a no-op handler, at-least-once")
    print(f"{'':48}{'recs/s':>10}{'vs pika':>9}")
    for name, rates in rows:
        r = statistics.median(rates)
        print(f"{name:48}{r:10,.0f}{r / base:8.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
