"""Issue 8, Kafka parity of the log: compaction never moves the log start, an emptied
segment keeps its age, keyless records on a compacted topic, retention.bytes 0,
per-topic delete_retention, and group lag/reset rules."""

from __future__ import annotations

from pathlib import Path

from runner.clock import ManualClock
from runner.log.partition import TopicPartition
from runner.log.record import Fsync
from runner.log.store import AppendRecord, Store
from runner.topology.model import ConsumerGroup, OffsetReset, Retention, Topic

TP0 = TopicPartition("t", 0)


def store_with(tmp_path: Path, clock: ManualClock, topic: Topic,
               groups: dict[str, ConsumerGroup] | None = None) -> Store:
    store = Store(tmp_path / "data", fsync=Fsync.NEVER, clock=clock, background=False)
    store.apply({"t": topic}, groups or {})
    return store


def keyed(key: str, value: bytes | None = b"v" * 40) -> AppendRecord:
    return AppendRecord(value, key=key.encode(), partition=0)


def test_compaction_that_empties_a_segment_does_not_move_the_log_start(
    tmp_path: Path, clock: ManualClock,
) -> None:
    topic = Topic("t", compact=True, delete=True, segment_bytes=450)
    store = store_with(tmp_path, clock, topic,
                       {"g": ConsumerGroup("g", ("t",), offset_reset=OffsetReset.LATEST)})
    for _ in range(9):
        store.append("t", [keyed("k")])
    store.append("t", [keyed("a"), keyed("b"), keyed("c")])
    store.groups.commit("g", {TP0: 3})
    assert store.partition("t", 0).log.segment_count > 2
    clock.advance(1)
    store.tick()  # cleaner (foreground here), then retention
    store.tick()
    part = store.partition("t", 0)
    assert part.log.closed_segments()  # something was cleaned
    assert [r.key for r in store.read_from("t", 0, 0, max_records=100)[0]] == [
        b"k", b"a", b"b", b"c"]
    assert store.log_start(TP0) == 0
    assert store.groups.position("g", TP0) == 3
    recs, _ = store.read_from("t", 0, 3, max_records=100)
    assert [(r.offset, r.key) for r in recs] == [(8, b"k"), (9, b"a"), (10, b"b"), (11, b"c")]
    store.close()


def test_an_emptied_segment_keeps_its_age_for_time_retention(
    tmp_path: Path, clock: ManualClock,
) -> None:
    topic = Topic("t", compact=True, delete=True, segment_bytes=450,
                  retention=Retention(time_s=3600.0, bytes=None))
    store = store_with(tmp_path, clock, topic)
    for _ in range(9):
        store.append("t", [keyed("k")])
    store.append("t", [keyed("a"), keyed("b"), keyed("c")])
    clock.advance(1)
    store.tick()
    store.tick()
    assert store.log_start(TP0) == 0
    clock.advance(1800)  # half the retention: the emptied segment is not old yet
    store.tick()
    assert store.log_start(TP0) == 0
    store.close()
    again = store_with(tmp_path, clock, topic)  # its age survives a restart
    again.tick()
    assert again.log_start(TP0) == 0
    clock.advance(1801 + 7 * 86400)  # past retention: retention (not compaction) moves it
    again.tick()
    assert again.log_start(TP0) > 0
    again.close()


def test_keyless_records_left_on_a_topic_that_became_compacted_are_cleaned(
    tmp_path: Path, clock: ManualClock,
) -> None:
    plain = Topic("t", segment_bytes=300)
    store = store_with(tmp_path, clock, plain)
    for i in range(6):
        store.append("t", [AppendRecord(b"keyless-%d" % i, partition=0)])
        store.append("t", [keyed(f"k{i % 2}")])
    store.apply({"t": Topic("t", segment_bytes=300, compact=True)}, {})
    store.partition("t", 0).log.roll()
    store.tick()
    recs, _ = store.read_from("t", 0, 0, max_records=100)
    assert [(r.offset, r.key) for r in recs] == [(9, b"k0"), (11, b"k1")]
    assert store.log_start(TP0) == 0
    store.close()


def test_retention_bytes_0_keeps_nothing(tmp_path: Path, clock: ManualClock) -> None:
    store = store_with(tmp_path, clock, Topic("t", retention=Retention(time_s=None, bytes=0)))
    store.append("t", [AppendRecord(b"v", partition=0)] * 3)
    store.tick()
    assert (store.log_start(TP0), store.log_end(TP0)) == (3, 3)
    assert store.partition("t", 0).size_bytes == 0
    store.append("t", [AppendRecord(b"w", partition=0)])
    assert store.read_from("t", 0, 3)[0][0].value == b"w"
    store.tick()
    assert (store.log_start(TP0), store.log_end(TP0)) == (4, 4)
    store.close()


def test_each_topic_keeps_tombstones_for_its_delete_retention(
    tmp_path: Path, clock: ManualClock,
) -> None:
    topic = Topic("t", compact=True, delete=False, segment_bytes=300, delete_retention_s=60.0)
    store = store_with(tmp_path, clock, topic)
    store.append("t", [keyed("gone")])
    store.append("t", [keyed("gone", None)])
    for i in range(8):
        store.append("t", [keyed(f"k{i}")])
    store.tick()  # first cleaning: the tombstone stays for 60 s
    keys = [r.key for r in store.read_from("t", 0, 0, max_records=100)[0]]
    assert b"gone" in keys
    clock.advance(61)
    store.compaction_interval_s = 0
    store.tick()
    keys = [r.key for r in store.read_from("t", 0, 0, max_records=100)[0]]
    assert b"gone" not in keys and len(keys) == 8
    store.close()
