"""Kafka listener fixtures: a REAL daemon (`runner run --kafka-listen 127.0.0.1:0`)
and real Kafka clients (kafka-python, confluent-kafka, aiokafka, kcat).

`KafkaDaemon` is the e2e `Daemon` plus the Kafka port read from its log line
`listening on kafka://HOST:PORT` (a restart binds a new ephemeral port).
"""

from __future__ import annotations

import contextlib
import re
import shutil
import socket
import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import Daemon, make_daemon, wait_for

_KAFKA = re.compile(r"listening on kafka://[^:\s]+:(\d+)")

TOPOLOGY = """\
version: 1
name: kafka-test
topics:
  orders:
    partitions: 3
  events:
    partitions: 1
  ledger:
    partitions: 2
    cleanup_policy: compact
consumer_groups:
  billing:
    topics: [orders]
  audit:
    topics: [events]
    offset_reset: latest
"""


class KafkaDaemon(Daemon):
    kafka_port: int = 0

    def start(self, *, expect_ready: bool = True, timeout_s: float = 30.0) -> None:
        super().start(expect_ready=expect_ready, timeout_s=timeout_s)
        if expect_ready:
            match = wait_for(lambda: _KAFKA.findall(self.log()), timeout_s)
            self.kafka_port = int(match[-1])

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.kafka_port}"


def make_kafka_daemon(workdir: Path, topology: str = TOPOLOGY, *,
                      args: list[str] | None = None, **kw: Any) -> KafkaDaemon:
    base = make_daemon(workdir, topology, args=["--kafka-listen", "127.0.0.1:0",
                                                *(args or [])], **kw)
    d = KafkaDaemon(**{f: getattr(base, f) for f in base.__dataclass_fields__})
    return d


@pytest.fixture(autouse=True)
def close_kafka_clients(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Close every kafka-python client a test opened, even when the test failed
    before its own close(), then collect what they left behind.

    A client left open keeps reconnecting to a stopped daemon from its own thread;
    its sockets are later garbage-collected inside an unrelated test, whose
    `ResourceWarning` then fails that test (warnings are errors here)."""
    import gc
    import warnings

    from kafka import KafkaConsumer, KafkaProducer
    from kafka.admin import KafkaAdminClient

    opened: list[Any] = []
    for cls in (KafkaConsumer, KafkaProducer, KafkaAdminClient):
        original = cls.__init__

        def tracked(self: Any, *args: Any, __original: Any = original, **kw: Any) -> None:
            opened.append(self)
            __original(self, *args, **kw)

        monkeypatch.setattr(cls, "__init__", tracked)
    yield
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for client in opened:
            with contextlib.suppress(Exception):
                if isinstance(client, KafkaConsumer):
                    client.close(autocommit=False)
                elif isinstance(client, KafkaProducer):
                    client.close(timeout=1)
                else:
                    client.close()
        opened.clear()
        gc.collect()


@pytest.fixture(scope="module")
def kd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaDaemon]:
    """One Kafka-listening daemon shared by a test module."""
    d = make_kafka_daemon(tmp_path_factory.mktemp("kafka"))
    d.start()
    yield d
    d.stop()
    assert "Traceback" not in d.log()


@pytest.fixture
def start_kafka_daemon(tmp_path: Path) -> Iterator[Callable[..., KafkaDaemon]]:
    started: list[KafkaDaemon] = []

    def start(topology: str = TOPOLOGY, **kw: Any) -> KafkaDaemon:
        d = make_kafka_daemon(tmp_path / f"k{len(started)}", topology, **kw)
        started.append(d)
        d.start()
        return d

    yield start
    for d in started:
        if d.running:
            d.stop()


def kcat_path() -> str | None:
    return shutil.which("kcat")


# ---------------------------------------------------------------- raw frames
class RawClient:
    """A bare socket speaking frames, for inputs no real client would send."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)

    def send(self, payload: bytes) -> None:
        self.sock.sendall(struct.pack(">i", len(payload)) + payload)

    def receive(self) -> bytes | None:
        """One response frame's payload, or None when the listener closed."""
        head = self._exactly(4)
        if head is None:
            return None
        (size,) = struct.unpack(">i", head)
        return self._exactly(size)

    def _exactly(self, n: int) -> bytes | None:
        buf = b""
        while len(buf) < n:
            try:
                chunk = self.sock.recv(n - len(buf))
            except ConnectionResetError:
                return None
            if not chunk:
                return None
            buf += chunk
        return buf

    def close(self) -> None:
        self.sock.close()


def request(api_key: int, version: int, body: Any, correlation: int = 7,
            client_id: str = "raw") -> bytes:
    """A request payload (header + body) encoded with kio, as a client would."""
    import io

    from kio.serial import entity_writer

    out = io.BytesIO()
    out.write(struct.pack(">hhi", api_key, version, correlation))
    raw = client_id.encode()
    out.write(struct.pack(">h", len(raw)) + raw)
    if type(body).__flexible__:
        out.write(b"\0")
    entity_writer(type(body))(out, body)
    return out.getvalue()


def response(payload: bytes, cls: type, *, flexible_header: bool) -> Any:
    from kio.serial import entity_reader

    pos = 4 + (1 if flexible_header else 0)
    value, _ = entity_reader(cls)(payload, pos)
    return value


def until(check: Callable[[], Any], timeout_s: float = 15.0) -> Any:
    return wait_for(check, timeout_s)


def now_ms() -> int:
    return int(time.time() * 1000)


class DroppingProxy:
    """A TCP proxy in front of the listener that loses the first `drops` Produce
    answers (closing the client's connection after the daemon stored the records),
    the way a network failure makes a producer retry. Start the daemon with
    `--kafka-advertise 127.0.0.1:{proxy.port}` so clients stay behind it."""

    def __init__(self, drops: int) -> None:
        import threading

        self.drops = drops
        self.dropped = 0
        self.upstream = 0
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._server.getsockname()[1])
        self._lock = threading.Lock()
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import threading

        while not self._stop:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream))
            kinds: dict[int, int] = {}
            threading.Thread(target=self._pump_requests, args=(client, upstream, kinds),
                             daemon=True).start()
            threading.Thread(target=self._pump_answers, args=(upstream, client, kinds),
                             daemon=True).start()

    @staticmethod
    def _frame(sock: socket.socket) -> bytes | None:
        head = b""
        while len(head) < 4:
            chunk = sock.recv(4 - len(head))
            if not chunk:
                return None
            head += chunk
        (size,) = struct.unpack(">i", head)
        body = b""
        while len(body) < size:
            chunk = sock.recv(size - len(body))
            if not chunk:
                return None
            body += chunk
        return head + body

    def _pump_requests(self, src: socket.socket, dst: socket.socket,
                       kinds: dict[int, int]) -> None:
        try:
            while (frame := self._frame(src)) is not None:
                api_key, _, correlation = struct.unpack_from(">hhi", frame, 4)
                kinds[correlation] = api_key
                dst.sendall(frame)
        except OSError:
            pass
        finally:
            self._close(src, dst)

    def _pump_answers(self, src: socket.socket, dst: socket.socket,
                      kinds: dict[int, int]) -> None:
        try:
            while (frame := self._frame(src)) is not None:
                (correlation,) = struct.unpack_from(">i", frame, 4)
                with self._lock:
                    drop = kinds.get(correlation) == 0 and self.dropped < self.drops
                    if drop:
                        self.dropped += 1
                if drop:
                    break
                dst.sendall(frame)
        except OSError:
            pass
        finally:
            self._close(src, dst)

    @staticmethod
    def _close(*socks: socket.socket) -> None:
        for s in socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def close(self) -> None:
        self._stop = True
        self._server.close()
