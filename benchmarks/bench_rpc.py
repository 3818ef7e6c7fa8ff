"""Benchmark of request-reply round trips: the daemon over HTTP vs RabbitMQ's direct reply-to.

Run: .venv/bin/python benchmarks/bench_rpc.py [--quick]

Workload (both sides, one run, median of 3 repeats): a client sends a ~60-byte
JSON request and waits for its reply, which a Python responder sends back
with the request's correlation id. Measured with 1 request in flight (the
round-trip latency) and with CLIENTS requests in flight (one client thread
and one connection each), in round trips per second.

* runner: the real daemon (`runner run --fsync never`); the request is
  `POST /v1/exchanges/rpc/messages?wait=10s` over a keep-alive connection
  (http.client), routed to a non-durable queue whose `async def` handler
  returns the reply, which the daemon hands to the waiting request in memory.
* runner over RabbitMQ: the same daemon and handler with `--backend
  amqp://.../<vhost>` (a vhost of its own, created and deleted by the bench):
  the request is published to the broker (confirmed), consumed by the daemon's
  pipeline, and the reply handed to the waiting request in memory (one daemon,
  so no reply crosses the broker).
* RabbitMQ (127.0.0.1:5672 guest/guest, pika): the request is published
  (non-persistent) to a non-durable queue with `reply_to =
  amq.rabbitmq.reply-to` and a correlation id, and the client consumes its
  reply from the pseudo-queue (no-ack); the responder is a pika
  BlockingConnection consumer in another process that publishes the reply to
  `reply_to` and acks the request (prefetch 100).
"""

from __future__ import annotations

import argparse
import http.client
import multiprocessing
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent
RUNNER = ROOT / ".venv" / "bin" / "runner"
CLIENTS = 16
REQUEST = {"sku": "BOOK-1", "qty": 2, "note": "x" * 24}

TOPOLOGY = """\
version: 1
name: bench-rpc
exchanges:
  rpc: {type: direct}
queues:
  rpc-q: {durable: false}
bindings:
  - {exchange: rpc, queue: rpc-q, routing_key: price}
consumers:
  pricer: {queue: rpc-q, handler: "bench_rpc_handler:price", concurrency: 16, prefetch: 64}
"""

HANDLER = """\
async def price(msg):
    return {"sku": msg.body["sku"], "price": 12.5}
"""

RABBIT_QUEUE = "bench-rpc-q"


# ------------------------------------------------------------------ runner


class Daemon:
    """`runner run` in a tmp dir (`args` added: `--backend URL`)."""

    def __init__(self, workdir: Path, args: tuple[str, ...] = ()) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "topology.yaml").write_text(TOPOLOGY)
        (workdir / "bench_rpc_handler.py").write_text(HANDLER)
        self.log = workdir / "daemon.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [str(RUNNER), "run", "topology.yaml", "--data-dir", "data", "--fsync", "never",
                 "--listen", "127.0.0.1:0", "--no-watch", *args],
                cwd=workdir, stdout=out, stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            match = re.search(r"listening on http://[^:]+:(\d+)", self.log.read_text())
            if match:
                self.port = int(match.group(1))
                return
            if self.proc.poll() is not None:
                raise SystemExit(f"daemon exited:\n{self.log.read_text()}")
            time.sleep(0.05)
        raise SystemExit("daemon did not start")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=60)


def runner_client(port: int) -> Callable[[], None]:
    """One client: a keep-alive connection; each call is one request and its reply."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    headers = {"Content-Type": "application/json"}

    def call() -> None:
        body = orjson.dumps({"routing_key": "price", "body": REQUEST})
        conn.request("POST", "/v1/exchanges/rpc/messages?wait=10s", body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        if resp.status != 200 or orjson.loads(data)["body"]["price"] != 12.5:
            raise RuntimeError(f"request-reply: {resp.status} {data[:200]!r}")

    return call


# ------------------------------------------------------------------ RabbitMQ


def _params() -> Any:
    import pika

    return pika.ConnectionParameters("127.0.0.1", 5672,
                                     credentials=pika.PlainCredentials("guest", "guest"))


def rabbit_responder(ready: Any) -> None:
    """In its own process: answer every request on RABBIT_QUEUE to its reply_to."""
    import pika

    conn = pika.BlockingConnection(_params())
    ch = conn.channel()
    ch.queue_declare(RABBIT_QUEUE, durable=False, auto_delete=False)
    ch.basic_qos(prefetch_count=100)

    def on_request(ch: Any, method: Any, props: Any, body: bytes) -> None:
        request = orjson.loads(body)
        reply = orjson.dumps({"sku": request["sku"], "price": 12.5})
        ch.basic_publish("", props.reply_to, reply, pika.BasicProperties(
            correlation_id=props.correlation_id, content_type="application/json"))
        ch.basic_ack(method.delivery_tag)

    ch.basic_consume(RABBIT_QUEUE, on_request)
    ready.set()
    try:
        ch.start_consuming()
    except KeyboardInterrupt:
        pass
    finally:
        conn.close()


def rabbit_client() -> Callable[[], None]:
    """One client: a connection consuming amq.rabbitmq.reply-to; each call one round trip."""
    import pika

    conn = pika.BlockingConnection(_params())
    ch = conn.channel()
    replies: list[tuple[str, bytes]] = []

    def on_reply(ch: Any, method: Any, props: Any, body: bytes) -> None:
        replies.append((props.correlation_id, body))

    ch.basic_consume("amq.rabbitmq.reply-to", on_reply, auto_ack=True)

    def call() -> None:
        cid = uuid.uuid4().hex
        ch.basic_publish("", RABBIT_QUEUE, orjson.dumps(REQUEST), pika.BasicProperties(
            reply_to="amq.rabbitmq.reply-to", correlation_id=cid,
            content_type="application/json"))
        while not replies:
            conn.process_data_events(time_limit=None)
        got_cid, body = replies.pop()
        if got_cid != cid or orjson.loads(body)["price"] != 12.5:
            raise RuntimeError(f"request-reply: {got_cid} {body[:200]!r}")

    return call


# ------------------------------------------------------------------ measuring


def round_trips(make_client: Callable[[], Callable[[], None]], clients: int, n: int) -> float:
    """Round trips per second of `clients` threads doing n round trips in all."""
    calls = [make_client() for _ in range(clients)]
    for call in calls:  # warm the connections up
        call()
    each = n // clients
    start = threading.Barrier(clients + 1)
    errors: list[BaseException] = []

    def run(call: Callable[[], None]) -> None:
        start.wait()
        try:
            for _ in range(each):
                call()
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(c,)) for c in calls]
    for t in threads:
        t.start()
    start.wait()
    began = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - began
    if errors:
        raise errors[0]
    return each * clients / elapsed


VHOST_PREFIX = os.environ.get("RUNNER_BENCH_VHOST_PREFIX", "bench-rpc-")


def management(method: str, path: str, body: Any = None) -> None:
    """One call of the broker's management API (127.0.0.1:15672, guest)."""
    from runner.backends.rabbitmq import live
    from runner.backends.rabbitmq.url import Target

    live.request(Target("127.0.0.1"), method, path, body)


def rabbit_available() -> str | None:
    try:
        import pika
    except ModuleNotFoundError:
        return "pika is not installed: pip install -e '.[bench]' (make install does)"
    try:
        pika.BlockingConnection(pika.ConnectionParameters(
            "127.0.0.1", 5672, credentials=pika.PlainCredentials("guest", "guest"),
            connection_attempts=1, socket_timeout=3)).close()
    except Exception as exc:  # any connection failure means: no floor to compare with
        return f"{type(exc).__name__}: {exc}"
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (< 30 s)")
    args = parser.parse_args()
    sequential = 500 if args.quick else 5_000
    concurrent = 3_200 if args.quick else 32_000
    repeats = 3
    missing = rabbit_available()
    if missing:
        print(f"RabbitMQ at 127.0.0.1:5672 is not reachable ({missing}); start it to compare.")
        return 1
    workdir = Path(tempfile.mkdtemp(prefix="bench-rpc-"))
    vhost = f"{VHOST_PREFIX}{uuid.uuid4().hex[:8]}"
    management("PUT", f"/api/vhosts/{vhost}", {})
    management("PUT", f"/api/permissions/{vhost}/guest",
               {"configure": ".*", "write": ".*", "read": ".*"})
    daemon = Daemon(workdir / "embedded")
    remote = Daemon(workdir / "rabbitmq",
                    ("--backend", f"amqp://guest:guest@127.0.0.1:5672/{vhost}"))
    ready = multiprocessing.Event()
    responder = multiprocessing.Process(target=rabbit_responder, args=(ready,), daemon=True)
    responder.start()
    try:
        if not ready.wait(30):
            raise SystemExit("the RabbitMQ responder did not start")
        rows: list[tuple[str, float, float, float]] = []
        for label, clients, n in (("1 in flight", 1, sequential),
                                  (f"{CLIENTS} in flight", CLIENTS, concurrent)):
            runs: dict[str, list[float]] = {"embedded": [], "backend": [], "pika": []}
            for _ in range(repeats):  # alternately, so drift in the machine's load hits all
                runs["embedded"].append(
                    round_trips(lambda: runner_client(daemon.port), clients, n))
                runs["backend"].append(
                    round_trips(lambda: runner_client(remote.port), clients, n))
                runs["pika"].append(round_trips(rabbit_client, clients, n))
            rows.append((label, statistics.median(runs["embedded"]),
                         statistics.median(runs["backend"]), statistics.median(runs["pika"])))
        print(f"request-reply round trips/s (~60 B JSON request and reply, Python responder "
              f"on all sides); median of {repeats}, sides alternating")
        print(f"{'':16}{'runner ?wait=':>15}{'runner ?wait=':>15}{'RabbitMQ':>13}"
              f"{'embedded':>10}{'backend':>10}")
        print(f"{'':16}{'embedded':>15}{'--backend amqp':>15}{'direct r-t':>13}"
              f"{'/pika':>10}{'/pika':>10}")
        for label, ours, backend, theirs in rows:
            print(f"{label:16}{ours:15,.0f}{backend:15,.0f}{theirs:13,.0f}"
                  f"{ours / theirs:9.2f}x{backend / theirs:9.2f}x")
    finally:
        daemon.stop()
        remote.stop()
        if responder.pid is not None:
            os.kill(responder.pid, signal.SIGINT)
        responder.join(10)
        shutil.rmtree(workdir, ignore_errors=True)
        _delete_rabbit_queue()
        management("DELETE", f"/api/vhosts/{vhost}")
    return 0


def _delete_rabbit_queue() -> None:
    import pika

    try:
        conn = pika.BlockingConnection(_params())
        conn.channel().queue_delete(RABBIT_QUEUE)
        conn.close()
    except Exception:  # best effort: the queue is small and non-durable
        pass


if __name__ == "__main__":
    sys.exit(main())
