"""Hostile and odd requests against the real daemon: each is a 4xx JSON sentence, never a 5xx.

One daemon (with a token and a 256 KiB request limit) is shared by the module.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections.abc import Iterator

import pytest

from tests.e2e.conftest import RUNNER, Daemon, error_of, module_daemon

pytestmark = pytest.mark.e2e

TOKEN = "bad-requests-token"

TOPOLOGY = """\
version: 1
name: e2e-bad
topics:
  events: {partitions: 2}
  compacted: {cleanup_policy: compact}
  keyed: {cleanup_policy: compact, key: order.id}
  small: {max_message_bytes: 100B}
exchanges:
  x: {type: fanout}
queues:
  q: {}
  orders.dlq: {}
bindings:
  - {exchange: x, queue: q}
consumer_groups:
  external: {topic: events}
"""


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    yield from module_daemon(tmp_path_factory.mktemp("bad"), TOPOLOGY, token=TOKEN,
                             args=["--max-request-bytes", "256KiB"])


def nested(depth: int) -> str:
    return "[" * depth + "1" + "]" * depth


DEEP = ("400: the request body nests JSON deeper than 254 levels; flatten the payload or "
        "send it as 'body_b64'/'value_b64' bytes")


@pytest.mark.parametrize("path,template", [
    ("/v1/queues/orders.dlq/messages", '{"body": %s}'),
    ("/v1/queues/orders.dlq/messages", '{"messages": [{"body": %s}]}'),
    ("/v1/exchanges/x/messages", '{"routing_key": "", "body": %s}'),
    ("/v1/topics/events/records", '{"value": %s}'),
    ("/v1/topics/events/records", '{"records": [{"value": 1, "headers": {"h": %s}}]}'),
])
def test_json_nested_too_deep_is_400(daemon: Daemon, path: str, template: str) -> None:
    for depth in (300, 1000):
        raw = template.replace("%s", nested(depth)).encode()
        status, message = error_of(daemon, "POST", path, raw=raw)
        assert f"{status}: {message}" == DEEP


def test_json_nested_just_within_the_limit_is_stored(daemon: Daemon) -> None:
    raw = b'{"body": ' + nested(253).encode() + b"}"
    assert daemon.post("/v1/queues/orders.dlq/messages", raw=raw).status == 202
    got = daemon.ok("POST", "/v1/queues/orders.dlq/pull", {"max": 1})["messages"][0]
    assert json.dumps(got["body"], separators=(",", ":")) == nested(253)
    daemon.ok("POST", "/v1/queues/orders.dlq/ack", {"delivery_ids": [got["delivery_id"]]})


def raw_http(d: Daemon, head: str, body: bytes, *, wait_s: float = 5.0) -> tuple[int, dict[str,
                                                                                      str], bytes]:
    """Send a hand-made request on a socket; the status, headers and body answered."""
    with socket.create_connection(("127.0.0.1", d.port), timeout=wait_s) as sock:
        sock.sendall(head.replace("\n", "\r\n").encode() + b"\r\n" + body)
        data = b""
        started = time.monotonic()
        while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < _length(data):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
            assert time.monotonic() - started < wait_s, data
    head_raw, _, payload = data.partition(b"\r\n\r\n")
    lines = head_raw.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, payload


def _length(data: bytes) -> int:
    for line in data.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


def test_a_bad_content_encoding_is_400(daemon: Daemon) -> None:
    status, message = error_of(daemon, "POST", "/v1/queues/q/messages",
                               raw=b'{"body":1}', headers={"Content-Encoding": "gzip"})
    assert status == 400
    assert message.startswith(
        "the request body could not be read with Content-Encoding 'gzip': ")
    assert message.endswith(
        "; send plain, gzip- or deflate-encoded JSON that matches its Content-Encoding")


def test_a_huge_declared_content_length_is_413_at_once(daemon: Daemon) -> None:
    body = b'{"body":1}'
    head = (f"POST /v1/queues/q/messages HTTP/1.1\nHost: x\nAuthorization: Bearer {TOKEN}\n"
            "Content-Type: application/json\nContent-Length: 99999999999\n")
    started = time.monotonic()
    status, headers, payload = raw_http(daemon, head, body)
    assert time.monotonic() - started < 2.0
    assert status == 413
    assert json.loads(payload)["error"] == (
        "the request body is over the limit of 262144 bytes; send smaller batches, or store "
        "large payloads elsewhere and send a reference")
    assert daemon.get("/healthz").status == 200


def test_the_bearer_scheme_is_case_insensitive(daemon: Daemon) -> None:
    for scheme in ("bearer", "BEARER", "Bearer"):
        got = daemon.get("/v1/status", token=False,
                         headers={"Authorization": f"{scheme} {TOKEN}"})
        assert got.status == 200, scheme
    status, message = error_of(daemon, "GET", "/v1/status", token=False,
                               headers={"Authorization": f"Basic {TOKEN}"})
    assert (status, message) == (
        401, "missing or wrong bearer token (Authorization: Bearer TOKEN)")


def test_reads_at_and_above_the_log_end(daemon: Daemon) -> None:
    daemon.ok("POST", "/v1/topics/events/records",
              {"records": [{"value": 1, "partition": 1}, {"value": 2, "partition": 1}]}, 202)
    end = daemon.ok("GET", "/v1/status")["topics"]
    end = next(t for t in end if t["name"] == "events")["partitions"][1]["log_end_offset"]
    got = daemon.ok("GET", f"/v1/topics/events/partitions/1/records?offset={end}")
    assert got == {"records": [], "next_offset": end}
    got = daemon.request("GET", f"/v1/topics/events/partitions/1/records?offset={end + 1}")
    assert got.status == 416
    assert got.body == {
        "error": f"offset {end + 1} is above the log end offset {end} of topic 'events' "
                 f"partition 1; read from at most {end}",
        "log_start_offset": 0, "log_end_offset": end,
    }


def test_a_seek_above_the_log_end_is_416_naming_it(daemon: Daemon) -> None:
    daemon.ok("POST", "/v1/topics/events/records", {"value": 1, "partition": 0}, 202)
    status = daemon.ok("GET", "/v1/status")["topics"]
    end = next(t for t in status if t["name"] == "events")["partitions"][0]["log_end_offset"]
    got = daemon.post("/v1/groups/external/offsets",
                      {"topic": "events", "partition": 0, "offset": end + 5})
    assert got.status == 416
    assert got.body["error"] == (
        f"offset {end + 5} is above the log end offset {end} of topic 'events' partition 0; "
        f"seek to at most {end}")
    ok = daemon.ok("POST", "/v1/groups/external/offsets",
                   {"topic": "events", "partition": 0, "offset": end})
    assert ok == {"topic": "events", "partition": 0, "offset": end}


def test_pull_rejects_unknown_fields(daemon: Daemon) -> None:
    assert error_of(daemon, "POST", "/v1/queues/q/pull", {"max": 1, "maxx": 5}) == (
        400, "unknown field 'maxx' (known fields: consumer_id, lease, max)")


@pytest.mark.parametrize("literal,shown", [
    ("100000000000000000000000000000", "100000000000000000000000000000"),
    ("18446744073709551615", "18446744073709551615"),
    ("-1", "-1"),
])
def test_delivery_ids_beyond_64_bits_are_named_as_integers(
    daemon: Daemon, literal: str, shown: str
) -> None:
    raw = b'{"delivery_ids": [1, ' + literal.encode() + b"]}"
    for verb in ("ack", "nack"):
        assert error_of(daemon, "POST", f"/v1/queues/q/{verb}", raw=raw) == (
            400, f"'delivery_ids[1]' must be an integer between 0 and {MAX}, got {shown}")


MAX = 2**63 - 1
BIG = "100000000000000000000000000000"  # past 64 bits: orjson alone reads it as a float


@pytest.mark.parametrize("literal", [BIG, str(MAX + 1)])
@pytest.mark.parametrize("method,path,template,sentence", [
    ("POST", "/v1/queues/q/pull", '{"max": %s}', "'max' must be an integer between 1 and 1000"),
    ("POST", "/v1/queues/q/replay", '{"max": %s}',
     "'max' must be an integer between 1 and 10000"),
    ("GET", "/v1/queues/q/peek?n=%s", None,
     "query parameter 'n' must be an integer between 1 and 1000"),
    ("GET", "/v1/topics/events/partitions/0/records?offset=%s", None,
     f"query parameter 'offset' must be an integer between 0 and {MAX}"),
    ("GET", "/v1/topics/events/partitions/0/records?offset=0&limit=%s", None,
     "query parameter 'limit' must be an integer between 1 and 10000"),
    ("POST", "/v1/topics/events/records", '{"value": 1, "partition": %s}',
     f"'partition' must be an integer between 0 and {MAX}"),
    ("POST", "/v1/topics/events/records",
     '{"records": [{"value": 1}, {"value": 1, "partition": %s}]}',
     f"record 1: 'partition' must be an integer between 0 and {MAX}"),
    ("POST", "/v1/exchanges/x/messages", '{"routing_key": "", "body": 1, "priority": %s}',
     "'priority' must be an integer between 0 and 255"),
    ("POST", "/v1/queues/q/messages", '{"messages": [{"body": 1, "priority": %s}]}',
     "message 0: 'priority' must be an integer between 0 and 255"),
    ("POST", "/v1/groups/external/offsets", '{"topic": "events", "partition": %s, "offset": 0}',
     f"'partition' must be an integer between 0 and {MAX}"),
    ("POST", "/v1/groups/external/offsets", '{"topic": "events", "partition": 0, "offset": %s}',
     f"'offset' must be an integer between 0 and {MAX}"),
    ("POST", "/v1/groups/external/offsets", '{"topic": "events", "partition": 0, "timestamp": %s}',
     f"'timestamp' must be an integer between 0 and {MAX}"),
    ("POST", "/v1/groups/external/commit",
     '{"offsets": [{"topic": "events", "partition": 0, "offset": %s}]}',
     f"offsets[0]: 'offset' must be an integer between 0 and {MAX}"),
])
def test_every_integer_field_past_its_range_names_field_range_and_value_as_written(
    daemon: Daemon, method: str, path: str, template: str | None, sentence: str, literal: str
) -> None:
    if template is None:
        got = error_of(daemon, method, path.replace("%s", literal))
    else:
        got = error_of(daemon, method, path, raw=template.replace("%s", literal).encode())
    assert got == (400, f"{sentence}, got {literal}")


@pytest.mark.parametrize("literal", ["1.5", "1e3", '"7"', "true"])
def test_a_non_integer_is_named_as_written(daemon: Daemon, literal: str) -> None:
    raw = f'{{"max": {literal}}}'.encode()
    shown = "1000.0" if literal == "1e3" else literal
    assert error_of(daemon, "POST", "/v1/queues/q/pull", raw=raw) == (
        400, f"'max' must be an integer between 1 and 1000, got {shown}")


def test_a_keyless_record_in_a_batch_on_a_compacted_topic_names_its_index(
    daemon: Daemon
) -> None:
    batch = {"records": [{"key": "k", "value": 1}, {"value": 2}]}
    assert error_of(daemon, "POST", "/v1/topics/compacted/records", batch) == (
        400, "record 1: topic 'compacted' is compacted: every record needs a 'key' or 'key_b64'")
    assert error_of(daemon, "POST", "/v1/topics/compacted/records", {"value": 2}) == (
        400, "topic 'compacted' is compacted: every record needs a 'key' or 'key_b64'")
    # a topic with a `key` path takes the key from the value
    batch = {"records": [{"value": {"order": {"id": "7"}}}, {"value": {"order": {}}}]}
    assert error_of(daemon, "POST", "/v1/topics/keyed/records", batch) == (
        400, "record 1: topic 'keyed' is compacted: every record needs a 'key' or 'key_b64' "
             "(or a value with the field 'order.id')")
    got = daemon.ok("POST", "/v1/topics/keyed/records", {"records": batch["records"][:1]}, 202)
    assert got["offsets"] == [{"partition": 0, "offset": 0}]
    read = daemon.ok("GET", "/v1/topics/keyed/partitions/0/records?offset=0")
    assert read["records"][0]["key"] == "7"


def test_a_batch_over_10000_items_is_413(daemon: Daemon) -> None:
    messages = b'{"messages": [' + b",".join([b'{"body":1}'] * 10_001) + b"]}"
    records = b'{"records": [' + b",".join([b'{"value":1}'] * 10_001) + b"]}"
    assert len(messages) < 262144 and len(records) < 262144
    for path, raw, noun in (("/v1/queues/q/messages", messages, "messages"),
                            ("/v1/topics/events/records", records, "records")):
        assert error_of(daemon, "POST", path, raw=raw) == (
            413, f"the batch holds 10001 {noun}, over the limit of 10000 a request; "
                 "split it into smaller batches")


@pytest.mark.parametrize("args", [
    ["status"],
    ["dlq", "list"],
    ["consume", "--topic", "events", "--partition", "1", "--offset", "0"],
])
def test_a_client_whose_reader_left_exits_quietly(daemon: Daemon, args: list[str]) -> None:
    daemon.ok("POST", "/v1/topics/events/records", {"value": 1, "partition": 1}, 202)
    env = dict(daemon.env, RUNNER_TOKEN=TOKEN)
    with subprocess.Popen([str(RUNNER), *args, "--url", daemon.url], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.close()  # like `| head` that already left: every write is EPIPE
        err = proc.stderr.read().decode()
        assert proc.wait(timeout=60) == 141
    assert err == ""


@pytest.mark.parametrize("method", ["DELETE", "PATCH", "PUT"])
def test_a_method_a_route_does_not_take_is_405_naming_the_allowed(
    daemon: Daemon, method: str
) -> None:
    assert error_of(daemon, method, "/v1/status") == (
        405, f"{method} is not allowed on /v1/status (allowed: GET, HEAD)")
    assert error_of(daemon, method, "/v1/queues/q/pull") == (
        405, f"{method} is not allowed on /v1/queues/q/pull (allowed: POST)")


def test_a_record_over_the_topic_limit_with_its_key_and_headers_names_its_index(
    daemon: Daemon
) -> None:
    # 103 bytes: key 50 + value 42 (the JSON text "v...v") + header "h" 1 + its raw text 10
    batch = {"records": [{"value": "v"}, {"key": "k" * 50, "value": "v" * 40,
                                          "headers": {"h": "x" * 10}}]}
    assert error_of(daemon, "POST", "/v1/topics/small/records", batch) == (
        413, "record 1: the record is 103 bytes with its key and headers, over the topic's "
             "max_message_bytes of 100 bytes; store the payload elsewhere (a file or object "
             "store) and send a reference to it instead")
    status = daemon.ok("GET", "/v1/status")["topics"]
    small = next(t for t in status if t["name"] == "small")
    assert small["partitions"][0]["log_end_offset"] == 0  # nothing of the batch was stored
