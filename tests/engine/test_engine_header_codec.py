"""One header codec: a header value written on a topic record reads back exactly
as the same value does on a queue message (issue 8, one owner per rule)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from runner.engine import Engine, FsyncPolicy, OutMessage, OutRecord
from runner.topology.model import Queue, Topic, Topology

HEADERS: dict[str, Any] = {
    "bin": b"123", "text-bytes": b"abc", "raw": b"\xff\x00", "str-digits": "123",
    "int": 123, "float": 1.5, "bool": True, "none": None, "big": 2**70,
    "tuple": (1, b"x"), "list": [1, "a"], "dollar-dict": {"$b64": "not bytes"},
    "nested": {"a": [b"x", {"b": None}]}, "json-text": '{"a": 1}',
}


def test_topic_records_and_queue_messages_round_trip_headers_alike(tmp_path: Path) -> None:
    topo = Topology(topics=(("t", Topic("t")),), queues=(("q", Queue("q")),))
    e = Engine.open(topo, tmp_path, fsync=FsyncPolicy.NEVER)
    try:
        e.publish_to_queue("q", [OutMessage(b"m", headers=dict(HEADERS))])
        e.append("t", [OutRecord(b"v", headers=dict(HEADERS))])
        queued = dict(e.peek("q", 1)[0].headers)
        recs, _ = e.read("t", 0, 0)
        recorded = dict(recs[0].headers)
    finally:
        e.close()
    assert queued == HEADERS
    assert recorded == HEADERS
    assert type(recorded["bin"]) is bytes and type(recorded["tuple"]) is tuple


def test_null_kafka_header_values_are_stored_and_read_back_as_null() -> None:
    from runner.engine import (
        HEADER_TYPES,
        decode_headers,
        encode_headers,
        kafka_headers,
        raw_headers,
    )

    produced = [("a", None), ("b", b"\xff"), ("c", b"")]
    stored = raw_headers(produced)
    assert stored == (("a", b""), ("b", b"\xff"), ("c", b""), (HEADER_TYPES, b"nrr"))
    assert list(kafka_headers(stored)) == produced
    assert decode_headers(stored) == {"a": None, "b": b"\xff", "c": ""}  # msg.headers
    # without a null the stored form is as before (an empty HEADER_TYPES)
    assert raw_headers([("b", b"x")]) == (("b", b"x"), (HEADER_TYPES, b""))
    # None from HTTP or a handler is a null value for Kafka consumers too
    mine = encode_headers({"n": None, "s": "x"})
    assert list(kafka_headers(mine)) == [("n", None), ("s", b"x")]
    assert decode_headers(mine) == {"n": None, "s": "x"}
