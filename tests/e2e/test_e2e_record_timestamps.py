"""Producer-set record timestamps over HTTP (TOPOLOGY.md 1.1): stored and read back,
used by time seeks and time retention; bad values are 400 naming the field."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.e2e.conftest import Daemon, error_of, wait_for

pytestmark = pytest.mark.e2e

TOPOLOGY = """\
version: 1
topics:
  events: {partitions: 1}
  short: {partitions: 1, retention: {time: 1h}}
consumer_groups:
  readers: {topic: events}
"""

T0 = 1_700_000_000_000


def test_timestamps_are_stored_sought_and_retained(start_daemon: Callable[..., Daemon]) -> None:
    d = start_daemon(TOPOLOGY)
    d.ok("POST", "/v1/topics/events/records", {"records": [
        {"value": "a", "timestamp": T0}, {"value": "b", "timestamp": T0 + 60_000},
        {"value": "c"}]}, 202)
    got = d.ok("GET", "/v1/topics/events/partitions/0/records?offset=0")["records"]
    assert [r["timestamp"] for r in got[:2]] == [T0, T0 + 60_000]
    assert got[2]["timestamp"] > T0 + 60_000  # the append time
    sought = d.ok("POST", "/v1/groups/readers/offsets",
                  {"topic": "events", "partition": 0, "timestamp": T0 + 1})
    assert sought["offset"] == 1
    # a record dated 1970 on a topic that keeps 1h is past retention at once
    d.ok("POST", "/v1/topics/short/records", {"value": "old", "timestamp": 1000}, 202)

    def start() -> int:
        topic = next(t for t in d.ok("GET", "/v1/status")["topics"] if t["name"] == "short")
        return int(topic["partitions"][0]["log_start_offset"])

    wait_for(lambda: start() == 1)


BAD = [(-1, "-1"), ("1700000000000", "'1700000000000'"), (1.5, "1.5"), (True, "True"),
       (253_402_300_800_000, "253402300800000")]


def test_a_bad_timestamp_is_400_naming_it(start_daemon: Callable[..., Daemon]) -> None:
    d = start_daemon(TOPOLOGY)
    for value, shown in BAD:
        assert error_of(d, "POST", "/v1/topics/events/records",
                        {"records": [{"value": "ok"}, {"value": "x", "timestamp": value}]}) == (
            400, "record 1: 'timestamp' must be epoch milliseconds, an integer between 0 and "
                 f"253402300799999 (9999-12-31T23:59:59.999Z), got {shown}")
    status = d.ok("GET", "/v1/status")["topics"]
    assert next(t for t in status if t["name"] == "events")["partitions"][0][
        "log_end_offset"] == 0  # nothing stored
