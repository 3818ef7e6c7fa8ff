"""The real local RabbitMQ for tests: a fresh vhost, created and deleted through the
management API. Without a reachable broker a test skips locally with one line and
FAILS when `CI` is set. `RUNNER_TEST_VHOST_PREFIX` names the vhosts (default
`runner-test-`)."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import quote

import pytest

from runner.backends.rabbitmq import live
from runner.backends.rabbitmq.url import Target

HOST = os.environ.get("RUNNER_TEST_RABBITMQ_HOST", "127.0.0.1")
PREFIX = os.environ.get("RUNNER_TEST_VHOST_PREFIX", "runner-test-")


def need_broker(why: str) -> None:
    message = (f"RabbitMQ with its management plugin is not reachable at {HOST}:5672/15672 "
               f"({why}); start it and run `rabbitmq-plugins enable rabbitmq_management "
               "rabbitmq_stream`")
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@contextmanager
def fresh_vhost(prefix: str | None = None) -> Iterator[Target]:
    """A new vhost on the local broker (guest may do everything in it), deleted after;
    its name starts with `prefix` (default: RUNNER_TEST_VHOST_PREFIX)."""
    admin = Target(HOST)
    name = f"{PREFIX if prefix is None else prefix}{uuid.uuid4().hex[:12]}"
    try:
        live.request(admin, "PUT", f"/api/vhosts/{name}", {})
    except live.Unreachable as exc:
        need_broker(str(exc))
    try:
        live.request(admin, "PUT", f"/api/permissions/{name}/guest",
                     {"configure": ".*", "write": ".*", "read": ".*"})
        yield Target(HOST, vhost=name)
    finally:
        live.request(admin, "DELETE", f"/api/vhosts/{name}")


def url(target: Target) -> str:
    return f"amqp://guest:guest@{target.host}:{target.port}/{target.vhost}"


def kill_connections(target: Target) -> int:
    """Close the vhost's connections from the broker's side (the management API lists
    a new connection after a moment: wait for it)."""
    admin = Target(target.host)
    path = f"/api/vhosts/{quote(target.vhost, safe='')}/connections"
    deadline = time.monotonic() + 15
    while not (conns := live.request(admin, "GET", path)) and time.monotonic() < deadline:
        time.sleep(0.2)
    for c in conns:
        live.request(admin, "DELETE", f"/api/connections/{quote(c['name'], safe='')}")
    return len(conns)


def close_connection(target: Target, connection_name: str) -> None:
    """Close the vhost's connection named `connection_name` (its client property
    `connection_name`) from the broker's side, once the management API lists it."""
    admin = Target(target.host)
    path = f"/api/vhosts/{quote(target.vhost, safe='')}/connections"
    deadline = time.monotonic() + 15
    while True:
        named = [c["name"] for c in live.request(admin, "GET", path)
                 if (c.get("client_properties") or {}).get("connection_name") == connection_name]
        if named:
            break
        assert time.monotonic() < deadline, f"no connection named {connection_name!r}"
        time.sleep(0.1)
    for name in named:
        live.request(admin, "DELETE", f"/api/connections/{quote(name, safe='')}")


def max_connections(target: Target, value: int | None) -> None:
    """Set (None: remove) the vhost's `max-connections` limit: 0 refuses every new
    connection to it, the broker itself and the other vhosts untouched."""
    admin = Target(target.host)
    path = f"/api/vhost-limits/{quote(target.vhost, safe='')}/max-connections"
    if value is None:
        live.request(admin, "DELETE", path)
    else:
        live.request(admin, "PUT", path, {"value": value})


def read_stream(target: Target, stream: str, n: int, *,
                timeout_s: float = 15.0) -> list[tuple[Any, bytes]]:
    """The first `n` messages of a stream (fewer after `timeout_s`): (properties, body)."""
    import pika

    conn = pika.BlockingConnection(pika.ConnectionParameters(
        target.host, target.port, virtual_host=target.vhost))
    got: list[tuple[Any, bytes]] = []
    try:
        ch = conn.channel()
        ch.basic_qos(prefetch_count=100)

        def on(channel: Any, method: Any, props: Any, body: bytes) -> None:
            got.append((props, body))
            channel.basic_ack(method.delivery_tag)

        ch.basic_consume(stream, on, arguments={"x-stream-offset": "first"})
        deadline = time.monotonic() + timeout_s
        while len(got) < n and time.monotonic() < deadline:
            conn.process_data_events(time_limit=0.1)
        return got[:n] if len(got) >= n else got
    finally:
        conn.close()


def restart_broker(down_s: float = 1.0) -> None:
    """`rabbitmqctl stop_app`, `down_s` seconds with the broker down, `start_app`; returns
    once AMQP and the management API answer again. Durable queues and persistent
    messages survive it; every client connection is closed."""
    import subprocess

    def ctl(*args: str) -> None:
        done = subprocess.run(["rabbitmqctl", *args], capture_output=True, text=True,
                              timeout=120, check=False)
        assert done.returncode == 0, f"rabbitmqctl {' '.join(args)}: {done.stderr}"

    ctl("stop_app")
    try:
        time.sleep(down_s)
    finally:
        ctl("start_app")
        ctl("await_startup")
    deadline = time.monotonic() + 60
    while True:
        try:
            live.request(Target(HOST), "GET", "/api/overview")
            return
        except live.Unreachable:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
