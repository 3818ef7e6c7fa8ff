"""The group coordinator's state machine, on a manual clock."""

from __future__ import annotations

import asyncio
from typing import Any

from runner.clock import ManualClock
from runner.daemon.kafka.coordinator import Coordinator, JoinResult, State
from runner.daemon.kafka.protocol import ErrorCode


def _join(c: Coordinator, member: str = "", protocols: Any = None, **kw: Any) -> Any:
    return c.join("g", member, client_id="cli", client_host="h", instance_id=None,
                  protocol_type="consumer",
                  protocols=protocols or [("range", b"r"), ("roundrobin", b"rr")],
                  session_timeout_s=kw.pop("session", 10.0),
                  rebalance_timeout_s=kw.pop("rebalance", 30.0),
                  require_known_id=kw.pop("require", True))


def test_a_new_member_gets_an_id_then_joins_leads_and_syncs() -> None:
    async def run() -> None:
        c = Coordinator(ManualClock())
        first = await _join(c)
        assert first.error == ErrorCode.member_id_required and first.member_id
        joined = await _join(c, first.member_id)
        assert (joined.error, joined.generation, joined.leader, joined.protocol) == (
            0, 1, first.member_id, "range")
        assert joined.members == ((first.member_id, None, b"r"),)
        synced = await c.sync("g", first.member_id, 1, {first.member_id: b"all"})
        assert (synced.error, synced.assignment) == (0, b"all")
        assert c.state("g") is State.STABLE
        assert c.heartbeat("g", first.member_id, 1) == 0
        assert c.heartbeat("g", first.member_id, 0) == ErrorCode.illegal_generation
        assert c.heartbeat("g", "ghost", 1) == ErrorCode.unknown_member_id
        assert (await _join(c, "ghost")).error == ErrorCode.unknown_member_id

    asyncio.run(run())


def test_a_second_member_rebalances_the_group_and_followers_wait_for_the_leader() -> None:
    async def run() -> None:
        c = Coordinator(ManualClock())
        a = (await _join(c, require=False)).member_id
        await c.sync("g", a, 1, {a: b"a-all"})
        b_join = asyncio.ensure_future(_join(c, require=False))
        await asyncio.sleep(0)
        assert c.state("g") is State.PREPARING
        assert c.heartbeat("g", a, 1) == ErrorCode.rebalance_in_progress
        a_join = await _join(c, a)
        b_res = await b_join
        assert a_join.generation == b_res.generation == 2
        assert a_join.leader == a and len(a_join.members) == 2 and b_res.members == ()
        b_sync = asyncio.ensure_future(c.sync("g", b_res.member_id, 2, {}))
        await asyncio.sleep(0)
        assert not b_sync.done()
        await c.sync("g", a, 2, {a: b"a-half", b_res.member_id: b"b-half"})
        assert (await b_sync).assignment == b"b-half"

    asyncio.run(run())


def test_silent_members_expire_and_late_joiners_are_dropped_after_the_rebalance_timeout(
) -> None:
    async def run() -> None:
        clock = ManualClock()
        c = Coordinator(clock)
        a = (await _join(c, require=False, session=6.0, rebalance=20.0)).member_id
        await c.sync("g", a, 1, {})
        b_join = asyncio.ensure_future(_join(c, require=False, session=6.0, rebalance=20.0))
        await asyncio.sleep(0)
        clock.advance(5.0)
        c.check()  # `a` has not rejoined, but is inside its session and the rebalance timeout
        assert not b_join.done()
        clock.advance(16.0)
        c.check()  # rebalance timeout: `a` is dropped, `b` alone gets generation 2
        b_res: JoinResult = await b_join
        assert (b_res.error, b_res.generation, b_res.leader) == (0, 2, b_res.member_id)
        assert [m.member_id for m in c.members("g")] == [b_res.member_id]
        await c.sync("g", b_res.member_id, 2, {})
        clock.advance(7.0)
        c.check()  # no heartbeat for longer than the 6 s session
        assert c.members("g") == [] and c.state("g") is State.EMPTY

    asyncio.run(run())


def test_the_protocol_is_one_every_member_supports() -> None:
    async def run() -> None:
        c = Coordinator(ManualClock())
        a = asyncio.ensure_future(_join(c, require=False, protocols=[
            ("cooperative-sticky", b"1"), ("range", b"2")]))
        await asyncio.sleep(0)
        assert (await a).protocol == "cooperative-sticky"
        refused = await _join(c, require=False, protocols=[("roundrobin", b"x")])
        assert refused.error == ErrorCode.inconsistent_group_protocol
        b = asyncio.ensure_future(_join(c, require=False, protocols=[("range", b"3")]))
        await asyncio.sleep(0)
        a2 = await _join(c, (await a).member_id, protocols=[("cooperative-sticky", b"1"),
                                                           ("range", b"2")])
        assert a2.protocol == (await b).protocol == "range"

    asyncio.run(run())


def test_leaving_rebalances_the_rest() -> None:
    async def run() -> None:
        c = Coordinator(ManualClock())
        a = (await _join(c, require=False)).member_id
        b_join = asyncio.ensure_future(_join(c, require=False))
        await asyncio.sleep(0)
        await _join(c, a)
        b = (await b_join).member_id
        assert c.leave("g", b) == 0
        assert c.state("g") is State.PREPARING
        assert (await _join(c, a)).generation == 3
        assert c.leave("g", "ghost") == ErrorCode.unknown_member_id

    asyncio.run(run())
