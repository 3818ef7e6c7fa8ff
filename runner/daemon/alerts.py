"""Alerting rules: Prometheus rules derived from a topology's DLQ policies and groups.

Per DLQ policy with an `alert`: dead-letter queue depth over `max_depth`
(`runner_queue_messages_ready`) and oldest dead letter older than `max_age`
(`runner_queue_oldest_message_age_seconds`); for a dead_letter_queue that is a
topic, the depth is the records it keeps (log end minus log start, summed over
partitions) and the age is now minus the oldest first-record timestamp of its
partitions (`runner_topic_partition_oldest_record_timestamp_seconds`, 0 for an
empty partition, so those are filtered out), guarded by depth > 0. Per consumer
group: lag over a threshold. Always: failed topology reloads. The output is YAML written by hand
(double-quoted scalars are JSON strings, which YAML reads the same), so this
module needs no YAML library.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from runner.topology.model import Topology


@dataclass(frozen=True, slots=True)
class Rule:
    alert: str
    expr: str
    for_: str
    severity: str
    summary: str
    description: str


def _duration(seconds: float) -> str:
    """A Prometheus duration (`90s` -> `1m30s`)."""
    total = max(0, round(seconds))
    if total == 0:
        return "0s"
    out = ""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if total >= size:
            out += f"{total // size}{unit}"
            total %= size
    return out


def _camel(name: str) -> str:
    parts = [p for p in name.replace("-", ".").replace("_", ".").split(".") if p]
    return "".join(p[:1].upper() + p[1:] for p in parts)


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def _topic_depth(topic: str) -> str:
    """Records a topic holds: the sum over partitions of log end minus log start."""
    sel = f'{{topic="{_label(topic)}"}}'
    return (
        f"(sum(runner_topic_partition_log_end_offset{sel}) "
        f"- sum(runner_topic_partition_log_start_offset{sel}))"
    )


def _topic_age(topic: str) -> str:
    """Seconds since the oldest record a topic still keeps was written: its
    partitions' first-record timestamps, empty partitions (exported as 0) left out."""
    sel = f'{{topic="{_label(topic)}"}}'
    return f"(time() - min(runner_topic_partition_oldest_record_timestamp_seconds{sel} > 0))"


def rules(topology: Topology, *, lag_threshold: int = 10_000, lag_for: str = "10m") -> list[Rule]:
    """Every alerting rule for `topology`."""
    out: list[Rule] = []
    topics = topology.topic_map()
    for name, policy in topology.dlq_policies:
        alert = policy.alert
        dlq = policy.dead_letter_queue
        if alert is None or dlq is None:
            continue
        queue = _label(dlq)
        is_topic = dlq in topics
        if alert.max_depth is not None:
            if is_topic:
                expr = f"{_topic_depth(dlq)} > {alert.max_depth}"
                summary = f"Dead-letter topic {dlq} holds more than {alert.max_depth} records"
                description = (
                    f"DLQ policy {name}: {{{{ $value }}}} dead letters are kept in topic {dlq} "
                    "(records between its log start and log end; retention removes old ones). "
                    f"Read them with `runner consume --topic {dlq}`."
                )
            else:
                expr = f'runner_queue_messages_ready{{queue="{queue}"}} > {alert.max_depth}'
                summary = f"Dead-letter queue {dlq} holds more than {alert.max_depth} messages"
                description = (
                    f"DLQ policy {name}: {{{{ $value }}}} dead letters wait in {dlq}. "
                    f"Inspect them with `runner dlq show {dlq}` and replay with "
                    f"`runner dlq replay {dlq}`."
                )
            out.append(
                Rule(
                    alert=f"DlqDepth{_camel(name)}",
                    expr=expr,
                    for_="1m",
                    severity="warning",
                    summary=summary,
                    description=description,
                )
            )
        if alert.max_age_s is not None:
            age = _duration(alert.max_age_s)
            if is_topic:
                expr = (f"{_topic_age(dlq)} > {alert.max_age_s:g} "
                        f"and {_topic_depth(dlq)} > 0")
                summary = f"The oldest dead letter kept in topic {dlq} is older than {age}"
                description = (
                    f"DLQ policy {name}: the oldest record at the log start of {dlq} is "
                    "{{ $value | humanizeDuration }} old. "
                    f"Read them with `runner consume --topic {dlq}`."
                )
            else:
                expr = (f'runner_queue_oldest_message_age_seconds{{queue="{queue}"}} '
                        f"> {alert.max_age_s:g}")
                summary = f"The oldest dead letter in {dlq} is older than {age}"
                description = (
                    f"DLQ policy {name}: the oldest message in {dlq} is "
                    "{{ $value | humanizeDuration }} old."
                )
            out.append(
                Rule(
                    alert=f"DlqAge{_camel(name)}",
                    expr=expr,
                    for_="1m",
                    severity="warning",
                    summary=summary,
                    description=description,
                )
            )
    for name, _group in topology.consumer_groups:
        out.append(
            Rule(
                alert=f"ConsumerGroupLag{_camel(name)}",
                expr=(
                    f'sum(runner_consumer_group_lag{{group="{_label(name)}"}}) '
                    f"> {lag_threshold}"
                ),
                for_=lag_for,
                severity="warning",
                summary=f"Consumer group {name} is more than {lag_threshold} records behind",
                description=f"Consumer group {name} lags by {{{{ $value }}}} records.",
            )
        )
    out.append(
        Rule(
            alert="TopologyReloadFailed",
            expr='increase(runner_topology_reloads_total{result!="applied"}[10m]) > 0',
            for_="0m",
            severity="warning",
            summary="A topology reload was refused or invalid",
            description=(
                "The running topology was kept; `runner status` shows the last reload error "
                "with its file and line."
            ),
        )
    )
    return out


def render_yaml(
    topology: Topology, rule_list: list[Rule], comments: Sequence[str] = ()
) -> str:
    """A Prometheus rule file holding one group (`comments` first, as YAML comments)."""
    group = f"runner-{topology.name}" if topology.name else "runner"
    lines = [f"# {line}" for line in comments]
    lines += ["groups:", f"  - name: {json.dumps(group)}", "    rules:"]
    for r in rule_list:
        lines += [
            f"      - alert: {r.alert}",
            f"        expr: {json.dumps(r.expr)}",
            f"        for: {r.for_}",
            "        labels:",
            f"          severity: {r.severity}",
            "        annotations:",
            f"          summary: {json.dumps(r.summary)}",
            f"          description: {json.dumps(r.description)}",
        ]
    return "\n".join(lines) + "\n"
