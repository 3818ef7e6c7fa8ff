"""kcat (librdkafka's command-line client) against the listener: metadata, produce, consume.

kcat comes from Debian (`.ci/run` installs it). Without it the tests skip
locally with one line, and FAIL when the `CI` environment variable is set.
"""

from __future__ import annotations

import os
import subprocess
import uuid

import pytest

from tests.daemon.kafka.conftest import KafkaDaemon, kcat_path

pytestmark = [pytest.mark.e2e]


@pytest.fixture
def kcat() -> str:
    path = kcat_path()
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("kcat is not installed (CI must install it: apt-get install kcat)")
        pytest.skip("kcat is not installed (apt-get install kcat)")
    return path


def _kcat(kcat: str, *args: str, stdin: str | None = None) -> str:
    done = subprocess.run([kcat, *args], input=stdin, capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_kcat_lists_the_declared_topics_and_their_partitions(kd: KafkaDaemon,
                                                             kcat: str) -> None:
    out = _kcat(kcat, "-b", kd.bootstrap, "-L")
    assert "1 brokers:" in out and f"broker 0 at {kd.bootstrap}" in out
    assert 'topic "orders" with 3 partitions:' in out
    assert 'topic "ledger" with 2 partitions:' in out


def test_kcat_produces_and_consumes_with_keys_and_headers(kd: KafkaDaemon, kcat: str) -> None:
    tag = uuid.uuid4().hex[:8]
    lines = "".join(f"{tag}-{i}:value {i}\n" for i in range(5))
    _kcat(kcat, "-b", kd.bootstrap, "-P", "-t", "events", "-K", ":", "-H", "via=kcat",
          "-X", "partitioner=murmur2_random", stdin=lines)
    out = _kcat(kcat, "-b", kd.bootstrap, "-C", "-t", "events", "-o", "beginning", "-e",
                "-f", "%k|%s|%h\n")
    mine = [line for line in out.splitlines() if line.startswith(tag)]
    assert mine == [f"{tag}-{i}|value {i}|via=kcat" for i in range(5)]


def test_kcat_consumes_as_a_group_member_and_commits(
        start_kafka_daemon: object, kcat: str) -> None:
    d = start_kafka_daemon()  # type: ignore[operator]
    lines = "".join(f"g-{i}\n" for i in range(9))
    _kcat(kcat, "-b", d.bootstrap, "-P", "-t", "orders", stdin=lines)
    out = _kcat(kcat, "-b", d.bootstrap, "-G", "billing", "-e", "-f", "%s\n", "orders")
    assert sorted(out.split()) == sorted(f"g-{i}" for i in range(9))
    group = d.ok("GET", "/v1/groups/billing")
    assert group["lag"] == 0
    assert sum(p["committed"] or 0 for p in group["partitions"]) == 9
