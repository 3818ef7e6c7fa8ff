"""A full disk (the simulated one, `tests.faultfs.SimDisk`, with a capacity) never
corrupts a queue: a refused publish leaves memory and disk as before it, and
the broker goes on when space comes back; start-up needs no new space."""

from __future__ import annotations

from pathlib import Path

import pytest

from runner.broker.broker import Broker
from runner.broker.message import Message
from runner.clock import ManualClock
from runner.errors import StorageError
from runner.topology.model import Binding, Exchange, ExchangeType, Queue
from tests.faultfs import PAGE, SimDisk

D = Path("/data")


@pytest.fixture(autouse=True)
def _one_page_ahead(monkeypatch: pytest.MonkeyPatch) -> None:
    """The queues' logs write one page of zeros ahead, not 256 KiB: what they hold
    ahead was reserved before the disk filled and takes writes (a message that fits
    is stored, `test_log_zero_ahead.py`); these tests fill past it."""
    monkeypatch.setattr("runner.log.segment.ZERO_AHEAD", PAGE)


def _broker(disk: SimDisk, **kw: object) -> Broker:
    b = Broker(D, fsync="always", clock=ManualClock(), fs=disk, **kw)  # type: ignore[arg-type]
    b.declare([Exchange("fan", ExchangeType.FANOUT)], [Queue("q"), Queue("r")],
              [Binding("fan", queue="q"), Binding("fan", queue="r")])
    return b


def _fill(disk: SimDisk) -> None:
    disk.capacity = disk._used()  # noqa: SLF001 - the simulated disk's own accounting


def _bodies(b: Broker, queue: str) -> list[bytes]:
    return [d.body for d in b.peek(queue, 1000)]


def test_a_refused_publish_leaves_the_queue_as_before_and_x_after_it_is_kept() -> None:
    disk = SimDisk()
    b = _broker(disk)
    b.publish_to_queue("q", [Message(b"first")])
    _fill(disk)
    with pytest.raises(StorageError) as info:
        b.publish_to_queue("q", [Message(b"Y" * 3 * PAGE, message_id="y")])
    assert info.value.retriable  # 503 with Retry-After
    assert str(info.value).startswith(f"cannot write to {D}/queues/q/")
    assert str(info.value).endswith(": No space left on device")
    assert _bodies(b, "q") == [b"first"]
    disk.capacity = None  # space freed
    b.publish_to_queue("q", [Message(b"X")])
    got = b.pull("q", 10, consumer_id="c", lease_s=60.0)
    assert [d.body for d in got] == [b"first", b"X"]
    assert len({d.delivery_id for d in got}) == 2
    b.ack("q", [d.delivery_id for d in got if d.body == b"first"])
    b.close()
    again = _broker(disk)
    assert _bodies(again, "q") == [b"X"]  # acknowledged X survives; Y never existed
    # the refused message id was not remembered: its retry is stored
    again.publish_to_queue("q", [Message(b"Y", message_id="y")])
    assert _bodies(again, "q") == [b"X", b"Y"]
    again.close()


def test_a_refused_ack_redelivers_and_nothing_is_lost() -> None:
    disk = SimDisk()
    b = _broker(disk)
    b.publish_to_queue("q", [Message(f"m{i:03}".encode()) for i in range(200)])
    got = b.pull("q", 200, consumer_id="c", lease_s=60.0)
    _fill(disk)
    acked = []
    with pytest.raises(StorageError):  # acks fill the last page, then one is refused
        for d in got:
            b.ack("q", [d.delivery_id])
            acked.append(d.body)
    assert 0 < len(acked) < 200
    disk.capacity = None
    # the refused ack's message and the other unsettled ones are back, redelivered
    again = b.pull("q", 200, consumer_id="c", lease_s=60.0)
    assert sorted(d.body for d in again) == sorted(set(d.body for d in got) - set(acked))
    assert all(d.redelivered for d in again)
    assert b.ack("q", [d.delivery_id for d in again]) == []
    b.close()
    assert _bodies(_broker(disk), "q") == []


def test_a_fanout_publish_refused_in_one_queue_is_not_half_kept_in_memory() -> None:
    disk = SimDisk()
    b = _broker(disk)
    _fill(disk)
    with pytest.raises(StorageError):
        b.publish("fan", [Message(b"Z" * 2 * PAGE)])
    disk.capacity = None
    b.publish("fan", [Message(b"W")])
    q, r = _bodies(b, "q"), _bodies(b, "r")
    assert q[-1:] == [b"W"] and r[-1:] == [b"W"]
    assert len(q) == len(set(q)) and len(r) == len(set(r))
    b.close()
    again = _broker(disk)
    assert _bodies(again, "q") == q and _bodies(again, "r") == r
    again.close()


def test_a_full_disk_during_a_segment_roll_is_a_clear_retriable_error() -> None:
    disk = SimDisk()
    b = _broker(disk, segment_bytes=2 * PAGE)
    b.publish_to_queue("q", [Message(b"a" * PAGE)])
    _fill(disk)
    with pytest.raises(StorageError) as info:
        b.publish_to_queue("q", [Message(b"b" * 2 * PAGE)])  # needs a new segment
    assert info.value.retriable
    assert str(info.value).startswith("cannot start a new segment: cannot write "
                                      f"{D}/queues/q/")
    disk.capacity = None
    b.publish_to_queue("q", [Message(b"c" * 2 * PAGE)])
    b.close()
    again = _broker(disk, segment_bytes=2 * PAGE)
    assert [x[:1] for x in _bodies(again, "q")] == [b"a", b"c"]
    again.close()


def test_a_restart_on_a_full_disk_bumps_the_epoch_in_place() -> None:
    disk = SimDisk()
    b = _broker(disk)
    first = b._epoch  # noqa: SLF001
    b.publish_to_queue("q", [Message(b"kept")])
    b.close()
    _fill(disk)
    again = _broker(disk)
    assert again._epoch == first + 1  # noqa: SLF001
    assert _bodies(again, "q") == [b"kept"]
    again.close()


def test_a_first_start_on_a_full_disk_names_the_file() -> None:
    disk = SimDisk(capacity=0)
    with pytest.raises(StorageError) as info:
        _broker(disk)
    assert str(info.value) == f"cannot bump the epoch in {D}/epoch: No space left on device"
