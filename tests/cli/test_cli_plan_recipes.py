"""Migration recipes in `runner plan`: printed for every unsafe change, and applied step by
step with `runner plan` between the steps, every step is a safe change (the removal of a
drained queue is safe once it is empty, which a reload checks and an offline plan cannot)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from runner.topology.diff import diff
from runner.topology.load import load
from tests.cli.console import run, write

OLD = """\
version: 1
topics:
  events: {partitions: 8, cleanup_policy: compact}
exchanges:
  orders: {type: topic}
  dlx: {type: fanout}
  audit: {type: fanout}
  front: {type: fanout}
queues:
  email: {max_priority: 10, message_ttl: 24h, dead_letter: {exchange: dlx}}
  dead: {}
  trail: {}
bindings:
  - {exchange: orders, queue: email, routing_key: "orders.#"}
  - {exchange: orders, topic: events, routing_key: "orders.*"}
  - {exchange: orders, to_exchange: audit, routing_key: "#"}
  - {exchange: front, to_exchange: orders}
  - {exchange: audit, queue: trail}
  - {exchange: dlx, queue: dead}
dlq_policies:
  std: {max_retries: 2, dead_letter_queue: dead}
  to-events: {dead_letter_queue: events}
consumers:
  senders: {queue: email, handler: "m:f", dlq_policy: std, concurrency: 2}
consumer_groups:
  readers: {topic: events, handler: "m:g", dlq_policy: std}
"""

CASES = {
    "queue max_priority": ("max_priority: 10", "max_priority: 5", "queue", "email"),
    "exchange type": ("orders: {type: topic}", "orders: {type: direct}", "exchange", "orders"),
    "fewer partitions": ("partitions: 8, cleanup_policy: compact",
                         "partitions: 4, cleanup_policy: compact", "topic", "events"),
    "compact to delete": ("partitions: 8, cleanup_policy: compact", "partitions: 8",
                          "topic", "events"),
    "queue durable": ("email: {max_priority: 10", "email: {durable: false, max_priority: 10",
                      "queue", "email"),
    "exchange durable": ("orders: {type: topic}", "orders: {type: topic, durable: false}",
                         "exchange", "orders"),
}


def _apply(doc: dict[str, Any], step: dict[str, Any]) -> dict[str, Any]:
    """What a person does with a step: edit the sections, add and delete bindings."""
    out = json.loads(json.dumps(doc))
    for section, entities in step["set"].items():
        current = out.setdefault(section, {})
        for name, entity in entities.items():
            if entity is None:
                del current[name]
            else:
                current[name] = entity
    out["bindings"] = [b for b in out["bindings"] if b not in step["remove_bindings"]]
    out["bindings"] += step["add_bindings"]
    return out


@pytest.mark.parametrize("case", sorted(CASES))
def test_recipe_steps_are_safe_one_by_one(tmp_path: Path, case: str) -> None:
    before, after, entity, name = CASES[case]
    old = write(tmp_path / "old.yaml", OLD)
    new = write(tmp_path / "new.yaml", OLD.replace(before, after))
    planned = run(tmp_path, "plan", "old.yaml", "new.yaml", "--format", "json")
    assert planned.returncode == 1, planned.stderr
    changes = json.loads(planned.stdout)["changes"]
    (unsafe,) = [c for c in changes if c["safety"] == "unsafe"]
    assert (unsafe["entity"], unsafe["name"], unsafe["kind"]) == (entity, name, "changed")
    assert all(c["recipe"] is None for c in changes if c["safety"] == "safe")
    recipe = unsafe["recipe"]
    assert recipe["new_name"] == f"{name}.v2"

    doc = yaml.safe_load(old.read_text())
    previous = old
    for i, step in enumerate(recipe["steps"], 1):
        doc = _apply(doc, step)
        current = write(tmp_path / f"step{i}.yaml", yaml.safe_dump(doc, sort_keys=False))
        result = run(tmp_path, "plan", previous.name, current.name)
        if step["safety"] == "safe":
            assert result.returncode == 0, f"step {i} ({step['title']}):\n{result.stdout}"
            assert result.stdout.endswith("all safe\n") or result.stdout == "no changes\n"
        else:  # removing the drained queue/topic: only that, safe once empty
            assert result.returncode == 1
            assert result.stdout.splitlines()[0].startswith(f"- {entity} {name}  ! UNSAFE")
            a, b = load(str(previous)).topology, load(str(current)).topology
            assert a is not None and b is not None
            plan = diff(a, b, is_empty=lambda kind, n: (kind, n) == (entity, name))
            assert not plan.unsafe
        previous = current
    assert run(tmp_path, "validate", previous.name).returncode == 0
    final = load(str(previous)).topology
    wanted = load(str(new)).topology
    assert final is not None and wanted is not None
    # the entity now lives under its new name with the new settings
    getter = {"queue": "queue_map", "exchange": "exchange_map", "topic": "topic_map"}[entity]
    moved = getattr(final, getter)()[f"{name}.v2"]
    intended = getattr(wanted, getter)()[name]
    assert moved == intended.__class__(**{**_fields(intended), "name": f"{name}.v2"})


def _fields(value: Any) -> dict[str, Any]:
    import dataclasses

    return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}


def test_text_plan_prints_the_recipe_after_the_unsafe_change(tmp_path: Path) -> None:
    write(tmp_path / "old.yaml", OLD)
    write(tmp_path / "new.yaml", OLD.replace("max_priority: 10", "max_priority: 5"))
    result = run(tmp_path, "plan", "old.yaml", "new.yaml")
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert lines[:9] == [
        "~ queue email: max_priority 10 -> 5  ! UNSAFE: a queue's max_priority cannot change; "
        "declare a new queue",
        "    safe migration (queue email becomes email.v2), one reload per step:",
        "    1. declare queue email.v2 with the new settings",
        "       add or change:",
        "         queues:",
        "           email.v2:",
        "             max_priority: 5",
        "             message_ttl: 24h",
        "             dead_letter: {exchange: dlx}",
    ]
    out = result.stdout
    assert "    3. move the consumers to email.v2; a temporary copy drains email" in out
    assert "           senders.drain: {queue: email, handler: 'm:f', concurrency: 2, " \
           "dlq_policy: std}" in out
    assert "    4. remove email and the draining consumers  [safe once empty]" in out
    assert lines[-1] == "0 to add, 1 to change, 0 to remove; 1 unsafe: a reload would be refused"


def test_two_unsafe_changes_of_one_topic_share_one_recipe(tmp_path: Path) -> None:
    write(tmp_path / "old.yaml", OLD)
    write(tmp_path / "new.yaml", OLD.replace("partitions: 8, cleanup_policy: compact",
                                             "partitions: 4"))
    result = run(tmp_path, "plan", "old.yaml", "new.yaml")
    assert result.returncode == 1
    assert result.stdout.count("safe migration (topic events becomes events.v2)") == 1
    assert "    (the migration above for topic events covers this change)" in result.stdout


def test_removing_a_queue_that_may_hold_messages_gets_a_drain_recipe(tmp_path: Path) -> None:
    write(tmp_path / "old.yaml", OLD)
    new = OLD.replace("  trail: {}\n", "").replace("  - {exchange: audit, queue: trail}\n", "")
    write(tmp_path / "new.yaml", new)
    result = run(tmp_path, "plan", "old.yaml", "new.yaml", "--format", "json")
    assert result.returncode == 1
    (unsafe,) = [c for c in json.loads(result.stdout)["changes"] if c["safety"] == "unsafe"]
    steps = unsafe["recipe"]["steps"]
    assert [s["title"] for s in steps] == ["stop routing to trail", "remove trail"]
    assert steps[0]["remove_bindings"] == [{"exchange": "audit", "queue": "trail"}]
    assert steps[0]["wait"].startswith("queue trail is empty")
    assert steps[1]["safety"] == "safe once empty"


def test_removing_a_topic_applied_step_by_step(tmp_path: Path) -> None:
    old_text = """\
        version: 1
        topics: {events: {partitions: 2}, kept: {}}
        exchanges: {orders: {type: topic}}
        bindings:
          - {exchange: orders, topic: events, routing_key: "orders.#"}
          - {exchange: orders, topic: kept, routing_key: "#"}
        """
    write(tmp_path / "old.yaml", old_text)
    write(tmp_path / "new.yaml", old_text.replace("events: {partitions: 2}, ", "").replace(
        '          - {exchange: orders, topic: events, routing_key: "orders.#"}\n', ""))
    planned = run(tmp_path, "plan", "old.yaml", "new.yaml", "--format", "json")
    assert planned.returncode == 1
    (unsafe,) = [c for c in json.loads(planned.stdout)["changes"] if c["safety"] == "unsafe"]
    steps = unsafe["recipe"]["steps"]
    assert [s["title"] for s in steps] == ["stop writing to events", "remove events"]
    doc = yaml.safe_load((tmp_path / "old.yaml").read_text())
    first = write(tmp_path / "step1.yaml", yaml.safe_dump(_apply(doc, steps[0])))
    result = run(tmp_path, "plan", "old.yaml", "step1.yaml")
    assert result.returncode == 0, result.stdout  # only the binding goes: safe
    second = write(tmp_path / "step2.yaml", yaml.safe_dump(_apply(_apply(doc, steps[0]),
                                                                  steps[1])))
    result = run(tmp_path, "plan", "step1.yaml", "step2.yaml")
    assert result.returncode == 1  # refused while it holds records
    assert result.stdout.splitlines()[0].startswith("- topic events  ! UNSAFE")
    a, b = load(str(first)).topology, load(str(second)).topology
    assert a is not None and b is not None
    assert not diff(a, b, is_empty=lambda kind, n: (kind, n) == ("topic", "events")).unsafe
    assert run(tmp_path, "plan", "step2.yaml", "new.yaml").stdout == "no changes\n"
