"""Alerting rules: Prometheus rules derived from a topology's DLQ policies and groups.

Every rule is scoped to the daemons that run this topology: its expression
keeps the `job` and `instance` labels (aggregations are `sum by (job,
instance)`) and ends in `and on (job, instance) runner_topology_info{name=...}`,
so one rule file per topology can be loaded beside others, and an alert names
the daemon it is about. Alert names start with the topology's name in
CamelCase (`ShopDlqDepthStandard`), unique across topologies.

Per DLQ policy with an `alert`: dead-letter queue depth over `max_depth`
(`runner_queue_messages_ready`) and oldest dead letter older than `max_age`
(`runner_queue_oldest_message_age_seconds`); for a dead_letter_queue that is a
topic, the depth is its dead letters not yet replayed or purged
(`runner_dead_letter_topic_pending`, summed over partitions; `runner dlq replay`
and `runner dlq purge` clear it) and the age is now minus the timestamp of its
oldest pending dead letter over the partitions
(`runner_dead_letter_topic_oldest_pending_timestamp_seconds`, 0 for a
partition with none pending, so those are filtered out): records already
replayed or purged never make it fire, however long the log keeps them. Per consumer
group: lag over a threshold. Always: the daemon down (`up == 0` for an instance
that served this topology in the last hour), the handler error ratio, and the
last reload failed (cleared by the next applied reload). The output is YAML
written by hand (double-quoted scalars are JSON strings, which YAML reads the
same), so this module needs no YAML library.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from runner.topology.model import Topology

BY = "by (job, instance)"  # every aggregation keeps the daemon's identity


@dataclass(frozen=True, slots=True)
class Rule:
    alert: str
    expr: str
    for_: str
    severity: str
    summary: str
    description: str


@dataclass(frozen=True, slots=True)
class Limits:
    """The thresholds `runner alerts` takes as flags."""

    lag_threshold: int = 10_000
    lag_for: str = "10m"
    error_ratio: float = 0.05
    error_for: str = "5m"


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
    """Dead letters a DLQ topic holds that were neither replayed nor purged."""
    sel = f'{{topic="{_label(topic)}"}}'
    return f"sum {BY} (runner_dead_letter_topic_pending{sel})"


def _topic_age(topic: str) -> str:
    """Seconds since the oldest dead letter of a DLQ topic that was neither replayed
    nor purged was written (partitions with none pending, exported as 0, left out)."""
    sel = f'{{topic="{_label(topic)}"}}'
    return (f"(time() - min {BY} "
            f"(runner_dead_letter_topic_oldest_pending_timestamp_seconds{sel} > 0))")


def scope(topology: Topology) -> str:
    """The suffix that keeps a rule to the daemons running `topology`."""
    return f'and on (job, instance) runner_topology_info{{name="{_label(topology.name or "")}"}}'


def _handlers(topology: Topology) -> list[str]:
    names = [name for name, _ in topology.consumers]
    names += [name for name, g in topology.consumer_groups if g.handler]
    return sorted(set(names))


def rules(topology: Topology, limits: Limits = Limits()) -> list[Rule]:
    """Every alerting rule for `topology`."""
    out: list[Rule] = []
    prefix = _camel(topology.name or "") or "Runner"
    only = scope(topology)
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
                    f"DLQ policy {name}: {{{{ $value }}}} dead letters wait in topic {dlq} "
                    "(not yet replayed or purged). "
                    f"Inspect them with `runner dlq show {dlq}` and replay with "
                    f"`runner dlq replay {dlq}`."
                )
            else:
                expr = f'runner_queue_messages_ready{{queue="{queue}"}} > {alert.max_depth}'
                summary = f"Dead-letter queue {dlq} holds more than {alert.max_depth} messages"
                description = (
                    f"DLQ policy {name}: {{{{ $value }}}} dead letters wait in {dlq}. "
                    f"Inspect them with `runner dlq show {dlq}` and replay with "
                    f"`runner dlq replay {dlq}`."
                )
            out.append(Rule(f"{prefix}DlqDepth{_camel(name)}", f"({expr}) {only}", "1m",
                            "warning", summary, description))
        if alert.max_age_s is not None:
            age = _duration(alert.max_age_s)
            if is_topic:
                expr = f"{_topic_age(dlq)} > {alert.max_age_s:g}"
                summary = (f"The oldest pending dead letter in topic {dlq} is older "
                           f"than {age}")
                description = (
                    f"DLQ policy {name}: the oldest dead letter in {dlq} not yet replayed "
                    "or purged is {{ $value | humanizeDuration }} old. "
                    f"Inspect them with `runner dlq show {dlq}`."
                )
            else:
                expr = (f'runner_queue_oldest_message_age_seconds{{queue="{queue}"}} '
                        f"> {alert.max_age_s:g}")
                summary = f"The oldest dead letter in {dlq} is older than {age}"
                description = (
                    f"DLQ policy {name}: the oldest message in {dlq} is "
                    "{{ $value | humanizeDuration }} old."
                )
            out.append(Rule(f"{prefix}DlqAge{_camel(name)}", f"({expr}) {only}", "1m",
                            "warning", summary, description))
    for name, _group in topology.consumer_groups:
        out.append(
            Rule(
                alert=f"{prefix}ConsumerGroupLag{_camel(name)}",
                expr=(
                    f'(sum {BY} (runner_consumer_group_lag{{group="{_label(name)}"}}) '
                    f"> {limits.lag_threshold}) {only}"
                ),
                for_=limits.lag_for,
                severity="warning",
                summary=(f"Consumer group {name} is more than {limits.lag_threshold} "
                         "records behind"),
                description=(f"Consumer group {name} lags by {{{{ $value }}}} records on "
                             "{{ $labels.instance }}. See `runner groups describe "
                             f"{name}`."),
            )
        )
    if _handlers(topology):
        ratio = f"{limits.error_ratio:g}"
        out.append(
            Rule(
                alert=f"{prefix}HandlerErrorRatio",
                expr=(
                    f"(sum by (job, instance, consumer) "
                    f"(rate(runner_handler_errors_total[5m])) / sum by (job, instance, consumer) "
                    f"(rate(runner_handler_duration_seconds_count[5m])) > {ratio}) {only}"
                ),
                for_=limits.error_for,
                severity="warning",
                summary=(f"Handler {{{{ $labels.consumer }}}} fails more than "
                         f"{limits.error_ratio:.0%} of its messages"),
                description=(
                    "{{ $value | humanizePercentage }} of the messages handled by "
                    "{{ $labels.consumer }} on {{ $labels.instance }} failed over 5 minutes. "
                    "The daemon's log has one line per failure with its error."
                ),
            )
        )
    out.append(
        Rule(
            alert=f"{prefix}TopologyReloadFailed",
            expr=f"(runner_topology_last_reload_successful == 0) {only}",
            for_="0m",
            severity="warning",
            summary="The last topology reload was refused or invalid",
            description=(
                "{{ $labels.instance }} kept the running topology; `runner status` shows the "
                "last reload error with its file and line. Saving a fixed (or the running) "
                "topology clears this."
            ),
        )
    )
    out.append(
        Rule(
            alert=f"{prefix}Down",
            expr=(f"up == 0 and on (job, instance) "
                  f"last_over_time(runner_topology_info{{name=\"{_label(topology.name or '')}\"}}"
                  "[1h])"),
            for_="1m",
            severity="critical",
            summary=f"A runner daemon of topology {topology.name or '(unnamed)'} is down",
            description=(
                "Prometheus cannot scrape {{ $labels.instance }} (job {{ $labels.job }}), "
                f"which served topology {topology.name or '(unnamed)'} within the last hour."
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
