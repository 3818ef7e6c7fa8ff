"""Merged writes (`runner.engine.merged`, `EmbeddedBackend.put_merged` / `publish_merged`):
the puts and publishes of one turn of the event loop stored as one write per queue
(or exchange) under one ticket, on a real engine under `--fsync always`; each caller
sees what its own write + durable would."""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from runner.clock import ManualClock
from runner.engine import Engine, FsyncPolicy, OutMessage, OutRecord
from runner.engine.contract import MergedWrites
from runner.engine.embedded import EmbeddedBackend
from runner.errors import InvalidRequest, LogFailed, NotFound, Refused, TooLarge
from runner.topology.model import (
    Binding,
    Exchange,
    ExchangeType,
    Overflow,
    Queue,
    Topic,
    Topology,
)
from tests.engine.test_engine_tickets import GatedFs, _SlowFlusher
from tests.faultfs import SimDisk

TOPO = Topology(queues=(
    ("q", Queue("q")),
    ("q2", Queue("q2")),
    ("full", Queue("full", max_length=3, overflow=Overflow.REJECT_PUBLISH)),
))


@pytest.fixture()
def merged(tmp_path: Path) -> Iterator[tuple[EmbeddedBackend, GatedFs]]:
    fs = GatedFs()
    engine = Engine.open(TOPO, tmp_path, fsync=FsyncPolicy.ALWAYS, clock=ManualClock(),
                         fs=fs)  # type: ignore[arg-type]
    # these tests hold a round in its fsync: on the loop that would stall the loop
    # itself, so the flusher thread runs every round (the loop's own rounds:
    # test_engine_tickets)
    engine.sync_on_loop = False
    yield EmbeddedBackend(engine), fs
    fs.release.set()
    with contextlib.suppress(Exception):
        engine.close()


def _msgs(*bodies: str, **kw: Any) -> list[OutMessage]:
    return [OutMessage(body=b.encode(), **kw) for b in bodies]


def _depth(backend: EmbeddedBackend, queue: str) -> int:
    return len(backend.engine.broker.queues[queue])


async def _outcomes(*calls: Any) -> list[Any]:
    return list(await asyncio.gather(*calls, return_exceptions=True))


def test_the_embedded_backend_merges_writes() -> None:
    assert issubclass(EmbeddedBackend, MergedWrites)


def test_the_puts_of_one_turn_are_one_write_and_one_fsync(
    merged: tuple[EmbeddedBackend, GatedFs],
) -> None:
    backend, fs = merged

    async def scenario() -> list[Any]:
        # eight callers in one turn of the loop, a ninth into another queue
        calls = [backend.put_merged("q", _msgs(f"m{i}")) for i in range(8)]
        calls.append(backend.put_merged("q2", _msgs("a", "b")))
        return await _outcomes(*calls)

    before = fs.count("q")
    outcomes = asyncio.run(scenario())
    assert outcomes == [(("q",),)] * 8 + [(("q2",), ("q2",))]
    merger = backend._merger
    assert (merger.batches, merger.callers) == (1, 8)  # q2's caller was alone
    assert fs.count("q") - before == 1  # one fsync covered the eight
    assert _depth(backend, "q") == 8 and _depth(backend, "q2") == 2


def test_no_caller_is_answered_before_its_fsync(
    merged: tuple[EmbeddedBackend, GatedFs],
) -> None:
    backend, fs = merged
    fs.hold = "q"

    async def scenario() -> None:
        futures = [backend.put_merged("q", _msgs(f"m{i}")) for i in range(3)]
        gathered = asyncio.gather(*futures)
        while not fs.holding.is_set():  # the flusher is in the fsync of q
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        assert not any(f.done() for f in futures)  # written, not yet durable
        fs.release.set()
        assert await gathered == [(("q",),)] * 3

    asyncio.run(scenario())


async def _first_held(backend: EmbeddedBackend, fs: GatedFs) -> asyncio.Future[Any]:
    """A put into `q` (fs.hold = "q"), once the flusher is in its held fsync."""
    first = backend.put_merged("q", _msgs("a"))
    while not fs.holding.is_set():
        await asyncio.sleep(0.01)
    return first


def test_callers_that_come_during_a_batchs_fsync_are_held_and_stored_as_one_batch(
    merged: tuple[EmbeddedBackend, GatedFs],
) -> None:
    backend, fs = merged
    fs.hold = "q"

    async def scenario() -> list[Any]:
        first = [backend.put_merged("q", _msgs(f"a{i}")) for i in range(2)]
        while not fs.holding.is_set():  # the flusher is in the fsync of the first two
            await asyncio.sleep(0.01)
        later = []
        for i in range(3):  # three more turns of the loop, one caller each
            later.append(backend.put_merged("q", _msgs(f"b{i}")))
            await asyncio.sleep(0.01)
        assert _depth(backend, "q") == 2  # held, not written: their round is the next
        assert not any(f.done() for f in first + later)
        fs.hold = None
        fs.release.set()
        return await _outcomes(*first, *later)

    before = fs.count("q")
    assert asyncio.run(scenario()) == [(("q",),)] * 5
    merger = backend._merger
    assert (merger.batches, merger.callers) == (2, 5)  # the three later callers: one write
    assert fs.count("q") - before == 2  # and one fsync
    assert _depth(backend, "q") == 5


def test_a_closing_loop_cancels_the_callers_held_behind_a_batch(
    merged: tuple[EmbeddedBackend, GatedFs],
) -> None:
    backend, fs = merged
    fs.hold = "q"
    held: list[asyncio.Future[Any]] = []

    async def scenario() -> None:
        await _first_held(backend, fs)
        held.append(backend.put_merged("q", _msgs("b")))
        await asyncio.sleep(0.01)
        # asyncio.run ends here: the batch's task is cancelled, so is the held caller

    asyncio.run(scenario())
    fs.release.set()
    assert held[0].cancelled()
    backend.engine.commits.wait_idle(10)
    assert _depth(backend, "q") == 1  # "b" was never stored: nobody was answered for it
    fs.hold = None

    async def again() -> Any:  # the same backend on a new loop: nothing is held any more
        return await asyncio.wait_for(backend.put_merged("q", _msgs("c")), 10)

    assert asyncio.run(again()) == (("q",),)
    assert _depth(backend, "q") == 2


def test_a_held_caller_whose_request_was_cancelled_is_not_stored(
    merged: tuple[EmbeddedBackend, GatedFs],
) -> None:
    backend, fs = merged
    fs.hold = "q"

    async def scenario() -> list[Any]:
        first = await _first_held(backend, fs)
        gone = backend.put_merged("q", _msgs("gone"))
        kept = backend.put_merged("q", _msgs("kept"))
        await asyncio.sleep(0.01)
        gone.cancel()  # its client went away while it was held
        fs.hold = None
        fs.release.set()
        return await _outcomes(first, kept)

    assert asyncio.run(scenario()) == [(("q",),)] * 2
    assert _depth(backend, "q") == 2
    bodies = [m.body for m in backend.engine.broker.queues["q"].peek(10)]
    assert bodies == [b"a", b"kept"]


def test_a_full_reject_publish_queue_refuses_exactly_the_callers_past_its_room(
    merged: tuple[EmbeddedBackend, GatedFs],
) -> None:
    backend, _ = merged

    async def scenario() -> list[Any]:
        return await _outcomes(
            backend.put_merged("full", _msgs("a")),
            backend.put_merged("full", _msgs("b", "c", "d")),  # room for two of its three
            backend.put_merged("full", _msgs("e")),  # put again alone: refused too
        )

    first, second, third = asyncio.run(scenario())
    assert first == (("full",),)
    assert isinstance(second, Refused) and second.accepted == 2
    assert "queue 'full' is full" in str(second)
    assert isinstance(third, Refused) and third.accepted == 0
    assert _depth(backend, "full") == 3
    bodies = [m.body for m in backend.fetch("full", 10, lease_s=30, consumer_id="t")]
    assert bodies == [b"a", b"b", b"c"]


def test_a_caller_at_fault_fails_alone_and_the_others_are_stored_once(
    merged: tuple[EmbeddedBackend, GatedFs],
) -> None:
    backend, _ = merged
    bad = OutMessage(body=b"x", headers={"h": {1, 2}})  # a set is no header value

    async def scenario() -> list[Any]:
        return await _outcomes(
            backend.put_merged("q", _msgs("a")),
            backend.put_merged("q", [OutMessage(body=b"y"), bad]),
            backend.put_merged("q", _msgs("b")),
            backend.put_merged("nope", _msgs("c")),
        )

    first, second, third, fourth = asyncio.run(scenario())
    assert first == third == (("q",),)
    assert isinstance(second, InvalidRequest)
    assert str(second).startswith("message 1: ")  # counted in its own messages
    assert isinstance(fourth, NotFound)
    bodies = [m.body for m in backend.fetch("q", 10, lease_s=30, consumer_id="t")]
    assert bodies == [b"a", b"b"]


def test_a_failed_fsync_fails_every_caller_of_its_round(
    merged: tuple[EmbeddedBackend, GatedFs],
) -> None:
    backend, fs = merged
    fs.fail = "q"

    async def scenario() -> list[Any]:
        first = await _outcomes(*(backend.put_merged("q", _msgs(f"m{i}")) for i in range(4)))
        # the failed log refuses from then on; another log goes on
        return first + await _outcomes(backend.put_merged("q", _msgs("later")),
                                       backend.put_merged("q2", _msgs("other")))

    outcomes = asyncio.run(scenario())
    assert all(isinstance(o, LogFailed) for o in outcomes[:5]), outcomes
    assert outcomes[5] == (("q2",),)


PUBLISH_TOPO = Topology(
    exchanges=(("fx", Exchange("fx", type=ExchangeType.FANOUT)),),
    queues=(("wide", Queue("wide")),
            ("small", Queue("small", max_length=2, overflow=Overflow.REJECT_PUBLISH))),
    bindings=(Binding(exchange="fx", queue="wide"), Binding(exchange="fx", queue="small")),
)


def test_publishes_through_an_exchange_merge_and_a_refusal_splits_by_caller(
    tmp_path: Path,
) -> None:
    engine = Engine.open(PUBLISH_TOPO, tmp_path, fsync=FsyncPolicy.ALWAYS, clock=ManualClock())
    backend = EmbeddedBackend(engine)
    try:
        async def scenario() -> list[Any]:
            return await _outcomes(
                backend.publish_merged("fx", _msgs("a"), 2),
                backend.publish_merged("fx", _msgs("b", "c"), 4),  # small has room for b only
                backend.publish_merged("fx", _msgs("d"), 2),
                backend.publish_merged("nope", _msgs("e"), 1),
            )

        first, second, third, fourth = asyncio.run(scenario())
        assert [sorted(r) for r in first] == [["small", "wide"]]
        assert isinstance(second, Refused) and second.accepted == 1
        assert second.routed == ("wide",)  # c reached wide before small refused it
        assert isinstance(third, Refused) and third.accepted == 0
        assert isinstance(fourth, NotFound)
        assert backend._merger.batches == 1
        small = [m.body for m in backend.fetch("small", 10, lease_s=30, consumer_id="t")]
        wide = [m.body for m in backend.fetch("wide", 10, lease_s=30, consumer_id="t")]
        assert (small, wide) == ([b"a", b"b"], [b"a", b"b", b"c", b"d"])
    finally:
        engine.close()


# ------------------------------------------------------------------ power cuts

CUT_TOPO = Topology(
    exchanges=(("fx", Exchange("fx", type=ExchangeType.FANOUT)),),
    queues=(("q", Queue("q")), ("wide", Queue("wide"))),
    bindings=(Binding(exchange="fx", queue="wide"),),
)
D = Path("/srv/data")


def _cut_workload(disk: SimDisk, acked: dict[str, set[bytes]], on_loop: bool) -> None:
    """Rounds of merged puts and publishes; a caller's messages count as acknowledged
    once its future resolved (the daemon answers 202 then). `on_loop`: the fsync
    rounds run on the event loop (the default), else on the flusher thread."""
    engine = Engine.open(CUT_TOPO, D, fsync=FsyncPolicy.ALWAYS, clock=ManualClock(), fs=disk)
    engine.sync_on_loop = on_loop
    backend = EmbeddedBackend(engine)

    async def rounds() -> None:
        for i in range(25):
            calls: list[tuple[str, list[bytes], Any]] = []
            for j in range(4):
                bodies = [b"q-%d-%d-%d" % (i, j, k) * 6 for k in range(1 + j % 2)]
                calls.append(("q", bodies, backend.put_merged("q", _msgs_b(bodies))))
            for j in range(2):
                bodies = [b"x-%d-%d" % (i, j) * 6]
                calls.append(("wide", bodies,
                              backend.publish_merged("fx", _msgs_b(bodies), 1)))
            outcomes = await asyncio.gather(*(call for _, _, call in calls),
                                            return_exceptions=True)
            for (queue, bodies, _), outcome in zip(calls, outcomes, strict=True):
                if isinstance(outcome, BaseException):
                    if disk.dead:
                        continue
                    raise outcome
                acked[queue].update(bodies)
            if disk.dead:
                return

    try:
        asyncio.run(rounds())
        if not disk.dead:  # the rounds ran where they were meant to
            assert (engine.commits.loop_rounds > 0) is on_loop, engine.commits.loop_rounds
    finally:
        with contextlib.suppress(Exception):
            engine.close()


def _msgs_b(bodies: list[bytes]) -> list[OutMessage]:
    return [OutMessage(body=b) for b in bodies]


def _cut_verify(disk: SimDisk, acked: dict[str, set[bytes]], why: str) -> None:
    engine = Engine.open(CUT_TOPO, D, fsync=FsyncPolicy.ALWAYS, clock=ManualClock(), fs=disk)
    try:
        for queue in ("q", "wide"):
            got = collections.Counter(d.body for d in engine.peek(queue, 100_000))
            assert max(got.values(), default=1) == 1, (why, queue, "stored twice")
            assert acked[queue] <= set(got), (why, queue, "acknowledged, lost")
    finally:
        engine.close()


def _cut_run(cut: int | None, on_loop: bool) -> SimDisk:
    disk = _SlowFlusher(cut_at=cut)
    acked: dict[str, set[bytes]] = {"q": set(), "wide": set()}
    try:
        _cut_workload(disk, acked, on_loop)
    except Exception:
        if not disk.dead:
            raise
    if cut is not None:
        _cut_verify(disk.crash(), acked, f"cut {cut}")
        _cut_verify(disk.crash(torn=True, seed=cut), acked, f"cut {cut} torn")
    return disk


@pytest.mark.parametrize("on_loop", [True, False], ids=["rounds-on-the-loop", "flusher-thread"])
def test_answered_merged_writes_survive_a_power_cut_at_sampled_cut_points(
        on_loop: bool) -> None:
    total = _cut_run(None, on_loop).changes
    assert total > 100
    for cut in sorted({1 + (total - 1) * i // 39 for i in range(40)}):
        _cut_run(cut, on_loop)


APPEND_TOPO = Topology(topics=(("t", Topic("t", partitions=2, max_message_bytes=64)),))


def test_appends_merge_and_a_record_at_fault_fails_alone(tmp_path: Path) -> None:
    engine = Engine.open(APPEND_TOPO, tmp_path, fsync=FsyncPolicy.ALWAYS, clock=ManualClock())
    backend = EmbeddedBackend(engine)
    try:
        async def scenario() -> list[Any]:
            calls = [backend.append_merged("t", [OutRecord(value=b"r%d" % i)])
                     for i in range(5)]
            calls.insert(2, backend.append_merged("t", [OutRecord(value=b"x" * 200)]))
            calls.append(backend.append_merged("t", [OutRecord(value=b"k", partition=1)]))
            return await _outcomes(*calls)

        outcomes = asyncio.run(scenario())
        assert isinstance(outcomes.pop(2), TooLarge)  # only the record over the limit
        positions = [o[0] for o in outcomes]
        assert len(set(positions)) == 6 and positions[-1][0] == 1
        assert (backend._merger.batches, backend._merger.callers) == (1, 0)  # refused whole
        stored = {(p, r.offset): r.value for p in (0, 1)
                  for r in backend.read("t", p, 0, max_records=100).records}
        assert {stored[pos] for pos in positions} == {b"r0", b"r1", b"r2", b"r3", b"r4", b"k"}
        assert len(stored) == 6  # nothing appended twice
    finally:
        engine.close()


def test_merged_keyless_appends_go_to_one_partition_and_sync_one_log(tmp_path: Path) -> None:
    # Kafka's sticky partitioner for the merged appends of many requests: a batch's
    # keyless records on one partition (one log to fsync, not one per partition),
    # the next batch on the next; a request stored alone keeps its round robin
    fs = GatedFs()
    topo = Topology(topics=(("t", Topic("t", partitions=4)),))
    engine = Engine.open(topo, tmp_path, fsync=FsyncPolicy.ALWAYS, clock=ManualClock(),
                         fs=fs)  # type: ignore[arg-type]
    backend = EmbeddedBackend(engine)

    def synced() -> list[int]:
        return [fs.count(f"t-{p}") for p in range(4)]

    async def turn(n: int) -> list[Any]:
        return await _outcomes(*(backend.append_merged("t", [OutRecord(value=b"r%d" % i)])
                                 for i in range(n)))

    try:
        before = synced()
        first = asyncio.run(turn(6))
        assert [o[0] for o in first] == [(0, i) for i in range(6)]
        after_first = synced()
        assert [a - b for a, b in zip(after_first, before, strict=True)] == [1, 0, 0, 0]
        second = asyncio.run(turn(3))
        assert [o[0] for o in second] == [(1, 0), (1, 1), (1, 2)]
        assert [a - b for a, b in zip(synced(), after_first, strict=True)] == [0, 1, 0, 0]
        # one caller alone (nothing to merge with): spread round robin as the route's
        async def alone_turn() -> list[Any]:
            return await _outcomes(backend.append_merged("t", [OutRecord(value=b"x")] * 4))

        (alone,) = asyncio.run(alone_turn())
        assert [p for p, _ in alone] == [0, 1, 2, 3]  # the round robin's own count
        assert (backend._merger.batches, backend._merger.callers) == (2, 9)
        stored = {p: [r.value for r in backend.read("t", p, 0, max_records=100).records]
                  for p in range(4)}
        assert stored == {0: [b"r%d" % i for i in range(6)] + [b"x"],
                          1: [b"r0", b"r1", b"r2", b"x"], 2: [b"x"], 3: [b"x"]}
    finally:
        engine.close()


def test_callers_of_a_merged_append_refused_whole_are_placed_as_alone(tmp_path: Path) -> None:
    # a batch refused whole (a record over the limit) is stored caller by caller: each
    # one's keyless records spread round robin as its own request would, not sticky
    topo = Topology(topics=(("t", Topic("t", partitions=4, max_message_bytes=64)),))
    engine = Engine.open(topo, tmp_path, fsync=FsyncPolicy.ALWAYS, clock=ManualClock())
    backend = EmbeddedBackend(engine)
    try:
        async def scenario() -> list[Any]:
            return await _outcomes(
                backend.append_merged("t", [OutRecord(value=b"a%d" % i) for i in range(3)]),
                backend.append_merged("t", [OutRecord(value=b"x" * 200)]),
                backend.append_merged("t", [OutRecord(value=b"b%d" % i) for i in range(2)]))

        first, refused, second = asyncio.run(scenario())
        assert isinstance(refused, TooLarge)
        assert [p for p, _ in first] == [0, 1, 2] and [p for p, _ in second] == [3, 0]
        assert (backend._merger.batches, backend._merger.callers) == (1, 0)
    finally:
        engine.close()


def test_an_idempotent_producers_appends_are_not_merged(tmp_path: Path) -> None:
    engine = Engine.open(APPEND_TOPO, tmp_path, fsync=FsyncPolicy.ALWAYS, clock=ManualClock())
    backend = EmbeddedBackend(engine)
    try:
        async def scenario() -> list[Any]:
            # two batches of one producer in one turn: each checked on its own
            return await _outcomes(*(backend.append_merged("t", [OutRecord(
                value=b"p%d" % i, partition=0, producer_id="p1", sequence=i)])
                for i in range(2)))

        first, second = asyncio.run(scenario())
        assert (first, second) == (((0, 0),), ((0, 1),))
        assert backend._merger.batches == 0
    finally:
        engine.close()


def test_an_append_to_several_partitions_leaves_their_fsyncs_to_the_flusher(
    tmp_path: Path,
) -> None:
    # a merged append spreads over partitions; before, a write touching several logs
    # synced them on the caller's thread (the event loop) in write order
    fs = GatedFs()
    engine = Engine.open(APPEND_TOPO, tmp_path, fsync=FsyncPolicy.ALWAYS, clock=ManualClock(),
                         fs=fs)  # type: ignore[arg-type]
    backend = EmbeddedBackend(engine)
    fs.hold = "t-1"
    before = (fs.count("t-0"), fs.count("t-1"))
    try:
        appended = backend.append("t", [OutRecord(value=b"a", partition=0),
                                        OutRecord(value=b"b", partition=1)])
        assert fs.holding.wait(10)  # the flusher is in partition 1's fsync, not us
        assert not engine.commits.when_durable(appended.ticket.seq).done()
        fs.release.set()
        asyncio.run(backend.durable(appended.ticket))
        assert (fs.count("t-0") - before[0], fs.count("t-1") - before[1]) == (1, 1)
    finally:
        fs.release.set()
        engine.close()


class _RoundsTarget:
    """A producer whose writes each get their own flusher round: the rounds in
    `failing` fail (a combined ticket fails when it covers one, as the contract says)."""

    def __init__(self, failing: set[int]) -> None:
        self.seq = 0
        self.failing = failing

    def put(self, queue: str, messages: Any) -> Any:
        from runner.engine.contract import Published, Ticket
        self.seq += 1
        return Published(tuple((queue,) for _ in messages), Ticket(self.seq))

    def taken(self) -> Any:
        from runner.engine.contract import Ticket
        return Ticket(self.seq)

    async def durable(self, ticket: Any) -> None:
        if any(ticket.earliest <= s <= ticket.seq for s in self.failing):
            raise LogFailed("fsync of q failed", path="q")


def test_a_caller_whose_own_round_succeeded_is_not_failed_by_an_earlier_one() -> None:
    """Two callers of one turn, stored in two rounds: the first (earlier) round fails,
    the second succeeds. The turn's tickets combined fail; each caller still gets its
    own round's outcome."""
    from runner.engine.merged import WriteMerger

    target = _RoundsTarget(failing={1})
    merger = WriteMerger(target)  # type: ignore[arg-type]

    async def scenario() -> list[Any]:
        return await _outcomes(merger.put("q", _msgs("a")), merger.put("q2", _msgs("b")))

    first, second = asyncio.run(scenario())
    assert isinstance(first, LogFailed)
    assert second == (("q2",),)
