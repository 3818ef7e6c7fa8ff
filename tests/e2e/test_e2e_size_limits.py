"""--max-message-bytes counts what is stored besides the body (issue 17 item 3): a queue
message's headers, a record's key and headers; the exact 413 sentence, nothing stored."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.conftest import Daemon, error_of, module_daemon

pytestmark = pytest.mark.e2e

TOPOLOGY = """\
version: 1
name: e2e-sizes
topics:
  events: {partitions: 1}
exchanges:
  x: {type: fanout}
queues:
  q: {}
bindings:
  - {exchange: x, queue: q}
"""

HINT = ("store the payload elsewhere (a file or object store) and send a reference to it "
        "instead")


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    yield from module_daemon(tmp_path_factory.mktemp("sizes"), TOPOLOGY,
                             args=["--max-message-bytes", "1KiB"])


def ready(d: Daemon, queue: str) -> int:
    listed = d.ok("GET", "/v1/queues")["queues"]
    return int(next(q["ready"] for q in listed if q["name"] == queue))


@pytest.mark.parametrize("path", ["/v1/queues/q/messages", "/v1/exchanges/x/messages"])
def test_a_message_over_the_limit_with_its_headers_is_413(daemon: Daemon, path: str) -> None:
    # body "b" (3 bytes of JSON) + header "h" (1) + its 1,021 bytes of text = 1,025 > 1,024
    big = {"routing_key": "", "body": "b", "headers": {"h": "x" * 1021}}
    assert error_of(daemon, "POST", path, {"messages": [{"routing_key": "", "body": 1}, big]}) == (
        413, "message 1: the message is 1025 bytes with its headers, over the limit of "
             f"1024 bytes (--max-message-bytes); {HINT}")
    assert ready(daemon, "q") == 0  # nothing of the batch was stored
    # a non-text value counts as its JSON text: 3 + 1 + 1014 + 1 + len("[1,2]") = 1,024
    fits = {"routing_key": "", "body": "b", "headers": {"h": "x" * 1014, "n": [1, 2]}}
    assert daemon.post(path, fits).status == 202
    got = daemon.ok("POST", "/v1/queues/q/pull", {"max": 10})["messages"]
    daemon.ok("POST", "/v1/queues/q/ack", {"delivery_ids": [m["delivery_id"] for m in got]})


def test_a_record_over_the_limit_with_its_key_and_headers_is_413(daemon: Daemon) -> None:
    # key 500 + value 502 (the JSON text "v...v") + header "h" 1 + 22 = 1,025 > 1,024
    rec = {"key": "k" * 500, "value": "v" * 500, "headers": {"h": "x" * 22}}
    assert error_of(daemon, "POST", "/v1/topics/events/records", rec) == (
        413, "the record is 1025 bytes with its key and headers, over the limit of 1024 "
             f"bytes (--max-message-bytes); {HINT}")
    keyed = {"key": "k" * 600, "value": "v" * 500}
    assert error_of(daemon, "POST", "/v1/topics/events/records", {"records": [keyed]}) == (
        413, "record 0: the record is 1102 bytes with its key and headers, over the limit "
             f"of 1024 bytes (--max-message-bytes); {HINT}")
    assert daemon.ok("GET", "/v1/topics/events")["records"] == 0
    rec["headers"] = {"h": "x" * 21}
    assert daemon.post("/v1/topics/events/records", rec).status == 202
