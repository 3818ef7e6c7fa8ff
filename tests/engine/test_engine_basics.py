"""The Engine on real files: routing into queues and topics, errors, restart,
apply, commit_step (and its recovery), topic dead letters and replay, stats."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from runner.clock import ManualClock
from runner.engine import (
    Engine,
    FsyncPolicy,
    OutMessage,
    OutRecord,
    Record,
    Step,
    TopicPartition,
)
from runner.errors import (
    Conflict,
    EngineError,
    Forbidden,
    InvalidRequest,
    NotFound,
    OffsetOutOfRange,
    Refused,
    StorageError,
    TooLarge,
    UnsafeChange,
)
from runner.topology.model import (
    Binding,
    ConsumerGroup,
    Exchange,
    ExchangeType,
    Overflow,
    Queue,
    Retention,
    Topic,
    Topology,
)

DEATH = {"reason": "handler_error", "error": {"type": "KeyError", "message": "'x'"},
         "retry_count": 1, "original_topic": "ev", "original_partition": 0,
         "original_offset": 0, "consumer_id": "g-1@h", "death_count": 1}


def _topo(**extra: Any) -> Topology:
    base: dict[str, Any] = dict(
        topics=(("audit", Topic("audit")), ("cmp", Topic("cmp", compact=True, delete=False)),
                ("ev", Topic("ev", partitions=3, key="order_id"))),
        exchanges=(("int", Exchange("int", ExchangeType.FANOUT, internal=True)),
                   ("orders", Exchange("orders", ExchangeType.TOPIC))),
        queues=(("dlq", Queue("dlq")), ("q", Queue("q")), ("q2", Queue("q2"))),
        bindings=(Binding("orders", queue="q", routing_key="orders.#"),
                  Binding("orders", topic="ev", routing_key="orders.*"),
                  Binding("orders", topic="cmp", routing_key="c.*")),
        consumer_groups=(("g", ConsumerGroup("g", ("ev",), handler="m:f")),
                         ("other", ConsumerGroup("other", ("ev",)))),
    )
    base.update(extra)
    return Topology(**base)


@pytest.fixture()
def engine(tmp_path: Path) -> Any:
    e = Engine.open(_topo(), tmp_path, fsync=FsyncPolicy.NEVER)
    yield e
    e.close()


def _all(engine: Engine, topic: str) -> list[Record]:
    out: list[Record] = []
    for p in engine.partitions(topic):
        out.extend(engine.read(topic, p.partition, p.log_start_offset, max_records=10_000)[0])
    return out


def test_a_publish_reaches_queues_and_topics_once_per_message_id(engine: Engine) -> None:
    m = OutMessage(b'{"order_id": 7}', routing_key="orders.new", headers={"h": 1},
                   message_id="m1")
    assert engine.publish("orders", [m]) == [["q", "ev"]]
    assert engine.publish("orders", [m]) == [["q", "ev"]]  # a duplicate id: stored once
    assert engine.publish("orders", [OutMessage(b"{}", routing_key="orders.a.b")]) == [["q"]]
    assert engine.queue_info("q").ready == 2
    (rec,) = _all(engine, "ev")
    assert (rec.key, rec.value) == (b"7", b'{"order_id": 7}')
    assert rec.partition == 0  # murmur2(b"7") % 3
    assert rec.headers == {"h": 1, "x-routing-key": "orders.new", "x-exchange": "orders",
                           "x-message-id": "m1"}
    stats = engine.stats()
    assert stats.exchange_published["orders"] == 2  # the duplicate was not published again
    assert stats.queues["q"].published == 2
    assert stats.partitions[TopicPartition("ev", 0)].log_end_offset == 1


@pytest.mark.parametrize(("call", "error", "message"), [
    (lambda e: e.publish("nope", [OutMessage(b"x")]), NotFound, "exchange 'nope' not found"),
    (lambda e: e.publish("int", [OutMessage(b"x")]), Forbidden,
     "exchange 'int' is internal: only other exchanges may publish to it"),
    (lambda e: e.publish("orders", [OutMessage(b"{}", routing_key="c.x")]), InvalidRequest,
     "topic 'cmp' is compacted: every record needs a key"),
    (lambda e: e.append("nope", [OutRecord(b"x")]), NotFound, "unknown topic 'nope'"),
    (lambda e: e.append("cmp", [OutRecord(b"x")]), InvalidRequest,
     "topic 'cmp' is compacted: every record needs a key"),
    (lambda e: e.append("ev", [OutRecord(b"x" * 2_000_000)]), TooLarge,
     "record of 2000000 bytes is over the max_message_bytes (1048576) of topic 'ev'"),
    (lambda e: e.read("ev", 9, 0), NotFound, "topic 'ev' has no partition 9"),
    (lambda e: e.pull("nope", 1, lease_s=1, consumer_id="c"), NotFound,
     "queue 'nope' not found"),
    (lambda e: e.position("nog", TopicPartition("ev", 0)), NotFound,
     "unknown consumer group 'nog'"),
    (lambda e: e.commit_step(Step(acks=[("q", 999)])), Conflict,
     "queue 'q': unknown or expired delivery ids [999]"),
    (lambda e: e.commit_step(Step(commits=[("g", TopicPartition("ev", 0), -1)])),
     InvalidRequest, "offset -1 for ev/0 is negative"),
    (lambda e: e.commit_step(Step(appends=[("cmp", [OutRecord(b"v")])])), InvalidRequest,
     "topic 'cmp' is compacted: every record needs a key"),
    (lambda e: e.commit_step(Step(publishes=[("int", [OutMessage(b"v")])])), Forbidden,
     "exchange 'int' is internal: only other exchanges may publish to it"),
    (lambda e: e.dead_letter_record("g", Record("ev", 0, 0, 0, None, b"v", {}), DEATH),
     InvalidRequest, "dead letter of group 'g' needs to_queue or to_topic"),
])
def test_errors_say_what_is_wrong_and_store_nothing(
    engine: Engine, call: Callable[[Engine], object], error: type[EngineError], message: str,
) -> None:
    with pytest.raises(error) as info:
        call(engine)
    assert str(info.value) == message
    assert engine.queue_info("q").ready == 0
    assert all(p.log_end_offset == 0 for t in ("ev", "cmp", "audit")
               for p in engine.partitions(t))
    assert engine.journal.pending() == []


def test_reading_below_the_log_start_is_out_of_range(tmp_path: Path) -> None:
    topic = Topic("ev", retention=Retention(time_s=None, bytes=1), segment_bytes=200)
    e = Engine.open(Topology(topics=(("ev", topic),)), tmp_path, fsync=FsyncPolicy.NEVER)
    try:
        for _ in range(6):  # one batch each: one segment each
            e.append("ev", [OutRecord(b"x" * 150)])
        e.tick()
        start = e.partitions("ev")[0].log_start_offset
        assert start > 0
        with pytest.raises(OffsetOutOfRange):
            e.read("ev", 0, 0)
        assert e.read("ev", 0, start)[1] == start + 1
    finally:
        e.close()


def test_a_restart_keeps_records_messages_offsets_and_unacked_come_back(tmp_path: Path) -> None:
    e = Engine.open(_topo(), tmp_path)
    e.append("ev", [OutRecord(b'{"order_id": %d}' % i) for i in range(10)])
    e.publish_to_queue("q", [OutMessage(b"a"), OutMessage(b"b", priority=3)])
    (d,) = e.pull("q", 1, lease_s=60, consumer_id="c")
    e.commit("g", {TopicPartition("ev", 0): 1}, external=False)
    ends = [p.log_end_offset for p in e.partitions("ev")]
    e.close()
    again = Engine.open(_topo(), tmp_path)
    try:
        assert [p.log_end_offset for p in again.partitions("ev")] == ends
        assert again.position("g", TopicPartition("ev", 0)) == 1
        info = again.queue_info("q")
        assert (info.ready, info.unacked) == (2, 0)
        first = again.pull("q", 2, lease_s=60, consumer_id="c")
        assert [(x.body, x.redelivered) for x in first] == [(d.body, True), (b"b", False)]
    finally:
        again.close()


def test_apply_refuses_unsafe_changes_touching_nothing(engine: Engine) -> None:
    engine.publish_to_queue("q2", [OutMessage(b"x")])
    engine.append("audit", [OutRecord(b"x")])
    topo = _topo()
    unsafe = _topo(
        topics=(*[(n, t) for n, t in topo.topics if n != "audit"],
                ("new", Topic("new"))),
        queues=(("dlq", Queue("dlq")), ("q", Queue("q", max_priority=5))),
    )
    with pytest.raises(UnsafeChange) as info:
        engine.apply(unsafe)
    assert str(info.value) == (
        "queue 'q' max_priority: a queue's max_priority cannot change; declare a new queue; "
        "queue 'q2': the queue holds messages; "
        "topic 'audit': the topic holds records")
    with pytest.raises(NotFound):
        engine.partitions("new")
    assert engine.topology == topo
    safe = _topo(topics=(*topo.topics, ("new", Topic("new", partitions=2))))
    lines = engine.apply(safe)
    assert "added topic new (2 partitions)" in lines
    assert len(engine.partitions("new")) == 2 and engine.topology == safe


def test_commit_step_applies_every_part(engine: Engine) -> None:
    engine.publish_to_queue("q", [OutMessage(b"in")])
    engine.append("ev", [OutRecord(b'{"order_id": 1}')])
    (d,) = engine.pull("q", 1, lease_s=60, consumer_id="c")
    engine.commit_step(Step(
        acks=[("q", d.delivery_id)],
        commits=[("g", TopicPartition("ev", 0), 1)],
        publishes=[("orders", [OutMessage(b'{"order_id": 2}', routing_key="orders.x")])],
        queue_puts=[("q2", [OutMessage(b"put")])],
        appends=[("audit", [OutRecord(b"rec", key=b"k")])],
    ))
    assert engine.queue_info("q").ready == 1  # the publish, routed back to q
    assert engine.queue_info("q").unacked == 0
    assert [x.body for x in engine.peek("q2", 5)] == [b"put"]
    assert engine.position("g", TopicPartition("ev", 0)) == 1
    assert sorted(r.value or b"" for r in _all(engine, "ev")) == [b'{"order_id": 1}',
                                                           b'{"order_id": 2}']
    assert [(r.key, r.value) for r in _all(engine, "audit")] == [(b"k", b"rec")]
    assert engine.journal.pending() == []


def _journal_then_crash(data_dir: Path, headers: dict[str, Any]) -> StorageError:
    """Open an engine, ack a delivery with outputs in one step that is journaled
    but crashes before it is applied, close; the error commit_step raised."""
    e = Engine.open(_topo(), data_dir)
    try:
        e.publish_to_queue("q", [OutMessage(b"in")])
        (d,) = e.pull("q", 1, lease_s=60, consumer_id="c")

        def crash(sid: int, doc: Any) -> None:
            raise OSError("simulated crash after the journal write")

        e.steps.apply = crash  # type: ignore[method-assign]
        with pytest.raises(StorageError) as info:
            e.commit_step(Step(acks=[("q", d.delivery_id)],
                               queue_puts=[("q2", [OutMessage(b"out", headers=headers)])],
                               appends=[("audit", [OutRecord(b"rec")])]))
        return info.value
    finally:
        e.close()


def test_a_step_journaled_but_not_applied_is_applied_once_at_open(tmp_path: Path) -> None:
    error = _journal_then_crash(tmp_path, {})
    assert str(error) == (
        "step 0 is stored but not fully applied yet: simulated crash after the journal write; "
        "it is completed automatically")
    for _ in range(2):  # recovery applies it; a second open finds nothing pending
        again = Engine.open(_topo(), tmp_path)
        try:
            assert (again.queue_info("q").ready, again.queue_info("q").unacked) == (0, 0)
            assert [x.body for x in again.peek("q2", 5)] == [b"out"]
            assert [r.value for r in _all(again, "audit")] == [b"rec"]
        finally:
            again.close()


def test_dead_letter_records_into_a_queue_and_a_topic_then_replay_to_the_group(
    engine: Engine,
) -> None:
    ((part, _),) = engine.append("ev", [OutRecord(b'{"order_id": 5}', headers={"t": "x"})])
    (rec,), _ = engine.read("ev", part, 0)
    engine.dead_letter_record("g", rec, DEATH, to_queue="dlq",
                              with_step=Step(commits=[("g", TopicPartition("ev", part), 1)]))
    engine.dead_letter_record("g", rec, DEATH, to_topic="audit")
    assert engine.position("g", TopicPartition("ev", part)) == 1
    (dead,) = engine.peek("dlq", 5)
    assert dead.body == b'{"order_id": 5}'
    assert dead.headers["x-original-key"] == "5"
    assert dead.headers["x-dead-letter"]["original_group"] == "g"
    (copy,) = _all(engine, "audit")
    assert (copy.key, copy.headers["t"]) == (b"5", "x")
    assert copy.headers["x-dead-letter"]["original_offset"] == 0

    assert engine.replay("dlq") == 1
    assert engine.queue_info("dlq").ready == 0
    assert engine.partitions("ev")[part].log_end_offset == 1  # not appended again
    rq = engine.replay_queue("g")
    assert rq == "__replay.g" and engine.replay_queue("nope") is None
    (d,) = engine.pull(rq, 5, lease_s=60, consumer_id="g-1")
    again = engine.replayed_record(d)
    assert (again.topic, again.partition, again.offset, again.key, again.value) == (
        "ev", part, 0, b"5", b'{"order_id": 5}')
    assert again.timestamp_ms == rec.timestamp_ms
    assert again.headers["x-replay-count"] == 1 and "x-dead-letter" not in again.headers


def test_a_topic_dead_letter_of_an_unknown_group_stays_in_its_queue(engine: Engine) -> None:
    rec = Record("ev", 0, 3, 1, b"k", b"v", {})
    engine.dead_letter_record("gone", rec, DEATH, to_queue="dlq")
    assert engine.replay("dlq") == 0
    (kept,) = engine.peek("dlq", 5)
    assert kept.headers["x-dead-letter"]["original_group"] == "gone"


def test_tick_brings_delayed_retries_back(tmp_path: Path) -> None:
    clock = ManualClock()
    e = Engine.open(_topo(), tmp_path, fsync=FsyncPolicy.INTERVAL, clock=clock)
    try:
        e.publish_to_queue("q", [OutMessage(b"x")])
        (d,) = e.pull("q", 1, lease_s=60, consumer_id="c")
        e.retry_later("q", d.delivery_id, 5.0)
        e.tick()
        assert (e.queue_info("q").ready, e.queue_info("q").delayed) == (0, 1)
        clock.advance(5.0)
        e.tick()
        (again,) = e.pull("q", 1, lease_s=60, consumer_id="c")
        assert (again.body, again.delivery_count) == (b"x", 2)
    finally:
        e.close()


def test_group_info_and_members(engine: Engine) -> None:
    engine.append("ev", [OutRecord(b'{"order_id": %d}' % i) for i in range(6)])
    engine.join("g", "a")
    engine.join("g", "b")
    info = engine.group_info("g")
    assert info.members == ("a", "b")
    assert sorted(p.member or "" for p in info.partitions) == ["a", "a", "b"]
    assert sum(p.lag for p in info.partitions) == 6
    engine.leave("g", "b")
    assert {tp.partition for tp in engine.assignment("g", "a")} == {0, 1, 2}
    assert engine.stats().group_members == {"g": 1, "other": 0}


def test_a_refused_batch_keeps_what_was_stored_before_it_in_topics_too(tmp_path: Path) -> None:
    topo = Topology(
        topics=(("t", Topic("t")),),
        exchanges=(("x", Exchange("x", ExchangeType.FANOUT)),),
        queues=(("small", Queue("small", max_length=1, overflow=Overflow.REJECT_PUBLISH)),),
        bindings=(Binding("x", queue="small"), Binding("x", topic="t")),
    )
    e = Engine.open(topo, tmp_path, fsync=FsyncPolicy.NEVER)
    try:
        with pytest.raises(Refused) as info:
            e.publish("x", [OutMessage(b"1"), OutMessage(b"2"), OutMessage(b"3")])
        assert info.value.accepted == 1
        assert info.value.routed == ("t",)  # the topic took message 2, the queue did not
        assert [r.value for r in _all(e, "t")] == [b"1", b"2"]
        assert e.queue_info("small").ready == 1
    finally:
        e.close()


def test_a_half_applied_step_is_completed_by_the_next_tick(engine: Engine) -> None:
    real = engine.steps.apply
    calls: list[int] = []

    def flaky(sid: int, doc: Any) -> None:
        calls.append(sid)
        if len(calls) == 1:
            raise OSError("disk hiccup")
        real(sid, doc)

    engine.steps.apply = flaky  # type: ignore[method-assign]
    with pytest.raises(StorageError):
        engine.commit_step(Step(queue_puts=[("q2", [OutMessage(b"out")])],
                                appends=[("audit", [OutRecord(b"rec")])]))
    assert engine.journal.pending() != []
    engine.tick()
    assert engine.journal.pending() == []
    assert [x.body for x in engine.peek("q2", 5)] == [b"out"]
    assert [r.value for r in _all(engine, "audit")] == [b"rec"]
    assert len(calls) == 2 and calls[0] == calls[1]


def test_offsets_for_time_and_seek(engine: Engine) -> None:
    engine.append("audit", [OutRecord(b"a", timestamp_ms=1000), OutRecord(b"b", timestamp_ms=2000),
                            OutRecord(b"c", timestamp_ms=3000)])
    assert engine.offset_for_time("audit", 0, 1500) == 1
    assert engine.offset_for_time("audit", 0, 9999) == 3
    engine.apply(_topo(consumer_groups=(("g", ConsumerGroup("g", ("audit",))),)))
    tp = TopicPartition("audit", 0)
    assert engine.seek("g", tp, timestamp_ms=2500) == 2
    assert engine.position("g", tp) == 2
    assert engine.seek("g", tp, offset=99) == 3  # clamped to the log end
    with pytest.raises(InvalidRequest) as info:
        engine.seek("g", tp)
    assert str(info.value) == "seek needs exactly one of offset or timestamp"


def test_a_queues_only_step_goes_through_the_one_engine_journal(engine: Engine) -> None:
    engine.publish_to_queue("q", [OutMessage(b"in")])
    (d,) = engine.pull("q", 1, lease_s=60, consumer_id="c")
    engine.commit_step(Step(acks=[("q", d.delivery_id)],
                            queue_puts=[("q2", [OutMessage(b"a"), OutMessage(b"b")])]))
    engine.commit_step(Step(queue_puts=[("q2", [OutMessage(b"c")])]))
    assert [x.body for x in engine.peek("q2", 5)] == [b"a", b"b", b"c"]
    assert engine.queue_info("q").unacked == 0
    # two steps and their done marks, in the engine's journal; no other journal
    assert engine.journal._log.end_offset == 4  # noqa: SLF001
    assert engine.journal.pending() == []
    assert not (engine.data_dir / "steps").exists()
    assert not (engine.data_dir / "__log_steps").exists()


def test_a_data_dir_that_cannot_be_created_is_a_storage_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(StorageError) as info:
        Engine.open(_topo(), blocker / "data")
    assert str(info.value) == f"cannot create data dir {blocker / 'data'}: Not a directory"


def test_a_recovered_step_keeps_bytes_and_tuple_headers_of_its_outputs(tmp_path: Path) -> None:
    headers = {"bin": b"\x00\x01", "pair": (1, 2), "text": "t"}
    _journal_then_crash(tmp_path, headers)
    again = Engine.open(_topo(), tmp_path)
    try:
        (out,) = again.peek("q2", 5)
        assert {k: out.headers[k] for k in headers} == headers
    finally:
        again.close()


def test_a_pulled_delivery_has_every_field_by_name_and_cannot_be_changed(engine: Engine) -> None:
    engine.publish_to_queue("q", [OutMessage(b'{"a": 1}', "rk", {"h": b"\x00"}, priority=None,
                                             message_id="m-1", content_type="application/json")])
    (d,) = engine.pull("q", 10, lease_s=30, consumer_id="c")
    assert (d.queue, d.body, dict(d.headers), d.routing_key, d.exchange, d.priority) == (
        "q", b'{"a": 1}', {"h": b"\x00"}, "rk", "", 0)
    assert (d.redelivered, d.delivery_count, d.message_id, d.content_type) == (
        False, 1, "m-1", "application/json")
    with pytest.raises(AttributeError):
        d.delivery_id = 99  # type: ignore[misc]
    assert engine.nack("q", [d.delivery_id], requeue=True) == []
    (peeked,) = engine.peek("q", 1)
    assert (peeked.body, peeked.message_id) == (b'{"a": 1}', "m-1")
    assert engine.ack("q", [d.delivery_id]) == [d.delivery_id]  # settled by the nack


def test_partitions_and_stats_carry_the_first_records_timestamp(tmp_path: Path) -> None:
    topic = Topic("ev", partitions=2, retention=Retention(time_s=None, bytes=1),
                  segment_bytes=200)
    e = Engine.open(Topology(topics=(("ev", topic),)), tmp_path, fsync=FsyncPolicy.NEVER)
    try:
        assert [p.oldest_timestamp_ms for p in e.partitions("ev")] == [None, None]
        for i in range(6):  # one batch each: one segment each
            e.append("ev", [OutRecord(b"x" * 150, partition=0, timestamp_ms=1_000 + i)])
        e.append("ev", [OutRecord(b"y", partition=1, timestamp_ms=7_000)])
        assert [p.oldest_timestamp_ms for p in e.partitions("ev")] == [1_000, 7_000]
        e.tick()  # retention by bytes drops the oldest segments of partition 0
        p0 = e.partitions("ev")[0]
        assert p0.log_start_offset > 0
        (head,), _ = e.read("ev", 0, p0.log_start_offset, max_records=1)
        assert p0.oldest_timestamp_ms == head.timestamp_ms == 1_000 + p0.log_start_offset
        stats = e.stats()
        assert stats.partitions[TopicPartition("ev", 0)].oldest_timestamp_ms == head.timestamp_ms
        assert stats.partitions[TopicPartition("ev", 1)].oldest_timestamp_ms == 7_000
    finally:
        e.close()


def test_keyless_messages_an_exchange_routes_to_a_topic_reach_every_partition(
    tmp_path: Path,
) -> None:
    # the publish's check of its topic routes chose a partition too and moved the round
    # robin on: every keyless record skipped a partition ({0: 0, 1: 20, 2: 0, 3: 20})
    topo = Topology(topics=(("t", Topic("t", partitions=4)),),
                    exchanges=(("fan", Exchange("fan", ExchangeType.FANOUT)),),
                    bindings=(Binding("fan", topic="t"),))
    e = Engine.open(topo, tmp_path, fsync=FsyncPolicy.NEVER)
    try:
        for i in range(20):
            assert e.publish("fan", [OutMessage(b"%d" % i)]) == [["t"]]
        e.publish("fan", [OutMessage(b"b%d" % i) for i in range(20)])
        assert [e.store.partition("t", p).log_end_offset for p in range(4)] == [10] * 4
    finally:
        e.close()
