"""/metrics in-process: every metric from the first scrape, true values after traffic."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from runner.clock import Clock, ManualClock
from runner.daemon.supervisor import DaemonConfig
from runner.engine import Engine, FsyncPolicy
from runner.pipeline.stats import HandlerCounters, PipelineStats
from runner.topology.model import Topology
from tests.daemon.harness import Client, embedded_parts, run_daemon
from tests.daemon.promtool import check_metrics

TOPOLOGY = """\
version: 1
name: metered
topics:
  events: {partitions: 2}
exchanges:
  orders: {type: topic}
queues:
  work: {}
  orders.dlq: {}
bindings:
  - {exchange: orders, queue: work, routing_key: "orders.#"}
dlq_policies:
  standard: {dead_letter_queue: orders.dlq}
consumer_groups:
  external: {topic: events}
  handled: {topic: events, handler: "nowhere:fn"}
consumers:
  mailer: {queue: work, handler: "nowhere:fn", dlq_policy: standard}
"""

EXPECTED = {
    "runner_topic_partition_log_end_offset": {"topic", "partition"},
    "runner_topic_partition_log_start_offset": {"topic", "partition"},
    "runner_topic_partition_size_bytes": {"topic", "partition"},
    "runner_topic_partition_oldest_record_timestamp_seconds": {"topic", "partition"},
    "runner_topic_records": {"topic"},
    "runner_consumer_group_committed_offset": {"group", "topic", "partition"},
    "runner_consumer_group_lag": {"group", "topic", "partition"},
    "runner_consumer_group_members": {"group"},
    "runner_exchange_published": {"exchange"},
    "runner_exchange_unroutable": {"exchange"},
    "runner_queue_messages_ready": {"queue"},
    "runner_queue_messages_unacked": {"queue"},
    "runner_queue_published": {"queue"},
    "runner_queue_delivered": {"queue"},
    "runner_queue_acked": {"queue"},
    "runner_queue_redelivered": {"queue"},
    "runner_queue_dead_lettered": {"queue", "reason"},
    "runner_queue_rejected_publishes": {"queue"},
    "runner_queue_oldest_message_age_seconds": {"queue"},
    "runner_queue_dead_letter_loops": {"queue"},
    "runner_handler_duration_seconds": {"consumer"},
    "runner_handler_retries": {"consumer"},
    "runner_topology_reloads": {"result"},
    "runner_topology_last_reload_timestamp_seconds": set(),
    "runner_topology_info": {"name", "hash"},
    "runner_build_info": {"version"},
    "runner_storage_failed_logs": set(),
}


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(text: str, metric: str, /, **labels: str) -> float:
    return samples(text)[(metric, tuple(sorted(labels.items())))]


def test_every_metric_exists_from_the_first_scrape_with_help_and_labels(tmp_path: Path) -> None:
    async def scenario(c: Client) -> None:
        status, text, headers = await c.call("GET", "/metrics")
        assert status == 200 and headers["Content-Type"].startswith("text/plain")
        families = {f.name: f for f in text_string_to_metric_families(text)}
        for name, labels in EXPECTED.items():
            family = families[name]
            assert family.documentation, name
            assert family.samples, f"{name} has no series"
            for s in family.samples:
                assert set(s.labels) - {"le"} == labels, (name, s.labels)
        # every declared entity, zero where nothing happened
        assert value(text, "runner_queue_messages_ready", queue="orders.dlq") == 0
        assert value(text, "runner_topic_partition_log_end_offset", topic="events",
                     partition="1") == 0
        assert value(text, "runner_topic_partition_oldest_record_timestamp_seconds",
                     topic="events", partition="1") == 0  # empty: 0
        assert value(text, "runner_consumer_group_lag", group="handled", topic="events",
                     partition="0") == 0
        for reason in ("handler_error", "rejected", "expired", "maxlen", "delivery_limit"):
            assert value(text, "runner_queue_dead_lettered_total", queue="work",
                         reason=reason) == 0
        for result in ("applied", "invalid", "refused"):
            assert value(text, "runner_topology_reloads_total", result=result) == 0
        assert value(text, "runner_handler_duration_seconds_count", consumer="mailer") == 0
        assert value(text, "runner_handler_duration_seconds_count", consumer="handled") == 0
        assert ("runner_handler_duration_seconds_count", (("consumer", "external"),)) not in (
            samples(text)
        )
        assert value(text, "runner_topology_info", name="metered",
                     hash=c.supervisor.content_hash) == 1
        assert "process_cpu_seconds_total" in text
        result = check_metrics(text)
        assert result.returncode == 0, result.stdout + result.stderr

    run_daemon(tmp_path, TOPOLOGY, scenario)


def test_values_follow_traffic(tmp_path: Path) -> None:
    async def scenario(c: Client) -> None:
        for i in range(3):
            await c.call("POST", "/v1/exchanges/orders/messages",
                         {"routing_key": "orders.new", "body": i})
        await c.call("POST", "/v1/exchanges/orders/messages", {"routing_key": "x", "body": 0})
        await c.call("POST", "/v1/topics/events/records",
                     {"records": [{"value": 1, "partition": 1}] * 4})
        _, pulled, _ = await c.call("POST", "/v1/queues/work/pull", {"max": 2})
        await c.call("POST", "/v1/queues/work/ack",
                     {"delivery_ids": [pulled["messages"][0]["delivery_id"]]})
        await c.call("POST", "/v1/groups/external/commit",
                     {"offsets": [{"topic": "events", "partition": 1, "offset": 3}]})
        counters = HandlerCounters()
        for seconds in (0.003, 0.02, 0.02, 7.0):
            counters.observe(seconds)
        counters.error("ValueError")
        counters.retries = 2
        c.pipeline.stats_value = PipelineStats(consumers={"mailer": counters.snapshot()})

        _, text, _ = await c.call("GET", "/metrics")
        assert value(text, "runner_exchange_published_total", exchange="orders") == 4
        assert value(text, "runner_exchange_unroutable_total", exchange="orders") == 1
        assert value(text, "runner_queue_published_total", queue="work") == 3
        assert value(text, "runner_queue_messages_ready", queue="work") == 1
        assert value(text, "runner_queue_messages_unacked", queue="work") == 1
        assert value(text, "runner_queue_delivered_total", queue="work") == 2
        assert value(text, "runner_queue_acked_total", queue="work") == 1
        assert value(text, "runner_topic_partition_log_end_offset", topic="events",
                     partition="1") == 4
        assert value(text, "runner_topic_records_total", topic="events") == 4
        assert value(text, "runner_consumer_group_committed_offset", group="external",
                     topic="events", partition="1") == 3
        assert value(text, "runner_handler_duration_seconds_bucket", consumer="mailer",
                     le="0.005") == 1
        assert value(text, "runner_handler_duration_seconds_bucket", consumer="mailer",
                     le="0.025") == 3
        assert value(text, "runner_handler_duration_seconds_bucket", consumer="mailer",
                     le="+Inf") == 4
        assert value(text, "runner_handler_duration_seconds_count", consumer="mailer") == 4
        assert abs(value(text, "runner_handler_duration_seconds_sum", consumer="mailer")
                   - 7.043) < 1e-9
        assert value(text, "runner_handler_errors_total", consumer="mailer",
                     error_type="ValueError") == 1
        assert value(text, "runner_handler_retries_total", consumer="mailer") == 2
        result = check_metrics(text)
        assert result.returncode == 0, result.stdout + result.stderr

    run_daemon(tmp_path, TOPOLOGY, scenario)


def test_the_oldest_record_timestamp_is_the_first_records_on_a_real_engine(
    tmp_path: Path,
) -> None:
    clock = ManualClock(1_700_000_000.25)

    def open_engine(topology: Topology, config: DaemonConfig, _clock: Clock) -> Engine:
        return Engine.open(topology, config.data_dir, fsync=FsyncPolicy.NEVER, clock=clock)

    parts = replace(embedded_parts(), open_engine=open_engine, clock=clock)
    oldest = "runner_topic_partition_oldest_record_timestamp_seconds"

    async def scenario(c: Client) -> None:
        _, text, _ = await c.call("GET", "/metrics")
        assert value(text, oldest, topic="events", partition="1") == 0
        await c.call("POST", "/v1/topics/events/records",
                     {"records": [{"value": i, "partition": 1} for i in range(3)]})
        clock.advance(90.5)
        await c.call("POST", "/v1/topics/events/records", {"value": 9, "partition": 1})
        await c.call("POST", "/v1/topics/events/records", {"value": 8, "partition": 0})
        _, text, _ = await c.call("GET", "/metrics")
        assert value(text, oldest, topic="events", partition="1") == 1_700_000_000.25
        assert value(text, oldest, topic="events", partition="0") == 1_700_000_090.75
        _, read, _ = await c.call("GET", "/v1/topics/events/partitions/1/records?offset=0")
        assert read["records"][0]["timestamp"] == 1_700_000_000_250  # the same record, in ms
        result = check_metrics(text)
        assert result.returncode == 0, result.stdout + result.stderr

    run_daemon(tmp_path, TOPOLOGY, scenario, parts=parts)
