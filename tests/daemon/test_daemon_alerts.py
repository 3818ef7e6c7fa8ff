"""`runner alerts`: Prometheus rules from DLQ policies, group lag and reloads."""

from __future__ import annotations

from pathlib import Path

import pytest

from runner.cli import main
from tests.daemon.promtool import check_rules

TOPOLOGY = """\
version: 1
name: shop
topics:
  order-events: {partitions: 2}
queues:
  orders.dlq: {}
  quiet.dlq: {}
dlq_policies:
  standard:
    dead_letter_queue: orders.dlq
    alert: {max_depth: 100, max_age: 1h30m}
  no-alert:
    dead_letter_queue: quiet.dlq
consumer_groups:
  order-processing: {topic: order-events}
"""


def run_alerts(tmp_path: Path, capsys: pytest.CaptureFixture[str], *args: str) -> str:
    path = tmp_path / "topology.yaml"
    path.write_text(TOPOLOGY)
    assert main(["alerts", str(path), *args]) == 0
    return capsys.readouterr().out


def test_alerts_cover_dlq_depth_and_age_group_lag_and_reload_failures(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = run_alerts(tmp_path, capsys)
    assert 'expr: "runner_queue_messages_ready{queue=\\"orders.dlq\\"} > 100"' in out
    assert 'expr: "runner_queue_oldest_message_age_seconds{queue=\\"orders.dlq\\"} > 5400"' in out
    assert "older than 1h30m" in out
    assert 'expr: "sum(runner_consumer_group_lag{group=\\"order-processing\\"}) > 10000"' in out
    assert 'increase(runner_topology_reloads_total{result!=\\"applied\\"}[10m]) > 0' in out
    assert "quiet.dlq" not in out  # a policy without `alert` gets no DLQ rule
    rules = tmp_path / "rules.yml"
    rules.write_text(out)
    result = check_rules(rules)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 4 rules found" in result.stdout


def test_the_lag_threshold_is_a_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = run_alerts(tmp_path, capsys, "--lag-threshold", "500", "--lag-for", "5m")
    assert '{group=\\"order-processing\\"}) > 500"' in out
    assert "for: 5m" in out
    rules = tmp_path / "rules.yml"
    rules.write_text(out)
    assert check_rules(rules).returncode == 0


def test_an_invalid_topology_prints_file_line_col_and_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("version: 1\nqueues:\n  q: {max_lenght: 3}\n")
    assert main(["alerts", str(path)]) == 1
    err = capsys.readouterr().err
    assert f"{path}:3:" in err and "max_lenght" in err


def test_a_missing_path_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["alerts", str(tmp_path / "nope.yaml")]) == 2
    assert "no such file or directory" in capsys.readouterr().err
