"""`runner validate PATH --backend amqp://...` through the real console script."""

from __future__ import annotations

import json
from pathlib import Path

from tests.cli.console import run, write

MAPPABLE = """\
version: 1
exchanges:
  orders: {type: topic}
  dlx: {type: fanout}
queues:
  jobs: {delivery_limit: 3, dead_letter: {exchange: dlx}}
  dead: {}
bindings:
  - {exchange: orders, queue: jobs, routing_key: "#"}
  - {exchange: dlx, queue: dead}
"""

COMPACTED = """\
version: 1
topics:
  users:
    key: id
    cleanup_policy: compact
"""


def test_a_mappable_topology_is_valid_for_the_backend(tmp_path: Path) -> None:
    write(tmp_path / "t.yaml", MAPPABLE)
    done = run(tmp_path, "validate", "t.yaml", "--backend", "amqp://guest:guest@localhost/shop")
    assert done.returncode == 0, done.stdout + done.stderr


def test_what_the_backend_cannot_express_is_an_error_at_its_place(tmp_path: Path) -> None:
    write(tmp_path / "t.yaml", COMPACTED)
    assert run(tmp_path, "validate", "t.yaml").returncode == 0
    done = run(tmp_path, "validate", "t.yaml", "--backend", "amqp://localhost")
    assert done.returncode == 1
    assert done.stdout.splitlines()[0] == (
        "t.yaml:5:21: error: the RabbitMQ backend cannot express topic 'users' cleanup_policy: "
        "RabbitMQ streams have no compaction (a stream only drops whole segments by age or "
        "size) (at topics.users.cleanup_policy)"
    )
    done = run(tmp_path, "validate", "t.yaml", "--backend", "amqp://localhost", "--format", "json")
    problem = json.loads(done.stdout)["problems"][0]
    assert (problem["line"], problem["column"], problem["rule"]) == (5, 21, "backend")


def test_a_bad_backend_url_is_a_usage_error(tmp_path: Path) -> None:
    write(tmp_path / "t.yaml", MAPPABLE)
    done = run(tmp_path, "validate", "t.yaml", "--backend", "rabbit://localhost")
    assert done.returncode == 2
    assert done.stderr == (
        "runner validate: --backend 'rabbit://localhost': the backend must be an amqp:// URL "
        "(amqp://user:pass@host[:port]/vhost)\n"
    )


def test_plan_and_apply_usage_errors_say_what_is_wrong(tmp_path: Path) -> None:
    write(tmp_path / "t.yaml", MAPPABLE)
    write(tmp_path / "bad.yaml", "version: 1\nqueues: {q: {max_priority: 999}}\n")
    cases = [
        (("plan", "t.yaml"), "runner plan: give OLD NEW, or PATH --against amqp://...\n"),
        (("plan", "t.yaml", "t.yaml", "--against", "amqp://localhost"),
         "runner plan: --against takes one PATH (the topology), not OLD NEW\n"),
        (("plan", "t.yaml", "--against", "amqp://h:0x/"),
         "runner plan: --against 'amqp://h:0x/': the port is not a number from 1 to 65535\n"),
        (("plan", "missing.yaml", "--against", "amqp://localhost"),
         "runner plan: missing.yaml: no such file or directory\n"),
        (("apply", "t.yaml", "--backend", "http://localhost"),
         "runner apply: --backend 'http://localhost': the backend must be an amqp:// URL "
         "(amqp://user:pass@host[:port]/vhost)\n"),
    ]
    for argv, stderr in cases:
        done = run(tmp_path, *argv)
        assert (done.returncode, done.stderr) == (2, stderr), argv
    done = run(tmp_path, "apply", "t.yaml", "--backend", "amqp://nohost.invalid/")
    assert done.returncode == 2
    assert done.stderr.startswith(
        "runner apply: the management API at http://nohost.invalid:15672 does not answer (")
    assert done.stderr.endswith("); is the rabbitmq_management plugin enabled?\n")
    done = run(tmp_path, "apply", "bad.yaml", "--backend", "amqp://localhost")
    assert done.returncode == 2
    assert done.stderr.endswith("runner apply: bad.yaml is not a valid topology\n")
