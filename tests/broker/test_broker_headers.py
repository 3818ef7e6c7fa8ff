"""Header values come back exactly as published: in memory, after a restart, through steps."""

from __future__ import annotations

import datetime
import enum
from pathlib import Path
from typing import Any

import pytest

from runner.broker.headers import decode_headers, encode_headers
from runner.broker.message import Message
from runner.broker.routing import Route
from runner.clock import ManualClock
from runner.errors import InvalidRequest
from runner.topology.model import Binding, DeadLetter, Exchange, ExchangeType, Queue
from tests.broker.conftest import MakeBroker

HEADERS: dict[str, Any] = {
    "bin": b"\x00\x01\xff", "t": (1, 2), "l": [1, "a", None], "s": "text", "i": 7,
    "f": 1.5, "yes": True, "none": None,
    "nested": {"b": b"x", "t": (b"y", (3,)), "deep": {"k": [b"z"]}},
    "tag-like": {"$b64": "not base64 at all!", "$tuple": 1},  # user keys that look like tags
    "int-keys": {1: "one", (2, 3): "pair", b"k": "bytes key"},
}

TOPO = (
    [Exchange("hx", ExchangeType.HEADERS), Exchange("dlx", ExchangeType.FANOUT)],
    [Queue("dq", dead_letter=DeadLetter("dlx")), Queue("mem", durable=False), Queue("dlq")],
    [Binding("hx", queue="dq", headers=(("s", "text"),)), Binding("dlx", queue="dlq")],
)


def _same(got: Any, want: Any) -> None:
    assert got == want
    assert type(got) is type(want), (got, want)
    if isinstance(want, dict):
        for k in want:
            _same(got[k], want[k])
    elif isinstance(want, list | tuple):
        for a, b in zip(got, want, strict=True):
            _same(a, b)


def test_codec_round_trips_types_exactly() -> None:
    headers, extra = decode_headers(encode_headers(HEADERS, ["q1", "q2"]))
    _same(headers, HEADERS)
    assert extra == ["q1", "q2"]
    assert decode_headers(b'{"a":"plain","n":[1,2]}') == ({"a": "plain", "n": [1, 2]}, None)


def test_durable_headers_are_the_same_before_and_after_restart(make_broker: MakeBroker) -> None:
    b = make_broker(*TOPO)
    b.publish("hx", [Message(b"m", headers=dict(HEADERS), message_id="id-1")])
    b.publish_to_queue("mem", [Message(b"m", headers=dict(HEADERS))])
    before = b.peek("dq", 1)[0].headers
    _same(dict(before), HEADERS)
    _same(dict(b.pull("mem", 1, consumer_id="c")[0].headers), HEADERS)
    b.close()
    b = make_broker(*TOPO)
    _same(dict(b.peek("dq", 1)[0].headers), HEADERS)
    _same(dict(b.pull("dq", 1, consumer_id="c")[0].headers), HEADERS)


def test_dead_letter_keeps_byte_headers_across_restart(make_broker: MakeBroker) -> None:
    b = make_broker(*TOPO)
    b.publish_to_queue("dq", [Message(b"m", headers={"bin": b"\x00", "t": (1,)})])
    d = b.pull("dq", 1, consumer_id="c")[0]
    b.nack("dq", [d.delivery_id], requeue=False)
    b.close()
    b = make_broker(*TOPO)
    letter = b.peek("dlq", 1)[0].headers
    _same((letter["bin"], letter["t"]), (b"\x00", (1,)))
    assert letter["x-dead-letter"]["reason"] == "rejected"
    assert b.replay("dlq").replayed == 1
    _same(dict(b.peek("dq", 1)[0].headers), {"bin": b"\x00", "t": (1,), "x-replay-count": 1})


class Color(enum.Enum):
    RED = 1


@pytest.mark.parametrize(("value", "type_name"), [
    (datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC), "datetime"),
    ({"a": {1, 2}}, "set"),
    ([bytearray(b"x")], "bytearray"),
    (Color.RED, "Color"),
])
def test_values_that_cannot_come_back_are_refused_before_anything_is_stored(
    make_broker: MakeBroker, value: Any, type_name: str,
) -> None:
    b = make_broker(*TOPO)
    msgs = [Message(b"ok-1"), Message(b"ok-2", headers={"fine": b"x"}),
            Message(b"bad", headers={"fine": 1, "h": value})]
    want = (f"message 2: header 'h': a value of type {type_name} cannot be stored "
            "(allowed: str, int, float, bool, None, bytes, list, tuple or dict)")
    for publish in (lambda: b.publish_to_queue("mem", msgs),
                    lambda: b.publish_to_queue("dq", msgs),
                    lambda: b.check_publish([], [("dq", msgs)])):
        with pytest.raises(InvalidRequest) as exc:
            publish()
        assert str(exc.value) == want
    assert b.queue_info("mem").ready == 0 and b.queue_info("dq").ready == 0


def test_non_string_header_name_is_refused(make_broker: MakeBroker) -> None:
    b = make_broker(*TOPO)
    with pytest.raises(InvalidRequest) as exc:
        b.publish_to_queue("dq", [Message(b"x", headers={1: "v"})])  # type: ignore[dict-item]
    assert str(exc.value) == "message 0: header name 1 is a int: header names are strings"


def test_caller_death_dict_that_cannot_be_stored_is_refused(
    make_broker: MakeBroker, tmp_path: Path, clock: ManualClock,
) -> None:
    b = make_broker(*TOPO)
    b.publish_to_queue("dq", [Message(b"x")])
    d = b.pull("dq", 1, consumer_id="c")[0]
    with pytest.raises(InvalidRequest) as exc:
        b.dead_letter("dq", d.delivery_id, reason="handler_error",
                      death={"error": {"when": clock}})
    assert str(exc.value) == (
        "header 'x-dead-letter': a value of type ManualClock cannot be stored "
        "(allowed: str, int, float, bool, None, bytes, list, tuple or dict)")
    assert b.queue_info("dq").unacked == 1  # nothing settled


def test_bad_header_after_runs_of_other_keys_still_stores_nothing(make_broker: MakeBroker) -> None:
    b = make_broker(*TOPO)
    msgs = [Message(b"a", "k1"), Message(b"b", "k2"), Message(b"c", "k2"),
            Message(b"d", "k3", headers={"h": frozenset({1})})]
    with pytest.raises(InvalidRequest) as exc:
        b.publish("dlx", msgs)
    assert str(exc.value) == (
        "message 3: header 'h': a value of type frozenset cannot be stored "
        "(allowed: str, int, float, bool, None, bytes, list, tuple or dict)")
    assert b.queue_info("dlq").ready == 0
    assert b.publish("dlx", msgs[:3]) == [Route(("dlq",), ())] * 3  # the good ones pass
