"""The shipped schema as editors and third-party validators see it: files before
`${VAR}` substitution, their own titles on nested objects, and a wrong value
reported with the field's own message, not masked by the placeholder branch."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match

from runner.topology.load import load_text

ROOT = Path(__file__).resolve().parents[2]
RAW = json.loads((ROOT / "schemas" / "topology.schema.json").read_text())
THIRD_PARTY = Draft202012Validator(RAW)


def docs_block(doc: str, heading: str) -> str:
    text = (ROOT / "docs" / doc).read_text()
    part = text[text.index(f"## {heading}\n"):]
    match = re.search(r"```yaml\n(.*?)```", part, re.S)
    assert match is not None
    return match.group(1)


def message(document: dict[str, Any]) -> str:
    error = best_match(THIRD_PARTY.iter_errors(document))
    assert error is not None, document
    return error.message


def test_the_environment_variables_example_of_the_docs_is_valid_as_written() -> None:
    document = yaml.safe_load(docs_block("topology.md", "Environment variables"))
    document["version"] = 1
    assert "${REGION:-eu}.jobs" in document["queues"]
    assert list(THIRD_PARTY.iter_errors(document)) == []


def test_placeholders_are_accepted_where_editors_see_them() -> None:
    document = {"version": 1,
                "topics": {"t-${ENV}": {"partitions": "${P:-6}", "retention": {"time": "${T}"}}},
                "queues": {"q": {"durable": "${D}", "max_length": "${N:-10}"}}}
    assert list(THIRD_PARTY.iter_errors(document)) == []


def test_a_wrong_value_reads_as_the_fields_own_message() -> None:
    assert message({"version": 1, "queues": {"q": {"max_length": "lots"}}}) == (
        "'lots' is not of type 'integer'"
    )
    assert message({"version": 1, "queues": {"q": {"max_length": -1}}}) == (
        "-1 is less than the minimum of 0"
    )
    assert message({"version": 1, "queues": {"q": {"durable": "yes"}}}) == (
        "'yes' is not of type 'boolean'"
    )
    ttl = message({"version": 1, "queues": {"q": {"message_ttl": "5 min"}}})
    assert ttl.startswith("'5 min' does not match '^(?:[0-9]+")
    bad_name = message({"version": 1, "queues": {"a b": {}}})
    assert bad_name.startswith("'a b' does not match '^(?!")
    # a broken placeholder is reported as one
    assert message({"version": 1, "queues": {"q": {"max_length": "${N"}}}).startswith(
        "'${N' does not match '^\\\\$\\\\{"
    )


def test_every_nested_object_has_its_own_title() -> None:
    root = RAW["title"]
    untitled = []

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            kind = node.get("type")
            is_object = kind == "object" or (isinstance(kind, list) and "object" in kind)
            titled = node.get("title") not in (None, "", root)
            if path and (is_object or "properties" in node) and not titled:
                untitled.append(path)
            for key, value in node.items():
                walk(value, f"{path}/{key}")
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, f"{path}/{i}")

    walk(RAW, "")
    assert untitled == []
    assert RAW["$defs"]["queue"]["title"] == "queue"


def test_after_substitution_a_literal_placeholder_is_still_refused() -> None:
    result = load_text("version: 1\nqueues:\n  q$${X}: {}\n  r:\n    max_length: $${N}\n",
                       filename="t.yaml", env={})
    messages = [p.message for p in result.problems]
    assert len(messages) == 2, messages
    assert any("q${X}" in m for m in messages) and any("max_length" in m for m in messages)
