"""`runner route` through the real console script: paths, partitions, timelines, formats."""

from __future__ import annotations

import json
from pathlib import Path

from runner.log.partitioner import partition_for_key
from tests.cli.console import run, write

REPO = Path(__file__).resolve().parents[2]

TOPOLOGY = """\
version: 1
topics:
  events: {partitions: 12}
exchanges:
  orders: {type: topic, alternate_exchange: unrouted}
  unrouted: {type: fanout}
  docs: {type: headers}
  hidden: {type: direct, internal: true}
  dlx: {type: fanout}
queues:
  work: {dead_letter: {exchange: dlx}, delivery_limit: 10}
  lost: {}
  parked: {message_ttl: 2h, dead_letter: {exchange: dlx}}
  pdf: {}
  dead: {}
bindings:
  - {exchange: orders, queue: work, routing_key: "orders.*"}
  - {exchange: orders, topic: events, routing_key: "orders.#"}
  - {exchange: orders, queue: lost, routing_key: "lost.#"}
  - {exchange: unrouted, queue: parked}
  - {exchange: docs, queue: pdf, headers: {format: pdf}}
  - {exchange: dlx, queue: dead}
dlq_policies:
  exp:
    max_retries: 4
    backoff: {initial: 1s, multiplier: 3, max: 20s}
consumers:
  workers: {queue: work, handler: not_imported:at_all, dlq_policy: exp}
  careless: {queue: lost, handler: not_imported:either}
consumer_groups:
  readers: {topic: events, handler: not_imported:g, dlq_policy: exp}
  outsiders: {topic: events}
"""


def _topology(tmp_path: Path) -> Path:
    return write(tmp_path / "t.yaml", TOPOLOGY)


def test_text_shows_path_destinations_and_who_consumes(tmp_path: Path) -> None:
    _topology(tmp_path)
    result = run(tmp_path, "route", "t.yaml", "--exchange", "orders", "--key", "orders.created")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[:4] == [
        'message: exchange orders, routing key "orders.created"',
        '  published to exchange orders (topic) -> queue work (binding "orders.*"), '
        'topic events (binding "orders.#")',
        "lands in:",
        "  queue work (delivery_limit 10, dead_letter dlx)",
    ]
    out = result.stdout
    assert ("    consumer workers: not_imported:at_all, at-least-once; policy exp: 4 retries, "
            "backoff initial 1s, multiplier 3.0, max 20s, jitter 0.0, then the queue's "
            "dead_letter exchange, if any") in out
    assert "  topic events partition " in out
    assert "    group outsiders: no handler, at-least-once; external (consumed over HTTP)" in out


def test_a_topic_key_goes_to_kafkas_partition(tmp_path: Path) -> None:
    _topology(tmp_path)
    for key in ("ORD-1", "customer-42", "ü"):
        result = run(tmp_path, "route", "t.yaml", "--topic", "events", "--key", key,
                     "--format", "json")
        assert result.returncode == 0, result.stderr
        (dest,) = json.loads(result.stdout)["destinations"]
        assert dest["partition"] == partition_for_key(key.encode(), 12)
        assert dest["key"] == key


def test_alternate_exchange_and_ttl_expiry(tmp_path: Path) -> None:
    _topology(tmp_path)
    result = run(tmp_path, "route", "t.yaml", "--exchange", "orders", "--key", "invoices.x")
    assert result.returncode == 0, result.stderr
    assert result.stdout == (
        'message: exchange orders, routing key "invoices.x"\n'
        "  published to exchange orders (topic) -> no binding matches\n"
        "  alternate of orders (nothing matched there): exchange unrouted (fanout) -> "
        "queue parked\n"
        "lands in:\n"
        "  queue parked (message_ttl 2h, dead_letter dlx)\n"
        "    unconsumed, it expires into queue dead (reason expired)\n"
        "    no consumer in this topology: read it over HTTP\n"
    )


def test_headers_exchange_and_nowhere_exits_1(tmp_path: Path) -> None:
    _topology(tmp_path)
    hit = run(tmp_path, "route", "t.yaml", "--exchange", "docs", "--header", "format=pdf")
    assert hit.returncode == 0
    assert "-> queue pdf" in hit.stdout
    miss = run(tmp_path, "route", "t.yaml", "--exchange", "docs", "--header", "format=doc",
               "--format", "json")
    assert miss.returncode == 1
    doc = json.loads(miss.stdout)
    assert doc["nowhere"] is True and doc["destinations"] == []
    assert doc["path"] == [{"exchange": "docs", "type": "headers", "via": "publish",
                            "from": None, "matched": []}]


def test_fail_timeline_uses_the_policy_and_shows_the_dead_letter(tmp_path: Path) -> None:
    _topology(tmp_path)
    result = run(tmp_path, "route", "t.yaml", "--exchange", "orders", "--key", "orders.new",
                 "--fail", "9", "--format", "json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    work = doc["destinations"][0]
    (workers,) = work["handlers"]
    timeline = workers["timeline"]
    # exponential 1s x3 capped at 20s: 1, 3, 9, 20; then 4 retries are exhausted
    assert [e.get("retry_in") for e in timeline["events"]] == [1.0, 3.0, 9.0, 20.0, None]
    assert [e["at"] for e in timeline["events"]] == [0.0, 1.0, 4.0, 13.0, 33.0]
    assert timeline["events"][-1]["gave_up"] == "4 retries exhausted"
    assert timeline["outcome"] == "dead-lettered"
    (dead,) = timeline["dead_letters"]
    assert (dead["kind"], dead["name"]) == ("queue", "dead")  # through the queue's dlx
    header = dead["header"]
    assert header["reason"] == "handler_error"
    assert header["retry_count"] == 4
    assert header["error"]["type"] == "RuntimeError"
    assert header["original_queue"] == "work"
    assert header["original_routing_key"] == "orders.new"
    topic = doc["destinations"][1]
    readers = next(h for h in topic["handlers"] if h["name"] == "readers")
    assert readers["timeline"]["outcome"] == "dropped"  # no dead_letter_queue for a group
    assert "timeline" not in next(h for h in topic["handlers"] if h["name"] == "outsiders")


def test_fail_fewer_times_than_the_retries_succeeds(tmp_path: Path) -> None:
    _topology(tmp_path)
    result = run(tmp_path, "route", "t.yaml", "--exchange", "orders", "--key", "orders.new",
                 "--fail", "2")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    start = lines.index("    consumer workers: not_imported:at_all, at-least-once; policy exp: "
                        "4 retries, backoff initial 1s, multiplier 3.0, max 20s, jitter 0.0, "
                        "then the queue's dead_letter exchange, if any")
    assert lines[start + 1:start + 4] == [
        "        +0s  attempt 1 fails (RuntimeError: simulated failure): retry in 1s",
        "        +1s  attempt 2 fails (RuntimeError: simulated failure): retry in 3s",
        "        +4s  attempt 3 succeeds",
    ]


def test_a_consumer_without_any_dead_letter_target_drops(tmp_path: Path) -> None:
    _topology(tmp_path)
    result = run(tmp_path, "route", "t.yaml", "--exchange", "orders", "--key", "lost.x",
                 "--fail", "10")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    # no dlq_policy: the defaults, 3 retries after 1s, 5s, 30s
    assert lines[-2:] == [
        "        +36s  attempt 4 fails (RuntimeError: simulated failure): gives up "
        "(3 retries exhausted)",
        "        dropped: no dlq_policy dead_letter_queue and no dead_letter on the queue "
        "(logged and counted)",
    ]


def test_shipped_topology_timeline_in_text(tmp_path: Path) -> None:
    result = run(REPO, "route", "topologies/", "--exchange", "orders", "--key",
                 "orders.created", "--body", '{"order_id": "ORD-1042"}', "--fail", "5")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert ("  topic order-events partition 7 of 10 (murmur2, key from the body's order_id "
            "field)") in out
    assert "        +36s  attempt 4 fails (RuntimeError: simulated failure): gives up " \
           "(3 retries exhausted)" in out
    assert "        dead letter -> queue orders.dlq, header x-dead-letter:" in out
    assert '            "original_group": "order-processing",' in out


def test_refusals_and_usage(tmp_path: Path) -> None:
    _topology(tmp_path)
    internal = run(tmp_path, "route", "t.yaml", "--exchange", "hidden", "--key", "k")
    assert internal.returncode == 1
    assert internal.stderr == ("runner route: exchange 'hidden' is internal: only other "
                               "exchanges may publish to it\n")
    unknown = run(tmp_path, "route", "t.yaml", "--exchange", "order", "--key", "k")
    assert unknown.returncode == 2
    assert unknown.stderr == ('runner route: the topology has no exchange \'order\'; did you '
                              'mean "orders"?\n')
    missing = run(tmp_path, "route", "nope.yaml", "--topic", "events")
    assert (missing.returncode, missing.stderr) == (
        2, "runner route: nope.yaml: no such file or directory\n")
    bad_header = run(tmp_path, "route", "t.yaml", "--exchange", "docs", "--header", "novalue")
    assert (bad_header.returncode, bad_header.stderr) == (
        2, "runner route: --header 'novalue': give it as NAME=VALUE\n")
    bad_body = run(tmp_path, "route", "t.yaml", "--exchange", "docs", "--body", "{")
    assert bad_body.returncode == 2
    assert bad_body.stderr.startswith("runner route: --body is not JSON: ")
    both = run(tmp_path, "route", "t.yaml", "--exchange", "docs", "--topic", "events")
    assert both.returncode == 2
    assert "not allowed with argument" in both.stderr


def test_delivery_limit_ends_the_retries_early(tmp_path: Path) -> None:
    write(tmp_path / "dl.yaml", """\
        version: 1
        exchanges: {x: {type: fanout}, dlx: {type: fanout}}
        queues:
          q: {delivery_limit: 2, dead_letter: {exchange: dlx}}
          dead: {}
        bindings: [{exchange: x, queue: q}, {exchange: dlx, queue: dead}]
        consumers: {c: {queue: q, handler: "a:b"}}
        """)
    result = run(tmp_path, "route", "dl.yaml", "--exchange", "x", "--fail", "5",
                 "--format", "json")
    assert result.returncode == 0, result.stderr
    timeline = json.loads(result.stdout)["destinations"][0]["handlers"][0]["timeline"]
    assert [e.get("retry_in") for e in timeline["events"]] == [1.0, None]
    assert timeline["events"][-1]["gave_up"] == "delivery_limit reached (2 deliveries)"
    (dead,) = timeline["dead_letters"]
    assert (dead["name"], dead["header"]["reason"]) == ("dead", "delivery_limit")
