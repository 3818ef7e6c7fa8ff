"""What the fast lane acknowledged survives kill -9.

The other kill -9 tests send with urllib, which says `Connection: close`: the
full HTTP stack serves them. Here 8 keep-alive clients (http.client, as most
producers are) publish to a durable queue and append to a topic through the lane
while the daemon is killed mid-stream; after the restart every message and
record answered 202 is there, once, where its answer said.
"""

from __future__ import annotations

import http.client
import json
import signal
import threading
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import make_daemon, wait_for
from tests.e2e.test_e2e_fast_lane import lane_counts

pytestmark = pytest.mark.e2e

TOPOLOGY = """\
version: 1
name: lane-kill
queues:
  work: {durable: true}
topics:
  log: {partitions: 2}
"""

CLIENTS = 8


def test_what_the_lane_acknowledged_survives_kill_9(tmp_path: Path) -> None:
    d = make_daemon(tmp_path / "d", TOPOLOGY, args=["--fsync", "always"])
    d.start()
    port = d.port
    stop = threading.Event()
    lock = threading.Lock()
    acked_messages: list[str] = []
    acked_records: list[tuple[int, int, str]] = []  # partition, offset, value
    errors: list[str] = []

    def client(k: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            produce(k, conn)
        finally:
            conn.close()  # else a killed connection is left for the GC to warn about

    def produce(k: int, conn: http.client.HTTPConnection) -> None:
        i = 0
        while not stop.is_set():
            value = f"{k}-{i}"
            to_queue = i % 2 == 0
            i += 1
            path, body = (("/v1/queues/work/messages", {"body": value}) if to_queue
                          else ("/v1/topics/log/records", {"value": value}))
            try:
                conn.request("POST", path, body=json.dumps(body),
                             headers={"Content-Type": "application/json"})
                resp = conn.getresponse()
                answer = resp.read()
            except (OSError, http.client.HTTPException):
                return  # killed: what was not answered was not acknowledged
            with lock:
                if resp.status != 202:
                    errors.append(f"{resp.status} {answer!r}")
                elif to_queue:
                    acked_messages.append(value)
                else:
                    at = json.loads(answer)["offsets"][0]
                    acked_records.append((at["partition"], at["offset"], value))

    threads = [threading.Thread(target=client, args=(k,)) for k in range(CLIENTS)]
    for t in threads:
        t.start()
    try:
        wait_for(lambda: len(acked_messages) + len(acked_records) >= 400, timeout_s=60)
        served = lane_counts(d)[0]
        d.signal(signal.SIGKILL)
        d.wait(10)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert errors == []
    # (nearly) everything went through the lane: the metric counts served requests
    assert served >= 300, served
    time.sleep(0.1)
    d.start()
    try:
        stored: list[str] = []
        while True:
            got = d.ok("POST", "/v1/queues/work/pull", {"max": 1000})["messages"]
            if not got:
                break
            stored += [m["body"] for m in got]
        assert len(stored) == len(set(stored)), "a message was stored twice"
        missing = set(acked_messages) - set(stored)
        assert not missing, f"{len(missing)} acknowledged messages lost: {sorted(missing)[:5]}"
        for partition in (0, 1):
            records = []
            offset = 0
            while True:
                page = d.ok("GET", f"/v1/topics/log/partitions/{partition}/records"
                                   f"?offset={offset}&limit=1000")["records"]
                if not page:
                    break
                records += page
                offset = page[-1]["offset"] + 1
            values = {r["offset"]: r["value"] for r in records}
            assert len(set(values.values())) == len(values), "a record was stored twice"
            for p, at, value in acked_records:
                if p == partition:
                    assert values.get(at) == value, (partition, at, value, values.get(at))
    finally:
        d.stop()
