"""Leadership decisions (pure) and the cluster node's rounds on the in-memory backend with a real
store: join refusals, a leader per cluster, handover when the leader goes, fenced chores."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from printd.cluster.base import ClusterView, Member, MemberInfo
from printd.cluster.local import LocalCluster, LocalSpace
from printd.cluster.membership import LeaderAction, Leadership, leader_action
from printd.cluster.node import ClusterNode, NodeSettings
from printd.cluster.redis import new_incarnation
from printd.store import Store, open_store
from printd.store.base import InstanceConflict

FAST = NodeSettings(heartbeat_interval=0.05, member_ttl=0.5, chore_interval=0.05, orphan_after=0.5)


def view(leader: str | None, *ids: str) -> ClusterView:
    return ClusterView(tuple(Member(MemberInfo(i, "x"), 0.0, 1.0) for i in ids), leader)


def test_leader_actions() -> None:
    assert leader_action(view(None, "a"), "a", draining=False) is LeaderAction.ACQUIRE
    assert leader_action(view("a", "a"), "a", draining=False) is LeaderAction.RENEW
    assert leader_action(view("a", "a"), "a", draining=True) is LeaderAction.STEP_DOWN
    assert leader_action(view("b", "a", "b"), "a", draining=False) is LeaderAction.FOLLOW
    assert leader_action(view(None, "a"), "a", draining=True) is LeaderAction.FOLLOW


def test_a_lease_not_renewed_stops_being_acted_on() -> None:
    lease = Leadership(ttl=6)
    assert not lease.active(0)
    lease.acquired(token=3, now=10)
    assert lease.active(15.9) and not lease.active(16)
    lease.renewed(15)
    assert lease.active(20)
    lease.lost()
    assert not lease.active(20) and lease.token is None


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    async with open_store(f"sqlite://{tmp_path}/node.db") as s:
        await s.migrate()
        yield s


_ports = itertools.count(7000)


def node(store: Store, space: LocalSpace, instance_id: str, *, clustered: bool = True) -> ClusterNode:
    backend = LocalCluster(new_incarnation(), lambda t, p: None, space)
    port = next(_ports)

    def describe() -> MemberInfo:
        return MemberInfo(instance_id, backend.incarnation, url=f"http://127.0.0.1:{port}", started_at=1.0)

    return ClusterNode(backend, store, FAST, instance_id=instance_id, clustered=clustered, describe=describe)


async def start(nursery: trio.Nursery, n: ClusterNode) -> ClusterNode:
    await nursery.start(n.run)  # joins first
    return n


async def eventually(predicate, timeout: float = 3.0) -> None:  # type: ignore[no-untyped-def]
    with trio.fail_after(timeout):
        while not predicate():  # noqa: ASYNC110 (state changes in another task's round)
            await trio.sleep(0.01)


async def test_one_leader_and_a_handover_when_it_leaves(store: Store, nursery: trio.Nursery) -> None:
    space = LocalSpace()
    a = await start(nursery, node(store, space, "a"))
    b = await start(nursery, node(store, space, "b"))
    await eventually(lambda: all(n.view is not None and n.view.ids == {"a", "b"} for n in (a, b)))
    await eventually(lambda: a.is_leader or b.is_leader)
    leader, other = (a, b) if a.is_leader else (b, a)
    assert not other.is_leader
    first_token = leader.leadership.token
    await leader.leave()
    await eventually(lambda: other.is_leader)
    assert other.leadership.token is not None and first_token is not None
    assert other.leadership.token > first_token  # the store's fencing token only grows
    await eventually(lambda: other.view is not None and other.view.ids == {other.instance_id})


async def test_chores_run_only_under_the_current_token(store: Store, nursery: trio.Nursery) -> None:
    space = LocalSpace()
    a = await start(nursery, node(store, space, "a"))
    tokens: list[int] = []

    async def chores(token: int) -> None:
        tokens.append(token)
        await store.expire_queued(0.0, 1.0, token)  # raises StaleLeader on an old token

    a.chores = chores
    await eventually(lambda: len(tokens) >= 2)
    await store.take_leadership("intruder", 2.0)  # someone else was made leader meanwhile
    await eventually(lambda: not a.is_leader or a.leadership.token != tokens[0])
    assert a.leadership.token is None or a.leadership.token > tokens[0]


async def test_a_live_instance_id_refuses_a_second_start(store: Store, nursery: trio.Nursery) -> None:
    space = LocalSpace()
    await start(nursery, node(store, space, "same"))
    with pytest.raises(InstanceConflict, match="in use by a live instance"):
        await node(store, space, "same").join()


async def test_without_a_cluster_a_second_instance_on_the_database_refuses(
    store: Store, nursery: trio.Nursery
) -> None:
    await start(nursery, node(store, LocalSpace(), "alone", clustered=False))
    with pytest.raises(InstanceConflict, match="runs without a cluster"):
        await node(store, LocalSpace(), "second", clustered=False).join()


async def test_the_entry_of_a_killed_previous_process_is_waited_out(store: Store) -> None:
    space = LocalSpace()
    old = node(store, space, "restarted")
    await old.join()  # and then it "dies": no more heartbeats
    t = trio.current_time()
    await node(store, space, "restarted").join()
    assert FAST.member_ttl * 0.5 < trio.current_time() - t < FAST.member_ttl + 2 * FAST.heartbeat_interval
