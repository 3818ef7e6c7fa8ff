"""The JSON Schema: the shipped file, its help text, and the problems it produces."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from runner.topology import schema
from runner.topology.load import load_text
from runner.topology.source import read_text

ROOT = Path(__file__).resolve().parents[2]
SCHEMA_FILE = ROOT / "schemas" / "topology.schema.json"
PACKAGED = ROOT / "runner" / "topology" / "topology.schema.json"


def _messages(text: str) -> list[tuple[int, int, str, str]]:
    result = load_text(text, filename="t.yaml", env={})
    return [(p.line, p.column, p.path, p.message) for p in result.problems]


def _walk(node: Any, where: str = "#") -> Iterator[tuple[str, dict[str, Any]]]:
    if isinstance(node, dict):
        yield where, node
        for key, value in node.items():
            if key in ("properties", "$defs"):
                for name, sub in value.items():
                    yield from _walk(sub, f"{where}/{key}/{name}")
            elif isinstance(value, (dict, list)):
                yield from _walk(value, f"{where}/{key}")
    elif isinstance(node, list):
        for index, item in enumerate(node):
            yield from _walk(item, f"{where}/{index}")


def test_the_packaged_schema_is_byte_identical_to_schemas_dir() -> None:
    assert PACKAGED.read_bytes() == SCHEMA_FILE.read_bytes()
    assert schema.schema_text().encode() == SCHEMA_FILE.read_bytes()


def test_the_schema_is_valid_draft_2020_12() -> None:
    data = json.loads(SCHEMA_FILE.read_text())
    assert data["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    Draft202012Validator.check_schema(data)


def test_every_property_has_real_help_text() -> None:
    data = json.loads(SCHEMA_FILE.read_text())
    count = 0
    for where, node in _walk(data):
        for name, prop in node.get("properties", {}).items():
            description = prop.get("description", "")
            assert len(description) >= 15, f"{where}/properties/{name} lacks a description"
            count += 1
    assert count >= 60


def test_every_object_forbids_unknown_keys() -> None:
    data = json.loads(SCHEMA_FILE.read_text())
    for where, node in _walk(data):
        if "properties" in node:
            assert node.get("additionalProperties") is False, where


def test_the_validator_is_compiled_once() -> None:
    assert schema.validator() is schema.validator()


@pytest.mark.parametrize("name", ["order-events.yaml", "newsletter.yaml"])
def test_example_topologies_pass_plain_jsonschema(name: str) -> None:
    doc = read_text((ROOT / "topologies" / name).read_text(), file=name, env={}).document
    assert doc is not None
    raw = Draft202012Validator(json.loads(SCHEMA_FILE.read_text()))
    assert list(raw.iter_errors(doc.data)) == []


def test_unknown_keys_suggest_the_close_known_key() -> None:
    assert _messages("version: 1\ntopics:\n  order-events:\n    partitons: 10\n") == [
        (
            4,
            5,
            "topics.order-events.partitons",
            'unknown key "partitons" in topics.order-events; did you mean "partitions"?',
        )
    ]


def test_ranges_enums_and_types_read_as_sentences() -> None:
    text = (
        "version: 1\n"
        "topics:\n"
        "  a: {partitions: 0}\n"
        "  b: {partitions: ten}\n"
        "exchanges:\n"
        "  x: {type: fanot}\n"
    )
    assert [m[3] for m in _messages(text)] == [
        "partitions must be at least 1, got 0",
        'partitions: expected a number, got the string "ten"',
        'type must be one of direct, fanout, topic, headers; got "fanot"; did you mean "fanout"?',
    ]


def test_a_bare_number_duration_suggests_the_unit_form() -> None:
    text = "version: 1\ntopics:\n  t:\n    retention:\n      time: 86400000\n"
    assert _messages(text) == [
        (
            5,
            13,
            "topics.t.retention.time",
            'retention.time must be a duration with a unit, e.g. "24h"; '
            'got the bare number 86400000; did you mean "24h"?',
        )
    ]


def test_one_node_is_reported_once() -> None:
    # a value that fails several keywords / branches is one problem
    text = (
        "version: 1\n"
        "topics:\n"
        "  t: {cleanup_policy: 3, partitions: '7'}\n"
        "dlq_policies:\n"
        "  p: {backoff: true}\n"
        "bindings:\n"
        "  - {exchange: x, queue: a, topic: b, to_exchange: c}\n"
    )
    assert _messages(text) == [
        (
            3,
            23,
            "topics.t.cleanup_policy",
            "cleanup_policy must be delete, compact or a list of them; got the number 3",
        ),
        (
            3,
            38,
            "topics.t.partitions",
            'partitions: expected a number, got the string "7" '
            "(quoted values stay strings; remove the quotes)",
        ),
        (
            5,
            16,
            "dlq_policies.p.backoff",
            "backoff must be a list of durations or a mapping {initial, multiplier, max, jitter}; "
            "got the boolean true",
        ),
        (
            7,
            5,
            "bindings[0]",
            "binding bindings[0] has queue, to_exchange and topic; "
            "give exactly one of queue, to_exchange or topic",
        ),
    ]


def test_unknown_keys_are_reported_at_the_key() -> None:
    assert _messages("version: 1\nqueues:\n  q: {durable: true, ttl: 1h}\n") == [
        (
            3,
            22,
            "queues.q.ttl",
            'unknown key "ttl" in queues.q; known keys: dead_letter, delivery_limit, durable, '
            "max_length, max_length_bytes, max_priority, message_ttl, overflow, publish_rate, "
            "single_active_consumer",
        )
    ]


def test_schema_errors_do_not_hide_build_and_rule_problems() -> None:
    # every tier in one run; the topology stays None, the partial one is kept
    text = (
        "version: 1\nqueues:\n  q: {max_length: -5, dead_letter: {exchange: nowhere}}\n  __q: {}\n"
    )
    assert [m[3] for m in _messages(text)] == [
        "max_length must be at least 0, got -5",
        'dead-letter exchange "nowhere" of queue "q" does not exist',
        'queue name "__q" is reserved: names starting with "__" belong to the engine',
    ]
    result = load_text(text)
    assert result.topology is None
    assert result.partial is not None
    assert [name for name, _ in result.partial.queues] == ["q"]


EDITOR_VIEW = {
    "version": 1,
    "topics": {"t": {"partitions": "${P:-6}", "retention": {"time": "${R:-7d}"}}},
    "queues": {"q": {"durable": "${D}", "max_length_bytes": "${B:-1GiB}"}},
    "dlq_policies": {"p": {"backoff": {"multiplier": "${M:-2}"}}},
}


def test_editors_accept_placeholders_in_number_bool_duration_and_size_fields() -> None:
    # an editor validates the file as written, before substitution
    editor = Draft202012Validator(json.loads(SCHEMA_FILE.read_text()))
    assert list(editor.iter_errors(EDITOR_VIEW)) == []
    wrong = {"version": 1, "topics": {"t": {"partitions": "ten"}}, "queues": {"q": {}}}
    wrong["queues"] = {"q": {"max_priority": "${1P}"}}
    assert len(list(editor.iter_errors(wrong))) == 2


def test_the_loader_still_refuses_a_literal_placeholder_after_substitution() -> None:
    text = (
        "version: 1\ntopics:\n  t:\n    partitions: $${P}\n"
        "queues:\n  q:\n    durable: ${D:-true}\n    message_ttl: ${T:-1h}\n"
    )
    assert _messages(text) == [
        (4, 17, "topics.t.partitions", 'partitions: expected a number, got the string "${P}"'),
    ]
    loaded = load_text(text.replace("$${P}", "${P:-6}"), env={})
    assert loaded.topology is not None
    assert loaded.topology.topic_map()["t"].partitions == 6
    queue = loaded.topology.queue_map()["q"]
    assert (queue.durable, queue.message_ttl_s) == (True, 3600.0)
