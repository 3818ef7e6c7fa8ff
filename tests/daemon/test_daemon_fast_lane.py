"""The HTTP fast lane (runner.daemon.fastlane) with its fsync held: the real Supervisor
and HTTP server over a real Engine on a simulated disk (`--fsync always`), raw
sockets as clients. A publish the lane took is answered only once its bytes are on
the disk; a stop waits for it; a request sent meanwhile on the same connection waits
its turn (its answer comes second); a client that leaves does not lose its publish
and leaves nothing behind on the loop. An append to a topic is answered once durable
too, and one whose fsync fails gets the route's 503."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from tests.daemon.harness import Client, run_daemon
from tests.daemon.test_daemon_group_commit import TOPOLOGY, HeldDisk, _parts, _until


def _publish(queue: str, body: object) -> bytes:
    data = json.dumps({"body": body}).encode()
    return (f"POST /v1/queues/{queue}/messages HTTP/1.1\r\nHost: x\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
            ).encode() + data


async def _connect(c: Client) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    port = int(c.url.rsplit(":", 1)[1])
    return await asyncio.open_connection("127.0.0.1", port)


async def _answer(reader: asyncio.StreamReader) -> tuple[int, object]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    lines = head.decode().split("\r\n")
    length = next(int(x.split(":")[1]) for x in lines if x.lower().startswith("content-length"))
    body = await asyncio.wait_for(reader.readexactly(length), 10)
    return int(lines[0].split()[1]), json.loads(body)


async def _nothing_yet(reader: asyncio.StreamReader) -> None:
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(reader.read(1), 0.3)


async def _held(c: Client, disk: HeldDisk, body: str) -> tuple[
        asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection whose publish of `body` to queue `gate` waits for its held fsync."""
    disk.hold = "gate"
    reader, writer = await _connect(c)
    writer.write(_publish("gate", body))
    await _until(disk.holding.is_set, "the gate's fsync was not reached")
    return reader, writer


def _gate_log(tmp_path: Path) -> Path:
    return tmp_path / "data" / "queues" / "gate" / "00000000000000000000.log"


def test_a_lane_publish_is_answered_once_durable_and_a_stop_waits_for_it(
        tmp_path: Path) -> None:
    disk = HeldDisk()

    async def scenario(c: Client) -> None:
        reader, writer = await _held(c, disk, "held")
        await _nothing_yet(reader)  # written, not yet durable: no answer
        assert b"held" not in disk.durable(_gate_log(tmp_path))
        c.supervisor.stop()  # a stop now waits for the request
        await asyncio.sleep(0.2)
        disk.release.set()
        assert await _answer(reader) == (202, {"routed": ["gate"]})
        assert b"held" in disk.durable(_gate_log(tmp_path))
        assert c.supervisor.lane is not None
        assert (c.supervisor.lane.served, c.supervisor.lane.declined) == (1, 0)
        writer.close()

    run_daemon(tmp_path, TOPOLOGY, scenario, parts=_parts(disk))


def test_a_request_sent_while_the_lane_waits_for_an_fsync_is_answered_after_it(
        tmp_path: Path) -> None:
    disk = HeldDisk()

    async def scenario(c: Client) -> None:
        reader, writer = await _held(c, disk, "first")
        writer.write(_publish("a", "second"))  # another queue, nothing held there
        await _nothing_yet(reader)  # the second waits for the first's answer
        disk.release.set()
        assert await _answer(reader) == (202, {"routed": ["gate"]})
        assert await _answer(reader) == (202, {"routed": ["a"]})
        assert c.supervisor.lane is not None
        assert c.supervisor.lane.served == 2  # both by the lane, in turn
        writer.close()
        status, pulled, _ = await c.call("POST", "/v1/queues/a/pull", {"max": 10})
        assert status == 200 and [m["body"] for m in pulled["messages"]] == ["second"]

    run_daemon(tmp_path, TOPOLOGY, scenario, parts=_parts(disk))


def test_a_client_that_leaves_while_its_publish_waits_keeps_the_publish(
        tmp_path: Path) -> None:
    disk = HeldDisk()

    async def scenario(c: Client) -> None:
        reader, writer = await _held(c, disk, "orphan")
        writer.close()
        await writer.wait_closed()
        await asyncio.sleep(0.1)
        disk.release.set()
        await _until(lambda: b"orphan" in disk.durable(_gate_log(tmp_path)),
                     "the publish was not stored")
        status, pulled, _ = await c.call("POST", "/v1/queues/gate/pull", {"max": 10})
        assert status == 200 and [m["body"] for m in pulled["messages"]] == ["orphan"]
        # the daemon serves on (nothing escaped on the loop: the harness checks)
        status, _, _ = await c.call("POST", "/v1/queues/a/messages", {"body": "next"})
        assert status == 202

    run_daemon(tmp_path, TOPOLOGY, scenario, parts=_parts(disk))


def _append(value: str) -> bytes:
    data = json.dumps({"value": value}).encode()
    return (b"POST /v1/topics/t/records HTTP/1.1\r\nHost: x\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(data), data))


def test_a_lane_append_is_answered_once_durable_and_a_stop_waits_for_it(
        tmp_path: Path) -> None:
    disk = HeldDisk()

    async def scenario(c: Client) -> None:
        disk.hold = "t-0"
        reader, writer = await _connect(c)
        writer.write(_append("appended"))
        await _until(disk.holding.is_set, "the topic's fsync was not reached")
        await _nothing_yet(reader)  # written, not yet durable: no answer
        tlog = tmp_path / "data" / "topics" / "t-0" / "00000000000000000000.log"
        assert b"appended" not in disk.durable(tlog)
        c.supervisor.stop()  # a stop now waits for the request
        await asyncio.sleep(0.2)
        disk.release.set()
        assert await _answer(reader) == (202, {"offsets": [{"partition": 0, "offset": 0}]})
        assert b"appended" in disk.durable(tlog)
        assert c.supervisor.lane is not None
        assert (c.supervisor.lane.served, c.supervisor.lane.declined) == (1, 0)
        writer.close()

    run_daemon(tmp_path, TOPOLOGY, scenario, parts=_parts(disk))


def test_a_lane_append_whose_fsync_fails_gets_the_routes_503(tmp_path: Path) -> None:
    disk = HeldDisk()

    async def scenario(c: Client) -> None:
        disk.fail = "t-0"
        reader, writer = await _connect(c)
        writer.write(_append("lost"))
        status, body = await _answer(reader)
        tlog = tmp_path / "data" / "topics" / "t-0" / "00000000000000000000.log"
        assert (status, body) == (503, {"error": (
            f"storage error: fsync of {tlog} failed (Input/output error (simulated fsync "
            "failure)): the log refuses writes and reads until the runner is restarted "
            "and recovers it from disk")})
        assert c.supervisor.lane is not None
        assert (c.supervisor.lane.served, c.supervisor.lane.declined) == (1, 0)
        writer.close()
        # the failed log refuses as without the lane; the queues serve on
        status, _, _ = await c.call("POST", "/v1/queues/a/messages", {"body": "next"})
        assert status == 202

    run_daemon(tmp_path, TOPOLOGY, scenario, parts=_parts(disk))
    assert disk.sync_failures == 1
