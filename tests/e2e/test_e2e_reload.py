"""Hot reload of the real daemon: watched files added, changed, deleted; invalid and
unsafe changes refused whole; SIGHUP and POST /v1/admin/reload take the same path."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import Daemon, wait_for

pytestmark = pytest.mark.e2e

BASE = "version: 1\nname: e2e-reload\nqueues:\n  work: {}\n"


def queues(d: Daemon) -> set[str]:
    return {q["name"] for q in d.ok("GET", "/v1/status")["queues"]}


def reloads(d: Daemon) -> dict[str, float]:
    out = {}
    for family in text_string_to_metric_families(d.metrics()):
        for s in family.samples:
            if s.name == "runner_topology_reloads_total":
                out[s.labels["result"]] = s.value
    return out


def failed(d: Daemon) -> float:
    """runner_topology_last_reload_successful, turned round: 1 while a reload failed."""
    for family in text_string_to_metric_families(d.metrics()):
        for s in family.samples:
            if s.name == "runner_topology_last_reload_successful":
                return 1 - s.value
    raise AssertionError("runner_topology_last_reload_successful is not exported")


def test_watched_directory_files_added_changed_deleted_invalid_and_unsafe(
    start_daemon: Callable[..., Daemon],
) -> None:
    d = start_daemon({"a.yaml": BASE})
    topo = d.topology
    (topo / "b.yaml").write_text("version: 1\nqueues:\n  jobs: {}\n")
    wait_for(lambda: "jobs" in queues(d))
    assert d.ok("GET", "/v1/status")["topology"]["generation"] == 2
    (topo / "b.yaml").write_text("version: 1\nqueues:\n  jobs: {}\n  more: {}\n")
    wait_for(lambda: "more" in queues(d))
    # a save that changes nothing is not a reload
    (topo / "b.yaml").write_text("version: 1\nqueues:\n  jobs: {}\n  more: {}\n")
    time.sleep(0.5)
    assert reloads(d) == {"applied": 2, "invalid": 0, "refused": 0}
    # unsafe: removing a queue that holds a message is refused whole
    d.ok("POST", "/v1/queues/jobs/messages", {"body": 1}, 202)
    (topo / "b.yaml").write_text("version: 1\nqueues:\n  other: {}\n")
    wait_for(lambda: reloads(d)["refused"] == 1)
    assert queues(d) == {"work", "jobs", "more"}  # nothing applied, not even `other`
    status = d.ok("GET", "/v1/status")["topology"]
    assert status["last_reload_result"] == "refused"
    assert "queue 'jobs': the queue holds messages" in status["last_reload_error"]
    answer = d.post("/v1/admin/reload")
    assert answer.status == 409
    assert {(c["kind"], c["name"], c["safe"]) for c in answer.body["changes"]} >= {
        ("removed", "jobs", False), ("added", "other", True)
    }
    # invalid: kept running, the error names the file and line
    (topo / "b.yaml").write_text("version: 1\nqueues:\n  jobs: {}\n  more: {max_lenght: 1}\n")
    wait_for(lambda: reloads(d)["invalid"] == 1)
    error = d.ok("GET", "/v1/status")["topology"]["last_reload_error"]
    assert f"{topo}/b.yaml:4:" in error and "max_lenght" in error
    answer = d.post("/v1/admin/reload")
    assert answer.status == 422
    assert answer.body["problems"][0]["file"] == f"{topo}/b.yaml"
    assert answer.body["problems"][0]["line"] == 4
    assert failed(d) == 1
    # fixed again: the running content is saved back, which clears the failed state (an
    # applied reload with no change, the generation kept)
    (topo / "b.yaml").write_text("version: 1\nqueues:\n  jobs: {}\n  more: {}\n")
    wait_for(lambda: reloads(d)["applied"] == 3)
    status = d.ok("GET", "/v1/status")["topology"]
    assert (status["last_reload_result"], status["last_reload_error"]) == ("applied", None)
    assert status["generation"] == 3
    assert failed(d) == 0
    msg = d.ok("POST", "/v1/queues/jobs/pull", {})["messages"][0]
    assert msg["body"] == 1
    d.ok("POST", "/v1/queues/jobs/ack", {"delivery_ids": [msg["delivery_id"]]})
    (topo / "b.yaml").unlink()
    wait_for(lambda: queues(d) == {"work"})
    assert reloads(d) == {"applied": 4, "invalid": 2, "refused": 2}
    assert d.ok("GET", "/v1/status")["topology"]["generation"] == 4


def test_sighup_and_admin_reload_apply_without_a_watcher(
    start_daemon: Callable[..., Daemon],
) -> None:
    d = start_daemon(BASE, args=["--no-watch"])
    d.topology.write_text(BASE + "  jobs: {}\n")
    time.sleep(0.4)
    assert "jobs" not in queues(d)
    d.signal(signal.SIGHUP)
    wait_for(lambda: "jobs" in queues(d))
    d.topology.write_text(BASE + "  jobs: {}\n  extra: {max_priority: 3}\n")
    answer = d.post("/v1/admin/reload")
    assert answer.status == 200
    assert answer.body["generation"] == 3
    assert [(c["kind"], c["entity"], c["name"]) for c in answer.body["changes"]] == [
        ("added", "queue", "extra")
    ]
    d.topology.write_text(BASE + "  jobs: {}\n  extra: {max_priority: 4}\n")
    answer = d.post("/v1/admin/reload")
    assert answer.status == 409
    assert answer.body["error"].startswith("refused 1 unsafe change(s): queue 'extra'")
    assert reloads(d) == {"applied": 2, "invalid": 0, "refused": 1}
    assert "reload applied (sighup)" in d.log()


def test_a_reload_is_applied_quickly_after_a_save(start_daemon: Callable[..., Daemon]) -> None:
    d = start_daemon(BASE)
    saved = time.monotonic()
    d.topology.write_text(BASE + "  fast: {}\n")
    wait_for(lambda: "fast" in queues(d), every_s=0.01)
    assert time.monotonic() - saved < 2.0


def test_a_fix_after_a_failed_save_clears_the_failed_state_in_a_single_file(
    start_daemon: Callable[..., Daemon],
) -> None:
    d = start_daemon(BASE)
    d.topology.write_text(BASE + "  bad: {max_lenght: 1}\n")
    wait_for(lambda: reloads(d)["invalid"] == 1)
    assert failed(d) == 1
    d.topology.write_text(BASE)  # exactly what runs
    wait_for(lambda: failed(d) == 0)
    assert reloads(d) == {"applied": 1, "invalid": 1, "refused": 0}
    assert d.ok("GET", "/v1/status")["topology"]["last_reload_result"] == "applied"
    # saving the same again is no reload at all
    d.topology.write_text(BASE)
    time.sleep(0.5)
    assert reloads(d) == {"applied": 1, "invalid": 1, "refused": 0}


HANDLED = """\
version: 1
name: e2e-handlers
topics:
  out: {partitions: 1}
queues:
  work: {}
consumers:
  w: {queue: work, handler: "code.tasks:handle"}
"""


def test_an_edited_handler_module_reloads_like_an_edited_topology(
    tmp_path: Path, start_daemon: Callable[..., Daemon],
) -> None:
    """The handler lives in another directory (--pythonpath); saving its module restarts
    the consumer with the new code; a broken save is invalid (the old code keeps
    running) until it is fixed."""
    code = tmp_path / "lib" / "code"
    code.mkdir(parents=True)
    (code / "__init__.py").write_text("")
    tasks = code / "tasks.py"
    tasks.write_text("def handle(msg, ctx):\n    ctx.append('out', 'v1')\n")
    d = start_daemon(HANDLED, args=["--pythonpath", str(tmp_path / "lib")])

    def values() -> list[object]:
        got = d.ok("GET", "/v1/topics/out/partitions/0/records?offset=0")["records"]
        return [r["value"] for r in got]

    d.ok("POST", "/v1/queues/work/messages", {"body": 1}, 202)
    wait_for(lambda: values() == ["v1"])
    tasks.write_text("def handle(msg, ctx):\n    ctx.append('out', 'v2')\n")
    wait_for(lambda: reloads(d)["applied"] == 1)
    d.ok("POST", "/v1/queues/work/messages", {"body": 2}, 202)
    wait_for(lambda: values() == ["v1", "v2"])
    assert "consumer w restarted" in d.log()
    tasks.write_text("def handle(msg, ctx)\n")  # a syntax error
    wait_for(lambda: reloads(d)["invalid"] == 1)
    assert failed(d) == 1
    error = d.ok("GET", "/v1/status")["topology"]["last_reload_error"]
    assert error.startswith("handler import failed: ") and "SyntaxError" in error
    d.ok("POST", "/v1/queues/work/messages", {"body": 3}, 202)
    wait_for(lambda: values() == ["v1", "v2", "v2"])  # the running code kept working
    tasks.write_text("def handle(msg, ctx):\n    ctx.append('out', 'v3')\n")
    wait_for(lambda: failed(d) == 0)
    assert reloads(d) == {"applied": 2, "invalid": 1, "refused": 0}
    d.ok("POST", "/v1/queues/work/messages", {"body": 4}, 202)
    wait_for(lambda: values() == ["v1", "v2", "v2", "v3"])
