"""The fast lane of single publishes (runner.daemon.fastlane) against the real daemon.

The lane must be invisible but for its speed: every request it serves gets the
answer the aiohttp route gives, every request it declines is served by the route
from the same bytes, and it follows HTTP/1.1 as the route does (a request split over
reads, pipelined requests, keep-alive, timeouts, tokens). Each case is sent on a
fresh connection (the lane's) and on one that aiohttp already serves (a GET first),
and the two answers are compared; `runner_http_fast_lane_requests_total` tells which
side served it.
"""

from __future__ import annotations

import gzip
import json
import re
import socket
import time
from collections.abc import Iterator

import pytest

from tests.e2e.conftest import Daemon, module_daemon

pytestmark = pytest.mark.e2e

TOPOLOGY = """\
version: 1
name: e2e-fast-lane
exchanges:
  direct-x: {type: direct}
  fan: {type: fanout}
queues:
  orders: {durable: true}
  full: {durable: true, max_length: 1, overflow: reject-publish}
  other: {}
bindings:
  - {exchange: direct-x, queue: orders, routing_key: o}
  - {exchange: fan, queue: orders}
  - {exchange: fan, queue: other}
topics:
  events: {partitions: 4}
  latest: {partitions: 1, cleanup_policy: [compact]}
  lagging: {partitions: 1}
  keyed: {partitions: 1, cleanup_policy: [compact], key: id}
  rated: {partitions: 1, publish_rate: 100/s}
  small: {partitions: 1, max_message_bytes: 100}
consumer_groups:
  slow: {topic: lagging, max_lag: 1}
"""

FAST = ["--header-timeout", "1s", "--body-timeout", "1s", "--idle-timeout", "2s",
        "--max-message-bytes", "1024"]


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    yield from module_daemon(tmp_path_factory.mktemp("lane"), TOPOLOGY, args=FAST)


@pytest.fixture(autouse=True)
def empty_queues(daemon: Daemon) -> None:
    """Each test starts with the shared daemon's queues empty (a failed test's
    leftovers do not fail the next)."""
    for queue in ("orders", "other", "full"):
        while drain(daemon, queue):
            pass


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    yield from module_daemon(tmp_path_factory.mktemp("lane-token"), TOPOLOGY,
                             args=FAST, token="s3cret-token")


def request(path: str, body: bytes, *headers: str, version: str = "1.1",
            host: bool = True) -> bytes:
    head = [f"POST {path} HTTP/{version}", *(["Host: x"] if host else []),
            "Content-Type: application/json", f"Content-Length: {len(body)}", *headers]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def publish(body: object, queue: str = "orders", *headers: str) -> bytes:
    return request(f"/v1/queues/{queue}/messages", json.dumps(body).encode(), *headers)


def to_exchange(body: object, exchange: str) -> bytes:
    return request(f"/v1/exchanges/{exchange}/messages", json.dumps(body).encode())


class Conn:
    """One keep-alive connection speaking raw HTTP/1.1."""

    def __init__(self, d: Daemon) -> None:
        self.sock = socket.create_connection(("127.0.0.1", d.port), timeout=10)
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def answer(self) -> tuple[int, dict[str, str], bytes]:
        """The next answer: status, headers (lower-case names, in their order) and body."""
        while b"\r\n\r\n" not in self.buf:
            self._more()
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
        length = int(headers.get("content-length", "0"))
        while len(self.buf) < length:
            self._more()
        body, self.buf = self.buf[:length], self.buf[length:]
        return int(lines[0].split()[1]), headers, body

    def closed(self) -> bool:
        """Whether the daemon closed the connection (waiting for it up to the timeout)."""
        try:
            return self.sock.recv(65536) == b""
        except ConnectionResetError:
            return True

    def _more(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise AssertionError(f"connection closed with {self.buf!r} unread")
        self.buf += chunk

    def close(self) -> None:
        self.sock.close()


def on_aiohttp(d: Daemon) -> Conn:
    """A connection the full HTTP stack serves (its first request was not a publish)."""
    conn = Conn(d)
    conn.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert conn.answer()[0] == 200
    return conn


def lane_counts(d: Daemon) -> tuple[int, int]:
    text = d.metrics()
    served = re.search(r'^runner_http_fast_lane_requests_total\{result="served"\} (\S+)$',
                       text, re.M)
    declined = re.search(
        r'^runner_http_fast_lane_requests_total\{result="declined"\} (\S+)$', text, re.M)
    assert served and declined, text
    return int(float(served.group(1))), int(float(declined.group(1)))


Seen = tuple[int, list[tuple[str, str]], bytes]


def both(d: Daemon, data: bytes) -> tuple[Seen, Seen]:
    """The answer on a fresh connection and on an aiohttp one: status, headers in
    their order (Date's value left out) and body."""
    answers = []
    for conn in (Conn(d), on_aiohttp(d)):
        conn.send(data)
        answers.append(seen(conn))
        conn.close()
    return answers[0], answers[1]


def seen(conn: Conn) -> Seen:
    """The next answer on `conn` as `both` compares it."""
    status, headers, body = conn.answer()
    return status, [(k, "-" if k == "date" else v) for k, v in headers.items()], body


def drain(d: Daemon, queue: str) -> list[object]:
    return d.drain(queue)


SERVED = [
    ("one message", publish({"body": {"b": "x"}})),
    ("a batch", publish({"messages": [{"body": i} for i in range(3)]})),
    ("keep-alive said", publish({"body": "k"}, "orders", "Connection: keep-alive")),
    ("a routing key and headers", publish(
        {"body": "h", "routing_key": "rk", "headers": {"a": "1"}, "priority": 3})),
    ("to a direct exchange", to_exchange({"body": "d", "routing_key": "o"}, "direct-x")),
    ("to a fanout exchange", to_exchange(
        {"messages": [{"body": 1, "routing_key": ""}, {"body": 2, "routing_key": "z"}]}, "fan")),
    ("routed nowhere", to_exchange({"body": "nowhere", "routing_key": "x"}, "direct-x")),
]

DECLINED: list[tuple[str, bytes] | tuple[str, bytes, bool]] = [
    ("bad JSON", request("/v1/queues/orders/messages", b'{"body": ')),
    ("not an object", request("/v1/queues/orders/messages", b"[1, 2]")),
    ("an empty body", request("/v1/queues/orders/messages", b"")),
    ("an unknown field", publish({"body": 1, "colour": "red"})),
    ("an unknown queue", publish({"body": 1}, "ordres")),
    ("a message over --max-message-bytes", publish({"body": "x" * 2000})),
    ("an empty batch", publish({"messages": []})),
    ("a batch too big to merge", publish({"messages": [{"body": i} for i in range(101)]})),
    ("a query string", request("/v1/queues/orders/messages?x=1", b'{"body": "q"}')),
    ("a trailing slash", request("/v1/queues/orders/messages/", b'{"body": "q"}'), False),
    ("percent-encoded", request("/v1/queues/%6Frders/messages", b'{"body": "p"}')),
    ("Connection: close", publish({"body": "c"}, "orders", "Connection: close")),
    ("gzip", request("/v1/queues/orders/messages", gzip.compress(b'{"body": "z"}'),
                     "Content-Encoding: gzip")),
    ("HTTP/1.0", request("/v1/queues/orders/messages", b'{"body": "o"}', version="1.0")),
    ("traceparent", publish({"body": "t"}, "orders",
                            "traceparent: 00-0af7651916cd43dd8448eb211c80319c-"
                            "b7ad6b7169203331-01")),
    ("a private reply address", publish({"body": "r"}, "runner.reply-to.nobody")),
    ("an unknown exchange", to_exchange({"body": 1, "routing_key": "o"}, "direct-y")),
    ("no routing key to an exchange", to_exchange({"body": 1}, "direct-x")),
    ("over 100 copies", to_exchange(
        {"messages": [{"body": i, "routing_key": ""} for i in range(51)]}, "fan")),
    # what aiohttp's parser refuses (a 400) though llhttp alone lets it through
    ("no Host", request("/v1/queues/orders/messages", b'{"body": 1}', host=False)),
    ("two Hosts", publish({"body": 1}, "orders", "Host: y")),
    ("two Content-Types", publish({"body": 1}, "orders", "Content-Type: text/plain")),
    ("130 headers", publish({"body": 1}, "orders", *[f"X-{i}: {i}" for i in range(127)])),
    ("a header line over 8190 bytes", publish({"body": 1}, "orders", "X-Long: " + "y" * 9000)),
    ("Sec-WebSocket-Key1", publish({"body": 1}, "orders", "Sec-WebSocket-Key1: x")),
]


@pytest.mark.parametrize("data", [c[1] for c in SERVED], ids=[c[0] for c in SERVED])
def test_a_publish_the_lane_serves_is_answered_as_the_route_answers_it(
    daemon: Daemon, data: bytes,
) -> None:
    before = lane_counts(daemon)
    lane, route = both(daemon, data)
    served, declined = lane_counts(daemon)
    assert (served - before[0], declined - before[1]) == (1, 0)
    assert lane == route and lane[0] == 202, (lane, route)
    assert [k for k, _ in lane[1]] == ["content-type", "content-length", "date", "server"]
    sent = json.loads(data.partition(b"\r\n\r\n")[2])
    copies = 2 if b"/exchanges/fan/" in data else 1  # fan: orders and other
    assert len(drain(daemon, "orders")) + len(drain(daemon, "other")) == (
        2 * copies * len(sent.get("messages", [None])) if b"nowhere" not in data else 0)


@pytest.mark.parametrize("case", DECLINED, ids=[c[0] for c in DECLINED])
def test_a_request_the_lane_declines_is_answered_by_the_route(
    daemon: Daemon, case: tuple[str, bytes] | tuple[str, bytes, bool],
) -> None:
    """Counted as declined unless it is no publish at all (another path)."""
    data = case[1]
    before = lane_counts(daemon)
    lane, route = both(daemon, data)
    served, declined = lane_counts(daemon)
    assert (served - before[0], declined - before[1]) == (0, int(case[-1] is not False))
    assert lane == route, (lane, route)
    drain(daemon, "orders")
    drain(daemon, "other")


def test_a_publish_refused_after_the_lane_took_it_is_answered_as_the_route_answers_it(
    daemon: Daemon,
) -> None:
    """A full queue (reject-publish): the lane stores, the engine refuses: 429, with
    the route's sentence and Retry-After."""
    daemon.ok("POST", "/v1/queues/full/messages", {"body": "first"}, status=202)
    before = lane_counts(daemon)
    lane, route = both(daemon, publish({"body": "second"}, "full"))
    assert lane_counts(daemon)[0] - before[0] == 1
    assert lane == route and lane[0] == 429, (lane, route)
    assert "retry-after" in dict(lane[1]) and json.loads(lane[2])["accepted"] == 0
    assert drain(daemon, "full") == ["first"]


def test_a_publish_split_over_reads_is_served_by_the_lane(daemon: Daemon) -> None:
    data = publish({"body": "split"})
    head, _, body = data.partition(b"\r\n\r\n")
    before = lane_counts(daemon)
    conn = Conn(daemon)
    for piece in (head[:20], head[20:] + b"\r\n\r\n", body[:5], body[5:]):
        conn.send(piece)
        time.sleep(0.15)  # each piece its own read
    status, _, answer = conn.answer()
    assert (status, json.loads(answer)) == (202, {"routed": ["orders"]})
    conn.send(publish({"body": "again"}))  # and the connection goes on
    assert conn.answer()[0] == 202
    conn.close()
    assert lane_counts(daemon)[0] - before[0] == 2
    assert drain(daemon, "orders") == ["split", "again"]


def test_a_split_publish_the_lane_then_declines_is_served_whole_by_the_route(
    daemon: Daemon,
) -> None:
    """The header passes, the body (in a later read) does not: the route gets the
    whole request, header included, and answers its 400."""
    data = request("/v1/queues/orders/messages", b'{"body": "a", "colour": 1}')
    head, _, body = data.partition(b"\r\n\r\n")
    conn = Conn(daemon)
    conn.send(head + b"\r\n\r\n")
    time.sleep(0.2)
    conn.send(body)
    status, _, answer = conn.answer()
    assert status == 400 and "colour" in json.loads(answer)["error"]
    conn.send(publish({"body": "after"}))  # served by aiohttp from now on
    assert conn.answer()[0] == 202
    conn.close()
    assert drain(daemon, "orders") == ["after"]


def test_pipelined_publishes_are_answered_in_order(daemon: Daemon) -> None:
    conn = Conn(daemon)
    conn.send(publish({"body": 1}) + publish({"body": 2}))  # one read: the route's
    conn.send(publish({"body": 3}))
    conn.send(publish({"body": 4}))
    answers = [conn.answer() for _ in range(4)]
    assert [a[0] for a in answers] == [202] * 4
    conn.close()
    assert drain(daemon, "orders") == [1, 2, 3, 4]


def test_a_request_sent_while_the_lane_serves_one_waits_its_turn(daemon: Daemon) -> None:
    """The second request arrives while the first waits for its fsync: the answers
    come back in order (the second's may be the route's or the lane's)."""
    conn = Conn(daemon)
    for round_ in range(20):
        conn.send(publish({"body": f"a{round_}"}))
        conn.send(request("/v1/queues/orders/messages", b'{"body": 1, "bad": 2}')
                  if round_ == 19 else publish({"body": f"b{round_}"}))
        first, second = conn.answer(), conn.answer()
        assert first[0] == 202, first
        assert second[0] == (400 if round_ == 19 else 202), second
    conn.close()
    bodies = drain(daemon, "orders")
    assert bodies == [x for r in range(20) for x in (f"a{r}", f"b{r}")][:-1]


def test_a_lane_connection_is_closed_after_the_idle_timeout(daemon: Daemon) -> None:
    conn = Conn(daemon)
    conn.send(publish({"body": "idle"}))
    assert conn.answer()[0] == 202
    started = time.monotonic()
    assert conn.closed()
    assert 1.5 < time.monotonic() - started < 5
    conn.close()
    drain(daemon, "orders")


def test_a_partial_publish_header_gets_the_header_timeouts_408(daemon: Daemon) -> None:
    conn = Conn(daemon)
    conn.send(b"POST /v1/queues/orders/messages HTTP/1.1\r\nHost: x\r\n")
    started = time.monotonic()
    status, headers, body = conn.answer()
    assert 0.8 < time.monotonic() - started < 4
    assert status == 408 and headers["connection"] == "close"
    assert json.loads(body) == {
        "error": "the request header did not arrive within 1s (--header-timeout)"}
    assert conn.closed()
    conn.close()


def test_the_lane_checks_the_bearer_token(guarded: Daemon) -> None:
    before = lane_counts(guarded)
    right = publish({"body": "t"}, "orders", "Authorization: Bearer s3cret-token")
    lane, route = both(guarded, right)
    assert lane == route and lane[0] == 202
    assert lane_counts(guarded)[0] - before[0] == 1
    for auth in ("Authorization: Bearer wrong", "Authorization: Basic s3cret-token",
                 "X-Nothing: 1"):
        before = lane_counts(guarded)
        lane, route = both(guarded, publish({"body": "w"}, "orders", auth))
        assert lane == route and lane[0] == 401, (auth, lane)
        assert lane_counts(guarded)[1] - before[1] == 1
    got = guarded.ok("POST", "/v1/queues/orders/pull", {"max": 10})["messages"]
    assert [m["body"] for m in got] == ["t", "t"]


def test_the_lane_metric_is_there_from_the_first_scrape(
    start_daemon: object,
) -> None:
    d = start_daemon(TOPOLOGY)  # type: ignore[operator]
    assert lane_counts(d) == (0, 0)


def test_a_stalled_body_gets_the_routes_408(daemon: Daemon) -> None:
    data = publish({"body": "never finished"})
    answers = []
    for conn in (Conn(daemon), on_aiohttp(daemon)):
        conn.send(data[:-3])
        answers.append(seen(conn))
        assert conn.closed()
        conn.close()
    assert answers[0] == answers[1] and answers[0][0] == 408, answers
    assert drain(daemon, "orders") == []


def test_the_idle_timeout_survives_a_request_that_straddles_it(daemon: Daemon) -> None:
    """The idle timer fires while the lane holds part of a request: it is armed again
    once the request is answered (the connection does not stay open for ever)."""
    conn = Conn(daemon)
    time.sleep(1.7)
    data = publish({"body": "late"})
    conn.send(data[:-3])
    time.sleep(0.6)  # the idle timeout (2s) passes now
    conn.send(data[-3:])
    assert conn.answer()[0] == 202
    started = time.monotonic()
    assert conn.closed()
    assert 1.5 < time.monotonic() - started < 5
    conn.close()
    assert drain(daemon, "orders") == ["late"]


def test_a_header_the_lane_declines_half_way_keeps_its_first_bytes_time(
    daemon: Daemon,
) -> None:
    conn = Conn(daemon)
    started = time.monotonic()
    conn.send(b"POST /v1/queues/orders/messages HTTP/1.1\r\nHost: x\r\n")
    time.sleep(0.6)
    conn.send(b"Expect: x\r\nX")  # declined: aiohttp takes the half header
    status, _, _ = conn.answer()
    assert status == 408 and time.monotonic() - started < 1.5
    conn.close()


def test_requests_to_other_routes_are_not_counted(daemon: Daemon) -> None:
    before = lane_counts(daemon)
    conn = Conn(daemon)
    conn.send(request("/v1/queues/orders/pull", b'{"max": 1}'))
    assert conn.answer()[0] == 200
    conn.close()
    assert lane_counts(daemon) == before


# ------------------------------------------------------------------ topic appends


def append(body: object, topic: str = "events", *headers: str) -> bytes:
    return request(f"/v1/topics/{topic}/records", json.dumps(body).encode(), *headers)


APPENDS = [
    ("one record", append({"value": {"b": "x"}})),
    ("a batch", append({"records": [{"value": i} for i in range(3)]})),
    ("a key and headers", append({"key": "k1", "value": "v", "headers": {"h": "1"}})),
    ("to a partition", append({"value": "p", "partition": 3})),
    ("bytes", append({"value_b64": "AAEC", "key_b64": "/w=="})),
    ("a keyed record to a compacted topic", append({"key": "k", "value": 1}, "latest")),
    ("a key from the value (the topic's key path)", append({"value": {"id": "a"}}, "keyed")),
    ("reply_to and correlation_id", append({"value": 1, "reply_to": "q",
                                            "correlation_id": "c"})),
    ("tagged headers", append({"value": 1, "headers": {"b": {"$b64": "AAE="}}})),
    ("a timestamp", append({"value": 1, "timestamp": 1700000000000})),
]

DECLINED_APPENDS: list[tuple[str, bytes] | tuple[str, bytes, bool]] = [
    ("an unknown topic", append({"value": 1}, "evnets")),
    ("a partition that does not exist", append({"value": 1, "partition": 4})),
    ("a keyless record to a compacted topic", append({"value": 1}, "latest")),
    ("a record over --max-message-bytes", append({"value": "x" * 2000})),
    ("an unknown field", append({"value": 1, "colour": "red"})),
    ("bad JSON", request("/v1/topics/events/records", b'{"value": ')),
    ("an empty batch", append({"records": []})),
    ("a batch too big to merge", append({"records": [{"value": i} for i in range(101)]})),
    ("a query string", request("/v1/topics/events/records?x=1", b'{"value": 1}')),
    ("no such route", request("/v1/topics/events/messages", b'{"value": 1}'), False),
    ("traceparent", append({"value": 1}, "events",
                           "traceparent: 00-0af7651916cd43dd8448eb211c80319c-"
                           "b7ad6b7169203331-01")),
    ("no key in the value for a compacted topic's key path",
     append({"value": {"x": 1}}, "keyed")),
    ("a record over the topic's max_message_bytes", append({"value": "x" * 200}, "small")),
    ("a key and value over the topic's max_message_bytes",
     append({"key": "k" * 90, "value": "x" * 20}, "small")),
    ("a bad reply_to", append({"value": 1, "reply_to": ""})),
    ("a topic with a publish_rate", append({"value": 1}, "rated")),
    ("a topic replay", request("/v1/topics/events/replay", b'{"max": 1}'), False),
]


def stored(d: Daemon, topic: str, offsets: list[dict[str, int]]) -> list[object]:
    """The records (value, key and headers) at these offsets of `topic`."""
    out = []
    for at in offsets:
        got = d.ok("GET", f"/v1/topics/{topic}/partitions/{at['partition']}/records"
                          f"?offset={at['offset']}&limit=1")["records"][0]
        assert got["offset"] == at["offset"]
        out.append({k: got.get(k) for k in ("value", "value_b64", "key", "key_b64",
                                            "headers")})
    return out


def topic_records(d: Daemon, topic: str) -> int | None:
    """How many records `topic` holds (None: no such topic)."""
    got = d.get(f"/v1/topics/{topic}")
    return got.body["records"] if got.status == 200 else None


def without_offsets(answer: Seen) -> Seen:
    """An append's answer with its offsets (and the length they give) left out: the
    lane's and the route's records land at different offsets."""
    status, headers, body = answer
    offsets = json.loads(body)["offsets"]
    parts = json.dumps([o["partition"] for o in offsets]).encode()
    return status, [(k, "-" if k == "content-length" else v) for k, v in headers], parts


@pytest.mark.parametrize("data", [c[1] for c in APPENDS], ids=[c[0] for c in APPENDS])
def test_an_append_the_lane_serves_is_answered_as_the_route_answers_it(
    daemon: Daemon, data: bytes,
) -> None:
    """Same status, headers and partitions (a record without one goes where the
    route's would: by its key, else round robin is the topic's, so compared only
    when given); each answer's offsets hold the records sent."""
    topic = re.search(rb"/v1/topics/([^/]+)/", data).group(1).decode()  # type: ignore[union-attr]
    before = lane_counts(daemon)
    lane, route = both(daemon, data)
    served, declined = lane_counts(daemon)
    assert (served - before[0], declined - before[1]) == (1, 0)
    assert lane[0] == route[0] == 202, (lane, route)
    assert [k for k, _ in lane[1]] == ["content-type", "content-length", "date", "server"]
    sent = json.loads(data.partition(b"\r\n\r\n")[2])
    if b'"key' in data or b'"partition' in data:
        assert without_offsets(lane) == without_offsets(route), (lane, route)
    else:
        assert without_offsets(lane)[:2] == without_offsets(route)[:2], (lane, route)
    records = sent.get("records", [sent])
    lane_offsets = json.loads(lane[2])["offsets"]
    route_offsets = json.loads(route[2])["offsets"]
    assert len(lane_offsets) == len(route_offsets) == len(records)
    assert stored(daemon, topic, lane_offsets) == stored(daemon, topic, route_offsets)
    got = stored(daemon, topic, lane_offsets)
    field = "value" if "value" in records[0] else "value_b64"
    assert [g[field] for g in got] == [r[field] for r in records]


@pytest.mark.parametrize("case", DECLINED_APPENDS, ids=[c[0] for c in DECLINED_APPENDS])
def test_an_append_the_lane_declines_is_answered_by_the_route(
    daemon: Daemon, case: tuple[str, bytes] | tuple[str, bytes, bool],
) -> None:
    data = case[1]
    topic = re.search(rb"/v1/topics/([^/?]+)", data).group(1).decode()  # type: ignore[union-attr]
    records = topic_records(daemon, topic)
    before = lane_counts(daemon)
    lane, route = both(daemon, data)
    served, declined = lane_counts(daemon)
    assert (served - before[0], declined - before[1]) == (0, int(case[-1] is not False))
    if lane[0] != 202:  # refused: the same answer, nothing stored
        assert lane == route, (lane, route)
        assert topic_records(daemon, topic) == records
        return
    # taken by the route both times (its records land at different offsets)
    assert without_offsets(lane)[:2] == without_offsets(route)[:2], (lane, route)
    sent = len(json.loads(lane[2])["offsets"])
    assert sent == len(json.loads(route[2])["offsets"])
    assert topic_records(daemon, topic) == records + 2 * sent  # type: ignore[operator]


def test_an_append_a_lagging_group_refuses_is_answered_by_the_route(daemon: Daemon) -> None:
    """`max_lag` 1: once the group lags 2 records, the lane leaves the append to the
    route, which refuses it (429, Retry-After) and stores nothing."""
    daemon.ok("POST", "/v1/topics/lagging/records",
              {"records": [{"value": "a"}, {"value": "b"}]}, 202)
    before = lane_counts(daemon)
    lane, route = both(daemon, append({"value": "c"}, "lagging"))
    assert lane_counts(daemon)[1] - before[1] == 1
    assert lane == route and lane[0] == 429, (lane, route)
    assert "retry-after" in dict(lane[1])
    assert "consumer group 'slow' lags 2 records" in json.loads(lane[2])["error"]
    assert daemon.ok("GET", "/v1/topics/lagging")["records"] == 2


def test_the_lane_checks_the_bearer_token_of_an_append(guarded: Daemon) -> None:
    right = append({"value": "t"}, "events", "Authorization: Bearer s3cret-token")
    before = lane_counts(guarded)
    lane, route = both(guarded, right)
    assert lane[0] == route[0] == 202, (lane, route)
    assert lane_counts(guarded)[0] - before[0] == 1
    before = lane_counts(guarded)
    lane, route = both(guarded, append({"value": "w"}, "events", "Authorization: Bearer no"))
    assert lane == route and lane[0] == 401, lane
    assert lane_counts(guarded)[1] - before[1] == 1
    assert guarded.ok("GET", "/v1/topics/events")["records"] == 2
