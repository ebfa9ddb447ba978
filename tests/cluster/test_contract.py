"""The cluster backend contract, run against the in-memory backend and the real Redis server.

Timing-based cases use short TTLs (a few hundred ms) on real clocks: Redis expires by its own
clock, so both backends are held to the same wall-time behaviour.
"""

from __future__ import annotations

import pytest
import trio

from printd.cluster.base import AgentLocation, MemberIdInUse, MemberInfo
from printd.ratelimit import LimitRule
from tests.cluster.conftest import Factory

TTL = 0.4


def info(instance_id: str, incarnation: str, **kw: object) -> MemberInfo:
    return MemberInfo(instance_id=instance_id, incarnation=incarnation, url=f"http://{instance_id}", **kw)  # type: ignore[arg-type]


async def test_members_are_listed_until_their_ttl_passes(make_backend: Factory) -> None:
    a, _ = await make_backend()
    b, _ = await make_backend()
    await a.touch_member(info("i1", a.incarnation, connections={"agent": 3}), 10)
    await b.touch_member(info("i2", b.incarnation), TTL)
    view = await a.get_cluster()
    assert [m.instance_id for m in view.members] == ["i1", "i2"]
    assert view.member("i1") is not None and view.member("i1").info.connections == {"agent": 3}  # type: ignore[union-attr]
    assert 0 <= view.member("i2").heartbeat_age < TTL  # type: ignore[union-attr]
    await trio.sleep(TTL + 0.1)
    assert (await a.get_cluster()).ids == {"i1"}


async def test_delete_member_only_removes_our_own_entry(make_backend: Factory) -> None:
    a, _ = await make_backend()
    await a.touch_member(info("i1", a.incarnation), 10)
    await a.delete_member("i1", "someone-else-000")
    assert (await a.get_cluster()).ids == {"i1"}
    await a.delete_member("i1", a.incarnation)
    assert (await a.get_cluster()).ids == frozenset()


async def test_a_live_instance_id_cannot_be_registered_twice(make_backend: Factory) -> None:
    a, _ = await make_backend()
    b, _ = await make_backend()
    await a.touch_member(info("same", a.incarnation), TTL, register=True)
    with pytest.raises(MemberIdInUse) as exc:
        await b.touch_member(info("same", b.incarnation), TTL, register=True)
    assert exc.value.member.info.incarnation == a.incarnation
    assert "in use by a live instance" in str(exc.value)
    await a.touch_member(info("same", a.incarnation), TTL, register=True)  # our own: fine
    await trio.sleep(TTL + 0.1)
    await b.touch_member(info("same", b.incarnation), TTL, register=True)  # expired: taken over


async def test_leader_lease_is_exclusive_and_expires(make_backend: Factory) -> None:
    a, _ = await make_backend()
    b, _ = await make_backend()
    assert await a.attempt_to_acquire_leader("i1", TTL)
    assert not await b.attempt_to_acquire_leader("i2", TTL)
    assert not await b.update_leader("i2", TTL)
    assert await a.update_leader("i1", TTL)
    assert (await b.get_cluster()).leader == "i1"
    await b.delete_leader("i2")  # not ours: no effect
    assert (await a.get_cluster()).leader == "i1"
    await trio.sleep(TTL + 0.1)
    assert (await a.get_cluster()).leader is None
    assert not await a.update_leader("i1", TTL)  # lost: a renewal cannot resurrect it
    assert await b.attempt_to_acquire_leader("i2", TTL)
    await b.delete_leader("i2")
    assert await a.attempt_to_acquire_leader("i1", TTL)


async def test_presence_newer_session_wins_and_release_is_compare_and_delete(make_backend: Factory) -> None:
    a, _ = await make_backend()
    b, _ = await make_backend()
    await a.touch_member(info("i1", a.incarnation), 10)
    await b.touch_member(info("i2", b.incarnation), 10)
    key = ("acme", "agent-1")
    on_a = AgentLocation("i1", a.incarnation, 5)
    on_b = AgentLocation("i2", b.incarnation, 6)
    assert await a.claim_agents([(key, on_a)]) == [None]
    assert await b.claim_agents([(key, on_b)]) == [on_a]  # b learns whom to kick
    stale = AgentLocation("i1", a.incarnation, 4)
    assert await a.claim_agents([(key, stale)]) == [on_b]  # refused: b's is newer
    assert await a.locate_agents([key, ("acme", "nobody")]) == [on_b, None]
    await a.release_agents([(key, on_a)])  # not the recorded one: kept
    assert await a.locate_agents([key]) == [on_b]
    await b.release_agents([(key, on_b)])
    assert await a.locate_agents([key]) == [None]


async def test_locate_ignores_agents_of_members_that_are_gone(make_backend: Factory) -> None:
    a, _ = await make_backend()
    b, _ = await make_backend()
    await a.touch_member(info("i1", a.incarnation), 10)
    await b.touch_member(info("i2", b.incarnation), TTL)
    await b.claim_agents([(("acme", "x"), AgentLocation("i2", b.incarnation, 1))])
    await a.claim_agents([(("acme", "y"), AgentLocation("i1", "old-incarnation!", 1))])
    located = await a.locate_agents([("acme", "x"), ("acme", "y")])
    assert located[0] is not None and located[0].instance_id == "i2"
    assert located[1] is None  # a previous process of i1: its connections died with it
    await trio.sleep(TTL + 0.1)
    assert await a.locate_agents([("acme", "x")]) == [None]


async def test_bus_delivers_to_other_subscribers_only(make_backend: Factory) -> None:
    a, inbox_a = await make_backend()
    b, inbox_b = await make_backend()
    a.subscribe("company:acme")
    b.subscribe("company:acme")
    b.subscribe("sentinel")
    await trio.sleep(0.1)  # SUBSCRIBE is asynchronous on a real server
    await a.publish([("company:acme", b"one"), ("company:other", b"nobody")])
    assert await inbox_b.next() == ("company:acme", b"one")
    b.unsubscribe("company:acme")
    await trio.sleep(0.1)
    await a.publish([("company:acme", b"two"), ("sentinel", b"end")])
    assert await inbox_b.next() == ("sentinel", b"end")  # "two" would have come first
    await b.publish([("company:acme", b"from-b")])
    await a.publish([("company:acme", b"from-a")])
    a.subscribe("sentinel")
    await trio.sleep(0.1)
    await b.publish([("sentinel", b"end")])
    assert await inbox_a.next() == ("company:acme", b"from-b")
    assert await inbox_a.next() == ("sentinel", b"end")  # its own "from-a" never came back
    assert inbox_b.messages == []


async def test_status_snapshot_keeps_the_latest_item_per_printer(make_backend: Factory) -> None:
    a, _ = await make_backend()
    b, _ = await make_backend()
    await a.save_status([("acme", {"p1": b'{"v":1}', "p2": b'{"v":1}'}), ("globex", {"g1": b"{}"})], 10)
    await b.save_status([("acme", {"p1": b'{"v":2}'})], TTL)
    assert await a.load_status("globex") == {"g1": b"{}"}
    assert await a.load_status("acme") == {"p1": b'{"v":2}', "p2": b'{"v":1}'}
    assert await a.load_status("other") == {}
    await b.drop_status("acme", ["p2"])
    assert await a.load_status("acme") == {"p1": b'{"v":2}'}
    await trio.sleep(TTL + 0.1)
    assert await a.load_status("acme") == {}


async def test_rate_limits_are_shared_and_all_or_nothing(make_backend: Factory) -> None:
    a, _ = await make_backend()
    b, _ = await make_backend()
    branch = LimitRule("branch:acme:b1", 3, 60)

    def printer(p: str) -> LimitRule:
        return LimitRule(f"printer:acme:{p}", 2, 60)

    first = await a.hit_limits([branch, printer("p1")])
    assert first.allowed and first.remaining == 1
    assert (await b.hit_limits([branch, printer("p1")])).allowed
    denied = await a.hit_limits([branch, printer("p1")])  # p1 is at 2/2
    assert not denied.allowed and 0 < denied.retry_after <= 60
    # the denial did not consume the branch's third unit
    assert (await b.hit_limits([branch, printer("p2")])).allowed
    assert not (await a.hit_limits([branch, printer("p3")])).allowed  # the branch is at 3/3


async def test_rate_limit_window_slides(make_backend: Factory) -> None:
    a, _ = await make_backend()
    rule = LimitRule("printer:acme:p1", 1, TTL)
    assert (await a.hit_limits([rule])).allowed
    assert not (await a.hit_limits([rule])).allowed
    await trio.sleep(TTL + 0.05)
    assert (await a.hit_limits([rule])).allowed
