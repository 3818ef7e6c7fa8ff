"""Overflow refusal of a step's outputs: `Broker.check_publish` (all or nothing), then
`apply_step`."""

from __future__ import annotations

import pytest

from runner.broker.message import Message
from runner.errors import Forbidden, NotFound, Refused
from runner.topology.model import Binding, Exchange, ExchangeType, Overflow, Queue
from tests.broker.conftest import MakeBroker

TOPO = (
    [Exchange("x", ExchangeType.DIRECT), Exchange("fan", ExchangeType.FANOUT),
     Exchange("inner", ExchangeType.FANOUT, internal=True)],
    [Queue("in"), Queue("out", max_length=2, overflow=Overflow.REJECT_PUBLISH),
     Queue("bytes", max_length_bytes=10, overflow=Overflow.REJECT_PUBLISH_DLX),
     Queue("drop", max_length=1, overflow=Overflow.DROP_HEAD)],
    [Binding("x", queue="out", routing_key="k"), Binding("x", queue="bytes", routing_key="b"),
     Binding("fan", queue="out"), Binding("fan", queue="drop")],
)


def test_step_whose_second_publish_overflows_stores_nothing_and_acks_nothing(
    make_broker: MakeBroker,
) -> None:
    b = make_broker(*TOPO)
    b.publish_to_queue("in", [Message(b"input")])
    d = b.pull("in", 1, consumer_id="c")[0]
    with pytest.raises(Refused) as exc:
        b.check_publish([("x", [Message(b"one", "k")]),
                         ("x", [Message(b"two", "k"), Message(b"three", "k")])])
    assert str(exc.value) == (
        "queue 'out' has no room for this step's 3 message(s) "
        "(max_length 2, overflow reject-publish): step refused, nothing stored")
    assert b.queue_info("out").ready == 0
    assert b.queue_info("in").unacked == 1
    assert b.stats().queues["out"].rejected_publishes == 0
    assert b.ack("in", [d.delivery_id]) == []  # still held: the step did not settle it


def test_step_that_fits_is_stored_whole(make_broker: MakeBroker) -> None:
    b = make_broker(*TOPO)
    b.publish_to_queue("in", [Message(b"input")])
    d = b.pull("in", 1, consumer_id="c")[0]
    pubs = [("x", [Message(b"one", "k")]), ("x", [Message(b"two", "k")])]
    b.check_publish(pubs)
    b.apply_step(acks=[("in", d.delivery_id)], publishes=pubs)
    assert [m.body for m in b.peek("out", 5)] == [b"one", b"two"]
    assert b.queue_info("in").unacked == 0


def test_messages_reaching_a_queue_by_several_routes_add_up(make_broker: MakeBroker) -> None:
    b = make_broker(*TOPO)
    b.check_publish([("fan", [Message(b"a")])], [("out", [Message(b"b")])])  # 2 of 2: fits
    with pytest.raises(Refused, match=r"^queue 'out' has no room for this step's 3 message"):
        b.check_publish([("fan", [Message(b"a")]), ("x", [Message(b"c", "k")])],
                        [("out", [Message(b"b")])])
    assert b.queue_info("out").ready == 0  # a dry run stores nothing


def test_queue_contents_count_and_bytes_limit_refuses_with_dlx_overflow(
    make_broker: MakeBroker,
) -> None:
    b = make_broker(*TOPO)
    b.publish("x", [Message(b"123456", "b")])
    with pytest.raises(Refused) as exc:
        b.check_publish([("x", [Message(b"12345", "b")])])
    assert str(exc.value) == (
        "queue 'bytes' has no room for this step's 1 message(s) "
        "(max_length_bytes 10, overflow reject-publish-dlx): step refused, nothing stored")
    b.check_publish([("x", [Message(b"1234", "b")])])
    stats = b.stats().queues["bytes"]
    assert (stats.rejected_publishes, stats.dead_lettered["maxlen"]) == (0, 0)


def test_drop_head_queues_never_refuse(make_broker: MakeBroker) -> None:
    b = make_broker(*TOPO)
    b.check_publish([], [("drop", [Message(b"a"), Message(b"b"), Message(b"c")])])


def test_duplicate_message_ids_take_no_room(make_broker: MakeBroker) -> None:
    b = make_broker(*TOPO)
    b.publish("x", [Message(b"a", "k", message_id="m1")])
    # m1 is stored already (dropped as a duplicate), m3 twice in the step: 1 + 1 of 2
    b.check_publish([("x", [Message(b"a", "k", message_id="m1"),
                            Message(b"c", "k", message_id="m3")]),
                     ("x", [Message(b"c", "k", message_id="m3")])])
    with pytest.raises(Refused, match=r"^queue 'out' has no room for this step's 2 message"):
        b.check_publish([("x", [Message(b"c", "k", message_id="m3"),
                                Message(b"d", "k", message_id="m4")])])


def test_disk_budget_exhausted_refuses_the_step(make_broker: MakeBroker) -> None:
    b = make_broker(*TOPO, disk_budget_bytes=1)
    b.journals["in"].log.append([(b"x", b"y" * 100, (), 0)])  # the logs are over budget
    used = b.disk_used_bytes()
    with pytest.raises(Refused) as exc:
        b.check_publish([], [("in", [Message(b"z")])])
    assert str(exc.value) == (
        f"disk budget exhausted: queue logs use {used} bytes of 1; "
        "publish refused until consumers catch up")
    b.check_publish([], [])  # nothing to store: nothing to refuse


def test_unknown_or_internal_names(make_broker: MakeBroker) -> None:
    b = make_broker(*TOPO)
    with pytest.raises(NotFound, match="^queue 'ghost' not found$"):
        b.check_publish([], [("ghost", [Message(b"a")])])
    with pytest.raises(NotFound):
        b.check_publish([("nope", [Message(b"a")])])
    with pytest.raises(Forbidden):
        b.check_publish([("inner", [Message(b"a")])])


def test_limits_changed_live_are_used(make_broker: MakeBroker) -> None:
    b = make_broker(*TOPO)
    b.check_publish([], [("in", [Message(b"a"), Message(b"b")])])
    b.declare([], [Queue("in", max_length=1, overflow=Overflow.REJECT_PUBLISH)], [])
    with pytest.raises(Refused, match="^queue 'in' has no room"):
        b.check_publish([], [("in", [Message(b"a"), Message(b"b")])])
