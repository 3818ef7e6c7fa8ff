"""--max-message-bytes on the Kafka listener (issue 17 leftover): a produced record's
key, value and headers count against the flag as over HTTP, answered
MESSAGE_TOO_LARGE with nothing stored; a real kafka-python producer sees
MessageSizeTooLargeError."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from kafka import KafkaProducer
from kafka.errors import MessageSizeTooLargeError

from tests.daemon.kafka.conftest import KafkaDaemon, make_kafka_daemon

pytestmark = [pytest.mark.e2e]

LIMIT = 1024


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaDaemon]:
    """A daemon with a 1 KiB --max-message-bytes (topics keep their 1 MiB default)."""
    d = make_kafka_daemon(Path(tmp_path_factory.mktemp("kafka-limits")),
                          args=["--max-message-bytes", str(LIMIT)])
    d.start()
    yield d
    d.stop()
    assert "Traceback" not in d.log()


def _end(d: KafkaDaemon) -> int:
    got = d.get("/v1/topics/events/partitions/0/records?offset=0&limit=10000")
    assert got.status == 200, got.body
    return int(got.body["next_offset"])


@pytest.mark.parametrize(("key", "value", "headers", "size"), [
    (None, b"v" * (LIMIT + 1), [], LIMIT + 1),  # the value alone
    (b"k" * 300, b"v" * 800, [], 1100),  # the key pushes it over
    (None, b"v" * 900, [("trace", b"h" * 200)], 1105),  # a header pushes it over
])
def test_a_record_over_max_message_bytes_is_message_too_large_and_not_stored(
    small: KafkaDaemon, key: bytes | None, value: bytes, headers: list[tuple[str, bytes]],
    size: int,
) -> None:
    before = _end(small)
    p = KafkaProducer(bootstrap_servers=small.bootstrap, acks="all", retries=0)
    try:
        with pytest.raises(MessageSizeTooLargeError):
            p.send("events", key=key, value=value, headers=headers).get(timeout=15)
        # the same record within the limit is stored (the limit, not the topic, refused)
        ok = p.send("events", key=key, value=value[: len(value) - (size - LIMIT)], headers=headers)
        ok.get(timeout=15)
    finally:
        p.close()
    assert _end(small) == before + 1
    assert (f"kafka produce to events/0 refused (message_too_large): record 0: the record "
            f"is {size} bytes with its key and headers, over the limit of {LIMIT} bytes "
            "(--max-message-bytes)") in small.log()
