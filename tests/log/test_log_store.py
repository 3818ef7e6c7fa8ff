"""Store: topics and partitions on disk, partitioning, limits, changes, steps, dedup."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from runner.clock import ManualClock, now_ms
from runner.errors import InvalidRequest, NotFound, OffsetOutOfRange, TooLarge, UnsafeChange
from runner.log.partition import TopicPartition
from runner.log.partitioner import partition_for_key
from runner.log.record import Fsync
from runner.log.store import AppendRecord, Store
from runner.topology.model import ConsumerGroup, Retention, Topic

Opener = Callable[..., Store]


@pytest.fixture
def open_store(tmp_path: Path, clock: ManualClock) -> Iterator[Opener]:
    opened: list[Store] = []

    def factory(**kw: Any) -> Store:
        kw.setdefault("fsync", Fsync.NEVER)
        kw.setdefault("clock", clock)
        store = Store(tmp_path / "data", **kw)
        opened.append(store)
        return store

    yield factory
    for s in opened:
        s.close()


def topics(*ts: Topic) -> dict[str, Topic]:
    return {t.name: t for t in ts}


def test_partitions_live_in_their_own_directories(open_store: Opener, tmp_path: Path) -> None:
    store = open_store()
    assert store.apply(topics(Topic("orders", partitions=3))) == [
        "added topic orders (3 partitions)"]
    assert sorted(p.name for p in (tmp_path / "data" / "topics").iterdir()) == [
        "orders-0", "orders-1", "orders-2"]


def test_keyed_records_follow_murmur2_and_keyless_spread(open_store: Opener) -> None:
    store = open_store()
    store.apply(topics(Topic("t", partitions=4)))
    got = store.append("t", [AppendRecord(b"v", key=b"foobar")] * 3)
    p = partition_for_key(b"foobar", 4)
    assert got == [(p, 0), (p, 1), (p, 2)]
    spread = store.append("t", [AppendRecord(b"v")] * 8)
    assert Counter(p for p, _ in spread) == {0: 2, 1: 2, 2: 2, 3: 2}


def test_key_from_json_payload_by_dotted_path(open_store: Opener) -> None:
    store = open_store()
    store.apply(topics(Topic("t", partitions=10, key="order.id")))
    [(p, off)] = store.append("t", [AppendRecord(json.dumps({"order": {"id": 42}}).encode())])
    assert p == partition_for_key(b"42", 10)
    assert store.read("t", p, off)[0].key == b"42"


def test_explicit_partition_and_unknown_names(open_store: Opener) -> None:
    store = open_store()
    store.apply(topics(Topic("t", partitions=2)))
    assert store.append("t", [AppendRecord(b"v", partition=1)]) == [(1, 0)]
    with pytest.raises(NotFound) as exc:
        store.append("t", [AppendRecord(b"v", partition=2)])
    assert str(exc.value) == "topic 't' has no partition 2"
    with pytest.raises(NotFound) as exc:
        store.append("nope", [AppendRecord(b"v")])
    assert str(exc.value) == "unknown topic 'nope'"


def test_record_over_max_message_bytes_is_refused(open_store: Opener) -> None:
    store = open_store()
    store.apply(topics(Topic("t", max_message_bytes=100)))
    store.append("t", [AppendRecord(b"x" * 98, key=b"kk")])
    with pytest.raises(TooLarge) as exc:
        store.append("t", [AppendRecord(b"x" * 99, key=b"kk")])
    assert str(exc.value) == "record of 101 bytes is over the max_message_bytes (100) of topic 't'"
    assert store.partitions("t")[0].log_end_offset == 1


def test_keyless_record_on_a_compacted_topic_is_refused(open_store: Opener) -> None:
    store = open_store()
    store.apply(topics(Topic("c", compact=True, delete=False)))
    with pytest.raises(InvalidRequest) as exc:
        store.append("c", [AppendRecord(b"k", key=b"a"), AppendRecord(b"v")])
    assert str(exc.value) == "topic 'c' is compacted: every record needs a key"
    assert store.partitions("c")[0].log_end_offset == 0  # nothing of the batch went in


def test_offsets_never_repeat_across_restarts(open_store: Opener) -> None:
    store = open_store()
    store.apply(topics(Topic("t")))
    store.append("t", [AppendRecord(b"a"), AppendRecord(b"b")])
    store.close()
    again = open_store()
    again.apply(topics(Topic("t")))
    assert again.append("t", [AppendRecord(b"c")]) == [(0, 2)]
    assert [r.value for r in again.read("t", 0, 0)] == [b"a", b"b", b"c"]


def test_growing_partitions_and_refusing_unsafe_changes(open_store: Opener) -> None:
    store = open_store()
    store.apply(topics(Topic("t", partitions=2), Topic("c", compact=True), Topic("e")))
    store.append("t", [AppendRecord(b"v")])
    assert store.apply(topics(Topic("t", partitions=3), Topic("c", compact=True),
                              Topic("e"))) == [
        "topic t: partitions 2 -> 3 (keys may move to other partitions)"]
    with pytest.raises(UnsafeChange) as exc:
        store.apply(topics(Topic("t", partitions=1), Topic("c", compact=False)))
    assert str(exc.value) == (
        "topic 't' partitions: fewer partitions (3 -> 1): a topic can only grow; topic 'c' "
        "cleanup_policy: cleanup_policy from compact to delete would drop the latest value per key")
    with pytest.raises(UnsafeChange, match="^topic 't': the topic holds records$"):
        store.apply(topics(Topic("c", compact=True)))
    assert store.topic_names() == ["c", "e", "t"]  # nothing applied
    assert store.apply(topics(Topic("t", partitions=3), Topic("c", compact=True))) == [
        "removed topic e"]


def test_changing_retention_is_applied(open_store: Opener) -> None:
    store = open_store()
    store.apply(topics(Topic("t")))
    lines = store.apply(topics(Topic("t", retention=Retention(time_s=60.0, bytes=None))))
    assert lines == ["topic t: retention Retention(time_s=604800.0, bytes=None) -> "
                     "Retention(time_s=60.0, bytes=None)"]
    assert store.partition("t", 0).topic.retention.time_s == 60.0


def test_read_below_log_start_names_the_partition(open_store: Opener, clock: ManualClock) -> None:
    store = open_store()
    store.apply(topics(Topic("t", segment_bytes=500, retention=Retention(time_s=10.0))))
    for _ in range(20):
        store.append("t", [AppendRecord(b"x" * 100)])
        clock.advance(1)
    clock.advance(60)
    store.tick()
    start = store.partitions("t")[0].log_start_offset
    assert start > 0
    with pytest.raises(OffsetOutOfRange) as exc:
        store.read("t", 0, 0)
    assert str(exc.value) == (f"t/0: offset 0 is below the log start (log start {start}, "
                              f"log end 20)")
    assert (exc.value.log_start, exc.value.log_end) == (start, 20)


def test_producer_retries_are_stored_once(open_store: Opener) -> None:
    store = open_store()
    store.apply(topics(Topic("t")))
    batch = [AppendRecord(b"%d" % i, producer_id="p1", sequence=i) for i in range(3)]
    assert store.append("t", batch) == [(0, 0), (0, 1), (0, 2)]
    assert store.append("t", batch) == [(0, 0), (0, 1), (0, 2)]
    store.close()
    again = open_store()
    again.apply(topics(Topic("t")))
    assert again.append("t", batch) == [(0, 0), (0, 1), (0, 2)]
    with pytest.raises(InvalidRequest) as exc:
        again.append("t", batch[1:])  # not the batch that was sent: no exact retry
    assert str(exc.value) == ("producer 'p1' on t/0: out of order sequence 1: expected 3 "
                              "(a retry must resend the same batch)")
    assert again.append("t", [AppendRecord(b"3", producer_id="p1", sequence=3)]) == [(0, 3)]
    assert [r.value for r in again.read("t", 0, 0)] == [b"0", b"1", b"2", b"3"]


def test_message_id_dedup_window(open_store: Opener, clock: ManualClock) -> None:
    store = open_store(dedup_window_s=60.0)
    store.apply(topics(Topic("t")))
    assert store.append("t", [AppendRecord(b"a", message_id="m1")]) == [(0, 0)]
    assert store.append("t", [AppendRecord(b"a", message_id="m1"),
                              AppendRecord(b"b", message_id="m2")]) == [(0, 0), (0, 1)]
    store.close()
    again = open_store(dedup_window_s=60.0)
    again.apply(topics(Topic("t")))
    assert again.append("t", [AppendRecord(b"a", message_id="m1")]) == [(0, 0)]
    clock.advance(61)
    assert again.append("t", [AppendRecord(b"a", message_id="m1")]) == [(0, 2)]


def test_counters(open_store: Opener) -> None:
    store = open_store()
    store.apply(topics(Topic("t", partitions=2)))
    store.append("t", [AppendRecord(b"v", partition=1)] * 3)
    assert store.records_appended() == {"t": 3}
    [p0, p1] = store.partitions("t")
    assert (p1.log_start_offset, p1.log_end_offset) == (0, 3)
    assert p1.size_bytes > 0 and p0.size_bytes == 0


def test_compaction_runs_in_the_background_from_tick(open_store: Opener) -> None:
    store = open_store()
    store.apply(topics(Topic("c", compact=True, delete=False, segment_bytes=1_000)))
    for i in range(200):
        store.append("c", [AppendRecord(b"%d" % i, key=b"k%d" % (i % 4))])
    before = store.partitions("c")[0].size_bytes
    store.tick()
    assert store.wait_for_compaction()
    assert store.partitions("c")[0].size_bytes < before / 2
    latest = {r.key: r.value for r in store.read("c", 0, 0, max_records=1000)}
    assert latest == {b"k%d" % k: b"%d" % (196 + k) for k in range(4)}


def test_tick_expires_members(open_store: Opener, clock: ManualClock) -> None:
    store = open_store(session_timeout_s=5.0)
    store.apply(topics(Topic("t", partitions=2)), {"g": ConsumerGroup("g", ("t",))})
    store.groups.join("g", "a")
    store.groups.join("g", "b")
    clock.advance(3)
    store.groups.heartbeat("g", "a")
    clock.advance(3)
    store.tick()
    assert store.groups.members("g") == ["a"]
    assert store.groups.assignment("g", "a") == [TopicPartition("t", 0), TopicPartition("t", 1)]
    assert now_ms(clock) > 0


def test_out_of_order_sequences_write_nothing_of_the_call(open_store: Opener) -> None:
    store = open_store()
    store.apply(topics(Topic("t", partitions=2)))
    store.append("t", [AppendRecord(b"x", partition=1, producer_id="p", sequence=0)])
    first = [AppendRecord(b"%d" % i, producer_id="p", sequence=i, partition=0)
             for i in range(2)]
    assert store.append("t", first) == [(0, 0), (0, 1)]
    more = [AppendRecord(b"%d" % i, producer_id="p", sequence=i, partition=0)
            for i in range(4)]
    gap = [AppendRecord(b"y", producer_id="p", sequence=3, partition=1)]
    with pytest.raises(InvalidRequest) as exc:
        store.append("t", [AppendRecord(b"ok", partition=1), *more])
    assert str(exc.value) == ("producer 'p' on t/0: out of order sequence 0: expected 2 "
                              "(a retry must resend the same batch)")
    with pytest.raises(InvalidRequest, match=r"^producer 'p' on t/1: out of order sequence 3: "
                       r"expected 1 \(sequences must not skip\)$"):
        store.append("t", gap)
    assert [p.log_end_offset for p in store.partitions("t")] == [2, 1]
    assert store.records_appended() == {"t": 3}


def test_a_gapped_producer_may_jump_forward(open_store: Opener) -> None:
    store = open_store(gapped_producers=("__engine_step__",))
    store.apply(topics(Topic("t")))
    stride = 1 << 20
    for step in (3, 7):
        recs = [AppendRecord(b"%d" % k, producer_id="__engine_step__", sequence=step * stride + k)
                for k in range(2)]
        first = store.append("t", recs)
        assert store.append("t", recs) == first  # a replayed step
    assert store.partitions("t")[0].log_end_offset == 4


def test_group_on_an_unknown_topic_changes_nothing(open_store: Opener) -> None:
    store = open_store()
    with pytest.raises(NotFound) as exc:
        store.apply(topics(Topic("t")), {"g": ConsumerGroup("g", ("nope",))})
    assert str(exc.value) == "group 'g' reads unknown topic 'nope'"
    assert store.topic_names() == []


def test_dedup_memory_is_bounded(open_store: Opener, clock: ManualClock) -> None:
    store = open_store(dedup_window_s=60.0, dedup_max_entries=2)
    store.apply(topics(Topic("t")))
    store.append("t", [AppendRecord(b"x", message_id=f"m{i}") for i in range(3)])
    # m0 fell out of the capped window, m1 and m2 are still known
    assert store.append("t", [AppendRecord(b"x", message_id="m2")]) == [(0, 2)]
    assert store.append("t", [AppendRecord(b"x", message_id="m0")]) == [(0, 3)]
    clock.advance(61)
    store.tick()
    assert store.append("t", [AppendRecord(b"x", message_id="m0")]) == [(0, 4)]


def test_compact_and_delete_does_both(open_store: Opener, clock: ManualClock) -> None:
    store = open_store(background=False)
    store.apply(topics(Topic("cd", compact=True, delete=True, segment_bytes=600,
                             retention=Retention(time_s=3600.0))))
    for i in range(60):
        store.append("cd", [AppendRecord(b"v" * 50, key=b"k%d" % (i % 3))])
        clock.advance(120)  # two hours of records
    store.tick()
    recs = store.read("cd", 0, store.partitions("cd")[0].log_start_offset, max_records=100)
    assert store.partitions("cd")[0].log_start_offset > 0  # retention went first
    assert len(recs) < 30  # what is left is compacted
    assert {r.key for r in recs} == {b"k0", b"k1", b"k2"}
    assert recs[-1].offset == 59


def test_reading_an_unknown_partition(open_store: Opener) -> None:
    store = open_store()
    store.apply(topics(Topic("t", partitions=2)))
    with pytest.raises(NotFound) as exc:
        store.read("t", 5, 0)
    assert str(exc.value) == "topic 't' has no partition 5"
    with pytest.raises(OffsetOutOfRange) as exc2:
        store.read("t", 0, 1)
    assert str(exc2.value) == "t/0: offset 1 is above the log end (log start 0, log end 0)"


def test_compaction_is_not_queued_again_while_nothing_changed(
        open_store: Opener, clock: ManualClock) -> None:
    store = open_store(compaction_interval_s=600.0)
    store.apply(topics(Topic("c", compact=True, delete=False, segment_bytes=1_000)))
    for i in range(100):
        store.append("c", [AppendRecord(b"%d" % i, key=b"k%d" % (i % 4))])
    assert store.cleaner is not None
    for _ in range(5):
        store.tick()
        assert store.wait_for_compaction()
    assert store.cleaner.runs == 1
    clock.advance(601)
    store.tick()
    assert store.wait_for_compaction()
    assert store.cleaner.runs == 2  # the periodic pass (tombstones may have expired)


def test_keyless_records_spread_per_topic_when_topics_alternate(open_store: Opener) -> None:
    store = open_store()
    store.apply(topics(Topic("a", partitions=2), Topic("b", partitions=2)))
    got: dict[str, Counter[int]] = {"a": Counter(), "b": Counter()}
    for _ in range(10):
        for name in ("a", "b"):
            ((p, _off),) = store.append(name, [AppendRecord(b"x")])
            got[name][p] += 1
    assert got == {"a": Counter({0: 5, 1: 5}), "b": Counter({0: 5, 1: 5})}


def test_store_read_from_gives_the_next_offset(open_store: Opener) -> None:
    store = open_store()
    store.apply(topics(Topic("t", partitions=1)))
    store.append("t", [AppendRecord(b"%d" % i) for i in range(5)])
    recs, nxt = store.read_from("t", 0, 1, max_records=2)
    assert [r.offset for r in recs] == [1, 2] and nxt == 3
    assert store.read_from("t", 0, 3) == (store.read("t", 0, 3), 5)
    assert store.read_from("t", 0, 5) == ([], 5)
    with pytest.raises(OffsetOutOfRange) as exc:
        store.read_from("t", 0, 6)
    assert str(exc.value) == "t/0: offset 6 is above the log end (log start 0, log end 5)"


def test_one_read_cache_bound_for_all_partitions(open_store: Opener) -> None:
    store = open_store(cache_bytes_total=256 * 1024)
    store.apply(topics(Topic("t", partitions=8)))
    for p in range(8):
        store.append("t", [AppendRecord(b"v" * 1000, partition=p) for _ in range(200)])
    for p in range(8):
        offset = 0
        while offset < 200:
            recs, offset = store.read_from("t", p, offset, max_records=40)
            assert recs and store.read_cache.size <= 256 * 1024
    held = [store.partition("t", p).log.cache_size for p in range(8)]
    assert held[-1] > 0 and sum(held) == store.read_cache.size <= 256 * 1024
    assert held[0] == 0  # the least recently read partition was evicted for the others


def test_a_sticky_append_puts_its_keyless_records_on_one_partition(open_store: Opener) -> None:
    # Kafka's sticky partitioner (KIP-480), for the merged appends of many requests:
    # the call's keyless records go to one partition together, the next of the sticky
    # calls' own round robin; keyed and explicitly placed records go where they always go
    store = open_store()
    store.apply(topics(Topic("t", partitions=4)))
    keyed = partition_for_key(b"k", 4)
    batch = [AppendRecord(b"a"), AppendRecord(b"b", key=b"k"), AppendRecord(b"c"),
             AppendRecord(b"d", partition=3), AppendRecord(b"e")]
    first = store.append("t", batch, sticky=True)
    assert [p for p, _ in first] == [0, keyed, 0, 3, 0]
    # the next sticky call takes the next partition; a plain call keeps its own count
    assert [p for p, _ in store.append("t", [AppendRecord(b"f")] * 3, sticky=True)] == [1] * 3
    assert [p for p, _ in store.append("t", [AppendRecord(b"g")] * 3)] == [0, 1, 2]
    # a sticky call of keyed records only leaves the sticky round robin where it was
    store.append("t", [AppendRecord(b"h", key=b"k")], sticky=True)
    assert [p for p, _ in store.append("t", [AppendRecord(b"i")] * 2, sticky=True)] == [2, 2]
    # every record is stored once, where its answer said
    placed = Counter([0, keyed, 0, 3, 0] + [1] * 3 + [0, 1, 2] + [keyed] + [2] * 2)
    assert {p: store.partition("t", p).log_end_offset for p in range(4)} == {
        p: placed[p] for p in range(4)}


def test_sticky_and_plain_appends_each_spread_evenly_however_they_alternate(
    open_store: Opener,
) -> None:
    # with one shared counter, a sticky batch after each single plain record kept
    # landing on partitions 0 and 2: {0: 3500, 1: 500, 2: 3500, 3: 500}
    store = open_store()
    store.apply(topics(Topic("t", partitions=4)))
    got: Counter[int] = Counter()
    for _ in range(1000):
        got.update(p for p, _ in store.append("t", [AppendRecord(b"s")] * 7, sticky=True))
        got.update(p for p, _ in store.append("t", [AppendRecord(b"p")]))
    assert got == {0: 2000, 1: 2000, 2: 2000, 3: 2000}


def test_a_resolve_that_only_checks_leaves_the_round_robin_alone(open_store: Opener) -> None:
    store = open_store()
    store.apply(topics(Topic("t", partitions=4)))
    for _ in range(3):
        assert [p for p, _ in store.resolve("t", [AppendRecord(b"x")], advance=False)] == [0]
    assert [p for p, _ in store.resolve("t", [AppendRecord(b"x")])] == [0]  # chosen: moves on
    assert [p for p, _ in store.append("t", [AppendRecord(b"x")] * 2)] == [1, 2]
