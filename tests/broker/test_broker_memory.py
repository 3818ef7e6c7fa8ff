"""What the memory budget counts besides bodies (issue 17 leftovers): the headers of
queued messages and the message ids remembered for deduplication. Each is counted
when it is kept and given back when it goes (ack, purge, expiry, a restart)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from runner.broker.message import MESSAGE_OVERHEAD, Message, _value_memory, headers_memory
from runner.clock import ManualClock
from runner.errors import Refused
from runner.log.store import id_memory
from runner.topology.model import Binding, Exchange, ExchangeType, Queue
from tests.broker.conftest import MakeBroker

TOPO = ([Exchange("x", ExchangeType.DIRECT)],
        [Queue("dq"), Queue("mem", durable=False)],
        [Binding("x", queue="dq", routing_key="k"), Binding("x", queue="mem", routing_key="k")])
HEADERS = {"trace": "t" * 100, "n": 2**70, "list": ["a", {"b": True}]}


def test_headers_memory_estimates_the_objects_on_the_high_side() -> None:
    assert headers_memory({}) == 0
    assert headers_memory({"h": "x" * 1000}) == 184 + 24 + 50 + 1049
    assert headers_memory({"é": "é" * 10}) == 184 + 24 + 53 + 89  # 4 bytes a character
    assert headers_memory({"n": 2**70}) == 184 + 24 + 50 + 32 + 8


def test_headers_count_while_their_message_is_queued(make_broker: MakeBroker) -> None:
    b = make_broker(*TOPO)
    h = headers_memory(HEADERS)
    b.publish("x", [Message(b"body", "k", dict(HEADERS)) for _ in range(10)])
    mem = b.memory
    assert (mem.count, mem.headers) == (20, 20 * h)
    assert mem.used == 20 * (MESSAGE_OVERHEAD + h + 4) and mem.fixed == 20 * (MESSAGE_OVERHEAD + h)
    got = b.pull("dq", 4, consumer_id="c")
    b.ack("dq", [d.delivery_id for d in got])
    assert (mem.count, mem.headers) == (16, 16 * h)
    b.purge("dq")
    b.purge("mem")
    assert (mem.count, mem.headers, mem.used) == (0, 0, 0)


def test_headers_count_again_after_a_restart(make_broker: MakeBroker) -> None:
    b = make_broker(*TOPO)
    b.publish("x", [Message(b"body", "k", dict(HEADERS)) for _ in range(10)])
    b.close()
    b = make_broker(*TOPO)  # the non-durable copies are gone
    mem = b.memory
    assert (mem.count, mem.headers) == (10, 10 * headers_memory(HEADERS))
    got = b.pull("dq", 10, consumer_id="c")
    b.ack("dq", [d.delivery_id for d in got])
    assert (mem.count, mem.headers, mem.used) == (0, 0, 0)


def test_headers_fill_the_budget_and_refuse(make_broker: MakeBroker) -> None:
    one = MESSAGE_OVERHEAD + headers_memory({"h": "x" * 1000})
    b = make_broker(queues=[Queue("q")], memory_budget_bytes=10 * one)
    b.publish_to_queue("q", [Message(b"", headers={"h": "x" * 1000}) for _ in range(10)])
    with pytest.raises(Refused) as exc:
        b.publish_to_queue("q", [Message(b"")])
    assert str(exc.value) == (
        "memory budget exhausted: 10 queued messages hold 5120 bytes (512 bytes a "
        "message), their headers 13070 bytes: 18190 bytes of 18190 besides the bodies; "
        "publish refused until consumers catch up")


def test_remembered_ids_count_until_they_leave_the_dedup_window(
    make_broker: MakeBroker, clock: ManualClock,
) -> None:
    b = make_broker(queues=[Queue("q", durable=False)], dedup_window_s=60.0)
    b.publish_to_queue("q", [Message(b"", message_id=f"m{i}") for i in range(100)])
    b.purge("q")
    mem = b.memory
    per_id = id_memory("m10")
    assert (mem.count, mem.ids) == (0, 100)
    assert mem.held == mem.used == sum(id_memory(f"m{i}") for i in range(100))
    assert per_id == 384 + 3
    b.publish_to_queue("q", [Message(b"", message_id="m1")])  # a duplicate: no new id
    assert mem.ids == 100 and mem.count == 0
    clock.advance(61)
    b.tick()
    assert (mem.ids, mem.held, mem.used) == (0, 0, 0)


def test_ids_fill_the_budget_and_refuse_every_publish(make_broker: MakeBroker) -> None:
    b = make_broker(queues=[Queue("q", durable=False)], memory_budget_bytes=10 * 386)
    b.publish_to_queue("q", [Message(b"", message_id=f"m{i}") for i in range(10)])
    b.purge("q")
    with pytest.raises(Refused) as exc:
        b.publish_to_queue("q", [Message(b"no id")])
    assert str(exc.value) == (
        "memory budget exhausted: 0 queued messages hold 0 bytes (512 bytes a message), "
        "10 message ids remembered for deduplication 3860 bytes: 3860 bytes of 3860 "
        "besides the bodies; publish refused until consumers catch up or remembered "
        "message ids leave the dedup window")


def test_the_oldest_id_past_the_cap_gives_its_memory_back(make_broker: MakeBroker) -> None:
    b = make_broker(queues=[Queue("q", durable=False)], dedup_max_ids=5)
    b.publish_to_queue("q", [Message(b"", message_id=f"m{i}") for i in range(8)])
    assert (b.memory.ids, b.memory.held) == (5, 5 * id_memory("m0"))



_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=10,
)


@given(st.dictionaries(st.text(), _JSON, max_size=6))
def test_the_flat_fast_path_agrees_with_the_recursive_estimate(headers: dict[str, object],
                                                               ) -> None:
    assert headers_memory(headers) == (_value_memory(headers) if headers else 0)
