"""Slow and greedy clients against the real daemon (issue 17): header and body read
timeouts (408), the idle timeout, the write timeout (a client that never reads its
answer), the connection cap (503) under a low file limit, and what the HTTP parser
refuses answered as JSON.

Timeouts are lowered by flags so each case takes about a second.
"""

from __future__ import annotations

import json
import socket
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.e2e import conftest
from tests.e2e.conftest import Daemon, module_daemon

pytestmark = pytest.mark.e2e

TOPOLOGY = """\
version: 1
name: e2e-connections
queues:
  q: {}
  big: {}
"""

FAST = ["--header-timeout", "1s", "--body-timeout", "1s", "--idle-timeout", "2s",
        "--write-timeout", "1s", "--max-connections", "8"]


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    yield from module_daemon(tmp_path_factory.mktemp("conn"), TOPOLOGY, args=FAST)


def connect(d: Daemon) -> socket.socket:
    return socket.create_connection(("127.0.0.1", d.port), timeout=10)


def answer_of(sock: socket.socket) -> tuple[int, dict[str, str], dict[str, str]]:
    """Status, headers and JSON body of the one answer on `sock` (read to its end)."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, json.loads(body)


def healthy(d: Daemon) -> bool:
    return d.get("/healthz").status == 200


def test_a_partial_header_is_answered_408_within_the_header_timeout(daemon: Daemon) -> None:
    with connect(daemon) as sock:
        sock.sendall(b"POST /v1/queues/q/messages HTTP/1.1\r\nHost: x\r\n")
        started = time.monotonic()
        assert healthy(daemon)  # others are served meanwhile
        status, headers, body = answer_of(sock)
        waited = time.monotonic() - started
    assert 0.8 < waited < 4, waited
    assert status == 408 and headers["connection"] == "close"
    assert body == {"error": "the request header did not arrive within 1s (--header-timeout)"}


@pytest.mark.parametrize("head,first", [
    (b"Content-Length: 100\r\n", b'{"body": '),
    (b"Transfer-Encoding: chunked\r\n", b'9\r\n{"body": '),
])
def test_a_stalled_body_is_answered_408(daemon: Daemon, head: bytes, first: bytes) -> None:
    with connect(daemon) as sock:
        sock.sendall(b"POST /v1/queues/q/messages HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Type: application/json\r\n" + head + b"\r\n" + first)
        started = time.monotonic()
        status, _, body = answer_of(sock)
        assert time.monotonic() - started < 4
    assert status == 408
    assert body == {"error": "the request body stalled: nothing arrived for 1s "
                             "(--body-timeout); send the whole body without pauses"}
    assert daemon.ok("GET", "/v1/queues/q/peek")["messages"] == []  # nothing stored


def test_a_slow_but_steady_body_is_read(daemon: Daemon) -> None:
    body = json.dumps({"body": "steady"}).encode()
    with connect(daemon) as sock:
        sock.sendall(b"POST /v1/queues/q/messages HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                     b"Content-Type: application/json\r\n"
                     + f"Content-Length: {len(body)}\r\n\r\n".encode())
        for i in range(0, len(body), 8):  # pauses shorter than the body timeout
            sock.sendall(body[i:i + 8])
            time.sleep(0.3)
        status, _, answer = answer_of(sock)
    assert (status, answer) == (202, {"routed": ["q"]})
    got = daemon.ok("POST", "/v1/queues/q/pull", {})["messages"]
    assert [m["body"] for m in got] == ["steady"]
    daemon.ok("POST", "/v1/queues/q/ack", {"delivery_ids": [got[0]["delivery_id"]]})


def test_an_idle_connection_is_closed_after_the_idle_timeout(daemon: Daemon) -> None:
    with connect(daemon) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        first = sock.recv(65536)
        assert first.startswith(b"HTTP/1.1 200")
        started = time.monotonic()
        assert sock.recv(65536) == b""  # closed by the daemon, not by us
        assert 1.5 < time.monotonic() - started < 5


def test_a_client_that_never_reads_its_answer_is_cut_off_after_the_write_timeout(
    daemon: Daemon,
) -> None:
    """A 12 MB answer (more than the kernel's socket buffers hold) to a client that
    sends its request and never reads: the daemon gives the answer up after the write
    timeout instead of holding it (and the connection) for ever."""
    piece = "x" * 100_000
    daemon.ok("POST", "/v1/queues/big/messages", {"messages": [{"body": piece}] * 120}, 202)
    size = len(daemon.get("/v1/queues/big/peek?n=1000").raw)
    assert size > 12_000_000
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect
        sock.settimeout(10)
        sock.connect(("127.0.0.1", daemon.port))
        sock.sendall(b"GET /v1/queues/big/peek?n=1000 HTTP/1.1\r\nHost: x\r\n\r\n")
        started = time.monotonic()
        conftest.wait_for(lambda: "--write-timeout" in daemon.log(), timeout_s=10)
        assert 0.8 < time.monotonic() - started < 6
        assert healthy(daemon)  # others are served meanwhile and after
        got, reset = 0, False
        try:
            while chunk := sock.recv(1 << 20):
                got += len(chunk)
        except ConnectionResetError:
            reset = True
        assert got < size, "the whole answer arrived: nothing was given up"
    finally:
        sock.close()
    assert reset or got < size
    line = next(x for x in daemon.log().splitlines() if "--write-timeout" in x)
    assert "a client read nothing of its answer for 1s (--write-timeout): connection " \
           "from 127.0.0.1:" in line
    assert daemon.ok("DELETE", "/v1/queues/big/messages") == {"purged": 120}


def test_a_slow_reader_that_keeps_reading_gets_its_whole_answer(daemon: Daemon) -> None:
    piece = "y" * 100_000
    daemon.ok("POST", "/v1/queues/big/messages", {"messages": [{"body": piece}] * 60}, 202)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(10)
        sock.connect(("127.0.0.1", daemon.port))
        sock.sendall(b"GET /v1/queues/big/peek?n=1000 HTTP/1.1\r\nHost: x\r\n"
                     b"Connection: close\r\n\r\n")
        data = bytearray()
        started = time.monotonic()
        while chunk := sock.recv(1 << 20):
            data += chunk
            time.sleep(0.002)  # slow, but never paused for a whole second
    finally:
        sock.close()
    head, _, body = bytes(data).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert len(json.loads(body)["messages"]) == 60
    assert time.monotonic() - started < 30
    assert daemon.ok("DELETE", "/v1/queues/big/messages") == {"purged": 60}


def test_connections_over_the_cap_get_503_and_the_daemon_recovers(daemon: Daemon) -> None:
    held = [connect(daemon) for _ in range(8)]
    try:
        for sock in held:
            sock.sendall(b"GET /heal")  # never finished
        time.sleep(0.2)
        with connect(daemon) as extra:
            extra.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            status, headers, body = answer_of(extra)
        assert status == 503 and headers["retry-after"] == "1"
        assert body == {"error": "the daemon serves at most 8 connections at once "
                                 "(--max-connections); retry later"}
        # the held ones time out (408) and free their places
        for sock in held:
            assert answer_of(sock)[0] == 408
    finally:
        for sock in held:
            sock.close()
    assert conftest.wait_for(lambda: healthy(daemon), timeout_s=5)


@pytest.mark.parametrize("raw,sentence", [
    (b"POST /v1/queues/q/messages HTTP/1.1\r\nHost: x\r\nContent-Encoding: br\r\n"
     b"Content-Length: 2\r\n\r\nxx",
     "the request body could not be read: Content-Encoding 'br' is not supported; send plain, "
     "gzip- or deflate-encoded JSON that matches its Content-Encoding"),
    (b"FROB / HTTP/1.1\r\nHost: x\r\n\r\n", "the request could not be parsed: "),
])
def test_what_the_http_parser_refuses_is_a_json_400(
    daemon: Daemon, raw: bytes, sentence: str
) -> None:
    with connect(daemon) as sock:
        sock.sendall(raw)
        status, headers, body = answer_of(sock)
    assert status == 400 and headers["content-type"] == "application/json"
    assert body["error"].startswith(sentence)


def test_under_a_low_file_limit_the_cap_shrinks_and_nobody_is_locked_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    start_daemon: Callable[..., Daemon],
) -> None:
    """The issue's repro, scaled down: more half-open connections than the file
    limit allows. Before, accept() failed with EMFILE and every client hung."""
    wrapper = tmp_path / "runner-ulimit"
    wrapper.write_text(f'#!/bin/sh\nulimit -n 300\nexec "{conftest.RUNNER}" "$@"\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setattr(conftest, "RUNNER", wrapper)
    d = start_daemon(TOPOLOGY, args=["--header-timeout", "2s"])
    assert "serving at most 44 connections" in d.log()
    held: list[socket.socket] = []
    try:
        for _ in range(60):
            sock = connect(d)
            sock.sendall(b"GET /heal")
            held.append(sock)
        time.sleep(0.3)
        got = d.get("/healthz")  # over the cap: answered at once, not hung
        assert got.status == 503 and got.headers["Retry-After"] == "1"
        started = time.monotonic()
        statuses = [answer_of(sock)[0] for sock in held]
        assert time.monotonic() - started < 6
        # every one is answered: 503 at once over the cap, 408 at the header timeout
        assert set(statuses) == {408, 503}, statuses
        assert statuses.count(503) >= 12 and statuses[:40] == [408] * 40
    finally:
        for sock in held:
            sock.close()
    assert conftest.wait_for(lambda: healthy(d), timeout_s=10)
