"""Benchmark of the RabbitMQ backend (issue 11 "Speed"), side by side in one run.

Run: .venv/bin/python benchmarks/bench_rabbitmq.py [--quick]

The same workload for every row: a backlog of N persistent 200-byte messages in
a durable queue, drained by a no-op handler (at-least-once, prefetch 100,
concurrency 4) that notes when it ran; the rate is the messages handled per
second between the first and the last one.

1. a plain pika consumer (BlockingConnection, basic_qos 100, an ack each)
2. `runner run --backend amqp://...`: one daemon
3. the same, two daemons on the same vhost (does adding a process add throughput?)
4. the embedded engine (`runner run`, --fsync always; the backlog published over
   HTTP in batches of 500 to the daemon without its consumer, then restarted)

RabbitMQ backlogs are published with pika from a subprocess (no confirms: load
only), each run in a vhost of its own (deleted after). Every number is the median of the repeats.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pika

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RUNNER = ROOT / ".venv" / "bin" / "runner"

from runner.backends.rabbitmq import live  # noqa: E402
from runner.backends.rabbitmq.url import Target  # noqa: E402

QUEUE_ONLY = """\
version: 1
name: bench-rabbitmq
queues:
  work: {durable: true}
"""
TOPOLOGY = QUEUE_ONLY + """\
consumers:
  work-c: {queue: work, handler: "bench_handlers:handle", prefetch: 100, concurrency: 4}
"""

HANDLERS = """\
import os
import time

_out = open(os.environ["BENCH_COUNT"], "a", buffering=1)


def handle(msg):
    _out.write(f"{time.time()}\\n")
"""

_LISTENING = re.compile(r"listening on http://[^:\s]+:(\d+)")


class Vhost:
    def __init__(self) -> None:
        self.admin = Target("127.0.0.1")
        prefix = os.environ.get("RUNNER_TEST_VHOST_PREFIX", "bench-")
        self.name = f"{prefix}{uuid.uuid4().hex[:10]}"
        live.request(self.admin, "PUT", f"/api/vhosts/{self.name}", {})
        live.request(self.admin, "PUT", f"/api/permissions/{self.name}/guest",
                     {"configure": ".*", "write": ".*", "read": ".*"})

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:5672/{self.name}"

    def params(self) -> pika.ConnectionParameters:
        return pika.ConnectionParameters("127.0.0.1", virtual_host=self.name)

    def delete(self) -> None:
        live.request(self.admin, "DELETE", f"/api/vhosts/{self.name}")


LOADER = """
import sys, pika
conn = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", virtual_host=sys.argv[1]))
ch = conn.channel()
props = pika.BasicProperties(delivery_mode=2, content_type="application/json")
body = b'{"b":"' + b"x" * 186 + b'"}'
for _ in range(int(sys.argv[2])):
    ch.basic_publish("", "work", body, props)
conn.close()
"""


def publish(vhost: Vhost, n: int) -> subprocess.Popen[bytes]:
    """The loader, in a process of its own (not competing for this one's GIL)."""
    return subprocess.Popen([sys.executable, "-c", LOADER, vhost.name, str(n)])


def prefill(vhost: Vhost, n: int) -> None:
    conn = pika.BlockingConnection(vhost.params())
    conn.channel().queue_declare("work", durable=True)
    conn.close()
    if publish(vhost, n).wait() != 0:
        raise RuntimeError("the loader failed")


def rate(times: list[float], n: int) -> float:
    """Messages a second between the first and the last one handled."""
    assert len(times) >= n, (len(times), n)
    return (n - 1) / (max(times) - min(times))


def plain_pika(n: int) -> float:
    vhost = Vhost()
    try:
        prefill(vhost, n)
        conn = pika.BlockingConnection(vhost.params())
        ch = conn.channel()
        ch.basic_qos(prefetch_count=100)
        times: list[float] = []

        def on(channel: object, method: object, props: object, body: bytes) -> None:
            times.append(time.time())
            ch.basic_ack(method.delivery_tag)  # type: ignore[attr-defined]
            if len(times) >= n:
                ch.stop_consuming()

        ch.basic_consume("work", on)
        ch.start_consuming()
        conn.close()
        return rate(times, n)
    finally:
        vhost.delete()


class Daemon:
    def __init__(self, workdir: Path, args: list[str], topology: str = TOPOLOGY) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "topology.yaml").write_text(topology)
        (workdir / "bench_handlers.py").write_text(HANDLERS)
        self.count = workdir / "count"
        self.count.touch()
        env = dict(os.environ, BENCH_COUNT=str(self.count), PYTHONDONTWRITEBYTECODE="1")
        self.log = workdir / "daemon.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [str(RUNNER), "run", "topology.yaml", "--listen", "127.0.0.1:0",
                 "--data-dir", "data", "--no-watch", *args],
                cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            m = _LISTENING.search(self.log.read_text(errors="replace"))
            if m:
                self.port = int(m.group(1))
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError(f"daemon did not start:\n{self.log.read_text()}")

    def handled(self) -> int:
        return self.count.read_bytes().count(b"\n")

    def times(self) -> list[float]:
        return [float(x) for x in self.count.read_text().split()]

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=60)


def wait_handled(daemons: list[Daemon], n: int, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while sum(d.handled() for d in daemons) < n:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {sum(d.handled() for d in daemons)} of {n} handled")
        time.sleep(0.01)


def runner_rabbitmq(n: int, daemons: int) -> float:
    vhost = Vhost()
    workdir = Path(tempfile.mkdtemp(prefix="bench-rmq-"))
    started: list[Daemon] = []
    try:
        prefill(vhost, n)
        for i in range(daemons):
            started.append(Daemon(workdir / f"d{i}", ["--backend", vhost.url]))
        wait_handled(started, n)
        return rate([t for d in started for t in d.times()], n)
    finally:
        for d in started:
            d.stop()
        shutil.rmtree(workdir, ignore_errors=True)
        vhost.delete()


def runner_embedded(n: int) -> float:
    """The backlog is published over HTTP to a daemon without the consumer, which is
    then restarted with it."""
    workdir = Path(tempfile.mkdtemp(prefix="bench-rmq-embedded-"))
    loader = Daemon(workdir / "d0", ["--fsync", "always"], topology=QUEUE_ONLY)
    try:
        body = json.dumps({"messages": [{"body": {"b": "x" * 186}}] * 500}).encode()
        conn = http.client.HTTPConnection("127.0.0.1", loader.port)
        for _ in range(n // 500):
            conn.request("POST", "/v1/queues/work/messages", body,
                         {"Content-Type": "application/json"})
            answer = conn.getresponse()
            answer.read()
            assert answer.status == 202, answer.status
        conn.close()
    finally:
        loader.stop()
    d = Daemon(workdir / "d0", ["--fsync", "always"])
    try:
        wait_handled([d], n // 500 * 500)
        return rate(d.times(), n // 500 * 500)
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
        ("plain pika consumer", [plain_pika(n) for _ in range(repeats)]),
        ("runner run --backend amqp://, 1 daemon", [runner_rabbitmq(n, 1)
                                                    for _ in range(repeats)]),
        ("runner run --backend amqp://, 2 daemons", [runner_rabbitmq(n, 2)
                                                     for _ in range(repeats)]),
        ("runner run (embedded engine, fsync always)", [runner_embedded(n)
                                                        for _ in range(repeats)]),
    ]
    base = statistics.median(rows[0][1])
    print(f"median of {repeats}; {n} persistent 200-byte messages, no-op handler, "
          "at-least-once, prefetch 100, concurrency 4")
    print(f"{'':48}{'msgs/s':>10}{'vs pika':>9}")
    for name, rates in rows:
        rate = statistics.median(rates)
        print(f"{name:48}{rate:10,.0f}{rate / base:8.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
