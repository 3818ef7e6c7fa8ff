"""The HTTP codec: request bodies to engine inputs, with the exact 400/413 sentences."""

from __future__ import annotations

import base64
import dataclasses

import orjson
import pytest

from runner.daemon import codec
from runner.daemon.codec import BadInput, Limits
from runner.engine.contract import QueueDelivery, Record
from runner.errors import TooLarge

MAX = 2**63 - 1

LIMITS = Limits(max_message_bytes=100)


def one(body: object, default_key: str | None = None) -> codec.OutMessage:
    msgs, batch = codec.messages(body, limits=LIMITS, default_key=default_key)
    assert not batch and len(msgs) == 1
    return msgs[0]


def test_a_json_body_is_stored_as_compact_json_text() -> None:
    msg = one({"routing_key": "a.b", "body": {"x": [1, 2]}, "priority": 3, "ttl": "1m30s"})
    assert msg.body == b'{"x":[1,2]}'
    assert msg.content_type == "application/json"
    assert (msg.routing_key, msg.priority, msg.ttl_s) == ("a.b", 3, 90.0)


def test_body_b64_carries_raw_bytes_without_a_content_type() -> None:
    msg = one({"routing_key": "", "body_b64": base64.b64encode(b"\x00\xff").decode()})
    assert msg.body == b"\x00\xff"
    assert msg.content_type is None


def test_a_queue_message_defaults_its_routing_key_to_the_queue_name() -> None:
    assert one({"body": 1}, default_key="work").routing_key == "work"


def test_a_batch_keeps_request_order() -> None:
    msgs, batch = codec.messages(
        {"messages": [{"routing_key": "a", "body": i} for i in range(3)]},
        limits=LIMITS, default_key=None,
    )
    assert batch and [m.body for m in msgs] == [b"0", b"1", b"2"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ([1], "the request body must be a JSON object, got an array"),
        ({"body": 1}, "missing field 'routing_key' (a string; \"\" is allowed)"),
        ({"routing_key": 5, "body": 1}, "'routing_key' must be a string, got a number"),
        ({"routing_key": "k"},
         "missing field 'body' (any JSON value) or 'body_b64' (base64 bytes)"),
        ({"routing_key": "k", "body": 1, "body_b64": "AA=="},
         "give either 'body' or 'body_b64', not both"),
        ({"routing_key": "k", "body_b64": "%%%"}, "'body_b64' is not valid base64"),
        ({"routing_key": "k", "body": 1, "priority": "high"},
         "'priority' must be an integer between 0 and 255, got \"high\""),
        ({"routing_key": "k", "body": 1, "priority": 256},
         "'priority' must be an integer between 0 and 255, got 256"),
        ({"routing_key": "k", "body": 1, "ttl": 30},
         "'ttl' must be a duration string like \"30s\", got 30"),
        ({"routing_key": "k", "body": 1, "ttl": "30 seconds"},
         "'ttl' must be a duration string like \"30s\" or \"250ms\", got \"30 seconds\""),
        ({"routing_key": "k", "body": 1, "headers": []},
         "'headers' must be a JSON object, got an array"),
        ({"routing_key": "k", "body": 1, "bdy": 2},
         "unknown field 'bdy' (known fields: body, body_b64, correlation_id, headers, "
         "message_id, priority, reply_to, routing_key, ttl)"),
        ({"messages": {}}, "'messages' must be an array of messages, got an object"),
        ({"messages": [{"routing_key": "k", "body": 1}, {"body": 1}]},
         "message 1: missing field 'routing_key' (a string; \"\" is allowed)"),
        ({"messages": [], "extra": 1}, "a batch holds only 'messages'; unexpected field 'extra'"),
    ],
)
def test_malformed_messages_are_refused_with_a_sentence_naming_the_field(
    body: object, message: str
) -> None:
    with pytest.raises(BadInput) as err:
        codec.messages(body, limits=LIMITS, default_key=None)
    assert str(err.value) == message


def test_a_message_over_the_limit_is_too_large_and_suggests_a_reference() -> None:
    with pytest.raises(TooLarge) as err:
        codec.messages({"messages": [{"routing_key": "k", "body": "x" * 200}]},
                       limits=LIMITS, default_key=None)
    assert str(err.value) == (
        "message 0: the payload is 202 bytes, over the limit of 100 bytes "
        "(--max-message-bytes); store the payload elsewhere (a file or object store) and "
        "send a reference to it instead"
    )


def test_a_record_names_the_topic_limit_when_it_is_the_smaller_one() -> None:
    with pytest.raises(TooLarge) as err:
        codec.records({"value": "x" * 60}, limits=LIMITS, topic_limit=50)
    assert "over the limit of 50 bytes (the topic's max_message_bytes)" in str(err.value)


def test_records_keys_values_and_tombstones() -> None:
    recs, batch = codec.records(
        {"records": [{"key": "k1", "value": {"a": 1}, "partition": 2},
                     {"key": "k1", "value": None}]},
        limits=LIMITS, topic_limit=1000,
    )
    assert batch
    assert (recs[0].key, recs[0].value, recs[0].partition) == (b"k1", b'{"a":1}', 2)
    assert recs[1].value is None


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"key": 1, "value": 1}, "'key' must be a string, got a number"),
        ({"key": "k"}, "missing field 'value' (any JSON value) or 'value_b64' (base64 bytes)"),
        ({"value": 1, "partition": -1},
         f"'partition' must be an integer between 0 and {MAX}, got -1"),
        ({"value": 1, "partition": True},
         f"'partition' must be an integer between 0 and {MAX}, got true"),
        ({"records": [{"value": 1}, 7]}, "record 1 must be a JSON object, got a number"),
    ],
)
def test_malformed_records_are_refused(body: object, message: str) -> None:
    with pytest.raises(BadInput) as err:
        codec.records(body, limits=LIMITS, topic_limit=1000)
    assert str(err.value) == message


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"", "the request body is empty; send a JSON object"),
        (b"{nope", "the request body is not valid JSON: "),
    ],
)
def test_undecodable_bodies(raw: bytes, message: str) -> None:
    with pytest.raises(BadInput) as err:
        codec.decode_json(raw)
    assert str(err.value).startswith(message)


def test_durations() -> None:
    assert codec.parse_duration("250ms", "lease") == 0.25
    assert codec.parse_duration("1h30m", "lease") == 5400.0
    with pytest.raises(BadInput):
        codec.parse_duration("5x", "lease")


def test_delivery_ids_must_be_integers() -> None:
    with pytest.raises(BadInput) as err:
        codec.delivery_ids({"delivery_ids": [1, "2"]})
    assert str(err.value) == f"'delivery_ids[1]' must be an integer between 0 and {MAX}, got \"2\""
    with pytest.raises(BadInput) as err:
        codec.delivery_ids({})
    assert str(err.value) == "missing field 'delivery_ids' (an array of integers)"


def test_query_integers() -> None:
    assert codec.query_int({"n": "5"}, "n", default=10, low=1, high=1000) == 5
    with pytest.raises(BadInput) as err:
        codec.query_int({"n": "many"}, "n", default=10)
    assert str(err.value) == (
        f"query parameter 'n' must be an integer between 0 and {MAX}, got \"many\"")
    with pytest.raises(BadInput) as err:
        codec.query_int({}, "offset", default=None)
    assert str(err.value) == "query parameter 'offset' is required (an integer)"


def test_answers_give_json_bodies_back_as_json_and_raw_bytes_as_base64() -> None:
    def delivery(body: bytes, ct: str | None) -> QueueDelivery:
        return QueueDelivery("q", 7, body, {"h": "v"}, "k", "x", 2, False, 1, "m1", 5, ct)

    as_json = orjson.loads(orjson.dumps(
        codec.delivery_json(delivery(b'{"a":1}', "application/json"))))
    assert as_json["body"] == {"a": 1} and "body_b64" not in as_json
    assert as_json["delivery_id"] == 7 and as_json["delivery_count"] == 1
    as_raw = orjson.loads(orjson.dumps(codec.delivery_json(delivery(b"\x00{", None))))
    assert as_raw["body_b64"] == base64.b64encode(b"\x00{").decode() and "body" not in as_raw
    rec = codec.record_json(Record("t", 0, 3, 99, b"k", b"[1]", {}))
    assert orjson.loads(orjson.dumps(rec)) == {
        "offset": 3, "key": "k", "value": [1], "headers": {}, "timestamp": 99, "partition": 0
    }
    assert codec.record_json(Record("t", 0, 4, 99, None, None, {}))["value"] is None


def test_the_fast_path_and_the_full_validation_agree() -> None:
    items = [
        {"routing_key": "k", "body": {"a": 1}, "priority": 3, "headers": {"h": 1},
         "message_id": "m"},
        {"routing_key": "k", "body": None},
    ]
    for item in items:
        fast = codec._fast_message(item, LIMITS, None)
        assert fast is not None
        full = codec.message(dict(item, ttl="1s"), index=None, limits=LIMITS, default_key=None)
        assert fast == dataclasses.replace(full, ttl_s=None)
    assert codec._fast_message({"routing_key": "k", "body": "x" * 200}, LIMITS, None) is None
    assert codec._fast_message({"routing_key": "k", "body": 1, "priority": True}, LIMITS,
                               None) is None


def test_nesting_is_limited_to_what_can_be_written_back() -> None:
    deepest = b"[" * codec.MAX_DEPTH + b"]" * codec.MAX_DEPTH
    assert orjson.dumps(codec.decode_json(b'{"b": 1, "x": ' + deepest[2:-2] + b"}"))
    for raw in (b"[" * 255 + b"]" * 255, b'{"messages": [{"body": ' + deepest + b"}]}"):
        with pytest.raises(codec.BadInput) as err:
            codec.decode_json(raw)
        assert str(err.value) == (
            "the request body nests JSON deeper than 254 levels; flatten the payload or "
            "send it as 'body_b64'/'value_b64' bytes")


def test_integers_past_64_bits_decode_exactly_and_others_as_usual() -> None:
    raw = b'{"a": 100000000000000000001, "b": -9223372036854775809, "c": 1.5, "d": "12345"}'
    assert codec.decode_json(raw) == {
        "a": 100000000000000000001, "b": -9223372036854775809, "c": 1.5, "d": "12345"}
    with pytest.raises(BadInput) as err:
        codec.int_field(codec.decode_json(b'{"max": 99999999999999999999}'), "max", high=1000)
    assert str(err.value) == "'max' must be an integer between 0 and 1000, got 99999999999999999999"
