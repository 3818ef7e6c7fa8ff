"""An exactly-once group member takes its next records while its earlier steps are
being written and synced: their steps queue behind them and go together in the next
merged commit (one journal record, one fsync of each log they touch), each record
keeping its own fence and commit. A queued step the engine refuses (a full
`reject-publish` queue) is decided on like a failed call -- retried after the
policy's delay -- and nothing after it in its partition is committed past it.

The disk here is the real one with each fsync made 15 ms slow, so the member always
runs ahead of its syncs."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from runner.engine import Engine, FsyncPolicy, TopicPartition
from runner.errors import NotFound
from runner.fs import LOCAL
from runner.pipeline.deadletter import DEAD_LETTER_HEADER
from runner.topology.model import (
    Binding,
    ConsumerGroup,
    Delivery,
    DlqPolicy,
    Exchange,
    ExchangeType,
    Overflow,
    Queue,
    Topic,
    Topology,
)
from tests.pipeline import pipeline_handlers as ph
from tests.pipeline.harness import CountingBackend, H, bodies, rec, running, topology, wait_until

SLOW_SYNC_S = 0.015


class SlowFs:
    """The real file system whose every fsync takes 15 ms more (a slow disk)."""

    def sync(self, fd: int) -> None:
        time.sleep(SLOW_SYNC_S)
        LOCAL.sync(fd)

    def __getattr__(self, name: str) -> Any:
        return getattr(LOCAL, name)


@asynccontextmanager
async def _running(
    topo: Topology, data_dir: Path, backend: type[CountingBackend] = CountingBackend,
) -> AsyncIterator[tuple[Engine, CountingBackend]]:
    async with running(topo, data_dir, workers=2, fsync=FsyncPolicy.ALWAYS, fs=SlowFs(),
                       backend=backend) as r:
        assert isinstance(r.backend, CountingBackend)
        yield r.engine, r.backend


def _gated_group() -> tuple[Topology, TopicPartition]:
    """An exactly-once group `g` on `events` whose handler forwards to `outbox`."""
    topo = topology(topics=(Topic("events"),),
                    groups=(ConsumerGroup("g", ("events",), handler=f"{H}:gated_forward",
                                          delivery=Delivery.EXACTLY_ONCE),))
    return topo, TopicPartition("events", 0)


def _open_gate() -> None:
    ph.GATE = asyncio.Event()
    ph.GATE.set()


def _committed_offsets(backend: CountingBackend) -> list[list[int]]:
    """The offsets each committed step moved the group to, step by step."""
    return [[off for _g, _tp, off in step.commits] for step, how in backend.steps if how == "ok"]


def test_a_members_next_records_share_a_step_while_its_last_ones_sync(tmp_path: Path) -> None:
    ph.reset()
    topo, tp = _gated_group()

    async def go() -> None:
        _open_gate()
        async with _running(topo, tmp_path) as (engine, backend):
            engine.append("events", [rec({"id": i}) for i in range(40)])
            await wait_until(lambda: engine.position("g", tp) == 40, timeout=20)
            await wait_until(lambda: len(bodies(engine, "outbox")) >= 40)
            assert sorted(b["id"] for b in bodies(engine, "outbox")) == list(range(40))
            steps = _committed_offsets(backend)
            # one step per record before; now a step holds the records handled while
            # the member's earlier steps were synced, committed in order
            assert [off for offs in steps for off in offs] == list(range(1, 41)), steps
            assert len(steps) <= 15, steps
            assert max(len(offs) for offs in steps) >= 4, steps
            assert all(how == "ok" for _, how in backend.steps)
            await wait_until(lambda: engine.journal.pending() == [])  # all marked done

    asyncio.run(go())
    assert len(ph.SEEN) == 40  # each record handled once


def test_a_refused_queued_step_is_retried_and_nothing_is_committed_past_it(
        tmp_path: Path) -> None:
    ph.reset()
    topo = topology(
        topics=(Topic("events"),),
        queues=(Queue("full", max_length=3, overflow=Overflow.REJECT_PUBLISH),),
        exchanges=(Exchange("tofull", ExchangeType.FANOUT),),
        bindings=(Binding("tofull", queue="full"),),
        policies=(DlqPolicy("soon", max_retries=50, backoff=(0.05,)),),
        groups=(ConsumerGroup("g", ("events",), handler=f"{H}:gated_forward",
                              delivery=Delivery.EXACTLY_ONCE, dlq_policy="soon"),),
    )
    tp = TopicPartition("events", 0)
    landed: list[int] = []

    def drain_full(engine: Engine) -> None:
        got = engine.pull("full", 10, lease_s=30, consumer_id="test")
        landed.extend(int(__import__("orjson").loads(d.body)["id"]) for d in got)
        engine.ack("full", [d.delivery_id for d in got])

    async def go() -> None:
        _open_gate()
        async with _running(topo, tmp_path) as (engine, backend):
            engine.append("events", [rec({"id": i, "to": "tofull"}) for i in range(10)])
            # the queue takes 3; the step of record 3 is refused, retried every 50 ms
            await wait_until(lambda: any(how == "Refused" for _, how in backend.steps))
            await asyncio.sleep(0.3)
            assert engine.position("g", tp) == 3
            while engine.position("g", tp) < 10:
                drain_full(engine)
                await asyncio.sleep(0.02)
            drain_full(engine)
            committed = [off for offs in _committed_offsets(backend) for off in offs]
            assert committed == list(range(1, 11)), committed  # in order, none skipped
            stats = engine.queue_info("full")
            assert stats.ready == 0

    asyncio.run(go())
    assert sorted(landed) == list(range(10))  # every output once
    ids = [int(e["id"]) for e in ph.SEEN]
    assert ids.count(3) >= 2  # record 3 was handled again after its step was refused
    assert sorted(set(ids)) == list(range(10))


def test_a_rebalance_while_steps_are_queued_commits_each_record_once(tmp_path: Path) -> None:
    """The member runs ahead of its syncs when another member (one joined like a Kafka
    client's) takes one of its two partitions, from inside the handler of record 50:
    the queued steps of that partition carry the old generation's fence and are
    refused, their outputs discarded; when the other member leaves again (at record
    151), the daemon's member reads the partition from the group's position. Every
    record's output lands once."""
    ph.reset()
    topo = topology(topics=(Topic("events", partitions=2),),
                    groups=(ConsumerGroup("g", ("events",), handler=f"{H}:hooked_forward",
                                          delivery=Delivery.EXACTLY_ONCE),))
    tps = [TopicPartition("events", 0), TopicPartition("events", 1)]
    done: set[int] = set()

    async def go() -> None:
        async with _running(topo, tmp_path) as (engine, backend):
            def hook(msg: Any) -> None:
                i = msg.body["id"]
                if i in (50, 151) and i not in done:
                    done.add(i)
                    if i == 50:
                        engine.join("g", "a-kafka-client", local=True)
                    else:
                        engine.leave("g", "a-kafka-client")

            ph.HOOK = hook
            await wait_until(lambda: _held(engine, "g-1@host") == tps)
            engine.append("events", [rec({"id": i}, partition=i % 2) for i in range(200)])
            await wait_until(lambda: all(engine.position("g", tp) == 100 for tp in tps),
                             timeout=30)
            await wait_until(lambda: len(bodies(engine, "outbox")) >= 200)
            await asyncio.sleep(0.2)
            ids = [b["id"] for b in bodies(engine, "outbox")]
            assert sorted(ids) == list(range(200))  # none lost, none twice
            # steps queued under the old generation were refused (their fences)
            refused = [how for _, how in backend.steps if how != "ok"]
            assert refused and all(how == "Conflict" for how in refused), backend.steps

    asyncio.run(go())
    assert done == {50, 151}


def _held(engine: Engine, member: str) -> list[TopicPartition] | None:
    try:
        return engine.assignment("g", member)
    except NotFound:  # not (or no longer) a member
        return None


def test_a_queued_step_refused_every_time_is_dead_lettered_after_its_retries(
        tmp_path: Path) -> None:
    """max_retries=2: a record whose step the engine refuses every time (a full
    reject-publish queue that never drains) is dead-lettered after the call and its 2
    retries, as a failed call would be, and the partition moves on. The refusal comes
    back after the member ran ahead over the 40 records behind it, whose steps are
    then stale: each is handled again once, record 0 exactly 3 times. (A first version
    counted the failures from 1 again at each refusal, and one after it took the
    stale steps' outcomes for refusals before record 0: it was retried for ever.)"""
    from runner.engine import OutMessage

    ph.reset()
    topo = topology(
        topics=(Topic("events"),),
        queues=(Queue("full", max_length=1, overflow=Overflow.REJECT_PUBLISH), Queue("dlq")),
        exchanges=(Exchange("tofull", ExchangeType.FANOUT),),
        bindings=(Binding("tofull", queue="full"),),
        policies=(DlqPolicy("soon", max_retries=2, backoff=(0.2,), dead_letter_queue="dlq"),),
        groups=(ConsumerGroup("g", ("events",), handler=f"{H}:gated_forward",
                              delivery=Delivery.EXACTLY_ONCE, dlq_policy="soon"),),
    )
    tp = TopicPartition("events", 0)

    async def go() -> None:
        _open_gate()
        async with _running(topo, tmp_path) as (engine, _backend):
            engine.publish_to_queue("full", [OutMessage(b"{}")])  # full from now on
            engine.append("events", [rec({"id": 0, "to": "tofull"}),
                                     *(rec({"id": i}) for i in range(1, 41))])
            await wait_until(lambda: engine.position("g", tp) == 41, timeout=10)
            (letter,) = engine.peek("dlq", 10)
            death = dict(letter.headers[DEAD_LETTER_HEADER])
            assert death["retry_count"] == 2, death
            assert death["error"]["type"] == "runner.errors.Refused", death
            assert death["error"]["message"].startswith("queue 'full' has no room"), death
            assert death["first_attempt"] < death["last_attempt"], death  # the first call's
            assert engine.queue_info("full").ready == 1  # nothing of record 0 landed
            assert sorted(b["id"] for b in bodies(engine, "outbox")) == list(range(1, 41))

    asyncio.run(go())
    # record 0: the call and its 2 retries (the records behind it may be handled ahead
    # of each refusal, their steps then dropped as stale: their outputs landed once)
    ids = [int(e["id"]) for e in ph.SEEN]
    assert ids.count(0) == 3, ids


def test_an_exactly_once_member_passes_the_gaps_compaction_left(tmp_path: Path) -> None:
    """A compacted topic's offsets have gaps: the record after a gap follows the one
    before it (the member checks each step against the position the record follows,
    not against its offset - 1), so each is handled once and the group moves past
    them all (a member compared offsets, and re-read the record after the gap for
    ever)."""
    ph.reset()
    # offsets 1 and 4 are compacted away
    topo, offsets, _end = _compacted(
        tmp_path, [rec({"id": i}, key=k) for i, k in enumerate("abbcdd")])
    assert offsets == [0, 2, 3, 5]
    tp = TopicPartition("c", 0)

    async def go() -> None:
        async with _running(topo, tmp_path) as (engine, backend):
            await wait_until(lambda: engine.position("g", tp) == 6, timeout=10)
            await asyncio.sleep(0.2)  # nothing more is handled
            committed = [off for offs in _committed_offsets(backend) for off in offs]
            assert committed == [1, 3, 4, 6], committed

    asyncio.run(go())
    assert [int(s["id"]) for s in ph.SEEN] == [0, 2, 3, 5]


class _BrokenOnce(CountingBackend):
    """The embedded backend whose next `commit_step` raises a bug's error (not the
    engine's refusal) once `broken` is set."""

    broken = False

    def commit_step(self, step: Any) -> Any:
        if _BrokenOnce.broken:
            _BrokenOnce.broken = False
            raise RuntimeError("a bug")
        return super().commit_step(step)


def test_a_bug_committing_queued_steps_strands_no_record(tmp_path: Path) -> None:
    """Committing the queued steps raises what is not an engine error (a bug): it is
    logged, and each record of the batch is read again from the group's position, so
    the member neither hangs nor loses a record; every output lands once."""
    ph.reset()
    topo, tp = _gated_group()

    async def go() -> None:
        _open_gate()
        async with _running(topo, tmp_path, _BrokenOnce) as (engine, _backend):
            engine.append("events", [rec({"id": i}) for i in range(5)])
            await wait_until(lambda: engine.position("g", tp) == 5, timeout=10)
            _BrokenOnce.broken = True
            engine.append("events", [rec({"id": i}) for i in range(5, 30)])
            await wait_until(lambda: engine.position("g", tp) == 30, timeout=20)
            assert not _BrokenOnce.broken  # it did raise
            await wait_until(lambda: len(bodies(engine, "outbox")) >= 30)
            assert sorted(b["id"] for b in bodies(engine, "outbox")) == list(range(30))

    asyncio.run(go())


def test_a_retry_in_place_gives_way_to_a_refused_step_before_it(tmp_path: Path) -> None:
    """Record 0's queued step is refused (a full reject-publish queue) while the member,
    run ahead, waits to retry record 1 (its handler failed): once that wait is over the
    member reads the partition again from record 0, rather than calling record 1 again
    first (its step could never be committed before record 0's)."""
    from runner.engine import OutMessage

    ph.reset()
    topo = topology(
        topics=(Topic("events"),),
        queues=(Queue("full", max_length=1, overflow=Overflow.REJECT_PUBLISH),),
        bindings=(Binding("out", queue="full"),),  # `out` fans out to `outbox` and here
        policies=(DlqPolicy("soon", max_retries=50, backoff=(0.3,)),),
        groups=(ConsumerGroup("g", ("events",), handler=f"{H}:hooked_forward",
                              delivery=Delivery.EXACTLY_ONCE, dlq_policy="soon"),),
    )
    failed: list[int] = []

    def fail_record_1_once(msg: Any) -> None:
        if msg.body["id"] == 1 and not failed:
            failed.append(1)
            raise RuntimeError("record 1 fails once")

    async def go() -> None:
        ph.HOOK = fail_record_1_once
        try:
            async with _running(topo, tmp_path) as (engine, _backend):
                engine.publish_to_queue("full", [OutMessage(b"{}")])  # full from now on
                engine.append("events", [rec({"id": 0}), rec({"id": 1})])
                await wait_until(lambda: len(ph.SEEN) >= 3, timeout=10)
        finally:
            ph.HOOK = None

    asyncio.run(go())
    assert [int(e["id"]) for e in ph.SEEN[:3]] == [0, 1, 0], ph.SEEN


def test_an_exactly_once_member_passes_a_gap_compaction_left_at_the_log_end(
        tmp_path: Path) -> None:
    """The tail of a compacted topic was removed (a record superseded, then its key's
    tombstone cleaned): the member's read passes the gap to the log end, and the record
    appended later still follows the last one handled, so it is handled once (it was
    taken for stale, its outputs dropped, and handled a second time)."""
    from runner.engine import OutRecord

    ph.reset()
    topo, offsets, end = _compacted(tmp_path, [
        rec({"id": 0}, key="a"), rec({"id": 1}, key="b"), OutRecord(value=None, key=b"b")])
    assert (offsets, end) == ([0], 3)
    tp = TopicPartition("c", 0)

    async def go() -> None:
        async with _running(topo, tmp_path) as (engine, backend):
            await wait_until(lambda: engine.position("g", tp) == 1, timeout=10)
            await asyncio.sleep(0.2)  # the member read on to the log end (3)
            engine.append("c", [rec({"id": 3}, key="c")])
            await wait_until(lambda: engine.position("g", tp) == 4, timeout=10)
            await asyncio.sleep(0.2)
            committed = [off for offs in _committed_offsets(backend) for off in offs]
            assert committed == [1, 4], committed

    asyncio.run(go())
    assert [int(s["id"]) for s in ph.SEEN] == [0, 3]


def _compacted(data_dir: Path, records: list[Any]) -> tuple[Topology, list[int], int]:
    """An exactly-once group `g` (handler `ok`) on compacted topic `c` holding
    `records`, one append each, compacted once now and again two days later (a
    tombstone's key is gone by then); the offsets left and the log end."""
    from runner.clock import ManualClock, now_ms
    from runner.log.compaction import compact

    day_ms = 86_400_000
    topo = topology(
        topics=(Topic("c", compact=True, delete=False, segment_bytes=1_000),),
        groups=(ConsumerGroup("g", ("c",), handler=f"{H}:ok",
                              delivery=Delivery.EXACTLY_ONCE),))
    clock = ManualClock()
    e = Engine.open(topo, data_dir, fsync=FsyncPolicy.NEVER, clock=clock)
    try:
        for r in records:
            e.append("c", [r])
        wal = e.store.partition("c", 0).log
        wal.roll()
        compact(wal, now_ms=now_ms(clock), delete_retention_ms=day_ms)
        compact(wal, now_ms=now_ms(clock) + 2 * day_ms, delete_retention_ms=day_ms)
        recs, end = e.read("c", 0, 0)
        return topo, [r.offset for r in recs], end
    finally:
        e.flush()
        e.close()
