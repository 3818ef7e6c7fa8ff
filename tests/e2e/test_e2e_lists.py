"""The list routes (`GET /v1/queues|exchanges|bindings|topics|groups`, `GET /`) and the
`runner queues|exchanges|bindings|topics|groups` commands, against the real daemon."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import RUNNER, Daemon, module_daemon

pytestmark = pytest.mark.e2e

TOKEN = "lists-token"

TOPOLOGY = """\
version: 1
name: lists
topics:
  events: {partitions: 2, retention: {time: 1h}}
  audit: {cleanup_policy: compact}
exchanges:
  orders: {type: topic, alternate_exchange: lost}
  lost: {type: fanout}
  dlx: {type: fanout, internal: true}
  hx: {type: headers}
queues:
  work: {max_length: 5, overflow: reject-publish, dead_letter: {exchange: dlx}}
  work.dlq: {}
  lost-q: {}
  hq: {}
bindings:
  - {exchange: orders, queue: work, routing_key: "orders.#"}
  - {exchange: orders, topic: events, routing_key: "orders.*"}
  - {exchange: lost, queue: lost-q}
  - {exchange: dlx, queue: work.dlq}
  - {exchange: hx, queue: hq, match: any, headers: {region: eu, tier: gold}}
consumer_groups:
  readers: {topic: events}
"""


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    yield from module_daemon(tmp_path_factory.mktemp("lists"), TOPOLOGY, token=TOKEN)


@pytest.fixture(scope="module", autouse=True)
def traffic(daemon: Daemon) -> None:
    daemon.ok("POST", "/v1/exchanges/orders/messages",
              {"messages": [{"routing_key": "orders.created", "body": i} for i in range(3)]}, 202)
    daemon.ok("POST", "/v1/exchanges/orders/messages", {"routing_key": "x", "body": 9}, 202)
    daemon.ok("POST", "/v1/topics/audit/records", {"key": "k", "value": 1}, 202)


def cli(daemon: Daemon, *args: str, env: dict[str, str] | None = None,
        url: bool = True) -> tuple[int, str, str]:
    import subprocess

    full_env = {**daemon.env, "RUNNER_TOKEN": TOKEN, **(env or {})}
    cmd = [str(RUNNER), *args, *(["--url", daemon.url] if url else [])]
    done = subprocess.run(cmd, cwd=daemon.workdir, env=full_env, capture_output=True,
                          text=True, timeout=60, check=False)
    return done.returncode, done.stdout, done.stderr


# ------------------------------------------------------------------ HTTP


def test_index_says_where_things_are_without_a_token(daemon: Daemon) -> None:
    answer = daemon.get("/", token=False)
    assert answer.status == 200
    assert answer.headers["Content-Type"].startswith("application/json")
    links = answer.body["links"]
    assert links["queues"] == "/v1/queues" and links["groups"] == "/v1/groups"
    assert links["metrics"] == "/metrics"
    for path in links.values():  # every link answers
        assert daemon.get(path).status == 200, path


def test_lists_need_the_token(daemon: Daemon) -> None:
    for kind in ("queues", "exchanges", "bindings", "topics", "groups"):
        assert daemon.get(f"/v1/{kind}", token=False).status == 401


def test_queues_list_has_settings_and_depth(daemon: Daemon) -> None:
    queues = {q["name"]: q for q in daemon.ok("GET", "/v1/queues")["queues"]}
    assert list(queues) == sorted(queues)
    assert set(queues) == {"work", "work.dlq", "lost-q", "hq", "__replay.readers"}
    work = queues["work"]
    assert work["ready"] == 3 and work["unacked"] == 0
    assert work["max_length"] == 5 and work["overflow"] == "reject-publish"
    assert work["dead_letter_exchange"] == "dlx" and not work["dead_letter_queue"]
    assert queues["work.dlq"]["dead_letter_queue"] is True
    assert queues["lost-q"]["ready"] == 1  # the unroutable one, through the alternate
    assert queues["__replay.readers"]["internal"] is True
    assert queues["__replay.readers"]["consumers"] == ["readers"]


def test_exchanges_list_has_types_and_counts(daemon: Daemon) -> None:
    exchanges = {x["name"]: x for x in daemon.ok("GET", "/v1/exchanges")["exchanges"]}
    assert exchanges["orders"] == {
        "name": "orders", "type": "topic", "durable": True, "internal": False,
        "alternate_exchange": "lost", "bindings": 2, "published": 4, "unroutable": 0,
    }
    assert exchanges["dlx"]["internal"] is True and exchanges["hx"]["type"] == "headers"


def test_bindings_list(daemon: Daemon) -> None:
    bindings = daemon.ok("GET", "/v1/bindings")["bindings"]
    assert {"exchange": "orders", "destination": "events", "destination_kind": "topic",
            "routing_key": "orders.*", "match": None, "headers": {}} in bindings
    headers = next(b for b in bindings if b["exchange"] == "hx")
    assert headers["match"] == "any" and headers["headers"] == {"region": "eu", "tier": "gold"}


def test_topics_list(daemon: Daemon) -> None:
    topics = {t["name"]: t for t in daemon.ok("GET", "/v1/topics")["topics"]}
    events = topics["events"]
    assert events["partitions"] == 2 and events["records"] == 3
    assert events["retention_s"] == 3600 and events["groups"] == ["readers"]
    assert [p["partition"] for p in events["partition_offsets"]] == [0, 1]
    assert sum(p["log_end_offset"] for p in events["partition_offsets"]) == 3
    assert topics["audit"]["cleanup_policy"] == ["compact"] and topics["audit"]["records"] == 1


def test_groups_list(daemon: Daemon) -> None:
    (group,) = daemon.ok("GET", "/v1/groups")["groups"]
    assert group["name"] == "readers" and group["external"] is True
    assert group["topics"] == ["events"] and group["partitions"] == 2 and group["lag"] == 3


# ------------------------------------------------------------------ CLI


def test_runner_queues_prints_a_table(daemon: Daemon) -> None:
    code, out, err = cli(daemon, "queues")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["queue", "ready", "unacked", "delayed", "oldest", "consumers",
                                "notes"]
    work = next(line for line in lines if line.startswith("work "))
    assert work.split()[:4] == ["work", "3", "0", "0"]
    assert "dlx=dlx" in work and "max_length=5 (reject-publish)" in work
    assert "dead letters" in next(line for line in lines if line.startswith("work.dlq"))


@pytest.mark.parametrize("kind", ["queues", "exchanges", "bindings", "topics", "groups"])
def test_format_json_prints_the_daemons_document(daemon: Daemon, kind: str) -> None:
    code, out, err = cli(daemon, kind, "--format", "json")
    assert code == 0, err
    doc = json.loads(out)
    assert list(doc) == [kind]
    if kind == "queues":  # ages move between two calls; the rest is stable
        for q in doc["queues"]:
            q.pop("oldest_ready_age_s")
        again = daemon.ok("GET", "/v1/queues")
        for q in again["queues"]:
            q.pop("oldest_ready_age_s")
        assert doc == again
    else:
        assert doc == daemon.ok("GET", f"/v1/{kind}")


def test_tables_of_exchanges_bindings_topics_groups(daemon: Daemon) -> None:
    def row(kind: str, first: str) -> list[str]:
        code, out, err = cli(daemon, kind)
        assert code == 0, err
        return next(line.split() for line in out.splitlines() if line.startswith(first + " "))

    assert row("exchanges", "orders") == ["orders", "topic", "2", "4", "0", "alternate=lost"]
    assert row("exchanges", "dlx") == ["dlx", "fanout", "1", "0", "0", "internal"]
    assert row("bindings", "hx") == ["hx", "queue", "hq", "''", "any:", "region=eu,tier=gold"]
    assert row("topics", "events") == ["events", "2", "3", row("topics", "events")[3],
                                       "delete", "3600s", "readers"]
    assert row("groups", "readers") == ["readers", "events", "0", "2", "3", "(external)"]


def test_a_bad_format_is_a_usage_error(daemon: Daemon) -> None:
    code, _, err = cli(daemon, "queues", "--format", "yaml")
    assert code == 2 and "invalid choice: 'yaml'" in err


def test_runner_url_and_a_url_without_scheme(daemon: Daemon) -> None:
    code, out, err = cli(daemon, "groups", env={"RUNNER_URL": daemon.url}, url=False)
    assert code == 0 and "readers" in out, err
    code, out, err = cli(daemon, "groups", "--url", f"127.0.0.1:{daemon.port}", url=False)
    assert code == 0 and "readers" in out, err
    # --url wins over RUNNER_URL
    code, out, err = cli(daemon, "groups", "--url", daemon.url, url=False,
                         env={"RUNNER_URL": "http://127.0.0.1:9"})
    assert code == 0, err


def test_a_url_with_another_scheme_is_a_usage_error(tmp_path: Path) -> None:
    from tests.cli.console import run

    done = run(tmp_path, "queues", "--url", "ftp://127.0.0.1:1")
    assert done.returncode == 2
    assert "--url must be an http:// or https:// URL, got 'ftp://127.0.0.1:1'" in done.stderr
