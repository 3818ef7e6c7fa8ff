"""acks=all under --fsync always: a SIGKILL of the daemon loses nothing a producer saw
acknowledged."""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Callable

import pytest
from confluent_kafka import Producer

from tests.daemon.kafka.conftest import KafkaDaemon

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_sigkill_during_acks_all_produce_loses_nothing_acknowledged(
        start_kafka_daemon: Callable[..., KafkaDaemon]) -> None:
    d = start_kafka_daemon(args=["--fsync", "always"])
    acked: dict[tuple[int, int], bytes] = {}
    stop = threading.Event()

    def produce() -> None:
        p = Producer({"bootstrap.servers": d.bootstrap, "acks": "all", "linger.ms": 2,
                      "message.timeout.ms": 3000, "retries": 0})

        def done(err: object, msg: object) -> None:
            if err is None:
                acked[(msg.partition(), msg.offset())] = msg.value()  # type: ignore[attr-defined]

        i = 0
        while not stop.is_set():
            try:
                p.produce("orders", key=str(i).encode(), value=f"v{i}".encode(),
                          on_delivery=done)
            except BufferError:
                p.poll(0.01)
                continue
            i += 1
            if i % 20 == 0:
                p.poll(0)
        p.flush(5)
        p.purge()
        p.close()

    worker = threading.Thread(target=produce, daemon=True)
    worker.start()
    deadline = time.monotonic() + 30
    while len(acked) < 2000 and time.monotonic() < deadline:
        time.sleep(0.02)
    d.kill()  # SIGKILL while the producer keeps sending
    before = len(acked)
    stop.set()
    worker.join(30)
    assert before >= 2000, f"only {before} records acknowledged before the kill"
    d.start()
    for p in range(3):
        offsets = sorted(off for part, off in acked if part == p)
        offset = offsets[0] if offsets else 0
        stored: dict[int, bytes] = {}
        while offsets and offset <= offsets[-1]:
            page = d.ok("GET", f"/v1/topics/orders/partitions/{p}/records"
                               f"?offset={offset}&limit=10000")
            for r in page["records"]:
                stored[r["offset"]] = base64.b64decode(r["value_b64"])  # not JSON text
            if page["next_offset"] == offset:
                break
            offset = page["next_offset"]
        missing = [o for o in offsets if stored.get(o) != acked[(p, o)]]
        assert missing == [], f"partition {p}: acknowledged but lost or changed: {missing[:10]}"
