"""A consumer group's commit and reset over RabbitMQ, against the embedded daemon: a
daemon over a fresh vhost and an embedded daemon run the same topology (a group `ext`
without a handler, read by HTTP clients, and a group `hg` with one) and hold the same
records; every answer and every refusal (status and sentence) must be the same."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from runner.backends.rabbitmq.url import Target
from tests.e2e.conftest import Daemon, make_daemon, wait_for
from tests.rmq import url

HANDLERS = '''\
import json
import time


def record(msg):
    with open("handled.log", "a") as fh:
        fh.write(json.dumps({"p": msg.partition, "offset": msg.offset}) + "\\n")
'''

TOPOLOGY = """\
version: 1
name: rmq-group-ops
topics:
  ev: {partitions: 2}
  side: {partitions: 1}
consumer_groups:
  ext: {topics: [ev, side], offset_reset: earliest}
  hg: {topic: side, handler: "h:record", offset_reset: earliest}
"""

# records per partition of `ev`, the same on both daemons
COUNTS = {0: 3, 1: 5}


class Pair:
    def __init__(self, remote: Daemon, embedded: Daemon) -> None:
        self.remote = remote
        self.embedded = embedded

    @property
    def both(self) -> tuple[Daemon, Daemon]:
        return self.remote, self.embedded

    def same(self, method: str, path: str, body: Any = None) -> Any:
        """Both daemons' 200 answer, asserted equal."""
        got = [d.ok(method, path, body) for d in self.both]
        assert got[0] == got[1], got
        return got[0]

    def same_error(self, method: str, path: str, body: Any = None, *,
                   raw: bytes | None = None) -> tuple[int, str]:
        got = []
        for d in self.both:
            answer = d.request(method, path, body, raw=raw)
            assert 400 <= answer.status < 500, (d.args, answer.status, answer.body)
            got.append((answer.status, answer.body["error"]))
        assert got[0] == got[1], got
        return got[0]


@pytest.fixture
def pair(tmp_path: Any, vhost: Target) -> Iterator[Pair]:
    remote = make_daemon(tmp_path / "remote", TOPOLOGY, modules={"h": HANDLERS},
                         args=["--backend", url(vhost), "--no-watch"])
    embedded = make_daemon(tmp_path / "embedded", TOPOLOGY, modules={"h": HANDLERS},
                           args=["--no-watch"])
    remote.start()
    try:
        embedded.start()
        p = Pair(remote, embedded)
        for d in p.both:
            for part, n in COUNTS.items():
                d.ok("POST", "/v1/topics/ev/records", {"records": [
                    {"value": {"p": part, "i": i}, "partition": part} for i in range(n)]},
                    status=202)
            d.ok("POST", "/v1/topics/side/records", {"value": {"s": 1}}, status=202)
        yield p
    finally:
        for d in (remote, embedded):
            if d.running:
                d.stop()


def committed(d: Daemon, group: str = "ext") -> dict[tuple[str, int], int | None]:
    return {(p["topic"], p["partition"]): p["committed"]
            for p in d.ok("GET", f"/v1/groups/{group}")["partitions"]}


def test_an_http_client_reads_a_group_and_commits_as_on_the_embedded_daemon(
        pair: Pair) -> None:
    before = pair.same("GET", "/v1/groups/ext")
    assert before["members"] == []
    assert [(p["topic"], p["partition"], p["committed"], p["position"], p["lag"])
            for p in before["partitions"]] == [
        ("ev", 0, None, 0, 3), ("ev", 1, None, 0, 5), ("side", 0, None, 0, 1)]
    assert pair.same("POST", "/v1/groups/ext/commit", {"offsets": [
        {"topic": "ev", "partition": 0, "offset": 2},
        {"topic": "ev", "partition": 1, "offset": 5}]}) == {"committed": 2}
    for d in pair.both:
        assert committed(d) == {("ev", 0): 2, ("ev", 1): 5, ("side", 0): None}
    assert pair.same("POST", "/v1/groups/ext/commit", {"offsets": []}) == {"committed": 0}
    # the log end is a valid commit; a later commit replaces the earlier one
    pair.same("POST", "/v1/groups/ext/commit", {"offsets": [
        {"topic": "ev", "partition": 0, "offset": 3}]})
    after = pair.same("GET", "/v1/groups/ext")
    assert [(p["committed"], p["lag"]) for p in after["partitions"]] == [
        (3, 0), (5, 0), (None, 1)]
    assert after["lag"] == 1
    # `runner consume --group`: the group's positions, what it prints committed
    for d in pair.both:
        pair.same("POST", "/v1/groups/ext/commit", {"offsets": [
            {"topic": "ev", "partition": 1, "offset": 3}]})
        done = d.cli("consume", "--topic", "ev", "--group", "ext")
        assert done.returncode == 0, done
        assert [json.loads(line)["value"] for line in done.stdout.splitlines()] == [
            {"p": 1, "i": 3}, {"p": 1, "i": 4}]
        assert committed(d)[("ev", 1)] == 5
        done = d.cli("consume", "--topic", "ev", "--group", "ext")
        assert (done.returncode, done.stdout) == (0, "")


def test_commit_refusals_are_the_embedded_daemons(pair: Pair) -> None:
    def commit(*offsets: Any) -> tuple[int, str]:
        return pair.same_error("POST", "/v1/groups/ext/commit", {"offsets": list(offsets)})

    assert pair.same_error("POST", "/v1/groups/nope/commit", {"offsets": []}) == (
        404, "consumer group 'nope' not found")
    assert pair.same_error("POST", "/v1/groups/ext/commit", {}) == (
        400, "missing field 'offsets' (an array of {\"topic\", \"partition\", \"offset\"})")
    assert pair.same_error("POST", "/v1/groups/ext/commit", {"offsets": {"a": 1}}) == (
        400, "'offsets' must be an array of {\"topic\", \"partition\", \"offset\"}")
    assert pair.same_error("POST", "/v1/groups/ext/commit", raw=b"{")[0] == 400
    assert commit(3) == (400, "offsets[0] must be a JSON object, got a number")
    assert commit({"partition": 0, "offset": 1}) == (
        400, "offsets[0]: missing field 'topic' (a string)")
    assert commit({"topic": "ev", "partition": 0, "offset": 1},
                  {"topic": "nope", "partition": 0, "offset": 1}) == (
        404, "consumer group 'ext' does not read topic 'nope'")
    assert commit({"topic": "ev", "partition": 2, "offset": 1}) == (
        404, "topic 'ev' has no partition 2 (it has 2: 0..1)")
    assert commit({"topic": "ev", "partition": 0}) == (
        400, "offsets[0]: missing field 'offset' (an integer)")
    status, text = commit({"topic": "ev", "partition": 0, "offset": -1})
    assert (status, text.startswith("offsets[0]: 'offset' must be")) == (400, True), text
    assert commit({"topic": "ev", "partition": 0, "offset": "x"})[0] == 400
    assert commit({"topic": "ev", "partition": 1, "offset": 6}) == (
        400, "offset 6 for ev/1 is outside 0..5")
    assert commit(*[{"topic": "ev", "partition": 0, "offset": 0}] * 10_001) == (
        413, "the batch holds 10001 offsets, over the limit of 10000 a request; split it "
        "into smaller batches")
    assert pair.same_error("POST", "/v1/groups/hg/commit", {"offsets": [
        {"topic": "side", "partition": 0, "offset": 1}]}) == (
        409, "group hg is run by this daemon's handler; use POST /v1/groups/hg/offsets to "
        "seek it")
    for d in pair.both:  # nothing was committed by any of them
        assert committed(d) == {("ev", 0): None, ("ev", 1): None, ("side", 0): None}


def test_reset_moves_clamps_and_dry_runs_as_on_the_embedded_daemon(pair: Pair) -> None:
    def reset(body: dict[str, Any], group: str = "ext") -> list[tuple[Any, ...]]:
        got = pair.same("POST", f"/v1/groups/{group}/reset", body)
        assert (got["group"], got["dry_run"]) == (group, bool(body.get("dry_run")))
        return [(p["topic"], p["partition"], p["old"], p["new"], p.get("note"))
                for p in got["partitions"]]

    assert reset({"to": "latest", "dry_run": True}) == [
        ("ev", 0, 0, 3, None), ("ev", 1, 0, 5, None), ("side", 0, 0, 1, None)]
    for d in pair.both:  # a dry run changes nothing
        assert committed(d) == {("ev", 0): None, ("ev", 1): None, ("side", 0): None}
    assert reset({"to": "latest", "topic": "ev"}) == [
        ("ev", 0, 0, 3, None), ("ev", 1, 0, 5, None)]
    assert reset({"to": "shift", "by": -2}) == [
        ("ev", 0, 3, 1, None), ("ev", 1, 5, 3, None), ("side", 0, 0, 0, "-2 is below the "
                                                       "log start; set to 0")]
    assert reset({"to": "offset", "offset": 4}) == [
        ("ev", 0, 1, 3, "4 is above the log end; set to 3"), ("ev", 1, 3, 4, None),
        ("side", 0, 0, 1, "4 is above the log end; set to 1")]
    for d in pair.both:
        assert committed(d) == {("ev", 0): 3, ("ev", 1): 4, ("side", 0): 1}
    assert reset({"to": "earliest", "topic": "ev"}) == [
        ("ev", 0, 3, 0, None), ("ev", 1, 4, 0, None)]
    assert reset({"to": "timestamp", "timestamp": 4_102_444_800_000}) == [  # 2100
        ("ev", 0, 0, 3, None), ("ev", 1, 0, 5, None), ("side", 0, 1, 1, None)]
    assert reset({"to": "timestamp", "timestamp": 0, "topic": "ev"}) == [
        ("ev", 0, 3, 0, None), ("ev", 1, 5, 0, None)]
    # a group run by a handler is reset as it is sought: its owner reads again
    for d in pair.both:
        wait_for(lambda d=d: len(handled(d)) == 1, timeout_s=30)
        wait_for(lambda d=d: committed(d, "hg") == {("side", 0): 1}, timeout_s=30)
    assert reset({"to": "earliest"}, "hg") == [("side", 0, 1, 0, None)]
    for d in pair.both:
        wait_for(lambda d=d: len(handled(d)) == 2, timeout_s=30)
        assert [x["offset"] for x in handled(d)] == [0, 0]


def handled(d: Daemon) -> list[dict[str, Any]]:
    path = d.workdir / "handled.log"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_reset_refusals_are_the_embedded_daemons(pair: Pair) -> None:
    def reset(body: Any, group: str = "ext") -> tuple[int, str]:
        return pair.same_error("POST", f"/v1/groups/{group}/reset", body)

    assert reset({"to": "earliest"}, "nope") == (404, "consumer group 'nope' not found")
    assert reset({}) == (400, "missing field 'to' (a string)")
    assert reset({"to": "start"}) == (
        400, "'to' must be one of earliest, latest, offset, timestamp, shift, got 'start'")
    assert reset({"to": "latest", "offset": 3}) == (
        400, "'offset' goes with \"to\": \"offset\", not \"latest\"")
    assert reset({"to": "offset", "by": 3}) == (
        400, "'by' goes with \"to\": \"shift\", not \"offset\"")
    assert reset({"to": "earliest", "timestamp": 3}) == (
        400, "'timestamp' goes with \"to\": \"timestamp\", not \"earliest\"")
    assert reset({"to": "offset"}) == (400, "missing field 'offset' (an integer)")
    assert reset({"to": "shift"}) == (400, "missing field 'by' (an integer)")
    assert reset({"to": "timestamp"}) == (400, "missing field 'timestamp' (an integer)")
    assert reset({"to": "offset", "offset": -1})[0] == 400
    assert reset({"to": "latest", "dry_run": "yes"})[0] == 400
    assert reset({"to": "latest", "topic": "zzz"}) == (
        404, "consumer group 'ext' does not read topic 'zzz' (it reads ev, side)")
    assert reset({"to": "latest", "extra": 1})[0] == 400
    assert pair.same_error("POST", "/v1/groups/ext/reset", raw=b"[1]")[0] == 400
    for d in pair.both:  # nothing moved
        assert committed(d) == {("ev", 0): None, ("ev", 1): None, ("side", 0): None}


SERIES = ("runner_consumer_group_committed_offset", "runner_consumer_group_lag",
          "runner_consumer_group_members", "runner_topic_partition_log_end_offset",
          "runner_topic_partition_log_start_offset")


def series(d: Daemon) -> dict[str, float]:
    """The group and topic offset series of a scrape: {'name{labels}': value}."""
    out = {}
    for line in d.metrics().splitlines():
        if line.startswith(SERIES):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def test_metrics_have_the_embedded_daemons_group_series(pair: Pair) -> None:
    pair.same("POST", "/v1/groups/ext/commit", {"offsets": [
        {"topic": "ev", "partition": 1, "offset": 2}]})
    for d in pair.both:  # hg handled its record and committed past it
        wait_for(lambda d=d: committed(d, "hg") == {("side", 0): 1}, timeout_s=30)
    want = series(pair.embedded)
    assert want['runner_consumer_group_lag{group="ext",partition="1",topic="ev"}'] == 3
    assert want['runner_consumer_group_committed_offset{group="ext",partition="1",'
                'topic="ev"}'] == 2
    assert want['runner_consumer_group_committed_offset{group="ext",partition="0",'
                'topic="ev"}'] == 0  # never committed: the reset position (earliest)
    assert want['runner_consumer_group_lag{group="ext",partition="0",topic="ev"}'] == 3
    assert want['runner_consumer_group_members{group="hg"}'] == 1
    assert want['runner_consumer_group_members{group="ext"}'] == 0
    assert want['runner_topic_partition_log_end_offset{partition="1",topic="ev"}'] == 5
    assert len(want) == 2 * 3 + 2 * 1 + 2 + 2 * 3  # ext: 3 partitions, hg: 1; 3 partitions
    # the remote daemon's series are cached for up to 5 s (and a refresh)
    wait_for(lambda: series(pair.remote) == want, timeout_s=30)
    # a commit shows up within the cache's age
    pair.same("POST", "/v1/groups/ext/commit", {"offsets": [
        {"topic": "ev", "partition": 1, "offset": 5}]})
    wanted = 'runner_consumer_group_lag{group="ext",partition="1",topic="ev"}'
    assert series(pair.embedded)[wanted] == 0
    started = time.monotonic()
    wait_for(lambda: series(pair.remote)[wanted] == 0, timeout_s=30)
    assert time.monotonic() - started < 15
    assert series(pair.remote) == series(pair.embedded)
