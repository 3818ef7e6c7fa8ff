"""The Grafana dashboard (dashboards/runner.json) against a real scrape: every query is
valid PromQL (promtool), and every metric and label it selects is one a daemon that did
some work really exports."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.daemon.promtool import check_rules
from tests.e2e.conftest import REPO, Daemon, wait_for

pytestmark = pytest.mark.e2e

DASHBOARD = REPO / "dashboards" / "runner.json"
# Grafana's variables, as Grafana would expand them (all instances, one window)
VARIABLES = {"$__rate_interval": "1m", "$__range": "1h", "$job": ".*", "$instance": ".*",
             "$dlq": ".*"}
# made by Prometheus itself, not by the daemon
PROMETHEUS_MADE = {"up"}
SELECTOR = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\{([^}]*)\}")
MATCHER = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"')

TOPOLOGY = """\
version: 1
name: dash
exchanges:
  orders: {type: topic}
topics:
  events: {partitions: 2}
queues:
  work: {}
  work.dlq: {}
bindings:
  - {exchange: orders, queue: work, routing_key: "order.#"}
dlq_policies:
  at-once: {max_retries: 0, dead_letter_queue: work.dlq}
consumers:
  worker: {queue: work, handler: "dash_handlers:handle", dlq_policy: at-once}
consumer_groups:
  readers: {topic: events, handler: "dash_handlers:read", dlq_policy: at-once}
"""

HANDLERS = """\
def handle(msg):
    if msg.body.get("fail"):
        raise ValueError("asked to fail")


def read(msg):
    pass
"""


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for panel in dashboard["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))  # a collapsed row holds its panels
    return out


def queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, expression with Grafana's variables expanded) of every target."""
    out = []
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            expr = target["expr"]
            for name, value in VARIABLES.items():
                expr = expr.replace(name, value)
            assert "$" not in expr, (panel["title"], expr)
            out.append((panel["title"], expr))
    return out


def test_the_dashboard_is_importable_as_is() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert [i["name"] for i in dashboard["__inputs"]] == ["DS_PROMETHEUS"]
    assert dashboard["uid"] and dashboard["title"] == "topology-runner"
    drawn = [p for p in panels(dashboard) if p["type"] != "row"]
    titles = {p["title"] for p in drawn}
    # the panels an operator opens first (issue 12 item 15)
    assert {"Publish rate", "Consume rate", "Queue depth", "Dead-letter queue depth",
            "Dead-letter queue age", "Group lag per partition", "Handler latency",
            "Handler error ratio", "Reloads"} <= titles
    ids = [p["id"] for p in panels(dashboard)]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for p in panels(dashboard):
        pos = p["gridPos"]
        assert pos["x"] + pos["w"] <= 24, p["title"]
        mine = {(pos["x"] + dx, pos["y"] + dy) for dx in range(pos["w"]) for dy in range(pos["h"])}
        assert not cells & mine, f"{p['title']} overlaps another panel"
        cells |= mine
    for p in drawn:
        assert p["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}, p["title"]
        assert p["targets"] and all(t["expr"] and t["refId"] for t in p["targets"])
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert variables == {"job", "instance", "dlq"}


def test_every_query_is_valid_promql(tmp_path: Path) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    rules = [{"record": f"dashboard:query_{i}", "expr": expr}
             for i, (_, expr) in enumerate(queries(dashboard))]
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}))
    checked = check_rules(path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(rules)} rules found" in checked.stdout


def scrape(d: Daemon) -> dict[str, set[str]]:
    """Sample name -> the label names it has, from a real /metrics."""
    out: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(d.metrics()):
        for s in family.samples:
            out.setdefault(s.name, set()).update(s.labels)
    return out


def test_every_metric_and_label_the_dashboard_selects_is_in_a_real_scrape(
    start_daemon: Callable[..., Daemon],
) -> None:
    d = start_daemon(TOPOLOGY, modules={"dash_handlers": HANDLERS})
    for i in range(6):
        d.ok("POST", "/v1/exchanges/orders/messages",
             {"routing_key": "order.new", "body": {"n": i, "fail": i % 3 == 0}}, 202)
        d.ok("POST", "/v1/topics/events/records", {"key": str(i), "value": i}, 202)
    # handled (two of six failed and were dead-lettered), read by the group
    wait_for(lambda: 'runner_handler_errors_total{consumer="worker",error_type="ValueError"} '
             '2.0' in d.metrics())
    assert d.post("/v1/admin/reload").status == 200  # a reload counted
    exported = scrape(d)
    dashboard = json.loads(DASHBOARD.read_text())
    used: dict[str, set[str]] = {}
    for title, expr in queries(dashboard):
        selectors = SELECTOR.findall(expr)
        assert selectors, (title, expr)
        for name, matchers in selectors:
            used.setdefault(name, set()).update(
                label for label, _ in MATCHER.findall(matchers))
            assert name in exported or name in PROMETHEUS_MADE, (
                f"panel {title!r} selects {name}, which the daemon does not export")
    for name, labels in used.items():
        if name in PROMETHEUS_MADE:
            continue
        # job and instance are added by Prometheus to every series it scrapes
        missing = labels - {"job", "instance"} - exported[name]
        assert not missing, f"{name} has no label {missing} in the scrape"
    # the daemon's own families the dashboard shows, not a token few
    assert len({n for n in used if n.startswith("runner_")}) >= 25


def test_every_metric_a_real_daemon_exports_is_documented_by_its_full_name(
    start_daemon: Callable[..., Daemon],
) -> None:
    """docs/daemon.md's metric list names each runner_ family in full (a search for
    runner_queue_messages_retry_waiting finds it), and names nothing the daemon lacks."""
    d = start_daemon(TOPOLOGY, modules={"dash_handlers": HANDLERS})
    families = {f.name for f in text_string_to_metric_families(d.metrics())
                if f.name.startswith("runner_")}
    docs = (REPO / "docs" / "daemon.md").read_text()
    section = docs.split("\n## Metrics\n", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"`(runner_[a-z0-9_]+)", section))
    # a counter's family is named without its _total suffix in the exposition parser
    documented = {n.removesuffix("_total") for n in named}
    assert sorted(families - documented) == [], " ".join(sorted(families - documented))
    # exported only by `runner run --backend amqp://` (scraped in tests/backends/test_rmq_rpc.py)
    remote_only = {"runner_replies_forwarded", "runner_replies_outbox"}
    assert remote_only <= documented
    assert sorted(documented - families - remote_only) == [], " ".join(
        sorted(documented - families - remote_only))
    assert {"runner_queue_messages_retry_waiting", "runner_consumer_group_retry_waiting",
            "runner_consumer_group_dead_lettered", "runner_topology_last_reload_successful",
            } <= families
