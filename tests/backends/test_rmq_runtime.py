"""The RabbitMQ runtime (runner.backends.rabbitmq.runtime) on the real broker, beyond
the contract suite: capabilities, header values, a lost connection."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pika
import pytest

from runner.backends.rabbitmq import runtime
from runner.engine.contract import Ack, Capability, OutMessage, OutRecord, Step
from runner.errors import InvalidRequest, NotFound, Refused, StorageError, UnsafeChange
from runner.log.partitioner import partition_for_key
from runner.topology.model import (
    Binding,
    Exchange,
    ExchangeType,
    Overflow,
    Queue,
    Topic,
    Topology,
)
from tests.contract.conftest import take
from tests.rmq import fresh_vhost, kill_connections, read_stream

TOPOLOGY = Topology(queues=(("q", Queue("q")),))


@pytest.fixture
def backend() -> Iterator[runtime.RabbitBackend]:
    with fresh_vhost() as target:
        b = runtime.open_rabbitmq(TOPOLOGY, target)
        try:
            yield b
        finally:
            b.close()


def test_capabilities_are_the_mapping_less_what_is_not_built() -> None:
    missing = {Capability.EXACTLY_ONCE, Capability.COMPACTION, Capability.IDEMPOTENT_PRODUCER,
               Capability.CHOSEN_MESSAGES}
    assert set(runtime.CAPABILITIES) == set(Capability) - missing


def test_header_values_round_trip_and_bad_ones_are_refused(
    backend: runtime.RabbitBackend,
) -> None:
    headers = {"f": 1.5, "n": 2, "s": "x", "b": True, "l": [1, "a"], "d": {"x": 0.25},
               "none": None}
    asyncio.run(backend.durable(backend.put("q", [OutMessage(b"1", headers=headers)]).ticket))
    (d,) = take(backend, "q", 1)
    assert dict(d.headers) == headers
    with pytest.raises(InvalidRequest, match="a header value RabbitMQ cannot carry"):
        backend.put("q", [OutMessage(b"2", headers={"bad": object()})])


def test_a_lost_connection_reconnects_and_loses_nothing_acknowledged(
    backend: runtime.RabbitBackend,
) -> None:
    t = backend.put("q", [OutMessage(str(i).encode()) for i in range(3)]).ticket
    asyncio.run(backend.durable(t))
    got = take(backend, "q", 3)
    assert [d.body for d in got] == [b"0", b"1", b"2"]
    asyncio.run(backend.durable(backend.settle("q", [Ack(got[0].delivery_id)]).ticket))
    assert kill_connections(backend.target) >= 1
    deadline = time.monotonic() + 20
    while backend.connections < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert backend.connections == 2
    # the old connection's deliveries went back to the queue: settling them says unknown
    assert backend.settle("q", [Ack(got[1].delivery_id)]).unknown == (got[1].delivery_id,)
    put = backend.put("q", [OutMessage(b"3")])
    asyncio.run(backend.durable(put.ticket))
    again = take(backend, "q", 3)
    assert sorted(d.body for d in again) == [b"1", b"2", b"3"]
    assert [d.redelivered for d in again if d.body != b"3"] == [True, True]
    ticket = backend.settle("q", [Ack(d.delivery_id) for d in again]).ticket
    asyncio.run(backend.durable(ticket))
    assert take(backend, "q", 1, timeout_s=0.5) == []


def test_a_queue_declared_without_a_type_is_the_classic_queue_of_the_topology() -> None:
    with fresh_vhost() as target:
        conn = pika.BlockingConnection(pika.ConnectionParameters(
            target.host, target.port, virtual_host=target.vhost))
        conn.channel().queue_declare("q", durable=True)  # no x-queue-type: classic
        conn.close()
        runtime.open_rabbitmq(TOPOLOGY, target).close()


def test_an_unsafe_change_refuses_to_open_naming_it() -> None:
    with fresh_vhost() as target:
        runtime.open_rabbitmq(TOPOLOGY, target).close()
        ttl = Topology(queues=(("q", Queue("q", message_ttl_s=1.0)),))
        with pytest.raises(UnsafeChange) as exc:
            runtime.open_rabbitmq(ttl, target)
        assert str(exc.value) == (
            f"the topology cannot be declared on {target}: changed queue 'q' message_ttl: "
            "RabbitMQ cannot change a queue's arguments in place (message_ttl): delete and "
            "declare it again (its messages are lost) or declare a new one; queue 'q': the "
            "broker refused it: 406 PRECONDITION_FAILED - inequivalent arg 'x-message-ttl' "
            f"for queue 'q' in vhost '{target.vhost}': received the value '1000' of type "
            "'signedint' but current is none")


def test_a_consumer_channel_the_broker_closes_is_opened_again(
    backend: runtime.RabbitBackend,
) -> None:
    """The broker closes a channel (here: an ack of a delivery tag it never gave,
    PRECONDITION_FAILED; in production: consumer_timeout): its deliveries go back to
    the queue, the backend consumes again and settling the old ones says unknown."""
    asyncio.run(backend.durable(backend.put("q", [OutMessage(b"a"), OutMessage(b"b")]).ticket))
    a, b = take(backend, "q", 2)
    with backend._lock:
        backend._held[a.delivery_id].tag = 999  # a tag this channel never delivered
    asyncio.run(backend.durable(backend.settle("q", [Ack(a.delivery_id)]).ticket))
    again = take(backend, "q", 2)
    assert sorted(d.body for d in again) == [b"a", b"b"]
    assert all(d.redelivered for d in again)
    # the closed channel's deliveries were forgotten before the new channel consumed
    assert backend.settle("q", [Ack(b.delivery_id)]).unknown == (b.delivery_id,)
    t = backend.settle("q", [Ack(d.delivery_id) for d in again]).ticket
    asyncio.run(backend.durable(t))
    assert take(backend, "q", 1, timeout_s=0.5) == []
    assert backend.connections == 1  # the connection itself was kept


def test_append_writes_each_record_into_the_stream_of_its_partition() -> None:
    topology = Topology(topics=(("ev", Topic("ev", partitions=3, key="id")),))
    with fresh_vhost() as target:
        backend = runtime.open_rabbitmq(topology, target)
        try:
            keys = [f"k{i}".encode() for i in range(12)]
            got = backend.append("ev", [OutRecord(b"v" + k, key=k, headers={"h": 1})
                                        for k in keys])
            json_keyed = backend.append("ev", [OutRecord(b'{"id":"k3"}')])
            tomb = backend.append("ev", [OutRecord(None, key=b"k0", partition=2)])
            asyncio.run(backend.durable(tomb.ticket))
            want = [partition_for_key(k, 3) for k in keys]
            assert got.positions == tuple((p, -1) for p in want)
            assert json_keyed.positions == ((partition_for_key(b"k3", 3), -1),)
            assert tomb.positions == ((2, -1),)
            streams = {}
            for p in range(3):
                mine = [k for k, q in zip(keys, want, strict=True) if q == p]
                extra = (1 if p == partition_for_key(b"k3", 3) else 0) + (1 if p == 2 else 0)
                read = streams[p] = read_stream(target, f"ev.{p}", len(mine) + extra)
                assert len(read) == len(mine) + extra
                assert [b for _, b in read][:len(mine)] == [b"v" + k for k in mine]
                assert [bytes(pr.headers["x-runner-key"]) for pr, _ in read][:len(mine)] == mine
                assert all(pr.headers["h"] == 1 for pr, _ in read[:len(mine)])
            (last,) = [pr for pr, body in streams[2] if body == b""]
            headers = dict(last.headers)
            headers.pop("x-stream-offset")  # the broker's
            stamp = headers.pop("x-runner-timestamp-ms")
            assert isinstance(stamp, int) and abs(stamp - time.time() * 1000) < 60_000
            assert headers == {"x-runner-key": b"k0", "x-runner-null": True}
            with pytest.raises(NotFound, match="topic 'nope' not found"):
                backend.append("nope", [OutRecord(b"x")])
            with pytest.raises(NotFound, match="topic 'ev' has no partition 3"):
                backend.append("ev", [OutRecord(b"x", partition=3)])
        finally:
            backend.close()


def test_stream_headers_3_10_cannot_keep_travel_as_json_or_are_refused() -> None:
    """3.10.8 crashes the publishing channel on a decimal (a float) header of a stream
    message and drops table and array values: they travel as JSON instead."""
    topology = Topology(topics=(("ev", Topic("ev", partitions=1)),))
    with fresh_vhost("rmqstreams-") as target:
        backend = runtime.open_rabbitmq(topology, target)
        try:
            with pytest.raises(InvalidRequest, match=(
                    "^a header value a RabbitMQ stream cannot carry: Object of type bytes is "
                    "not JSON serializable$")):
                backend.append("ev", [OutRecord(b"x", headers={"l": [b"raw"]})])
            got = backend.append("ev", [OutRecord(b"v", headers={"f": 1.5, "m": {"k": [1]},
                                                                 "s": "t", "b": b"y"})])
            asyncio.run(backend.durable(got.ticket))
            (r,) = backend.read("ev", 0, 0).records
            assert (r.offset, r.value, dict(r.headers)) == (
                0, b"v", {"f": 1.5, "m": {"k": [1]}, "s": "t", "b": b"y"})
            ((props, _),) = read_stream(target, "ev.0", 1)
            assert props.headers["x-runner-json-headers"] == '{"f":1.5,"m":{"k":[1]}}'
            assert backend.connections == 1  # the broker never closed it
        finally:
            backend.close()


def test_a_publish_reaching_a_stream_keeps_headers_a_stream_cannot() -> None:
    """The same headers through an exchange bound to a queue and a one-partition topic:
    before, the float crashed the broker's channel and the runtime sent it again and
    again (durable never returned)."""
    topology = Topology(
        topics=(("ev", Topic("ev", partitions=1)),), queues=(("q", Queue("q")),),
        exchanges=(("x", Exchange("x", ExchangeType.FANOUT)),),
        bindings=(Binding("x", queue="q"), Binding("x", topic="ev")))
    headers = {"f": 1.5, "m": {"k": [1]}, "s": "t"}
    with fresh_vhost("rmqstreams-") as target:
        backend = runtime.open_rabbitmq(topology, target)
        try:
            pub = backend.publish("x", [OutMessage(b"v", headers=headers)])
            assert [sorted(r) for r in pub.routes] == [["ev", "q"]]

            async def durable() -> None:
                await asyncio.wait_for(backend.durable(pub.ticket), 10)

            asyncio.run(durable())
            (r,) = backend.read("ev", 0, 0).records
            assert dict(r.headers) == headers
            (d,) = take(backend, "q", 1)
            assert dict(d.headers) == headers
            assert backend.connections == 1
        finally:
            backend.close()


def test_stream_offsets_have_gaps_where_segments_roll_and_reads_pass_them() -> None:
    """Measured on 3.10.8: each new segment starts with a chunk that takes an offset
    and holds no record, so a 1000-byte segment of 200-byte records skips every 4th
    offset. A read at a skipped offset returns the records after it."""
    topology = Topology(topics=(("ev", Topic("ev", partitions=1, segment_bytes=1000)),))
    with fresh_vhost("rmqstreams-") as target:
        backend = runtime.open_rabbitmq(topology, target)
        try:
            for i in range(12):
                asyncio.run(backend.durable(backend.append(
                    "ev", [OutRecord(b"%03d" % i + b"x" * 197, partition=0)]).ticket))
            records = backend.read("ev", 0, 0).records
            offsets = [r.offset for r in records]
            assert [r.value[:3] for r in records if r.value] == [b"%03d" % i for i in range(12)]
            gaps = sorted(set(range(offsets[-1])) - set(offsets))
            assert gaps  # what this test is about: segments rolled
            after = backend.read("ev", 0, gaps[0])
            assert after.records[0].offset == gaps[0] + 1
            assert [r.offset for r in after.records] == [o for o in offsets if o > gaps[0]]
            (p,) = backend.partitions("ev")
            assert (p.log_start_offset, p.log_end_offset) == (0, offsets[-1] + 1)
        finally:
            backend.close()


def test_a_steps_acks_wait_for_its_writes_and_go_back_when_the_broker_refuses_one() -> None:
    """commit_step: the ack after a write the broker nacks (a full reject-publish queue)
    is not sent: the delivery goes back to its queue and the step's ticket fails; once
    the queue has room, the same step goes through. A put into a queue deleted on the
    broker is an error, not a positive confirm of nothing stored."""
    full = Queue("full", max_length=1, overflow=Overflow.REJECT_PUBLISH)
    topology = Topology(queues=(("q", Queue("q")), ("full", full)))
    with fresh_vhost() as target:
        backend = runtime.open_rabbitmq(topology, target)
        try:
            asyncio.run(backend.durable(backend.put("full", [OutMessage(b"filler")]).ticket))
            asyncio.run(backend.durable(backend.put("q", [OutMessage(b"m")]).ticket))
            (d,) = take(backend, "q", 1)
            step = Step(puts=(("full", (OutMessage(b"copy of m"),)),),
                        acks=(("q", d.delivery_id),))
            with pytest.raises(Refused, match="the broker refused a message to queue 'full'"):
                asyncio.run(backend.durable(backend.commit_step(step)))
            (again,) = take(backend, "q", 1)  # not acked: delivered again
            assert (again.body, again.redelivered) == (b"m", True)
            assert backend.ready("full") == 1

            conn = pika.BlockingConnection(pika.ConnectionParameters(
                target.host, target.port, virtual_host=target.vhost))
            try:
                conn.channel().queue_purge("full")
                asyncio.run(backend.durable(backend.commit_step(Step(
                    puts=(("full", (OutMessage(b"copy of m"),)),),
                    acks=(("q", again.delivery_id),)))))
                assert take(backend, "q", 1, timeout_s=0.5) == []
                assert backend.ready("full") == 1

                conn.channel().queue_delete("full")
            finally:
                conn.close()
            with pytest.raises(StorageError) as err:
                asyncio.run(backend.durable(backend.put("full", [OutMessage(b"x")]).ticket))
            assert str(err.value) == (
                "the broker routed a message to queue 'full' nowhere (it does not exist on "
                "the broker); the 0 message(s) before it were stored, it and the rest were "
                "not")
        finally:
            backend.close()


def test_a_combined_ticket_fails_when_the_broker_nacked_a_write_it_covers_only() -> None:
    """Ticket.max of a nacked write (a full reject-publish queue) and a later confirmed
    one raises on await, though the later one alone is durable: a caller that combines
    its outputs' tickets (a group member before its commit, a consumer before its acks)
    must not go on past the lost one. Combining two confirmed writes with another
    caller's nacked one between them returns: that loss is not theirs."""
    full = Queue("full", max_length=1, overflow=Overflow.REJECT_PUBLISH)
    topology = Topology(queues=(("q", Queue("q")), ("full", full)))
    with fresh_vhost() as target:
        backend = runtime.open_rabbitmq(topology, target)
        try:
            filler = backend.put("full", [OutMessage(b"filler")]).ticket
            asyncio.run(backend.durable(filler))
            nacked = backend.put("full", [OutMessage(b"lost")]).ticket
            later = backend.put("q", [OutMessage(b"kept")]).ticket
            assert nacked.seq < later.seq
            asyncio.run(backend.durable(later))  # its own write is confirmed
            with pytest.raises(Refused, match="the broker refused a message to queue 'full'"):
                asyncio.run(backend.durable(later.max(nacked)))
            with pytest.raises(Refused):
                asyncio.run(backend.durable(nacked.max(later)))  # either order
            asyncio.run(backend.durable(filler.max(later)))  # the nack between is not theirs
            # many confirmed writes after the nack: the range is still checked
            more = [backend.put("q", [OutMessage(b"%d" % i)]).ticket for i in range(20)]
            combined = nacked
            for t in more:
                combined = combined.max(t)
            with pytest.raises(Refused):
                asyncio.run(backend.durable(combined))
            assert backend.ready("full") == 1 and backend.ready("q") == 21
        finally:
            backend.close()


def test_failed_writes_are_remembered_up_to_a_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every nack is kept for the callers that ask after it, but only the newest
    FAILURES_KEPT of them: a client refused by a full queue for days costs no memory.
    A write as old as the forgotten ones counts as failed (handled again, never
    gone on past a loss); newer confirmed writes stay durable."""
    monkeypatch.setattr(runtime, "FAILURES_KEPT", 3)
    full = Queue("full", max_length=1, overflow=Overflow.REJECT_PUBLISH)
    with fresh_vhost() as target:
        backend = runtime.open_rabbitmq(
            Topology(queues=(("full", full), ("q", Queue("q")))), target)
        try:
            asyncio.run(backend.durable(backend.put("full", [OutMessage(b"filler")]).ticket))
            nacked = [backend.put("full", [OutMessage(b"%d" % i)]).ticket for i in range(5)]
            for t in nacked[2:]:
                with pytest.raises(Refused):
                    asyncio.run(backend.durable(t))
            assert sorted(backend._failures) == [t.seq for t in nacked[2:]]
            with pytest.raises(StorageError, match="is no longer known"):
                asyncio.run(backend.durable(nacked[0]))
            later = backend.put("q", [OutMessage(b"fine")]).ticket
            asyncio.run(backend.durable(later))
        finally:
            backend.close()


def test_partitions_are_scanned_at_once_and_a_closed_backend_says_so() -> None:
    """A topic's partitions' bounds come from scans running at once, each partition's
    own; once the backend is closed, asking is a StorageError (HTTP 503), not a
    thread pool's RuntimeError."""
    topology = Topology(topics=(("t", Topic("t", partitions=3)),))
    with fresh_vhost() as target:
        backend = runtime.open_rabbitmq(topology, target)
        try:
            recs = [OutRecord(value=b"%d" % i, partition=p) for p in range(3)
                    for i in range(p + 1)]
            asyncio.run(backend.durable(backend.append("t", recs).ticket))
            infos = backend.partitions("t")
            assert [(i.partition, i.log_end_offset - i.log_start_offset) for i in infos] == [
                (0, 1), (1, 2), (2, 3)]
        finally:
            backend.close()
        with pytest.raises(StorageError, match="the backend is closed"):
            backend.partitions("t")
