"""`runner validate` through the real console script, in all three formats."""

from __future__ import annotations

import json
import re
from pathlib import Path

from tests.cli.console import run, write

VALID = """\
version: 1
exchanges:
  dlx: {type: fanout}
queues:
  jobs:
    dead_letter: {exchange: dlx}
  jobs.dead: {}
bindings:
  - {exchange: dlx, queue: jobs.dead}
consumers:
  workers: {queue: jobs, handler: "tasks:run"}
"""

BROKEN = """\
version: 1
exchanges:
  orders: {type: topic}
queues:
  email: {max_priority: 20}
bindings:
  - exchange: order
    queue: email
  - exchange: orders
    queue: email
    routing_key: "orders.#x"
"""

WARNS = """\
version: 1
queues:
  q: {}
consumers:
  c: {queue: q, handler: "tasks:run"}
"""


def test_a_valid_topology_exits_0_with_a_summary(tmp_path: Path) -> None:
    write(tmp_path / "shop.yaml", VALID)
    done = run(tmp_path, "validate", "shop.yaml")
    assert (done.returncode, done.stdout, done.stderr) == (0, "shop.yaml: valid\n", "")


def test_text_format_lists_problems_then_a_summary(tmp_path: Path) -> None:
    write(tmp_path / "shop.yaml", BROKEN)
    done = run(tmp_path, "validate", "shop.yaml")
    assert done.returncode == 1
    assert done.stdout.splitlines() == [
        'shop.yaml:5:25: warning: max_priority 20 on queue "email" is above 10; each level costs '
        "memory and few publishers need more than 10 (at queues.email.max_priority)",
        'shop.yaml:7:15: error: binding source exchange "order" does not exist; '
        'did you mean "orders"? (at bindings[0].exchange)',
        'shop.yaml:11:18: error: routing key "orders.#x" is not a valid topic pattern: '
        'word "#x" mixes a wildcard with other characters (at bindings[1].routing_key)',
        "2 errors, 1 warning in 1 topology",
    ]


def test_json_format_is_one_document(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", BROKEN)
    write(tmp_path / "b.yaml", VALID)
    done = run(tmp_path, "validate", "--format", "json", "a.yaml", "b.yaml")
    assert done.returncode == 1
    document = json.loads(done.stdout)
    assert document["valid"] is False
    assert document["problems"][1] == {
        "file": "a.yaml",
        "line": 7,
        "column": 15,
        "path": "bindings[0].exchange",
        "severity": "error",
        "message": 'binding source exchange "order" does not exist; did you mean "orders"?',
        "rule": "missing-reference",
    }
    assert [p["severity"] for p in document["problems"]] == ["warning", "error", "error"]


def test_json_format_of_valid_topologies(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", VALID)
    done = run(tmp_path, "validate", "--format", "json", "a.yaml")
    assert done.returncode == 0
    assert json.loads(done.stdout) == {"valid": True, "problems": []}


def test_github_format_prints_annotations(tmp_path: Path) -> None:
    write(tmp_path / "shop.yaml", BROKEN)
    done = run(tmp_path, "validate", "--format", "github", "shop.yaml")
    assert done.returncode == 1
    assert done.stdout.splitlines() == [
        '::warning file=shop.yaml,line=5,col=25::max_priority 20 on queue "email" is above 10; '
        "each level costs memory and few publishers need more than 10",
        '::error file=shop.yaml,line=7,col=15::binding source exchange "order" does not exist; '
        'did you mean "orders"?',
        '::error file=shop.yaml,line=11,col=18::routing key "orders.#x" is not a valid topic '
        'pattern: word "#x" mixes a wildcard with other characters',
    ]


def test_github_format_escapes_properties_and_data(tmp_path: Path) -> None:
    write(
        tmp_path / "odd,name:1.yaml",
        """\
        version: 1
        exchanges:
          t: {type: topic}
        topics:
          x: {}
        bindings:
          - {exchange: t, topic: x, routing_key: "a.100%#"}
        """,
    )
    done = run(tmp_path, "validate", "--format", "github", "odd,name:1.yaml")
    assert done.returncode == 1
    assert done.stdout == (
        '::error file=odd%2Cname%3A1.yaml,line=7,col=42::routing key "a.100%25#" is not a '
        'valid topic pattern: word "100%25#" mixes a wildcard with other characters\n'
    )


def test_warnings_pass_unless_strict(tmp_path: Path) -> None:
    write(tmp_path / "w.yaml", WARNS)
    done = run(tmp_path, "validate", "w.yaml")
    assert done.returncode == 0
    assert done.stdout.splitlines() == [
        'w.yaml:5:3: warning: failures of consumer "c" would be dropped: it has no dlq_policy and '
        'queue "q" has no dead_letter (at consumers.c)',
        "0 errors, 1 warning in 1 topology (valid)",
    ]
    strict = run(tmp_path, "validate", "--strict", "w.yaml")
    assert strict.returncode == 1
    assert strict.stdout.splitlines()[-1] == "0 errors, 1 warning in 1 topology"
    as_json = run(tmp_path, "validate", "--strict", "--format", "json", "w.yaml")
    assert as_json.returncode == 1 and json.loads(as_json.stdout)["valid"] is False
    # the CI job is red because of the warning, so the annotation says error (issue 12 item 16)
    plain = run(tmp_path, "validate", "--format", "github", "w.yaml")
    assert (plain.returncode, plain.stdout.splitlines()[0][:30]) == (
        0, "::warning file=w.yaml,line=5,c")
    as_github = run(tmp_path, "validate", "--strict", "--format", "github", "w.yaml")
    assert as_github.returncode == 1
    assert as_github.stdout.splitlines()[0].startswith(
        "::error file=w.yaml,line=5,col=3::failures of consumer \"c\" would be dropped")
    assert as_github.stdout.splitlines()[0].endswith("(a warning; an error under --strict)")


def test_each_argument_is_its_own_topology(tmp_path: Path) -> None:
    # Together they would define "jobs" twice; apart, each is valid.
    write(tmp_path / "one" / "a.yaml", VALID)
    write(tmp_path / "two.yaml", VALID)
    done = run(tmp_path, "validate", "one", "two.yaml")
    assert (done.returncode, done.stdout) == (0, "2 topologies: valid\n")


def test_a_directory_names_its_files_as_dir_slash_file(tmp_path: Path) -> None:
    write(tmp_path / "topologies" / "a.yaml", VALID)
    write(tmp_path / "topologies" / "b.yaml", "version: 1\nqueues:\n  other: {max_priority: 99}\n")
    done = run(tmp_path, "validate", "topologies/")
    assert done.returncode == 0
    assert done.stdout.splitlines()[0].startswith("topologies/b.yaml:3:")
    assert done.stdout.splitlines()[-1] == "0 errors, 1 warning in 1 topology (valid)"


def test_a_missing_path_is_a_usage_error(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", VALID)
    done = run(tmp_path, "validate", "a.yaml", "nope.yaml")
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr == "runner validate: nope.yaml: no such file or directory\n"


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    assert run(tmp_path, "validate").returncode == 2
    write(tmp_path / "a.yaml", VALID)
    bad_format = run(tmp_path, "validate", "--format", "xml", "a.yaml")
    assert bad_format.returncode == 2
    assert "invalid choice: 'xml'" in bad_format.stderr


# ---------------------------------------------------------------- --check-handlers

HANDLERS = """\
version: 1
topics:
  t: {partitions: 2}
queues:
  q: {}
  q.dead: {}
dlq_policies:
  p: {dead_letter_queue: q.dead}
consumers:
  good: {queue: q, handler: "app.jobs:run", dlq_policy: p}
  nested: {queue: q, handler: "app.jobs:Worker.handle", dlq_policy: p}
  no-module: {queue: q, handler: "app.missing:run", dlq_policy: p}
  no-attr: {queue: q, handler: "app.jobs:walk", dlq_policy: p}
consumer_groups:
  not-callable: {topic: t, handler: "app.jobs:LIMIT", dlq_policy: p}
  broken: {topic: t, handler: "app.broken:run", dlq_policy: p}
  exits: {topic: t, handler: "app.exits:run", dlq_policy: p}
  external: {topic: t}
"""


def test_check_handlers_imports_every_handler(tmp_path: Path) -> None:
    write(tmp_path / "app" / "__init__.py", "")
    write(
        tmp_path / "app" / "jobs.py",
        "print('jobs imported')\nLIMIT = 3\n\ndef run(msg):\n    pass\n\nclass Worker:\n"
        "    @staticmethod\n    def handle(msg):\n        pass\n",
    )
    write(tmp_path / "app" / "broken.py", "import does_not_exist_anywhere\n")
    write(tmp_path / "app" / "exits.py", "raise SystemExit(3)\n")
    write(tmp_path / "shop.yaml", HANDLERS)
    plain = run(tmp_path, "validate", "shop.yaml")
    assert (plain.returncode, plain.stdout) == (0, "shop.yaml: valid\n")
    done = run(tmp_path, "validate", "--check-handlers", "shop.yaml")
    assert done.returncode == 1
    assert done.stderr == "jobs imported\n"  # import-time prints go to stderr
    searched = re.compile(r" \(searched sys\.path: [^)]*\)")
    assert f"(searched sys.path: {tmp_path}, " in done.stdout
    assert [searched.sub("", line) for line in done.stdout.splitlines()] == [
        "shop.yaml:12:34: error: consumer 'no-module': handler 'app.missing:run': cannot import "
        "module 'app.missing': ModuleNotFoundError: No module named 'app.missing' "
        "(at consumers.no-module.handler)",
        "shop.yaml:13:32: error: consumer 'no-attr': handler 'app.jobs:walk': module 'app.jobs' "
        "has no attribute 'walk' (at consumers.no-attr.handler)",
        "shop.yaml:15:37: error: consumer 'not-callable': handler 'app.jobs:LIMIT': 'LIMIT' is a "
        "int, not a callable (at consumer_groups.not-callable.handler)",
        "shop.yaml:16:31: error: consumer 'broken': handler 'app.broken:run': cannot import "
        "module 'app.broken': ModuleNotFoundError: No module named 'does_not_exist_anywhere' "
        "(at consumer_groups.broken.handler)",
        "shop.yaml:17:30: error: consumer 'exits': handler 'app.exits:run': cannot import module "
        "'app.exits': SystemExit: 3 (at consumer_groups.exits.handler)",
        "5 errors, 0 warnings in 1 topology",
    ]
    as_json = run(tmp_path, "validate", "--check-handlers", "--format", "json", "shop.yaml")
    assert len(json.loads(as_json.stdout)["problems"]) == 5


def test_check_handlers_runs_beside_other_errors(tmp_path: Path) -> None:
    # Schema and reference errors do not hide the handlers that could be read.
    write(tmp_path / "app" / "__init__.py", "")
    write(tmp_path / "app" / "jobs.py", "def run(msg):\n    pass\n")
    write(
        tmp_path / "shop.yaml",
        """\
        version: 1
        queues:
          q: {}
          q.dead: {}
        dlq_policies:
          p: {dead_letter_queue: q.dead}
        consumers:
          slow: {queue: q, handler: "app.jobs:gone", dlq_policy: p, prefetch: 0}
          typo: {queue: qq, handler: "app.jobs:run", dlq_policy: p}
          unreadable: {queue: q, handler: "not a reference", dlq_policy: p}
        """,
    )
    done = run(tmp_path, "validate", "--check-handlers", "shop.yaml")
    assert done.returncode == 1
    assert done.stdout.splitlines() == [
        "shop.yaml:8:29: error: consumer 'slow': handler 'app.jobs:gone': module 'app.jobs' has "
        "no attribute 'gone' (at consumers.slow.handler)",
        "shop.yaml:8:71: error: prefetch must be at least 1, got 0 (at consumers.slow.prefetch)",
        'shop.yaml:9:17: error: queue "qq" of consumer "typo" does not exist; did you mean "q"? '
        "(at consumers.typo.queue)",
        "shop.yaml:10:35: error: handler must be a Python reference module:callable, e.g. "
        '"shop.orders:process"; got the string "not a reference" '
        "(at consumers.unreadable.handler)",
        "4 errors, 0 warnings in 1 topology",
    ]


SIGNATURES = """\
version: 1
queues:
  q: {}
  q.dead: {}
dlq_policies:
  p: {dead_letter_queue: q.dead}
consumers:
  one: {queue: q, handler: "app.sigs:one", dlq_policy: p}
  two: {queue: q, handler: "app.sigs:two", dlq_policy: p}
  defaults: {queue: q, handler: "app.sigs:defaults", dlq_policy: p}
  star: {queue: q, handler: "app.sigs:star", dlq_policy: p}
  method: {queue: q, handler: "app.sigs:Handler.handle", dlq_policy: p}
  instance: {queue: q, handler: "app.sigs:instance", dlq_policy: p}
  builtin: {queue: q, handler: "builtins:print", dlq_policy: p}
  three: {queue: q, handler: "app.sigs:three", dlq_policy: p}
  none: {queue: q, handler: "app.sigs:none", dlq_policy: p}
  keyword: {queue: q, handler: "app.sigs:keyword", dlq_policy: p}
"""

SIGNATURE_MODULE = """\
def one(msg): pass
def two(msg, ctx): pass
def defaults(msg, ctx=None, extra=1): pass
def star(*args): pass
class Handler:
    @classmethod
    def handle(cls, msg, ctx): pass
class Callable:
    def __call__(self, msg): pass
instance = Callable()
def three(msg, ctx, extra): pass
def none(): pass
def keyword(msg, *, retries, limit): pass
"""


def test_check_handlers_verifies_the_handler_takes_msg_or_msg_and_ctx(tmp_path: Path) -> None:
    write(tmp_path / "app" / "__init__.py", "")
    write(tmp_path / "app" / "sigs.py", SIGNATURE_MODULE)
    write(tmp_path / "shop.yaml", SIGNATURES)
    done = run(tmp_path, "validate", "--check-handlers", "shop.yaml")
    assert done.returncode == 1
    assert done.stdout.splitlines() == [
        "shop.yaml:15:30: error: consumer 'three': handler 'app.sigs:three' takes 3 required "
        "parameters; it must take (msg) or (msg, ctx) (at consumers.three.handler)",
        "shop.yaml:16:29: error: consumer 'none': handler 'app.sigs:none' takes no positional "
        "parameter; it must take (msg) or (msg, ctx) (at consumers.none.handler)",
        "shop.yaml:17:32: error: consumer 'keyword': handler 'app.sigs:keyword' has the required "
        "keyword-only parameters retries, limit; it must take (msg) or (msg, ctx) "
        "(at consumers.keyword.handler)",
        "3 errors, 0 warnings in 1 topology",
    ]


DROP_CYCLE = """\
version: 1
exchanges: {x1: {type: fanout}, x2: {type: fanout}}
queues:
  q1: {max_length: 0, message_ttl: 60s, dead_letter: {exchange: x2}}
  q2: {max_length: 0, dead_letter: {exchange: x1}}
bindings: [{exchange: x1, queue: q1}, {exchange: x2, queue: q2}]
"""


def test_a_cycle_only_a_drop_on_arrival_closes_warns_naming_the_queues(tmp_path: Path) -> None:
    write(tmp_path / "loop.yaml", DROP_CYCLE)
    done = run(tmp_path, "validate", "loop.yaml")
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith(
        "loop.yaml:4:65: warning: dead-letter cycle closed by queues that drop or refuse on "
        'arrival: queue "q1" -> exchange "x2" -> queue "q2" -> exchange "x1" -> queue "q1"; '
        'queue "q1" (max_length 0) passes dead letters on at once')
    assert lines[-1] == "0 errors, 1 warning in 1 topology (valid)"
    strict = run(tmp_path, "validate", "loop.yaml", "--strict")
    assert strict.returncode == 1


def test_validate_and_the_daemon_refuse_a_bad_handler_with_one_message_and_rule(
    tmp_path: Path,
) -> None:
    # one check (runner.pipeline.handler): validate --check-handlers and `runner run`
    # print the same line for the same handler, with the same rule id
    write(tmp_path / "app" / "__init__.py", "")
    write(tmp_path / "app" / "sigs.py", SIGNATURE_MODULE)
    write(tmp_path / "shop.yaml", SIGNATURES)
    checked = run(tmp_path, "validate", "--check-handlers", "shop.yaml")
    started = run(tmp_path, "run", "shop.yaml", "--data-dir", str(tmp_path / "data"),
                  "--listen", "127.0.0.1:0")
    assert started.returncode == checked.returncode == 1
    wanted = [line for line in checked.stdout.splitlines() if ": error: " in line]
    assert len(wanted) == 3
    assert sorted(line for line in started.stderr.splitlines() if ": error: " in line) == sorted(
        wanted)
    as_json = run(tmp_path, "validate", "--check-handlers", "--format", "json", "shop.yaml")
    assert {p["rule"] for p in json.loads(as_json.stdout)["problems"]} == {"handler"}
