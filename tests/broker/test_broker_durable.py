"""Durability: restart recovery, compaction, budgets, dedup and steps, on real files."""

from __future__ import annotations

import pytest

from runner.broker.broker import Broker
from runner.broker.message import Message
from runner.broker.routing import Route
from runner.clock import ManualClock
from runner.errors import Refused
from runner.topology.model import Binding, DeadLetter, Exchange, ExchangeType, Queue
from tests.broker.conftest import MakeBroker

TOPO = ([Exchange("x", ExchangeType.DIRECT)],
        [Queue("dq", max_priority=3), Queue("mem", durable=False)],
        [Binding("x", queue="dq", routing_key="k"), Binding("x", queue="mem", routing_key="k")])


def reopen(old: Broker, make_broker: MakeBroker, **kw: object) -> Broker:
    old.close()
    return make_broker(*TOPO, **kw)


def test_restart_keeps_durable_messages_in_order(make_broker: MakeBroker) -> None:
    b = make_broker(*TOPO)
    b.publish("x", [Message(f"m{i}".encode(), "k", priority=i % 2) for i in range(6)])
    b = reopen(b, make_broker)
    got = b.pull("dq", 10, consumer_id="c")
    assert [d.body for d in got] == [b"m1", b"m3", b"m5", b"m0", b"m2", b"m4"]
    assert not any(d.redelivered for d in got)
    assert b.queue_info("mem").ready == 0  # non-durable: gone


def test_restart_redelivers_unacked_and_forgets_acked(make_broker: MakeBroker) -> None:
    b = make_broker(*TOPO)
    b.publish("x", [Message(bytes([i]), "k") for i in range(5)])
    ds = b.pull("dq", 3, consumer_id="c")
    b.ack("dq", [ds[1].delivery_id])
    b = reopen(b, make_broker)
    got = b.pull("dq", 10, consumer_id="c")
    assert [d.body for d in got] == [b"\x00", b"\x02", b"\x03", b"\x04"]
    assert [d.redelivered for d in got] == [True, True, False, False]
    assert [d.delivery_count for d in got] == [2, 2, 1, 1]
    # tags are unique across restarts
    assert not {d.delivery_id for d in got} & {d.delivery_id for d in ds}


def test_headers_and_properties_survive_restart(
    make_broker: MakeBroker, clock: ManualClock,
) -> None:
    b = make_broker(*TOPO)
    b.publish("x", [Message(b"body", "k", headers={"a": 1, "n": {"x": [1, 2]}}, priority=2,
                            ttl_s=60, message_id="id-1", content_type="text/plain")])
    b = reopen(b, make_broker)
    d = b.pull("dq", 1, consumer_id="c")[0]
    assert (d.body, dict(d.headers), d.priority, d.message_id, d.content_type, d.exchange,
            d.routing_key, d.timestamp_ms) == (
        b"body", {"a": 1, "n": {"x": [1, 2]}}, 2, "id-1", "text/plain", "x", "k",
        int(clock.time() * 1000))


def test_ttl_survives_restart(make_broker: MakeBroker, clock: ManualClock) -> None:
    b = make_broker(*TOPO)
    b.publish("x", [Message(b"short", "k", ttl_s=5), Message(b"long", "k")])
    b = reopen(b, make_broker)
    clock.advance(6)
    assert [d.body for d in b.pull("dq", 5, consumer_id="c")] == [b"long"]


def test_retry_delay_survives_restart(make_broker: MakeBroker, clock: ManualClock) -> None:
    b = make_broker(*TOPO)
    b.publish("x", [Message(b"a", "k"), Message(b"b", "k")])
    d = b.pull("dq", 1, consumer_id="c")[0]
    b.retry_later("dq", d.delivery_id, 10)
    b = reopen(b, make_broker)
    assert b.queue_info("dq").delayed == 1
    assert [m.body for m in b.pull("dq", 5, consumer_id="c")] == [b"b"]
    clock.advance(11)
    b.tick()
    again = b.pull("dq", 5, consumer_id="c")
    assert [(m.body, m.delivery_count) for m in again] == [(b"a", 2)]


def test_dead_letters_are_durable(make_broker: MakeBroker) -> None:
    topo = ([Exchange("dlx", ExchangeType.FANOUT)],
            [Queue("q", dead_letter=DeadLetter("dlx")), Queue("dlq")],
            [Binding("dlx", queue="dlq")])
    b = make_broker(*topo)
    b.publish_to_queue("q", [Message(b"x")])
    d = b.pull("q", 1, consumer_id="c")[0]
    b.nack("q", [d.delivery_id], requeue=False)
    b.close()
    b = make_broker(*topo)
    assert b.queue_info("q").ready == 0
    assert b.peek("dlq", 1)[0].headers["x-dead-letter"]["reason"] == "rejected"


def test_batch_publish_is_one_append(make_broker: MakeBroker) -> None:
    b = make_broker(*TOPO)
    journal = b.journals["dq"]
    calls: list[int] = []
    real = journal.log.append

    def counting(items, **kw):  # type: ignore[no-untyped-def]
        calls.append(len(items))
        return real(items, **kw)

    journal.log.append = counting  # type: ignore[method-assign]
    b.publish("x", [Message(b"m", "k") for _ in range(100)])
    ds = b.pull("dq", 100, consumer_id="c")
    assert calls == [100]  # the delivery marks wait for the next append
    b.ack("dq", [d.delivery_id for d in ds])
    assert calls == [100, 2]  # the settlements and the delivery marks: one append


def test_delivery_marks_ride_on_the_next_append(make_broker: MakeBroker) -> None:
    b = make_broker(*TOPO)
    b.publish("x", [Message(bytes([i]), "k") for i in range(4)])
    b.pull("dq", 2, consumer_id="c")
    journal = b.journals["dq"]
    end = journal.log.end_offset
    assert journal.marks_pending == 2
    b.publish("x", [Message(b"late", "k")])  # one P record, then the D record with it
    assert (journal.log.end_offset, journal.marks_pending) == (end + 2, 0)
    b = reopen(b, make_broker)
    got = b.pull("dq", 10, consumer_id="c")
    assert [(d.redelivered, d.delivery_count) for d in got] == [
        (True, 2), (True, 2), (False, 1), (False, 1), (False, 1)]


@pytest.mark.parametrize("fsync", ["always", "interval"])
def test_tick_writes_waiting_delivery_marks(
    make_broker: MakeBroker, clock: ManualClock, fsync: str,
) -> None:
    b = make_broker(*TOPO, fsync=fsync)
    b.publish("x", [Message(b"a", "k")])
    b.pull("dq", 1, consumer_id="c")
    journal = b.journals["dq"]
    if fsync == "always":  # written alone only once they waited a second (one fsync)
        b.tick()
        assert journal.marks_pending == 1
        clock.advance(1.0)
    b.tick()
    assert journal.marks_pending == 0
    assert journal.log.unsynced_bytes == 0 or fsync == "interval"


def test_many_waiting_delivery_marks_are_written(make_broker: MakeBroker) -> None:
    b = make_broker(*TOPO)
    b.publish("x", [Message(b"m", "k") for _ in range(70_000)])
    journal = b.journals["dq"]
    for _ in range(13):
        b.pull("dq", 5000, consumer_id="c")
    assert journal.marks_pending == 65_000  # 1 MiB of marks at most is held back
    b.pull("dq", 5000, consumer_id="c")
    assert journal.marks_pending == 0


def test_compaction_drops_settled_history_and_keeps_the_rest(
    make_broker: MakeBroker,
) -> None:
    b = make_broker(*TOPO, segment_bytes=4096)
    keep = []
    for round_ in range(20):
        b.publish("x", [Message(b"%d-%d" % (round_, i) + b"." * 200, "k") for i in range(10)])
        ds = b.pull("dq", 10, consumer_id="c")
        keep.append(ds[0])  # one stays unacked per round
        b.ack("dq", [d.delivery_id for d in ds[1:]])
    journal = b.journals["dq"]
    before = journal.log.size_bytes
    b.compact(force=True)
    assert journal.log.size_bytes < before / 3
    b = reopen(b, make_broker, segment_bytes=4096)
    got = b.pull("dq", 100, consumer_id="c")
    assert [d.body for d in got] == [k.body for k in keep]
    assert all(d.delivery_count == 2 for d in got)


def test_memory_budget_spills_bodies_to_disk(make_broker: MakeBroker) -> None:
    # 60 copies of 512 B overhead + 100 B body each: the first 24 keep their bodies
    b = make_broker(*TOPO, memory_budget_bytes=15_000)
    msgs = [Message(bytes([i]) * 100, "k") for i in range(30)]
    b.publish("x", msgs)
    held = [m for q in ("dq", "mem") for m in b.queues[q].live()]
    in_memory = sum(m.size for m in held if isinstance(m.body, bytes))
    assert b.memory.count == 60 and b.memory.used == 60 * 512 + in_memory
    assert in_memory == 24 * 100  # bodies spill once body + overhead would pass it
    assert any(isinstance(m.body, int) for m in b.queues["dq"].live())
    assert any(isinstance(m.body, int) for m in b.queues["mem"].live())
    for q in ("dq", "mem"):
        got = b.pull(q, 100, consumer_id="c")
        assert [d.body for d in got] == [m.body for m in msgs]
        b.ack(q, [d.delivery_id for d in got])
    assert b.memory.used == 0 and b.memory.count == 0


def test_memory_budget_applies_at_recovery(make_broker: MakeBroker) -> None:
    b = make_broker(*TOPO)
    b.publish("x", [Message(bytes([i]) * 100, "k") for i in range(30)])
    b = reopen(b, make_broker, memory_budget_bytes=16_000)
    held = b.queues["dq"].live()
    kept = [m for m in held if isinstance(m.body, bytes)]
    assert b.memory.count == 30 and b.memory.used == 30 * 512 + 100 * len(kept)
    assert len(kept) == 26  # body + overhead of those replayed so far within 16,000
    got = b.pull("dq", 100, consumer_id="c")
    assert [d.body for d in got] == [bytes([i]) * 100 for i in range(30)]


def test_the_memory_budget_counts_512_bytes_a_message_and_refuses_when_they_fill_it(
    make_broker: MakeBroker,
) -> None:
    b = make_broker(queues=[Queue("q")], memory_budget_bytes=10 * 512)
    b.publish_to_queue("q", [Message(b"") for _ in range(10)])
    assert (b.memory.used, b.memory.count) == (10 * 512, 10)
    with pytest.raises(Refused) as exc:
        b.publish_to_queue("q", [Message(b"")])
    assert str(exc.value) == (
        "memory budget exhausted: 10 queued messages hold 5120 bytes of 5120 besides "
        "their bodies (512 bytes a message); publish refused until consumers catch up")
    got = b.pull("q", 1, consumer_id="c")
    b.ack("q", [d.delivery_id for d in got])
    assert (b.memory.used, b.memory.count) == (9 * 512, 9)
    b.publish_to_queue("q", [Message(b"again")])  # room again after an ack
    b.purge("q")
    assert (b.memory.used, b.memory.count) == (0, 0)


def test_disk_budget_refuses_publishes(make_broker: MakeBroker) -> None:
    b = make_broker(*TOPO, disk_budget_bytes=2000)
    b.publish("x", [Message(b"." * 3000, "k")])
    with pytest.raises(Refused) as err:
        b.publish("x", [Message(b"more", "k")])
    used = b.disk_used_bytes()
    assert str(err.value) == (
        f"disk budget exhausted: queue logs use {used} bytes of 2000; "
        "publish refused until consumers catch up")


def test_message_id_dedup_within_window(make_broker: MakeBroker, clock: ManualClock) -> None:
    b = make_broker(*TOPO, dedup_window_s=60)
    first = b.publish("x", [Message(b"a", "k", message_id="m1")])
    again = b.publish("x", [Message(b"a", "k", message_id="m1")])
    assert first == [Route(("dq", "mem"), (), duplicate=False)]
    assert first[0].stored == ["dq", "mem"]
    # stored nothing: said so, with where the first one went (the idempotent answer)
    assert again == [Route(("dq", "mem"), (), duplicate=True)]
    assert again[0].stored == []
    assert b.queue_info("dq").ready == 1
    b.publish_to_queue("dq", [Message(b"a", message_id="m1")])  # another target: not a dup
    assert b.queue_info("dq").ready == 2
    clock.advance(61)
    b.publish("x", [Message(b"a", "k", message_id="m1")])
    assert b.queue_info("dq").ready == 3


def test_dedup_survives_restart(make_broker: MakeBroker) -> None:
    b = make_broker(*TOPO)
    b.publish("x", [Message(b"a", "k", message_id="m1")])
    b = reopen(b, make_broker)
    (again,) = b.publish("x", [Message(b"a", "k", message_id="m1")])
    # the first publish's queues as the logs know them: "mem" was not durable
    assert (again.duplicate, again.stored, again.queues) == (True, [], ("dq",))
    assert b.queue_info("dq").ready == 1


def test_duplicate_in_a_batch_to_a_queue_is_marked_and_stores_nothing(
    make_broker: MakeBroker,
) -> None:
    b = make_broker(*TOPO)
    b.publish_to_queue("dq", [Message(b"first", message_id="m1")])
    routes = b.publish_to_queue("dq", [Message(b"new"), Message(b"again", message_id="m1"),
                                       Message(b"other", message_id="m2")])
    assert routes == [Route(("dq",), ()), Route(("dq",), (), duplicate=True),
                      Route(("dq",), ())]
    assert [r.duplicate for r in routes] == [False, True, False]
    assert [r.stored for r in routes] == [["dq"], [], ["dq"]]
    assert [m.body for m in b.peek("dq", 10)] == [b"first", b"new", b"other"]
    assert b.stats().queues["dq"].published == 3


def test_reapplied_step_outputs_are_reported_as_duplicates(make_broker: MakeBroker) -> None:
    b = make_broker(*TOPO)
    out = [Message(b"out", "k", message_id="o1")]
    assert b.apply_step(publishes=[("x", out)]) == [[Route(("dq", "mem"), ())]]
    ((again,),) = b.apply_step(publishes=[("x", out)])
    assert (again.duplicate, again.stored) == (True, [])
    assert b.queue_info("dq").ready == 1


def test_apply_step_acks_and_publishes(make_broker: MakeBroker) -> None:
    b = make_broker(*TOPO)
    b.publish_to_queue("dq", [Message(b"in")])
    d = b.pull("dq", 1, consumer_id="c")[0]
    routes = b.apply_step(acks=[("dq", d.delivery_id)],
                          publishes=[("x", [Message(b"out", "k", message_id="s1-0")])])
    assert [r.queues for r in routes[0]] == [("dq", "mem")]
    got = b.pull("dq", 5, consumer_id="c")
    assert [(m.body, m.message_id) for m in got] == [(b"out", "s1-0")]


def test_a_step_applied_again_after_a_restart_changes_nothing(make_broker: MakeBroker) -> None:
    b = make_broker(*TOPO)
    b.publish_to_queue("dq", [Message(b"in")])
    d = b.pull("dq", 1, consumer_id="c")[0]
    step = {"acks": [("dq", d.delivery_id)],
            "publishes": [("x", [Message(b"out", "k", message_id="s1-0")])]}
    b.apply_step(**step)  # type: ignore[arg-type]
    b = reopen(b, make_broker)
    # the delivery id is stale now: the ack goes by message; the output is a duplicate
    ((route,),) = b.apply_step(**step)  # type: ignore[arg-type]
    assert route.duplicate
    assert [m.body for m in b.peek("dq", 5)] == [b"out"]


def test_a_step_applied_again_after_a_restart_settles_its_input(
        make_broker: MakeBroker) -> None:
    b = make_broker(*TOPO)
    b.publish_to_queue("dq", [Message(b"in")])
    d = b.pull("dq", 1, consumer_id="c")[0]
    b = reopen(b, make_broker)  # the step was journaled, not applied, before the crash
    b.apply_step(acks=[("dq", d.delivery_id)],
                 publishes=[("x", [Message(b"out", "k", message_id="s1-0")])])
    assert [m.body for m in b.pull("dq", 5, consumer_id="c")] == [b"out"]


def test_tick_compacts_a_log_that_is_mostly_acked(make_broker: MakeBroker) -> None:
    b = make_broker(*TOPO, segment_bytes=4096, compact_interval_s=0)
    journal = b.journals["dq"]
    stuck = None
    for _ in range(60):
        b.publish("x", [Message(b"." * 300, "k") for _ in range(5)])
        ds = b.pull("dq", 5, consumer_id="c")
        if stuck is None:
            stuck = ds[0]  # one old message stays unacked: deleting a prefix is not enough
            ds = ds[1:]
        b.ack("dq", [d.delivery_id for d in ds])
        b.tick()
    assert journal.log.size_bytes < 4 * 4096
    assert stuck is not None
    b.ack("dq", [stuck.delivery_id])
    assert b.queue_info("dq").unacked == 0


def test_spilled_bodies_of_memory_queues_are_trimmed(make_broker: MakeBroker) -> None:
    b = make_broker(*TOPO, memory_budget_bytes=0, segment_bytes=2048)
    for _ in range(20):
        b.publish_to_queue("mem", [Message(b"." * 500) for _ in range(4)])
        b.ack("mem", [d.delivery_id for d in b.pull("mem", 4, consumer_id="c")])
    spill = b.spills["mem"].log
    assert spill is not None
    before = spill.log.size_bytes
    b.compact()
    assert spill.log.size_bytes < before


def test_a_step_a_full_queue_would_refuse_is_refused_by_check_publish(
        make_broker: MakeBroker) -> None:
    from runner.topology.model import Overflow
    topo: tuple[list[Exchange], list[Queue], list[Binding]] = (
        [], [Queue("in"), Queue("full", max_length=1, overflow=Overflow.REJECT_PUBLISH)], [])
    b = make_broker(*topo)
    b.publish_to_queue("full", [Message(b"occupant")])
    with pytest.raises(Refused) as info:
        b.check_publish([], [("full", [Message(b"out")])])
    assert str(info.value) == ("queue 'full' has no room for this step's 1 message(s) "
                               "(max_length 1, overflow reject-publish): step refused, "
                               "nothing stored")
    assert [m.body for m in b.peek("full", 5)] == [b"occupant"]
