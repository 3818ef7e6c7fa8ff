"""Group commit off the caller's thread (issue 10 item 3): a write inside
`Engine.ticketed()` returns once written, the data dir's flusher thread syncs
each dirty log once per round and resolves every ticket of the round; a failed
fsync fails that round's tickets only; a power cut loses nothing whose ticket
resolved."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from runner.clock import ManualClock
from runner.engine import Engine, FsyncPolicy, OutMessage, OutRecord, Step
from runner.errors import LogFailed, StorageError
from runner.fs import LOCAL, read_bytes
from runner.topology.model import Queue, Topic, Topology
from tests.faultfs import SimDisk

TOPO = Topology(
    topics=(("t", Topic("t")),),
    queues=(("q", Queue("q")), ("q2", Queue("q2")), ("gate", Queue("gate"))),
)


class GatedFs:
    """The real file system; counts fdatasyncs by file, can hold the syncs of one
    directory until released and can fail the next sync of one directory."""

    def __init__(self) -> None:
        self.synced: list[str] = []
        self._paths: dict[int, str] = {}
        self.hold: str | None = None  # a sync of a file under this dir waits ...
        self.release = threading.Event()  # ... until this is set
        self.holding = threading.Event()  # set while a sync is held
        self.fail: str | None = None  # the next sync of a file under this dir fails

    def open(self, path: Path, *, create: bool = False, truncate: bool = False) -> int:
        fd = LOCAL.open(path, create=create, truncate=truncate)
        self._paths[fd] = str(path)
        return fd

    def sync(self, fd: int) -> None:
        path = self._paths.get(fd, "?")
        if self.hold is not None and f"/{self.hold}/" in path:
            self.holding.set()
            self.release.wait(10)
        if self.fail is not None and f"/{self.fail}/" in path:
            self.fail = None
            raise OSError(5, "Input/output error (injected)")
        self.synced.append(path)
        LOCAL.sync(fd)

    def count(self, directory: str) -> int:
        return sum(1 for p in self.synced if f"/{directory}/" in p)

    def __getattr__(self, name: str) -> Any:
        return getattr(LOCAL, name)


@pytest.fixture()
def gated(tmp_path: Path) -> Iterator[tuple[Engine, GatedFs]]:
    fs = GatedFs()
    engine = Engine.open(TOPO, tmp_path, fsync=FsyncPolicy.ALWAYS, clock=ManualClock(),
                         fs=fs)  # type: ignore[arg-type]
    yield engine, fs
    fs.release.set()
    with contextlib.suppress(Exception):
        engine.close()


def _wait(engine: Engine, seq: int) -> None:
    engine.commits.when_durable(seq).result(timeout=10)


def _hold_flusher(engine: Engine, fs: GatedFs) -> int:
    """Start a round whose sync of queue `gate` waits until `fs.release`."""
    fs.hold = "gate"
    with engine.ticketed() as box:
        engine.publish_to_queue("gate", [OutMessage(b"g")])
    assert fs.holding.wait(10)
    return box.seq


def test_a_ticketed_write_returns_unsynced_and_its_ticket_resolves_after_the_fsync(
        gated: tuple[Engine, GatedFs]) -> None:
    engine, fs = gated
    fs.synced.clear()
    gate = _hold_flusher(engine, fs)
    with engine.ticketed() as box:
        engine.publish_to_queue("q", [OutMessage(b"a")])
    assert box.seq > gate
    assert fs.count("q") == 0  # written, not synced
    fut = engine.commits.when_durable(box.seq)
    assert not fut.done()
    fs.release.set()
    fut.result(timeout=10)
    assert fs.count("q") == 1
    assert [d.body for d in engine.peek("q", 10)] == [b"a"]


def test_tickets_written_during_a_round_share_one_fsync_per_log(
        gated: tuple[Engine, GatedFs]) -> None:
    engine, fs = gated
    _hold_flusher(engine, fs)
    fs.synced.clear()
    seqs = []
    for i in range(50):
        with engine.ticketed() as box:
            engine.publish_to_queue("q" if i % 2 else "q2", [OutMessage(b"m%d" % i)])
        seqs.append(box.seq)
    assert len(set(seqs)) == 50 and seqs == sorted(seqs)
    fs.release.set()
    for seq in seqs:
        _wait(engine, seq)
    # 50 writes, one round after the held one: each queue synced once
    assert (fs.count("q"), fs.count("q2")) == (1, 1)
    assert engine.commits.flushed_tickets >= 51


def test_a_failed_fsync_fails_that_rounds_tickets_only(
        gated: tuple[Engine, GatedFs]) -> None:
    engine, fs = gated
    before = _hold_flusher(engine, fs)
    with engine.ticketed() as a:
        engine.publish_to_queue("q", [OutMessage(b"a")])
    with engine.ticketed() as b:
        engine.publish_to_queue("q2", [OutMessage(b"b")])
    fs.fail = "q"
    fs.release.set()
    _wait(engine, before)  # the held round succeeded
    for seq in (a.seq, b.seq):  # the round holding q's failed fsync fails as a whole
        with pytest.raises(LogFailed, match=r"fsync of .*/q/.* failed \(Input/output error"):
            _wait(engine, seq)
    # a later round succeeds; the failed log refuses writes as without tickets
    with engine.ticketed() as c:
        engine.publish_to_queue("q2", [OutMessage(b"c")])
    _wait(engine, c.seq)
    assert [d.body for d in engine.peek("q2", 10)] == [b"b", b"c"]
    with pytest.raises(LogFailed, match="refuses writes"):
        engine.publish_to_queue("q", [OutMessage(b"d")])
    assert any(p.endswith("/q") or "/q/" in p for p in engine.failed_logs())
    # waiting late for a failed ticket still says so; for an old good one it does not
    with pytest.raises(LogFailed):
        _wait(engine, a.seq)
    _wait(engine, before)


def test_the_async_durable_raises_a_fresh_log_failed_and_reveals_appended_records(
        gated: tuple[Engine, GatedFs]) -> None:
    engine, fs = gated
    woken: list[Any] = []
    engine.events.add([], lambda e: None)
    from runner.engine.contract import Event, EventKind
    engine.events.add([Event(EventKind.RECORDS_APPENDED, "t")], woken.append)
    _hold_flusher(engine, fs)
    with engine.ticketed() as box:
        engine.append("t", [OutRecord(value=b"r")])
    woken.clear()
    # not synced: readers do not see it yet
    assert engine.read("t", 0, 0)[0] == []

    async def main() -> None:
        waiting = asyncio.ensure_future(engine.durable(box.seq))
        await asyncio.sleep(0.05)
        assert not waiting.done()
        fs.release.set()
        await waiting

    asyncio.run(main())
    assert [r.value for r in engine.read("t", 0, 0)[0]] == [b"r"]
    assert woken  # readers told again once the records became readable


def test_a_write_outside_a_ticket_syncs_what_the_flusher_has_pending_first(
        gated: tuple[Engine, GatedFs]) -> None:
    engine, fs = gated
    _hold_flusher(engine, fs)
    with engine.ticketed() as box:
        engine.publish_to_queue("q", [OutMessage(b"a")])
    fs.synced.clear()
    release = threading.Timer(0.2, fs.release.set)
    release.start()
    engine.publish_to_queue("q2", [OutMessage(b"b")])  # synchronous: waits for gate too
    names = [Path(p).parent.name for p in fs.synced]
    assert names.index("q") < names.index("q2")  # write order
    _wait(engine, box.seq)
    release.join()


def test_several_logs_in_one_block_are_synced_in_write_order_before_it_ends(
        gated: tuple[Engine, GatedFs]) -> None:
    engine, fs = gated
    fs.synced.clear()
    with engine.ticketed() as box:
        engine.publish_to_queue("q2", [OutMessage(b"first")])
        engine.publish_to_queue("q", [OutMessage(b"second")])
    names = [Path(p).parent.name for p in fs.synced]
    assert names == ["q2", "q"]
    _wait(engine, box.seq)


def test_without_fsync_always_tickets_are_zero(tmp_path: Path) -> None:
    engine = Engine.open(TOPO, tmp_path, fsync=FsyncPolicy.INTERVAL, clock=ManualClock())
    try:
        with engine.ticketed() as box:
            engine.publish_to_queue("q", [OutMessage(b"a")])
        assert box.seq == 0
        asyncio.run(engine.durable(box.seq))
    finally:
        engine.close()


# ------------------------------------------------------------------ power cuts
D = Path("/srv/data")


def _workload(disk: SimDisk, acked: dict[str, set[bytes]], *, ticketed_steps: bool = False,
              on_loop: bool = False) -> None:
    """Ticketed writes several at a time, acknowledged once their ticket resolved;
    some inputs are pulled (and settled in an exactly-once step) before their
    publish was synced. `ticketed_steps`: the steps too (`commit_step_ticketed`:
    the journal record synced at once, the apply by the flusher), each counted
    once its ticket resolved. `on_loop`: the rounds run on the event loop, their
    fdatasyncs ending on later turns (`SimSyncer`), else on the flusher thread."""
    engine = Engine.open(TOPO, D, fsync=FsyncPolicy.ALWAYS, clock=ManualClock(), fs=disk)
    engine.sync_on_loop = on_loop

    async def turn() -> None:  # on the loop: its rounds start between the writes
        if on_loop:
            await asyncio.sleep(0)

    async def durable(seq: int) -> None:
        if on_loop:
            await engine.durable(seq)
        else:
            engine.commits.when_durable(seq).result(timeout=10)

    async def rounds() -> None:
        for i in range(30):
            waiting: list[tuple[int, str, bytes]] = []
            for j in range(3):
                body = b"q-%d-%d" % (i, j) * 8
                with engine.ticketed() as box:
                    engine.publish_to_queue("q", [OutMessage(body)])
                waiting.append((box.seq, "q", body))
                await turn()
                rec = b"t-%d-%d" % (i, j) * 8
                with engine.ticketed() as box:
                    engine.append("t", [OutRecord(value=rec)])
                waiting.append((box.seq, "t", rec))
                await turn()
            for d in engine.pull("q", 1, lease_s=60, consumer_id="c"):
                acked["settling"].add(d.body)  # may take effect from here on
                step = Step(acks=[("q", d.delivery_id)],
                            queue_puts=[("q2", [OutMessage(b"out-" + d.body)])])
                if ticketed_steps:
                    waiting.append((engine.commit_step_ticketed(step), "steps", d.body))
                    continue
                engine.commit_step(step)
                acked["steps"].add(d.body)
            for seq, kind, body in waiting:
                try:
                    await durable(seq)
                except StorageError:  # LogFailed, or the dead disk's error
                    if disk.dead:
                        return
                    raise
                acked[kind].add(body)

    try:
        asyncio.run(rounds())
        if not disk.dead:  # the rounds ran where they were meant to
            assert (engine.commits.loop_rounds > 0) is on_loop, engine.commits.loop_rounds
    finally:
        with contextlib.suppress(Exception):
            engine.close()


def _verify(disk: SimDisk, acked: dict[str, set[bytes]], why: str) -> None:
    # what survived of queue q's files, before recovery may rewrite them
    qdir = D / "queues" / "q"
    stored = b"".join(read_bytes(disk, qdir / name[1:]) for name in
                      (disk.tree(qdir) if disk.exists(qdir) else {}) if name.endswith(".log"))
    engine = Engine.open(TOPO, D, fsync=FsyncPolicy.ALWAYS, clock=ManualClock(), fs=disk)
    try:
        q = collections.Counter(d.body for d in engine.peek("q", 100_000))
        q2 = collections.Counter(d.body for d in engine.peek("q2", 100_000))
        assert max(q.values(), default=1) == 1, (why, "q duplicates")
        assert max(q2.values(), default=1) == 1, (why, "step output twice")
        assert acked["q"] - acked["settling"] <= set(q), (why, "q lost")
        assert not acked["steps"] & set(q), (why, "step input came back")
        assert {b"out-" + b for b in acked["steps"]} <= set(q2), (why, "step output lost")
        # a step never outlives its input's publish (else the unanswered publisher
        # sends it again and it is processed twice)
        for out in q2:
            assert out.removeprefix(b"out-") in stored, (why, "step without its input", out)
        # nor is half of it kept: an input whose ack survived has its output
        for body in acked["settling"]:
            if body in stored and body not in q:
                assert b"out-" + body in q2, (why, "half a step", body)
        got: set[bytes] = set()
        off = 0
        while True:
            recs, off = engine.read("t", 0, off, max_records=1000)
            if not recs:
                break
            got.update(r.value or b"" for r in recs)
        assert acked["t"] <= got, (why, "t lost")
    finally:
        engine.close()


class _SlowFlusher(SimDisk):
    """A disk on which the flusher's fsyncs take a while: the caller's thread gets
    well ahead of them, so cut points land between a step's record and its apply
    being synced."""

    def sync(self, fd: int) -> None:
        if threading.current_thread().name == "group-commit":
            time.sleep(0.002)
        super().sync(fd)


def _run(cut: int | None, *, ticketed_steps: bool = False, on_loop: bool = False) -> SimDisk:
    disk = _SlowFlusher(cut_at=cut) if ticketed_steps else SimDisk(cut_at=cut)
    acked: dict[str, set[bytes]] = {"q": set(), "t": set(), "steps": set(),
                                    "settling": set()}
    try:
        _workload(disk, acked, ticketed_steps=ticketed_steps, on_loop=on_loop)
    except Exception:
        if not disk.dead:
            raise
    if cut is not None:
        _verify(disk.crash(), acked, f"cut {cut}")
        _verify(disk.crash(torn=True, seed=cut), acked, f"cut {cut} torn")
    return disk


def _cuts(count: int, *, ticketed_steps: bool = False, on_loop: bool = False) -> list[int]:
    total = _run(None, ticketed_steps=ticketed_steps, on_loop=on_loop).changes
    assert total > 300
    return sorted({1 + (total - 1) * i // (count - 1) for i in range(count)})


@pytest.mark.parametrize("on_loop", [False, True], ids=["flusher-thread", "loop-rounds"])
def test_resolved_tickets_survive_a_power_cut_at_sampled_cut_points(on_loop: bool) -> None:
    for cut in _cuts(60, on_loop=on_loop):
        _run(cut, on_loop=on_loop)


@pytest.mark.parametrize("on_loop", [False, True], ids=["flusher-thread", "loop-rounds"])
def test_ticketed_steps_survive_a_power_cut_at_sampled_cut_points(on_loop: bool) -> None:
    # the step's record is synced before it is applied, its done mark written only
    # after the flusher synced its outputs, its input's publish synced before it
    for cut in _cuts(60, ticketed_steps=True, on_loop=on_loop):
        _run(cut, ticketed_steps=True, on_loop=on_loop)


@pytest.mark.torture
@pytest.mark.timeout(3600)
def test_resolved_tickets_survive_a_power_cut_at_many_cut_points() -> None:
    for cut in _cuts(500):
        _run(cut)


def test_the_backend_fails_only_tickets_of_the_failed_round(
        gated: tuple[Engine, GatedFs]) -> None:
    from runner.engine.contract import OutMessage as Out
    from runner.engine.embedded import EmbeddedBackend

    engine, fs = gated
    backend = EmbeddedBackend(engine)
    fs.fail = "q"
    bad = backend.put("q", [Out(b"a")]).ticket
    with pytest.raises(LogFailed, match=r"fsync of .*/q/"):
        asyncio.run(backend.durable(bad))
    assert engine.failed_logs()
    good = backend.put("q2", [Out(b"b")]).ticket
    assert good.seq > bad.seq
    asyncio.run(backend.durable(good))  # another log's later round: durable


def test_a_combined_ticket_fails_when_any_write_it_covers_failed(
        gated: tuple[Engine, GatedFs]) -> None:
    """A caller that wrote to two logs combines their tickets (`Ticket.max`): the
    later one's round succeeds after the earlier one's failed, and awaiting the
    combination still raises (a worker acking its input after its outputs, a
    group committing past them, would otherwise lose an output)."""
    from runner.engine.contract import OutMessage as Out
    from runner.engine.contract import Ticket
    from runner.engine.embedded import EmbeddedBackend

    engine, fs = gated
    backend = EmbeddedBackend(engine)
    before = backend.put("q2", [Out(b"0")]).ticket
    asyncio.run(backend.durable(before))
    fs.fail = "q"
    bad = backend.put("q", [Out(b"a")]).ticket
    with pytest.raises(LogFailed):
        asyncio.run(backend.durable(bad))  # its round is over, then:
    good = backend.put("q2", [Out(b"b")]).ticket
    asyncio.run(backend.durable(good))  # alone, the later write is durable
    both = bad.max(good)
    assert both.seq == good.seq and both.earliest == bad.seq
    assert both.covers == {bad.seq, good.seq} and both.max(bad) == both
    with pytest.raises(LogFailed, match=r"fsync of .*/q/"):
        asyncio.run(backend.durable(both))
    assert good.max(bad) == both and Ticket.DONE.max(both) == both
    later = backend.put("q2", [Out(b"c")]).ticket  # combining only good ones stays good
    asyncio.run(backend.durable(good.max(later)))
    # ... also when a failed round that held none of them lies between them
    assert before.seq < bad.seq < later.seq
    asyncio.run(backend.durable(before.max(later)))


def test_combining_tickets_keeps_every_write_and_costs_the_same_each_time() -> None:
    """`Ticket.max` folds in any order keep exactly the writes combined (their seqs,
    the earliest, the later's place), and each combination holds at most two parts
    whatever it covers (no copy of what it holds: a member combining its outputs'
    tickets record after record pays the same for each)."""
    from runner.engine.contract import Ticket

    up, down = Ticket.DONE, Ticket.DONE
    for seq in range(1, 5_001):
        up = up.max(Ticket(seq))
        down = Ticket(5_001 - seq).max(down)
        assert len(up.parts) <= 2 and len(down.parts) <= 2
    assert up.seq == 5_000 and up.others == frozenset(range(1, 5_000))
    assert down.seq == 5_000 and down.others == frozenset(range(1, 5_000))
    assert up.earliest == down.earliest == 1 and up == down  # compared by place only
    gapped = Ticket(3).max(Ticket(9)).max(Ticket(5))
    assert (gapped.seq, gapped.covers, gapped.earliest) == (9, frozenset({3, 5, 9}), 3)
    assert Ticket(4).max(Ticket(4)).combined and not Ticket(4).max(Ticket(4)).others
    assert repr(up) == "Ticket(seq=5000)"  # its parts are not printed


# ------------------------------------------------------------ rounds on the loop
def _on_loop_engine(disk: SimDisk) -> Engine:
    return Engine.open(TOPO, D, fsync=FsyncPolicy.ALWAYS, clock=ManualClock(), fs=disk)


@contextlib.contextmanager
def _after_power_cut(disk: SimDisk) -> Iterator[Engine]:
    """The engine recovered from what a power cut now leaves of `disk`."""
    engine = _on_loop_engine(disk.crash())
    try:
        yield engine
    finally:
        engine.close()


def _flushers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "group-commit"]


async def _put(engine: Engine, queue: str, body: bytes) -> int:
    with engine.ticketed() as box:
        engine.publish_to_queue(queue, [OutMessage(body)])
    return box.seq


def test_on_its_event_loop_the_engine_syncs_each_round_asynchronously_without_a_thread(
        ) -> None:
    disk = SimDisk()
    engine = _on_loop_engine(disk)
    before = len(_flushers())

    async def main() -> None:
        # 16 puts in one turn: one round, one fdatasync started by the loop
        seqs = [await _put(engine, "q", b"m%d" % i) for i in range(16)]
        syncer = disk.syncers[-1]
        assert syncer.syncs == 0 and engine.commits.done < seqs[-1]
        await asyncio.gather(*(engine.durable(seq) for seq in seqs))
        assert syncer.syncs == 1 and engine.commits.loop_rounds == 1
        # while a round's fdatasync is in flight the loop goes on, and what is
        # written meanwhile waits for the next round
        syncer.paused = True
        a = await _put(engine, "q", b"a")
        for _ in range(5):
            await asyncio.sleep(0)
        assert engine.commits.holds_back(a)
        b = await _put(engine, "q2", b"b")
        assert not engine.commits.holds_back(b)  # b's bytes would not make a's round
        waiting_b = asyncio.ensure_future(engine.durable(b))
        waiting_a = asyncio.ensure_future(engine.durable(a))
        for _ in range(5):
            await asyncio.sleep(0)
        assert not waiting_a.done() and not waiting_b.done()
        syncer.resume()
        await waiting_a
        assert not waiting_b.done()  # its own round starts only now
        await waiting_b
        assert syncer.syncs == 3 and engine.commits.loop_rounds == 3

    try:
        asyncio.run(main())
        assert len(_flushers()) == before  # no thread was started for them
        assert [d.body for d in engine.peek("q", 100)][-1] == b"a"
    finally:
        engine.close()
    # acknowledged: on the disk after a power cut
    with _after_power_cut(disk) as engine:
        assert len(engine.peek("q", 100)) == 17
        assert [d.body for d in engine.peek("q2", 10)] == [b"b"]


def test_a_failed_asynchronous_fsync_fails_its_rounds_tickets_and_the_log() -> None:
    disk = SimDisk()
    engine = _on_loop_engine(disk)

    async def main() -> None:
        await engine.durable(await _put(engine, "q2", b"ok"))  # hooks the loop
        disk.syncers[-1].fail_next = True
        seq = await _put(engine, "q", b"lost")
        with pytest.raises(LogFailed, match=r"fsync of .*/q/.* failed \(Input/output error"):
            await engine.durable(seq)
        with pytest.raises(LogFailed, match="refuses writes"):
            engine.publish_to_queue("q", [OutMessage(b"later")])
        await engine.durable(await _put(engine, "q2", b"still"))  # other logs go on

    try:
        asyncio.run(main())
        assert [d.body for d in engine.peek("q2", 10)] == [b"ok", b"still"]
    finally:
        with contextlib.suppress(Exception):
            engine.close()


def test_an_fsync_that_cannot_start_asynchronously_is_synced_on_the_loop(
        caplog: pytest.LogCaptureFixture) -> None:
    disk = SimDisk()
    engine = _on_loop_engine(disk)

    async def main() -> None:
        await engine.durable(await _put(engine, "q2", b"ok"))  # hooks the loop
        syncer = disk.syncers[-1]
        syncer.refuse_next = True
        syncs = disk.syncs
        seq = await _put(engine, "q", b"kept")
        await engine.durable(seq)
        assert disk.syncs == syncs + 1 and syncer.syncs == 1  # synced, not through it
        # from now on the flusher thread runs the rounds (a kernel that refused one
        # start would refuse them all): not one sync on the loop each round
        rounds = engine.commits.loop_rounds
        await engine.durable(await _put(engine, "q", b"next"))
        assert engine.commits.loop_rounds == rounds and syncer.syncs == 1
        assert _flushers()

    try:
        asyncio.run(main())
    finally:
        engine.close()
    assert caplog.text.count("could not start") == 1
    with _after_power_cut(disk) as engine:
        assert [d.body for d in engine.peek("q", 10)] == [b"kept", b"next"]


def test_close_and_wait_idle_on_the_loop_sync_a_round_in_flight_themselves() -> None:
    disk = SimDisk()
    engine = _on_loop_engine(disk)
    seqs: list[int] = []

    async def main() -> None:
        await engine.durable(await _put(engine, "q", b"first"))
        syncer = disk.syncers[-1]
        syncer.paused = True  # the fdatasyncs started never end on their own
        seqs.append(await _put(engine, "q", b"a"))
        await asyncio.sleep(0)  # the round started
        assert engine.commits.holds_back(seqs[0])
        # on the loop, which cannot wait for its own round: synced here
        assert engine.commits.wait_idle(5)
        assert engine.commits.done == seqs[0]
        seqs.append(await _put(engine, "q", b"b"))
        await asyncio.sleep(0)
        engine.close()  # the daemon's last step
        assert engine.commits.done == seqs[1]
        syncer.resume()  # the late ends change nothing
        for _ in range(5):
            await asyncio.sleep(0)

    asyncio.run(main())
    with _after_power_cut(disk) as recovered:
        assert [d.body for d in recovered.peek("q", 10)] == [b"first", b"a", b"b"]


def test_tickets_of_another_thread_go_to_the_flusher_thread() -> None:
    disk = SimDisk()
    engine = _on_loop_engine(disk)

    async def main() -> None:
        await engine.durable(await _put(engine, "q", b"loop"))  # hooks the loop

        def elsewhere() -> None:  # a worker thread's ticketed write
            with engine.ticketed() as box:
                engine.publish_to_queue("q2", [OutMessage(b"w")])
            engine.commits.when_durable(box.seq).result(timeout=10)
            assert threading.current_thread().name != "group-commit"

        await asyncio.to_thread(elsewhere)

    try:
        asyncio.run(main())
        assert engine.commits.loop_rounds == 1 and disk.syncers[-1].syncs == 1
        assert engine.commits.flush_rounds == 2  # the loop's and the thread's
    finally:
        engine.close()
    with _after_power_cut(disk) as engine:
        assert [d.body for d in engine.peek("q2", 10)] == [b"w"]


def test_on_the_real_file_system_the_loop_uses_linux_aio(tmp_path: Path) -> None:
    from runner.fs import LinuxAioSyncer, async_syncer
    engine = Engine.open(TOPO, tmp_path, fsync=FsyncPolicy.ALWAYS, clock=ManualClock())
    before = len(_flushers())

    async def main() -> None:
        syncer = async_syncer(LOCAL, asyncio.get_running_loop())
        assert isinstance(syncer, LinuxAioSyncer)  # the kernel and caio offer it here
        syncer.close()
        seqs = [await _put(engine, "q", b"m%d" % i) for i in range(8)]
        await asyncio.gather(*(engine.durable(seq) for seq in seqs))
        seqs = [await _put(engine, "q2", b"n%d" % i) for i in range(8)]
        await asyncio.gather(*(engine.durable(seq) for seq in seqs))

    try:
        asyncio.run(main())
        assert engine.commits.loop_rounds == 2
        assert len(_flushers()) == before
    finally:
        engine.close()
    engine = Engine.open(TOPO, tmp_path, fsync=FsyncPolicy.ALWAYS, clock=ManualClock())
    try:
        assert len(engine.peek("q", 100)) == 8 and len(engine.peek("q2", 100)) == 8
    finally:
        engine.close()


def test_a_round_left_in_flight_by_a_closed_loop_is_synced_when_another_loop_comes(
        ) -> None:
    disk = SimDisk()
    engine = _on_loop_engine(disk)
    seqs: list[int] = []

    async def first() -> None:
        await engine.durable(await _put(engine, "q", b"a"))
        disk.syncers[-1].paused = True  # its end never comes: the loop closes first
        seqs.append(await _put(engine, "q", b"b"))
        await asyncio.sleep(0)  # the round started

    async def second() -> None:  # the same engine on a new loop: nothing hangs
        assert engine.commits.done < seqs[0]
        seq = await _put(engine, "q2", b"c")
        await asyncio.wait_for(engine.durable(seq), 10)
        assert engine.commits.done >= seqs[0]
        assert disk.syncers[-1].syncs == 1  # the new loop's syncer took c's round

    try:
        asyncio.run(first())
        asyncio.run(second())
    finally:
        engine.close()
    with _after_power_cut(disk) as engine:
        assert [d.body for d in engine.peek("q", 10)] == [b"a", b"b"]
        assert [d.body for d in engine.peek("q2", 10)] == [b"c"]


def test_an_asynchronous_fsync_that_ends_well_after_another_sync_failed_fails_its_round(
        ) -> None:
    """The kernel reports a write-back error once per open file: the loop's
    fdatasyncs use their own descriptor, and one that ends with 0 after a sync of
    the same log failed meanwhile still fails its round (its pages may be gone)."""
    disk = SimDisk()
    engine = _on_loop_engine(disk)

    async def main() -> None:
        await engine.durable(await _put(engine, "q2", b"ok"))
        syncer = disk.syncers[-1]
        syncer.paused = True
        seq = await _put(engine, "q", b"maybe lost")
        await asyncio.sleep(0)  # its fdatasync started, not ended
        disk.fail_sync_at = disk.syncs + 1  # the next sync of anything fails
        with pytest.raises(LogFailed):
            engine.publish_to_queue("q", [OutMessage(b"sync now")])  # syncs q: EIO
        syncer.resume()  # the started one now "succeeds" on the disk
        with pytest.raises(LogFailed, match=r"fsync of .*/q/.* failed"):
            await engine.durable(seq)

    try:
        asyncio.run(main())
    finally:
        with contextlib.suppress(Exception):
            engine.close()
