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


ONLY = ' and on (job, instance) runner_topology_info{name=\\"shop\\"}'


def test_alerts_cover_dlq_depth_and_age_group_lag_reload_failures_and_a_daemon_down(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = run_alerts(tmp_path, capsys)
    assert ('alert: ShopDlqDepthStandard\n        expr: "(runner_queue_messages_ready'
            '{queue=\\"orders.dlq\\"} > 100)' + ONLY + '"') in out
    assert ('expr: "(runner_queue_oldest_message_age_seconds{queue=\\"orders.dlq\\"} > 5400)'
            + ONLY + '"') in out
    assert "older than 1h30m" in out
    assert ('alert: ShopConsumerGroupLagOrderProcessing\n        expr: "(sum by (job, instance) '
            '(runner_consumer_group_lag{group=\\"order-processing\\"}) > 10000)' + ONLY + '"'
            ) in out
    assert ('alert: ShopTopologyReloadFailed\n        expr: "(runner_topology_last_reload_'
            'successful == 0)' + ONLY + '"') in out
    assert ('alert: ShopDown\n        expr: "up == 0 and on (job, instance) last_over_time('
            'runner_topology_info{name=\\"shop\\"}[1h])"') in out
    assert "HandlerErrorRatio" not in out  # no handler in this topology
    assert "quiet.dlq" not in out  # a policy without `alert` gets no DLQ rule
    rules = tmp_path / "rules.yml"
    rules.write_text(out)
    result = check_rules(rules)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 5 rules found" in result.stdout


def test_the_lag_threshold_is_a_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = run_alerts(tmp_path, capsys, "--lag-threshold", "500", "--lag-for", "5m")
    assert '{group=\\"order-processing\\"}) > 500)' in out
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
      - series: 'runner_dead_letter_topic_pending{topic="orders.dead",partition="0",\
job="runner",instance="a:1"}'
        values: '4x10 0x5'
      - series: 'runner_dead_letter_topic_pending{topic="orders.dead",partition="1",\
job="runner",instance="a:1"}'
        values: '1x5 9x5 0x5'
      - series: 'runner_topology_info{name="shop",hash="h",job="runner",instance="a:1"}'
        values: '1x15'
      - series: 'runner_topology_info{name="other",hash="h",job="runner",instance="b:1"}'
        values: '1x15'
      - series: 'runner_dead_letter_topic_pending{topic="orders.dead",partition="0",\
job="runner",instance="b:1"}'
        values: '100x15'
    alert_rule_test:
      - {eval_time: 3m, alertname: ShopDlqDepthToTopic, exp_alerts: []}
      - eval_time: 9m
        alertname: ShopDlqDepthToTopic
        exp_alerts:
          - exp_labels: {severity: warning, job: runner, instance: "a:1"}
            exp_annotations:
              summary: "Dead-letter topic orders.dead holds more than 5 records"
              description: "DLQ policy to-topic: 13 dead letters wait in topic orders.dead \
(not yet replayed or purged). Inspect them with `runner dlq show orders.dead` and replay \
with `runner dlq replay orders.dead`."
      # `runner dlq replay` (or purge) moved the replay position to the log end: cleared
      - {eval_time: 14m, alertname: ShopDlqDepthToTopic, exp_alerts: []}
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
    assert ('expr: "(sum by (job, instance) (runner_dead_letter_topic_pending{topic='
            '\\"orders.dead\\"}) > 5)' + ONLY + '"') in out
    (tmp_path / "rules.yml").write_text(out)
    checked = check_rules(tmp_path / "rules.yml")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 6 rules found" in checked.stdout
    (tmp_path / "test.yml").write_text(FIRES)
    tested = promtool("test", "rules", str(tmp_path / "test.yml"))
    assert tested.returncode == 0, tested.stdout + tested.stderr


AGE_FIRES = """\
rule_files: [rules.yml]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      # partition 0 keeps its first record (3000 s) all along; at 120m a replay moves
      # past the dead letters up to 6000 s (the oldest pending one from then on)
      - series: 'runner_topic_partition_oldest_record_timestamp_seconds{topic="orders.dead",\
partition="0",job="j",instance="a:1"}'
        values: '3000x140'
      - series: 'runner_dead_letter_topic_oldest_pending_timestamp_seconds{topic="orders.dead",\
partition="0",job="j",instance="a:1"}'
        values: '3000x119 6000x20'
      - series: 'runner_dead_letter_topic_oldest_pending_timestamp_seconds{topic="orders.dead",\
partition="1",job="j",instance="a:1"}'
        values: '0x140'
      - series: 'runner_dead_letter_topic_pending{topic="orders.dead",partition="0",\
job="j",instance="a:1"}'
        values: '4x119 1x20'
      - series: 'runner_dead_letter_topic_pending{topic="orders.dead",partition="1",\
job="j",instance="a:1"}'
        values: '0x140'
      - series: 'runner_topology_info{name="shop",hash="h",job="j",instance="a:1"}'
        values: '1x140'
    alert_rule_test:
      # at 90m the oldest pending dead letter is 6000 s old (1h40m) by the partition with
      # none pending (0), but only 2400 s old by the real one: no alert
      - {eval_time: 90m, alertname: ShopDlqAgeToTopic, exp_alerts: []}
      - eval_time: 115m
        alertname: ShopDlqAgeToTopic
        exp_alerts:
          - exp_labels: {severity: warning, job: j, instance: "a:1"}
            exp_annotations:
              summary: "The oldest pending dead letter in topic orders.dead is older than 1h"
              description: "DLQ policy to-topic: the oldest dead letter in orders.dead not \
yet replayed or purged is 1h 5m 0s old. Inspect them with `runner dlq show orders.dead`."
      # replayed: the oldest pending one is 1800 s old, although the log still keeps the
      # 4800 s old record (the oldest kept record would still fire)
      - {eval_time: 130m, alertname: ShopDlqAgeToTopic, exp_alerts: []}
"""


def test_a_topic_dlq_alerts_on_the_age_of_its_oldest_pending_dead_letter_in_promtool(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "topology.yaml"
    path.write_text(TOPIC_DLQ)
    assert main(["alerts", str(path)]) == 0
    out = capsys.readouterr().out
    sel = '{topic=\\"orders.dead\\"}'
    by = "by (job, instance)"
    assert (f'expr: "((time() - min {by} (runner_dead_letter_topic_oldest_pending_timestamp_'
            f'seconds{sel} > 0)) > 3600)' + ONLY + '"') in out
    (tmp_path / "rules.yml").write_text(out)
    checked = check_rules(tmp_path / "rules.yml")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    (tmp_path / "test.yml").write_text(AGE_FIRES)
    tested = promtool("test", "rules", str(tmp_path / "test.yml"))
    assert tested.returncode == 0, tested.stdout + tested.stderr


OPERATIONS = """\
rule_files: [rules.yml]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      # a:1 runs shop, b:1 runs another topology: only a:1's troubles are shop's alerts
      - series: 'runner_topology_info{name="shop",hash="h",job="runner",instance="a:1"}'
        values: '1x24 _x5'
      - series: 'runner_topology_info{name="other",hash="h",job="runner",instance="b:1"}'
        values: '1x30'
      - series: 'up{job="runner",instance="a:1"}'
        values: '1x24 0x5'
      - series: 'up{job="runner",instance="b:1"}'
        values: '1x24 0x5'
      - series: 'runner_topology_last_reload_successful{job="runner",instance="a:1"}'
        values: '1x2 0x3 1x4'
      - series: 'runner_topology_last_reload_successful{job="runner",instance="b:1"}'
        values: '0x30'
      # billing handles 60 messages a minute; from minute 10, 6 of them fail (10%)
      - series: 'runner_handler_duration_seconds_count{consumer="billing",job="runner",\
instance="a:1"}'
        values: '0+60x30'
      - series: 'runner_handler_errors_total{consumer="billing",error_type="KeyError",\
job="runner",instance="a:1"}'
        values: '0x9 6+6x20'
      - series: 'runner_handler_errors_total{consumer="billing",error_type="KeyError",\
job="runner",instance="b:1"}'
        values: '0+60x30'
    alert_rule_test:
      - {eval_time: 1m, alertname: ShopTopologyReloadFailed, exp_alerts: []}
      - eval_time: 4m
        alertname: ShopTopologyReloadFailed
        exp_alerts:
          - exp_labels: {severity: warning, job: runner, instance: "a:1"}
            exp_annotations:
              summary: "The last topology reload was refused or invalid"
              description: "a:1 kept the running topology; `runner status` shows the last \
reload error with its file and line. Saving a fixed (or the running) topology clears this."
      # the fix saved: the alert clears at once
      - {eval_time: 7m, alertname: ShopTopologyReloadFailed, exp_alerts: []}
      - {eval_time: 24m, alertname: ShopDown, exp_alerts: []}
      - eval_time: 28m
        alertname: ShopDown
        exp_alerts:
          - exp_labels: {severity: critical, job: runner, instance: "a:1"}
            exp_annotations:
              summary: "A runner daemon of topology shop is down"
              description: "Prometheus cannot scrape a:1 (job runner), which served topology \
shop within the last hour."
      - {eval_time: 9m, alertname: ShopHandlerErrorRatio, exp_alerts: []}
      - eval_time: 20m
        alertname: ShopHandlerErrorRatio
        exp_alerts:
          - exp_labels: {severity: warning, job: runner, instance: "a:1", consumer: billing}
            exp_annotations:
              summary: "Handler billing fails more than 5% of its messages"
              description: "10% of the messages handled by billing on a:1 failed over 5 \
minutes. The daemon's log has one line per failure with its error."
"""


def test_a_daemon_down_the_error_ratio_and_a_failed_reload_fire_per_instance_in_promtool(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "topology.yaml"
    path.write_text(TOPIC_DLQ)
    assert main(["alerts", str(path)]) == 0
    (tmp_path / "rules.yml").write_text(capsys.readouterr().out)
    (tmp_path / "test.yml").write_text(OPERATIONS)
    tested = promtool("test", "rules", str(tmp_path / "test.yml"))
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_alert_names_are_unique_across_topologies(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    names: list[str] = []
    for topology in (TOPIC_DLQ, TOPIC_DLQ.replace("name: shop", "name: shop-eu")):
        path = tmp_path / "topology.yaml"
        path.write_text(topology)
        assert main(["alerts", str(path)]) == 0
        out = capsys.readouterr().out
        names += [line.split(": ")[1] for line in out.splitlines() if "- alert: " in line]
    assert len(names) == 12 and len(set(names)) == 12
    assert "ShopEuDown" in names and "ShopDown" in names


@pytest.mark.parametrize(("args", "error"), [
    (["--lag-threshold", "-1"], "argument --lag-threshold: must be 0 or more, got -1"),
    (["--lag-threshold", "ten"], "argument --lag-threshold: not a whole number: 'ten'"),
    (["--error-ratio", "0"], "argument --error-ratio: must be more than 0 and at most 1, got 0"),
    (["--error-ratio", "5%"], "argument --error-ratio: not a number: '5%' (try 0.05)"),
])
def test_bad_thresholds_are_usage_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], error: str
) -> None:
    path = tmp_path / "topology.yaml"
    path.write_text(TOPOLOGY)
    assert main(["alerts", str(path), *args]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.splitlines()[-1] == f"runner alerts: error: {error}"


def test_the_error_ratio_is_a_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "topology.yaml"
    path.write_text(TOPIC_DLQ)
    assert main(["alerts", str(path), "--error-ratio", "0.2"]) == 0
    out = capsys.readouterr().out
    assert "(rate(runner_handler_duration_seconds_count[5m])) > 0.2)" in out
    assert "fails more than 20% of its messages" in out
