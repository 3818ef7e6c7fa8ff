"""`runner schema`, `runner plan` and `runner graph` through the real console script."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import yaml

from tests.cli.console import run, write

OLD = """\
version: 1
topics:
  events: {partitions: 4, cleanup_policy: compact}
exchanges:
  orders: {type: topic}
  dlx: {type: fanout}
queues:
  email_queue:
    message_ttl: 24h
    max_length_bytes: 1GiB
    dead_letter: {exchange: dlx}
  old_jobs: {dead_letter: {exchange: dlx}}
  dead: {}
bindings:
  - {exchange: orders, queue: email_queue, routing_key: "orders.#"}
  - {exchange: dlx, queue: dead}
"""

SAFE_NEW = """\
version: 1
topics:
  events: {partitions: 8, cleanup_policy: compact}
exchanges:
  orders: {type: topic}
  dlx: {type: fanout}
queues:
  email_queue:
    message_ttl: 1h
    max_length_bytes: 512MiB
    dead_letter: {exchange: dlx}
  old_jobs: {dead_letter: {exchange: dlx}}
  dead: {}
  audit: {}
bindings:
  - {exchange: orders, queue: email_queue, routing_key: "orders.*"}
  - {exchange: dlx, queue: dead}
"""

UNSAFE_NEW = """\
version: 1
topics:
  events: {partitions: 2, cleanup_policy: delete}
exchanges:
  orders: {type: direct}
  dlx: {type: fanout}
queues:
  email_queue:
    message_ttl: 24h
    max_length_bytes: 1GiB
    dead_letter: {exchange: dlx}
  dead: {}
bindings:
  - {exchange: orders, queue: email_queue, routing_key: "orders.#"}
  - {exchange: dlx, queue: dead}
"""


# ---------------------------------------------------------------- schema


def test_schema_prints_a_valid_2020_12_json_schema(tmp_path: Path) -> None:
    done = run(tmp_path, "schema")
    assert done.returncode == 0 and done.stderr == ""
    schema = json.loads(done.stdout)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    assert validator.is_valid(yaml.safe_load(OLD))
    assert not validator.is_valid({"version": 1, "queues": {"q": {"max_priorty": 3}}})


# ---------------------------------------------------------------- plan


def test_plan_of_safe_changes_exits_0_in_human_units(tmp_path: Path) -> None:
    write(tmp_path / "old.yaml", OLD)
    write(tmp_path / "new.yaml", SAFE_NEW)
    done = run(tmp_path, "plan", "old.yaml", "new.yaml")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "~ topic events: partitions 4 -> 8  (keys may move to another partition)",
        "+ queue audit",
        "~ queue email_queue: message_ttl 24h -> 1h",
        "~ queue email_queue: max_length_bytes 1GiB -> 512MiB",
        '- binding orders -> queue email_queue key "orders.#"',
        '+ binding orders -> queue email_queue key "orders.*"',
        "2 to add, 3 to change, 1 to remove; all safe",
    ]


def test_plan_marks_unsafe_changes_and_exits_1(tmp_path: Path) -> None:
    write(tmp_path / "old.yaml", OLD)
    write(tmp_path / "new.yaml", UNSAFE_NEW)
    done = run(tmp_path, "plan", "old.yaml", "new.yaml")
    assert done.returncode == 1, done.stderr
    # each unsafe change is followed by its indented migration recipe (test_cli_plan_recipes)
    assert [ln for ln in done.stdout.splitlines() if not ln.startswith("    ")] == [
        "~ topic events: partitions 4 -> 2  ! UNSAFE: fewer partitions (4 -> 2): "
        "a topic can only grow",
        "~ topic events: cleanup_policy [compact] -> [delete]  ! UNSAFE: cleanup_policy from "
        "compact to delete would drop the latest value per key",
        "~ exchange orders: type topic -> direct  ! UNSAFE: an exchange's type cannot change; "
        "declare a new exchange",
        "- queue old_jobs  ! UNSAFE: removing a queue loses the messages it may hold",
        "0 to add, 3 to change, 1 to remove; 4 unsafe: a reload would be refused",
    ]


def test_plan_json(tmp_path: Path) -> None:
    write(tmp_path / "old.yaml", OLD)
    write(tmp_path / "new.yaml", UNSAFE_NEW)
    done = run(tmp_path, "plan", "--format", "json", "old.yaml", "new.yaml")
    assert done.returncode == 1
    data = json.loads(done.stdout)
    assert data["safe"] is False
    first = dict(data["changes"][0])
    assert first.pop("recipe")["new_name"] == "events.v2"  # see test_cli_plan_recipes
    assert first == {
        "kind": "changed",
        "entity": "topic",
        "name": "events",
        "field": "partitions",
        "old": 4,
        "new": 2,
        "safe": False,
        "safety": "unsafe",
        "reason": "fewer partitions (4 -> 2): a topic can only grow",
    }
    removed = data["changes"][3]
    assert (removed["kind"], removed["entity"], removed["name"], removed["new"]) == (
        "removed",
        "queue",
        "old_jobs",
        None,
    )
    assert removed["old"]["dead_letter"] == {"exchange": "dlx", "routing_key": None}


def test_plan_of_identical_topologies(tmp_path: Path) -> None:
    write(tmp_path / "old.yaml", OLD)
    done = run(tmp_path, "plan", "old.yaml", "old.yaml")
    assert (done.returncode, done.stdout) == (0, "no changes\n")


def test_plan_with_an_invalid_side_is_a_usage_error(tmp_path: Path) -> None:
    write(tmp_path / "old.yaml", OLD)
    write(tmp_path / "new.yaml", "version: 1\nqueues:\n  q: {dead_letter: {exchange: nope}}\n")
    done = run(tmp_path, "plan", "old.yaml", "new.yaml")
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.splitlines() == [
        'new.yaml:3:31: error: dead-letter exchange "nope" of queue "q" does not exist '
        "(at queues.q.dead_letter.exchange)",
        "runner plan: new.yaml is not a valid topology",
    ]
    missing = run(tmp_path, "plan", "old.yaml", "gone.yaml")
    assert missing.returncode == 2
    assert missing.stderr == "runner plan: gone.yaml: no such file or directory\n"


# ---------------------------------------------------------------- graph


def test_graph_mermaid_by_default_and_dot_on_request(tmp_path: Path) -> None:
    write(tmp_path / "old.yaml", OLD)
    mermaid = run(tmp_path, "graph", "old.yaml")
    assert mermaid.returncode == 0
    lines = mermaid.stdout.splitlines()
    assert lines[0] == "flowchart LR"
    assert '    ex_orders -->|"orders.#35;"| q_email_queue' in lines
    # both queues dead-letter into dlx: their edges meet in one junction first
    assert '    q_email_queue -.-> j_ex_dlx' in lines
    assert '    j_ex_dlx(("dead letter"))' in lines
    unmerged = run(tmp_path, "graph", "--no-merge", "old.yaml").stdout.splitlines()
    assert '    q_email_queue -.->|"dead letter"| ex_dlx' in unmerged
    dot = run(tmp_path, "graph", "--format", "dot", "old.yaml")
    assert dot.returncode == 0
    assert dot.stdout.startswith('digraph "topology" {\n    rankdir=LR;\n')
    assert '    q_old_jobs -> j_ex_dlx [style=dashed];' in dot.stdout
    assert '    j_ex_dlx -> ex_dlx [label="dead letter", style=dashed];' in dot.stdout


def test_graph_of_an_invalid_topology_exits_1_with_problems(tmp_path: Path) -> None:
    write(tmp_path / "bad.yaml", "version: 1\nqueues:\n  q: {dead_letter: {exchange: nope}}\n")
    done = run(tmp_path, "graph", "bad.yaml")
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr == (
        'bad.yaml:3:31: error: dead-letter exchange "nope" of queue "q" does not exist '
        "(at queues.q.dead_letter.exchange)\n"
    )
    assert run(tmp_path, "graph", "nope.yaml").returncode == 2
