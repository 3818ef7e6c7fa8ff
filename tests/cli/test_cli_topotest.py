"""`runner test` through the real console script: passing, failing, every format, usage."""

from __future__ import annotations

import json
from pathlib import Path

from tests.cli.console import run, write

REPO = Path(__file__).resolve().parents[2]

TOPOLOGY = """\
version: 1
exchanges:
  orders: {type: topic}
  dlx: {type: fanout}
queues:
  work: {dead_letter: {exchange: dlx}}
  parked: {message_ttl: 1h, dead_letter: {exchange: dlx}}
  dead: {}
  out: {}
bindings:
  - {exchange: orders, queue: work, routing_key: "orders.*"}
  - {exchange: orders, queue: parked, routing_key: "parked.#"}
  - {exchange: dlx, queue: dead}
dlq_policies:
  fast:
    max_retries: 2
    backoff: [2s, 10s]
    dead_letter_queue: dead
    no_retry_on: [KeyError]
consumers:
  workers:
    queue: work
    handler: shop_handlers:forward
    dlq_policy: fast
"""

HANDLERS = """\
def forward(msg, ctx):
    if msg.body.get("explode"):
        raise KeyError("no such item")
    ctx.publish(msg.body.get("to", "orders"), "done.x", {"seen": msg.body["id"]})
"""


def _project(tmp_path: Path, tests: str, *, topology: str = TOPOLOGY) -> Path:
    write(tmp_path / "shop.yaml", topology)
    write(tmp_path / "shop_handlers.py", HANDLERS)
    return write(tmp_path / "shop_test.yaml", tests)


PASSING = """\
version: 1
tests:
  - name: routed and forwarded
    publish: {exchange: orders, routing_key: orders.created, body: {id: 1}}
    expect:
      routed: [work]
      calls: {workers: 1}
      published: [{exchange: orders, routing_key: done.x, body: {seen: 1}}]
      queues: {work: 0, dead: 0}
  - name: retried twice, then dead-lettered after 2s + 10s
    publish: {exchange: orders, routing_key: orders.created, body: {id: 2}}
    fail: {workers: {times: 3, error: ConnectionError}}
    expect:
      calls: {workers: 3}
      dead_letter: {queue: dead, reason: handler_error, error_type: ConnectionError,
                    retry_count: 2, original_queue: work, after: 12s}
  - name: no_retry_on goes straight to the DLQ
    publish: {exchange: orders, routing_key: orders.created, body: {id: 3, explode: true}}
    expect:
      calls: {workers: 1}
      dead_letter: {queue: dead, error_type: KeyError, retry_count: 0}
  - name: a message nobody reads expires into the dead-letter queue
    publish: {exchange: orders, routing_key: parked.a.b, body: {id: 4}}
    expect:
      routed: [parked]
      queues:
        parked: 0
        dead:
          - body: {id: 4}
            dead_letter: {reason: expired, original_queue: parked}
"""


def test_passing_cases_exit_0_with_a_line_each(tmp_path: Path) -> None:
    _project(tmp_path, PASSING)
    result = run(tmp_path, "test", "shop_test.yaml")
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "shop_test.yaml::routed and forwarded PASSED"
    assert lines[3] == ("shop_test.yaml::a message nobody reads expires into the dead-letter "
                        "queue PASSED")
    assert "4 passed in " in lines[-1]


def test_a_wrong_expectation_fails_with_exit_1_and_says_what_differs(tmp_path: Path) -> None:
    _project(tmp_path, """\
        version: 1
        tests:
          - name: wrong queue
            publish: {exchange: orders, routing_key: orders.created, body: {id: 1}}
            expect: {routed: [parked], calls: {workers: 2}}
          - name: right
            publish: {exchange: orders, routing_key: orders.created, body: {id: 1}}
            expect: {routed: [work]}
        """)
    result = run(tmp_path, "test", ".")
    assert result.returncode == 1, result.stdout + result.stderr
    out = result.stdout
    assert "shop_test.yaml::wrong queue FAILED" in out
    assert "shop_test.yaml::right PASSED" in out
    assert '- routed to ["work"], expected ["parked"]' in out
    assert "- workers was called 1 time(s), expected 2" in out
    assert out.splitlines()[-1].strip("= ").startswith("1 failed, 1 passed in ")


def test_a_handler_publishing_to_an_undeclared_exchange_fails_the_case(tmp_path: Path) -> None:
    _project(tmp_path, """\
        version: 1
        tests:
          - name: forwards to payments
            publish: {exchange: orders, routing_key: orders.created, body: {id: 1, to: payments}}
            expect: {routed: [work], calls: {workers: 3}}
        """)
    result = run(tmp_path, "test", "shop_test.yaml")
    assert result.returncode == 1, result.stdout + result.stderr
    assert ("- workers: the engine refused the handler's outputs: exchange 'payments' "
            "not found") in result.stdout


def test_an_unexpected_handler_error_fails_the_case(tmp_path: Path) -> None:
    _project(tmp_path, """\
        version: 1
        tests:
          - name: explodes
            publish: {exchange: orders, routing_key: orders.x, body: {id: 1, explode: true}}
            expect: {calls: {workers: 1}}
        """)
    result = run(tmp_path, "test", "shop_test.yaml")
    assert result.returncode == 1
    assert "- workers: unexpected handler error KeyError: 'no such item'" in result.stdout


def test_wrong_dead_letter_and_contents_expectations_fail(tmp_path: Path) -> None:
    _project(tmp_path, """\
        version: 1
        tests:
          - name: wrong fields
            publish: {exchange: orders, routing_key: orders.x, body: {id: 1}}
            fail: {workers: 3}
            expect:
              dead_letter: {queue: dead, retry_count: 5, after: 1s}
              queues: {dead: [{body: {id: 2}}]}
        """)
    result = run(tmp_path, "test", "shop_test.yaml")
    assert result.returncode == 1
    out = result.stdout
    assert "- dead letter in queue dead: x-dead-letter retry_count is 2, expected 5" in out
    assert "- dead letter in queue dead: dead-lettered after 12s, expected after 1s" in out
    assert '- queue dead message 1: body is {"id": 1}, expected {"id": 2}' in out


def test_json_format(tmp_path: Path) -> None:
    _project(tmp_path, PASSING)
    result = run(tmp_path, "test", "shop_test.yaml", "--format", "json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["passed"] is True
    assert doc["summary"] == {"passed": 4, "failed": 0, "errors": 0, "files": 1}
    second = doc["cases"][1]
    assert second["name"] == "retried twice, then dead-lettered after 2s + 10s"
    assert second["outcome"] == "passed"
    assert second["line"] == 10
    assert second["calls"] == 3
    assert second["simulated_seconds"] == 12.0


def test_github_format_annotates_the_failed_case(tmp_path: Path) -> None:
    _project(tmp_path, """\
        version: 1
        tests:
          - name: wrong, queue
            publish: {exchange: orders, routing_key: orders.created, body: {id: 1}}
            expect: {routed: [parked]}
        """)
    result = run(tmp_path, "test", "shop_test.yaml", "--format", "github")
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert lines[0] == ('::error file=shop_test.yaml,line=3,title=wrong%2C queue failed::'
                        'routed to ["work"], expected ["parked"]')
    assert lines[-1].startswith("1 failed in ")


def test_an_invalid_test_file_is_reported_at_its_line(tmp_path: Path) -> None:
    _project(tmp_path, """\
        version: 1
        tests:
          - name: typo
            publish: {exchange: orders, routing_key: orders.created}
            expect: {routd: [work]}
        """)
    result = run(tmp_path, "test", "shop_test.yaml")
    assert result.returncode == 1
    assert ('shop_test.yaml:5:14: error: unknown key "routd"; did you mean "routed"? '
            "(at tests[0].expect.routd)") in result.stdout


def test_a_case_that_cannot_run_is_an_error(tmp_path: Path) -> None:
    _project(tmp_path, """\
        version: 1
        tests:
          - name: unknown exchange
            publish: {exchange: nope, routing_key: x}
            expect: {routed: []}
          - name: unknown worker
            publish: {exchange: orders, routing_key: x}
            fail: {wrkers: 1}
            expect: {routed: []}
        """)
    result = run(tmp_path, "test", "shop_test.yaml")
    assert result.returncode == 1
    out = result.stdout
    assert "shop_test.yaml::unknown exchange ERROR" in out
    assert "error: the message was refused: exchange 'nope' not found" in out
    assert ("error: `fail` names wrkers: no consumer or handled group of the topology has "
            "that name") in out
    assert "2 errors in" in out.splitlines()[-1]


def test_a_handler_that_does_not_import_is_an_error(tmp_path: Path) -> None:
    _project(tmp_path, PASSING, topology=TOPOLOGY.replace("shop_handlers:forward",
                                                          "shop_handlers:missing"))
    result = run(tmp_path, "test", "shop_test.yaml")
    assert result.returncode == 1
    assert "has no attribute 'missing'" in result.stdout


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    result = run(tmp_path, "test", "nothing-here")
    assert result.returncode == 2
    assert result.stderr == "runner test: nothing-here: no such file or directory\n"
    (tmp_path / "empty").mkdir()
    result = run(tmp_path, "test", "empty")
    assert result.returncode == 2
    assert result.stderr == "runner test: no *_test.yaml file under empty\n"


def test_the_shipped_topologies_pass_their_tests() -> None:
    result = run(REPO, "test", "topologies/")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "7 passed" in result.stdout.splitlines()[-1]


def test_the_test_file_schema_is_shipped_byte_identical() -> None:
    shipped = (REPO / "schemas" / "topology-test.schema.json").read_bytes()
    packaged = (REPO / "runner" / "topology" / "topology-test.schema.json").read_bytes()
    assert shipped == packaged
    import jsonschema
    import yaml

    schema = json.loads(shipped)
    jsonschema.Draft202012Validator.check_schema(schema)
    shop = yaml.safe_load((REPO / "topologies" / "tests" / "shop_test.yaml").read_text())
    jsonschema.Draft202012Validator(schema).validate(shop)


def test_a_case_needs_exactly_one_input(tmp_path: Path) -> None:
    _project(tmp_path, """\
        version: 1
        tests:
          - name: both
            publish: {queue: work}
            append: {topic: t}
            expect: {}
          - name: none
            expect: {}
        """)
    result = run(tmp_path, "test", "shop_test.yaml", "--format", "json")
    assert result.returncode == 1
    problems = json.loads(result.stdout)["problems"]
    assert [(p["line"], p["message"]) for p in problems] == [
        (3, "tests[0]: give only one of publish, append"),
        (7, "tests[1]: give exactly one of publish, append"),
    ]


def test_undeclared_exchange_fails_for_exactly_once_consumers_and_groups(tmp_path: Path) -> None:
    write(tmp_path / "shop.yaml", """\
        version: 1
        topics: {t: {partitions: 3}}
        queues: {q: {}, dlq: {}}
        dlq_policies: {p: {max_retries: 1, backoff: [2s], dead_letter_queue: dlq}}
        consumers:
          eo: {queue: q, handler: "fwd_handlers:fwd", delivery: exactly-once, dlq_policy: p}
        consumer_groups:
          g: {topic: t, handler: "fwd_handlers:fwd", dlq_policy: p}
        """)
    write(tmp_path / "fwd_handlers.py", """\
        def fwd(msg, ctx):
            ctx.publish("payments", "payment.requested", {"a": 1})
        """)
    write(tmp_path / "shop_test.yaml", """\
        version: 1
        tests:
          - name: queue, exactly-once
            publish: {queue: q, body: 1}
            expect: {calls: {eo: 2}, queues: {dlq: 1}}
          - name: group
            append: {topic: t, key: k, value: 1}
            expect: {calls: {g: 2}, queues: {dlq: 1}}
        """)
    result = run(tmp_path, "test", "shop_test.yaml")
    assert result.returncode == 1
    out = result.stdout
    assert "- eo: the engine refused the handler's outputs: exchange 'payments' not found" in out
    assert "- g: the engine refused the handler's outputs: exchange 'payments' not found" in out
    assert out.splitlines()[-1].strip("= ").startswith("2 failed in ")


def test_every_shipped_topology_file_and_handler_is_exercised_by_the_shipped_tests() -> None:
    """Each file in topologies/ (the order-events stream, the newsletter) is part of the
    topology the shipped tests load, and every handler it declares is called by a case."""
    import yaml

    from runner.topology.load import load

    called: set[str] = set()
    for test_file in sorted((REPO / "topologies").rglob("*_test.yaml")):
        doc = yaml.safe_load(test_file.read_text())
        for case in doc["tests"]:
            called |= {name for name, n in case["expect"].get("calls", {}).items() if n}
    for shipped in sorted((REPO / "topologies").glob("*.yaml")):
        topo = load(str(shipped), env={}).topology
        assert topo is not None, shipped
        handled = {n for n, c in topo.consumers} | {
            n for n, g in topo.consumer_groups if g.handler}
        assert handled, shipped
        assert handled <= called, f"{shipped.name}: no case calls {sorted(handled - called)}"


def test_pythonpath_imports_handlers_from_another_directory(tmp_path: Path) -> None:
    write(tmp_path / "proj" / "t.yaml", """\
        version: 1
        queues: {q: {}}
        consumers: {c: {queue: q, handler: "far_handlers:h"}}
        """)
    write(tmp_path / "proj" / "t_test.yaml", """\
        version: 1
        tests:
          - name: handled
            publish: {queue: q, body: 1}
            expect: {calls: {c: 1}}
        """)
    write(tmp_path / "code" / "far_handlers.py", "def h(msg, ctx):\n    pass\n")
    missing = run(tmp_path, "test", "proj/t_test.yaml")
    assert missing.returncode == 1
    assert ("error: consumer 'c': handler 'far_handlers:h': cannot import module "
            "'far_handlers': ModuleNotFoundError: No module named 'far_handlers' (searched "
            f"sys.path: {tmp_path}, ") in missing.stdout
    assert "; run from the directory that holds it or pass --pythonpath DIR)" in missing.stdout
    found = run(tmp_path, "test", "proj/t_test.yaml", "--pythonpath", "code")
    assert found.returncode == 0, found.stdout + found.stderr
    assert found.stdout.startswith("proj/t_test.yaml::handled PASSED\n")
    nowhere = run(tmp_path, "test", "proj/t_test.yaml", "--pythonpath", "nowhere")
    assert (nowhere.returncode, nowhere.stdout, nowhere.stderr) == (
        2, "", "runner test: --pythonpath nowhere: no such directory\n")
