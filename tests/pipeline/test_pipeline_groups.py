"""Consumer groups on a real Engine: members, delivery modes, retry in place,
dead-lettering a record and moving on, replay back to the failing group."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from runner.engine import TopicPartition
from runner.pipeline.deadletter import DEAD_LETTER_HEADER
from runner.topology.model import (
    ConsumerGroup,
    Delivery,
    DlqPolicy,
    OffsetReset,
    Queue,
    Retention,
    Topic,
)
from tests.pipeline import pipeline_handlers as ph
from tests.pipeline.harness import H, bodies, rec, running, topology, wait_until


def _committed(engine: object, group: str, topic: str, parts: int) -> list[int]:
    return [engine.position(group, TopicPartition(topic, p))  # type: ignore[attr-defined]
            for p in range(parts)]


@pytest.mark.parametrize("delivery", list(Delivery))
def test_members_share_partitions_and_commit_in_every_mode(
    tmp_path: Path, delivery: Delivery,
) -> None:
    topo = topology(
        topics=(Topic("events", partitions=3), Topic("results")),
        groups=(ConsumerGroup("g", ("events",), handler=f"{H}:forward", instances=2,
                              delivery=delivery),),
    )

    async def go() -> None:
        async with running(topo, tmp_path) as r:
            r.engine.append("events", [rec({"id": i}, key=f"k{i}") for i in range(12)])
            r.pipeline.notify()
            await wait_until(lambda: r.pipeline.stats().consumers["g"].succeeded == 12)
            ends = [p.log_end_offset for p in r.engine.partitions("events")]
            await wait_until(lambda: _committed(r.engine, "g", "events", 3) == ends)
            assert sorted(b["id"] for b in bodies(r.engine, "outbox")) == list(range(12))
            recs, _ = r.engine.read("results", 0, 0)
            assert sorted(x.key or b"" for x in recs) == sorted(str(i).encode() for i in range(12))
            info = r.engine.group_info("g")
            assert len(info.members) == 2
            assert {p.member for p in info.partitions} == set(info.members)

    asyncio.run(go())
    assert sorted(int(e["id"]) for e in ph.SEEN) == list(range(12))
    # per partition the records were handled in offset order
    for part in range(3):
        offsets = [e["offset"] for e in ph.SEEN if e["partition"] == part]
        assert offsets == sorted(offsets)


def test_a_failing_record_is_retried_in_place_then_dead_lettered_and_skipped(
    tmp_path: Path,
) -> None:
    policy = DlqPolicy("p", max_retries=2, backoff=(0.1,), dead_letter_queue="dlq")
    topo = topology(
        queues=(Queue("dlq"),), topics=(Topic("events"),), policies=(policy,),
        groups=(ConsumerGroup("g", ("events",), handler=f"{H}:flaky", dlq_policy="p"),),
    )

    async def go() -> None:
        async with running(topo, tmp_path) as r:
            r.engine.append("events", [
                rec({"id": "bad", "fail": 99}, key="a", headers={"trace": "t1"}),
                rec({"id": "good"}, key="b"),
            ])
            r.pipeline.notify()
            await wait_until(lambda: r.pipeline.stats().consumers["g"].succeeded == 1)
            await wait_until(lambda: _committed(r.engine, "g", "events", 1) == [2])
            dead = r.engine.peek("dlq", 10)
            assert len(dead) == 1 and dead[0].body == b'{"id":"bad","fail":99}'
            assert dead[0].headers["trace"] == "t1"
            death = dict(dead[0].headers[DEAD_LETTER_HEADER])
            assert death["error"]["type"] == "RuntimeError"
            assert {k: death[k] for k in (
                "reason", "retry_count", "original_topic", "original_partition",
                "original_offset", "original_group", "consumer_id")} == {
                "reason": "handler_error", "retry_count": 2, "original_topic": "events",
                "original_partition": 0, "original_offset": 0, "original_group": "g",
                "consumer_id": "g-1@host"}
            assert bodies(r.engine, "outbox") == [{"id": "good", "attempt": 1}]

    asyncio.run(go())
    order = [(e["id"], e["delivery_count"]) for e in ph.SEEN]
    assert order == [("bad", 1), ("bad", 2), ("bad", 3), ("good", 1)]
    bad = [e["t"] for e in ph.SEEN if e["id"] == "bad"]
    assert bad[1] - bad[0] >= 0.1 and bad[2] - bad[1] >= 0.1


def test_replay_returns_a_dead_record_to_its_group_only(tmp_path: Path) -> None:
    policy = DlqPolicy("p", max_retries=0, dead_letter_queue="dlq")
    topo = topology(
        queues=(Queue("dlq"),), topics=(Topic("events"),), policies=(policy,),
        groups=(
            ConsumerGroup("g", ("events",), handler=f"{H}:flaky", dlq_policy="p",
                          delivery=Delivery.EXACTLY_ONCE),
            ConsumerGroup("other", ("events",)),
        ),
    )

    async def go() -> None:
        async with running(topo, tmp_path) as r:
            r.engine.append("events", [rec({"id": "x", "fail": 1}, key="k")])
            r.pipeline.notify()
            await wait_until(lambda: r.engine.queue_info("dlq").ready == 1)
            assert r.engine.replay("dlq") == 1
            r.pipeline.notify()
            await wait_until(lambda: r.pipeline.stats().consumers["g"].succeeded == 1)
            assert r.engine.queue_info("dlq").ready == 0
            assert r.engine.partitions("events")[0].log_end_offset == 1
            assert r.engine.group_info("other").partitions[0].lag == 1
            assert bodies(r.engine, "outbox") == [{"id": "x", "attempt": 2}]

    asyncio.run(go())
    assert [(e["offset"], e["headers"].get("x-replay-count")) for e in ph.SEEN] == [
        (0, None), (0, 1)]
    assert DEAD_LETTER_HEADER not in ph.SEEN[1]["headers"]


def test_an_exactly_once_group_restarts_where_it_left_off(tmp_path: Path) -> None:
    topo = topology(
        topics=(Topic("events", partitions=2), Topic("results")),
        groups=(ConsumerGroup("g", ("events",), handler=f"{H}:forward",
                              delivery=Delivery.EXACTLY_ONCE),),
    )

    async def phase(ids: range) -> None:
        async with running(topo, tmp_path) as r:
            r.engine.append("events", [rec({"id": i}, key=str(i)) for i in ids])
            r.pipeline.notify()
            await wait_until(lambda: r.pipeline.stats().consumers["g"].succeeded == len(ids))

    asyncio.run(phase(range(0, 5)))
    asyncio.run(phase(range(5, 9)))
    assert sorted(int(e["id"]) for e in ph.SEEN) == list(range(9))


def test_an_expired_member_joins_again_and_goes_on(tmp_path: Path) -> None:
    topo = topology(topics=(Topic("events"),),
                    groups=(ConsumerGroup("g", ("events",), handler=f"{H}:ok"),))

    async def go() -> None:
        async with running(topo, tmp_path) as r:
            r.engine.append("events", [rec({"id": 1})])
            r.pipeline.notify()
            await wait_until(lambda: r.pipeline.stats().consumers["g"].succeeded == 1)
            r.engine.leave("g", "g-1@host")  # what a session timeout does
            assert r.engine.group_info("g").members == ()
            await wait_until(lambda: r.engine.group_info("g").members == ("g-1@host",))
            r.engine.append("events", [rec({"id": 2})])
            r.pipeline.notify()
            await wait_until(lambda: r.pipeline.stats().consumers["g"].succeeded == 2)

    asyncio.run(go())
    assert [e["id"] for e in ph.SEEN] == ["1", "2"]


def test_exactly_once_never_commits_a_record_someone_else_committed(tmp_path: Path) -> None:
    """The fence: the group's position moved past the record while its handler
    ran (another member took the partition), so the outputs are discarded."""
    topo = topology(topics=(Topic("events"),),
                    groups=(ConsumerGroup("g", ("events",), handler=f"{H}:blocking_forward",
                                          delivery=Delivery.EXACTLY_ONCE),))

    async def go() -> None:
        async with running(topo, tmp_path) as r:
            r.engine.append("events", [rec({"id": "a"}), rec({"id": "b"})])
            r.pipeline.notify()
            await wait_until(ph.STARTED.is_set)
            r.engine.commit("g", {TopicPartition("events", 0): 1}, external=False)  # elsewhere
            ph.RELEASE.set()
            await wait_until(lambda: r.pipeline.stats().consumers["g"].succeeded == 1)
            assert bodies(r.engine, "outbox") == [{"id": "b"}]
            assert _committed(r.engine, "g", "events", 1) == [2]

    asyncio.run(go())
    assert [(e["id"], e.get("phase")) for e in ph.SEEN] == [
        ("a", "start"), ("a", "end"), ("b", "start"), ("b", "end")]


def test_apply_restarts_a_changed_group_and_stops_a_removed_one(tmp_path: Path) -> None:
    old = topology(topics=(Topic("events", partitions=2), Topic("other")),
                   groups=(ConsumerGroup("g", ("events",), handler=f"{H}:ok"),
                           ConsumerGroup("h", ("other",), handler=f"{H}:ok")))
    new = topology(topics=(Topic("events", partitions=2), Topic("other")),
                   groups=(ConsumerGroup("g", ("events",), handler=f"{H}:ok", instances=2),))

    async def go() -> None:
        async with running(old, tmp_path) as r:
            r.engine.append("events", [rec({"id": i}, key=str(i)) for i in range(10)])
            r.pipeline.notify()
            await wait_until(lambda: r.pipeline.stats().consumers["g"].succeeded == 10)
            r.engine.apply(new)
            await r.pipeline.apply(new)
            assert set(r.pipeline.stats().consumers) == {"g"}
            await wait_until(lambda: len(r.engine.group_info("g").members) == 2)
            r.engine.append("events", [rec({"id": i}, key=str(i)) for i in range(10, 20)])
            r.pipeline.notify()
            await wait_until(lambda: r.pipeline.stats().consumers["g"].succeeded == 20)

    asyncio.run(go())
    assert sorted(int(e["id"]) for e in ph.SEEN) == list(range(20))


@pytest.mark.parametrize("reset", [OffsetReset.LATEST, OffsetReset.EARLIEST])
def test_a_running_members_position_removed_by_retention_is_reset_by_offset_reset(
    tmp_path: Path, reset: OffsetReset, caplog: pytest.LogCaptureFixture,
) -> None:
    # issue 8 item 5: while the member handles offset 0, retention removes 1..~45;
    # `latest` goes on at the log end (as Kafka does), `earliest` at the log start
    topic = Topic("events", segment_bytes=300, retention=Retention(time_s=None, bytes=1))
    topo = topology(topics=(topic,), groups=(
        ConsumerGroup("g", ("events",), handler=f"{H}:blocking", offset_reset=reset),))

    async def go() -> tuple[int, int]:
        async with running(topo, tmp_path) as r:
            r.append("events", {"id": 0})
            await wait_until(ph.STARTED.is_set)
            for i in range(1, 51):  # one batch each: segments roll between batches
                r.engine.append("events", [rec({"id": i})])
            await wait_until(lambda: r.engine.partitions("events")[0].log_start_offset > 1)
            start = r.engine.partitions("events")[0].log_start_offset
            ph.RELEASE.set()
            await wait_until(lambda: "offset 1 is gone" in caplog.text)
            r.append("events", {"id": 99})
            await wait_until(lambda: any(e["id"] == "99" for e in ph.SEEN))
            return start, 51

    start, end = asyncio.run(go())
    assert f"offset 1 is gone, skipping to {51 if reset is OffsetReset.LATEST else start} " \
        f"(offset_reset {reset.value})" in caplog.text
    handled = [int(e["id"]) for e in ph.SEEN if e.get("phase") == "end"]
    if reset is OffsetReset.LATEST:
        assert handled == [0, 99]
    else:
        assert handled == [0, *range(start, end), 99]


def test_ctx_append_sets_the_record_timestamp_and_refuses_a_bad_one(tmp_path: Path) -> None:
    policy = DlqPolicy("p", max_retries=0, dead_letter_queue="dlq")
    topo = topology(
        queues=(Queue("dlq"),), topics=(Topic("events"), Topic("results")), policies=(policy,),
        groups=(ConsumerGroup("g", ("events",), handler=f"{H}:stamped", dlq_policy="p"),),
    )

    async def go() -> None:
        async with running(topo, tmp_path) as r:
            r.append("events", {"id": 1, "ts": 1_700_000_000_000}, {"id": 2, "ts": -5})
            await wait_until(lambda: len(r.engine.peek("dlq", 10)) == 1)
            recs, _ = r.engine.read("results", 0, 0)
            assert [(x.timestamp_ms, x.value) for x in recs] == [
                (1_700_000_000_000, b'{"id":1}')]
            assert r.engine.offset_for_time("results", 0, 1_600_000_000_000) == 0
            death = r.engine.peek("dlq", 1)[0].headers[DEAD_LETTER_HEADER]
            assert death["error"]["type"] == "runner.errors.InvalidRequest"
            assert death["error"]["message"] == (
                "timestamp must be epoch milliseconds, an integer between 0 and "
                "253402300799999 (9999-12-31T23:59:59.999Z), got -5")

    asyncio.run(go())
