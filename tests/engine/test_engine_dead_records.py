"""Topic records dead-lettered into a queue keep what they were: JSON stays JSON
(content type), a null value stays distinguishable, the record's own message id
is kept (never an internal step id); into a topic they stay records."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from runner.engine import Engine, FsyncPolicy, OutRecord, Step, TopicPartition
from runner.topology.model import ConsumerGroup, Queue, Topic, Topology

DEATH = {"reason": "handler_error", "error": {"type": "KeyError", "message": "'x'"},
         "retry_count": 0, "consumer_id": "g-1@h", "death_count": 1,
         "original_topic": "ev", "original_partition": 0}


@pytest.fixture()
def engine(tmp_path: Path) -> Iterator[Engine]:
    topo = Topology(
        topics=(("dead", Topic("dead")), ("ev", Topic("ev"))),
        queues=(("dlq", Queue("dlq")),),
        consumer_groups=(("g", ConsumerGroup("g", ("ev",), handler="m:f")),),
    )
    e = Engine.open(topo, tmp_path, fsync=FsyncPolicy.NEVER)
    yield e
    e.close()


def _kill_all(engine: Engine, *, exactly_once: bool, **where: str) -> None:
    recs, _ = engine.read("ev", 0, 0)
    for r in recs:
        with_step = Step(commits=[("g", TopicPartition("ev", 0), r.offset + 1)]) \
            if exactly_once else None
        engine.dead_letter_record("g", r, dict(DEATH, original_offset=r.offset), **where,
                                  with_step=with_step)


@pytest.mark.parametrize("exactly_once", [False, True])
def test_into_a_queue_json_nulls_bytes_and_ids_survive(
    engine: Engine, exactly_once: bool,
) -> None:
    engine.append("ev", [
        OutRecord(b'{"order_id": 1}', key=b"k1"),
        OutRecord(None, key=b"k2"),
        OutRecord(b"\x00\xffraw", headers={"x-message-id": "m-3"}),
    ])
    _kill_all(engine, exactly_once=exactly_once, to_queue="dlq")
    js, tomb, raw = engine.peek("dlq", 10)
    assert (js.body, js.content_type, js.message_id) == (
        b'{"order_id": 1}', "application/json", "g:ev/0/0")
    assert "x-null-value" not in js.headers
    assert (tomb.body, tomb.content_type, tomb.message_id) == (b"", None, "g:ev/0/1")
    assert tomb.headers["x-null-value"] is True
    assert (raw.body, raw.content_type, raw.message_id) == (b"\x00\xffraw", None, "g:m-3")
    # replayed back to the group, the tombstone is a null value again
    assert engine.replay("dlq") == 3
    rq = engine.replay_queue("g")
    assert rq is not None
    back = [engine.replayed_record(d) for d in engine.pull(rq, 10, lease_s=60, consumer_id="c")]
    assert [(r.offset, r.key, r.value) for r in back] == [
        (0, b"k1", b'{"order_id": 1}'), (1, b"k2", None), (2, None, b"\x00\xffraw")]
    assert all("x-null-value" not in r.headers for r in back)


def test_a_second_death_of_the_same_record_is_not_swallowed_by_dedup(engine: Engine) -> None:
    engine.append("ev", [OutRecord(b'{"n": 1}')])
    (r,), _ = engine.read("ev", 0, 0)
    engine.dead_letter_record("g", r, DEATH, to_queue="dlq")
    engine.dead_letter_record("g", r, dict(DEATH, death_count=2), to_queue="dlq")
    assert [d.message_id for d in engine.peek("dlq", 10)] == ["g:ev/0/0", "g:ev/0/0~2"]


def test_into_a_topic_a_record_stays_a_record(engine: Engine) -> None:
    engine.append("ev", [OutRecord(b'{"order_id": 1}', key=b"k1"), OutRecord(None, key=b"k2")])
    _kill_all(engine, exactly_once=True, to_topic="dead")
    recs, _ = engine.read("dead", 0, 0)
    assert [(r.key, r.value) for r in recs] == [(b"k1", b'{"order_id": 1}'), (b"k2", None)]
    assert [r.headers["x-dead-letter"]["original_offset"] for r in recs] == [0, 1]
