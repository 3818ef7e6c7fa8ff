"""Lifecycle log lines of the real daemon: every line names its event, in JSON and text."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

import pytest

from tests.e2e.conftest import Daemon, wait_for

pytestmark = pytest.mark.e2e

HANDLERS = '''\
def noop(msg):
    return None
'''

BEFORE = """\
version: 1
name: e2e-logs
topics:
  t: {partitions: 2}
queues:
  a: {}
  b: {}
consumers:
  ca: {queue: a, handler: "logs_mod:noop", concurrency: 1}
  gone: {queue: b, handler: "logs_mod:noop"}
consumer_groups:
  g: {topic: t, handler: "logs_mod:noop", instances: 1}
"""

# ca's concurrency changes (restart), gone goes, cb comes, g stays
AFTER = BEFORE.replace("concurrency: 1", "concurrency: 2").replace("  gone:", "  cb:")


def json_lines(d: Daemon) -> list[dict[str, Any]]:
    return [json.loads(line) for line in d.log().splitlines() if line.strip()]


def test_json_lines_name_every_worker_started_stopped_and_restarted(
    start_daemon: Callable[..., Daemon]
) -> None:
    d = start_daemon(BEFORE, modules={"logs_mod": HANDLERS}, args=["--log-format", "json"])
    lines = json_lines(d)
    assert all("event" in line for line in lines), [x for x in lines if "event" not in x]
    started = {(x["event"], x.get("consumer") or x.get("group")) for x in lines}
    assert {("consumer_started", "ca"), ("consumer_started", "gone"),
            ("group_started", "g"), ("watching", None)} <= started
    ca = next(x for x in lines if x.get("consumer") == "ca")
    assert (ca["message"], ca["queue"], ca["handler"], ca["concurrency"]) == (
        "consumer ca started", "a", "logs_mod:noop", 1)
    d.topology.write_text(AFTER)
    assert d.post("/v1/admin/reload").status == 200
    lines = wait_for(lambda: [x for x in json_lines(d) if x["event"] == "reload"] and
                     json_lines(d))
    assert all("event" in line for line in lines), [x for x in lines if "event" not in x]
    after = [(x["event"], x.get("consumer") or x.get("group"), x["message"])
             for x in lines if x["event"].startswith(("consumer_", "group_"))][3:]
    assert sorted(after) == [
        ("consumer_restarted", "ca", "consumer ca restarted"),
        ("consumer_started", "cb", "consumer cb started"),
        ("consumer_stopped", "gone", "consumer gone stopped"),
    ]


def test_text_lines_carry_an_event_too(start_daemon: Callable[..., Daemon]) -> None:
    d = start_daemon(BEFORE, modules={"logs_mod": HANDLERS})
    d.topology.write_text(AFTER)
    assert d.post("/v1/admin/reload").status == 200
    lines = [line for line in d.log().splitlines() if line.strip()]
    assert lines and all(" event=" in line for line in lines), lines
    assert any("consumer cb started event=consumer_started consumer=cb queue=b" in line
               for line in lines), lines


def lifecycle(lines: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """(event, consumer or group, message) of every consumer_/group_ line, in order."""
    return [(x["event"], x.get("consumer") or x.get("group"), x["message"])
            for x in lines if x["event"].startswith(("consumer_", "group_"))]


def test_a_handler_code_change_logs_each_restart_once_and_no_unnamed_line(
    start_daemon: Callable[..., Daemon]
) -> None:
    d = start_daemon(BEFORE, modules={"logs_mod": HANDLERS}, args=["--log-format", "json"])
    source = d.workdir / "logs_mod.py"
    source.write_text(HANDLERS + "\n\ndef other(msg):\n    return None\n")
    stat = source.stat()
    os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns + 2_000_000_000))
    assert d.post("/v1/admin/reload").status == 200
    lines = wait_for(lambda: [x for x in json_lines(d) if x["event"] == "reload"] and
                     json_lines(d))
    assert [x for x in lines if x["event"] == "log" or x["message"].startswith("pipeline:")] == []
    assert [(x["handler_module"], x["message"]) for x in lines
                                                 if x["event"] == "handler_reimported"] == [
        ("logs_mod", "handler module logs_mod changed on disk: re-importing it")]
    assert lifecycle(lines)[3:] == [
        ("consumer_restarted", "ca", "consumer ca restarted"),
        ("consumer_restarted", "gone", "consumer gone restarted"),
        ("group_restarted", "g", "group g restarted"),
    ]


def test_a_reload_logs_each_worker_change_exactly_once(
    start_daemon: Callable[..., Daemon]
) -> None:
    d = start_daemon(BEFORE, modules={"logs_mod": HANDLERS}, args=["--log-format", "json"])
    d.topology.write_text(AFTER)
    assert d.post("/v1/admin/reload").status == 200
    lines = wait_for(lambda: [x for x in json_lines(d) if x["event"] == "reload"] and
                     json_lines(d))
    assert [x for x in lines if x["event"] == "log"] == []
    after = lifecycle(lines)[3:]
    assert len(after) == len(set(after)) == 3, after
