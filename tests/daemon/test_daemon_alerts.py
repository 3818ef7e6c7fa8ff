"""`runner alerts`: Prometheus rules from DLQ policies, group lag and reloads."""

from __future__ import annotations

from pathlib import Path

import pytest

from runner.cli import main
from tests.daemon.promtool import check_rules, promtool

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


TOPIC_DLQ = """\
version: 1
name: shop
topics:
  orders: {partitions: 2}
  orders.dead: {partitions: 2}
dlq_policies:
  to-topic:
    dead_letter_queue: orders.dead
    alert: {max_depth: 5, max_age: 1h}
consumer_groups:
  billing: {topic: orders, handler: "billing:handle", dlq_policy: to-topic}
"""

FIRES = """\
rule_files: [rules.yml]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'runner_topic_partition_log_end_offset{topic="orders.dead",partition="0"}'
        values: '4x10'
      - series: 'runner_topic_partition_log_end_offset{topic="orders.dead",partition="1"}'
        values: '1x5 9x5'
      - series: 'runner_topic_partition_log_start_offset{topic="orders.dead",partition="0"}'
        values: '0x10'
      - series: 'runner_topic_partition_log_start_offset{topic="orders.dead",partition="1"}'
        values: '0x10'
    alert_rule_test:
      - {eval_time: 3m, alertname: DlqDepthToTopic, exp_alerts: []}
      - eval_time: 9m
        alertname: DlqDepthToTopic
        exp_alerts:
          - exp_labels: {severity: warning}
            exp_annotations:
              summary: "Dead-letter topic orders.dead holds more than 5 records"
              description: "DLQ policy to-topic: 13 dead letters are kept in topic orders.dead \
(records between its log start and log end; retention removes old ones). \
Read them with `runner consume --topic orders.dead`."
"""


def test_a_topic_dlq_alerts_on_the_records_it_keeps_and_fires_in_promtool(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "topology.yaml"
    path.write_text(TOPIC_DLQ)
    assert main(["alerts", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("groups:\n")  # nothing left uncovered: no comment
    assert "runner_queue_" not in out  # no queue series: they would never exist
    assert ('expr: "(sum(runner_topic_partition_log_end_offset{topic=\\"orders.dead\\"}) - '
            'sum(runner_topic_partition_log_start_offset{topic=\\"orders.dead\\"})) > 5"') in out
    (tmp_path / "rules.yml").write_text(out)
    checked = check_rules(tmp_path / "rules.yml")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 4 rules found" in checked.stdout
    (tmp_path / "test.yml").write_text(FIRES)
    tested = promtool("test", "rules", str(tmp_path / "test.yml"))
    assert tested.returncode == 0, tested.stdout + tested.stderr


AGE_FIRES = """\
rule_files: [rules.yml]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'runner_topic_partition_log_end_offset{topic="orders.dead",partition="0"}'
        values: '4x140'
      - series: 'runner_topic_partition_log_start_offset{topic="orders.dead",partition="0"}'
        values: '0x119 4x20'
      - series: 'runner_topic_partition_oldest_record_timestamp_seconds{topic="orders.dead",\
partition="0"}'
        values: '3000x119 0x20'
      - series: 'runner_topic_partition_log_end_offset{topic="orders.dead",partition="1"}'
        values: '0x140'
      - series: 'runner_topic_partition_log_start_offset{topic="orders.dead",partition="1"}'
        values: '0x140'
      - series: 'runner_topic_partition_oldest_record_timestamp_seconds{topic="orders.dead",\
partition="1"}'
        values: '0x140'
    alert_rule_test:
      # at 90m the oldest record is 6000 s old (1h40m) by the empty partition's 0, but only
      # 2400 s old by the real one: no alert
      - {eval_time: 90m, alertname: DlqAgeToTopic, exp_alerts: []}
      - eval_time: 115m
        alertname: DlqAgeToTopic
        exp_alerts:
          - exp_labels: {severity: warning}
            exp_annotations:
              summary: "The oldest dead letter kept in topic orders.dead is older than 1h"
              description: "DLQ policy to-topic: the oldest record at the log start of \
orders.dead is 1h 5m 0s old. Read them with `runner consume --topic orders.dead`."
      # retention emptied the topic: no record, no age
      - {eval_time: 130m, alertname: DlqAgeToTopic, exp_alerts: []}
"""


def test_a_topic_dlq_alerts_on_the_age_of_its_oldest_record_in_promtool(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "topology.yaml"
    path.write_text(TOPIC_DLQ)
    assert main(["alerts", str(path)]) == 0
    out = capsys.readouterr().out
    sel = '{topic=\\"orders.dead\\"}'
    assert (f'expr: "(time() - min(runner_topic_partition_oldest_record_timestamp_seconds{sel} '
            f'> 0)) > 3600 and (sum(runner_topic_partition_log_end_offset{sel}) - '
            f'sum(runner_topic_partition_log_start_offset{sel})) > 0"') in out
    (tmp_path / "rules.yml").write_text(out)
    checked = check_rules(tmp_path / "rules.yml")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    (tmp_path / "test.yml").write_text(AGE_FIRES)
    tested = promtool("test", "rules", str(tmp_path / "test.yml"))
    assert tested.returncode == 0, tested.stdout + tested.stderr
