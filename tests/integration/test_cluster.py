"""Several printd instances as one gateway: three real processes, one PostgreSQL, one private Redis.

Jobs accepted on any instance print through the instance holding the agent; printer tests answer
across instances; an agent has one live connection cluster-wide; rate limits are shared;
membership follows instances coming and going.
"""

from __future__ import annotations

import json
import signal
import time
from typing import Any

import httpx
import pytest
import trio

from printctl.wsclient import ConnectionClosed, WsClient, ws_url
from tests.conftest import Printd, token
from tests.scripted import SVC, ScriptedAgent, submit, wait_state

pytestmark = pytest.mark.postgres
OPS = token("admin", "*", sub="ops-1")


def members(p: Printd) -> dict[str, Any]:
    view: dict[str, Any] = p.get("/monitoring/cluster", OPS).json()
    return view


async def wait_members(p: Printd, expected: set[str], timeout: float = 15) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        view = members(p)
        if {m["id"] for m in view["members"]} == expected and view["leader"] in expected:
            return view
        if time.monotonic() > deadline:
            raise AssertionError(f"members {view['members']} leader {view['leader']}, expected {expected}")
        await trio.sleep(0.1)


async def test_a_job_accepted_on_any_instance_prints_through_the_instance_holding_the_agent(
    cluster_factory: Any,
) -> None:
    nodes = cluster_factory(3)
    await wait_members(nodes[0], {"i1", "i2", "i3"})
    agents = [await ScriptedAgent.connect(p, (f"p{k}",), sub=f"agent-{k}") for k, p in enumerate(nodes, 1)]
    for k, agent in enumerate(agents, 1):
        for accepting in nodes:
            if accepting is nodes[k - 1]:
                continue  # the interesting case: accepted on another instance than the agent's
            res = submit(accepting, printer=f"p{k}")
            assert res.status_code == 202, res.text
            job = await agent.dispatch(timeout=10)
            assert job["job_id"] == res.json()["job_id"]
            await agent.ack(job)
            await agent.result(job)
            done = await wait_state(accepting, job["job_id"], "printed")
            assert done["attempts"] == 1
    for agent in agents:
        await agent.close()


async def test_a_printer_test_answers_whichever_instance_the_caller_and_the_agent_are_on(
    cluster_factory: Any,
) -> None:
    p1, p2, _ = cluster_factory(3)
    await wait_members(p1, {"i1", "i2", "i3"})
    agent = await ScriptedAgent.connect(p2, ("k1",))

    async def answer() -> None:
        job = await agent.dispatch()
        await agent.ack(job)
        await agent.result(job, message="test page ok")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(answer)
        res = await trio.to_thread.run_sync(lambda: p1.post("/api/v1/printers/k1/test", SVC, {}))
    assert res.status_code == 200, res.text
    assert res.json()["success"] is True and res.json()["message"] == "test page ok"
    await agent.close()
    # and an agent that leaves another instance during a test answers the caller at once
    agent = await ScriptedAgent.connect(p2, ("k1",))

    async def leave() -> None:
        await agent.dispatch()
        await agent.close()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(leave)
        started = time.monotonic()
        res = await trio.to_thread.run_sync(lambda: p1.post("/api/v1/printers/k1/test", SVC, {}))
    assert res.status_code == 503 and "disconnected" in res.json()["message"], res.text
    assert time.monotonic() - started < 10  # not the 15 s test timeout


async def test_an_agent_has_one_live_connection_across_instances(cluster_factory: Any) -> None:
    p1, p2 = cluster_factory(2)
    await wait_members(p1, {"i1", "i2"})
    first = await WsClient.connect(ws_url(p1.url), token=token("agent", sub="agent-1"))
    assert (await first.recv(5))["event"] == "hello"
    second = await ScriptedAgent.connect(p2, ("p1",))  # the agent reconnected elsewhere
    with pytest.raises(ConnectionClosed) as closed:
        with trio.fail_after(10):
            while True:
                await first.recv(10)
    assert closed.value.code == 4009
    res = submit(p1)  # accepted on the instance that lost the agent: routed to the new connection
    job = await second.dispatch()
    assert job["job_id"] == res.json()["job_id"]
    await second.close()


async def test_printer_test_rate_limits_hold_across_the_cluster(cluster_factory: Any) -> None:
    nodes = cluster_factory(3)
    await wait_members(nodes[0], {"i1", "i2", "i3"})
    agent = await ScriptedAgent.connect(nodes[0], ("p1",))  # registers the printer
    await agent.close()
    statuses = []
    for i in range(7):  # 5 per printer per minute, whichever instance is asked
        res = await trio.to_thread.run_sync(
            lambda i=i: nodes[i % 3].post("/api/v1/printers/p1/test", SVC, {})
        )
        statuses.append(res.status_code)
    assert statuses[:5] == [503] * 5  # allowed, and answered: the agent is offline
    assert statuses[5:] == [429, 429]


async def test_membership_follows_instances_joining_draining_and_dying(cluster_factory: Any) -> None:
    p1, p2, p3 = cluster_factory(3)
    view = await wait_members(p1, {"i1", "i2", "i3"})
    assert not view["stale"] and view["backend"]["kind"] == "redis"
    assert sum(m["leader"] for m in view["members"]) == 1
    row = next(m for m in view["members"] if m["id"] == "i2")
    assert row["url"] == p2.url and row["health"] == "ok" and row["heartbeat_age_s"] < 6
    started = time.monotonic()
    assert p3.stop(signal.SIGTERM) == 0
    await wait_members(p1, {"i1", "i2"}, timeout=3)  # a drained instance leaves at once
    assert time.monotonic() - started < 5
    leader = members(p1)["leader"]
    dying = p1 if leader == "i1" else p2
    survivor = p2 if dying is p1 else p1
    assert dying.proc is not None
    dying.kill()  # SIGKILL: no goodbye; the TTL (6 s) drops it and the survivor takes the lead
    started = time.monotonic()
    view = await wait_members(survivor, {survivor_id(survivor)}, timeout=12)
    assert view["leader"] == survivor_id(survivor)
    assert time.monotonic() - started < 9


def survivor_id(p: Printd) -> str:
    return str(httpx.get(p.url + "/monitoring/health").json()["instance"])


async def test_a_live_instance_id_refuses_a_second_start(cluster_factory: Any, printd_factory: Any) -> None:
    (p1,) = cluster_factory(1)
    await wait_members(p1, {"i1"})
    assert p1.env["INSTANCE_ID"] == "i1"
    twin = printd_factory("twin", env=dict(p1.env), start=False)
    with pytest.raises(RuntimeError) as failed:
        twin.start(timeout=20)
    assert "refusing to start" in str(failed.value) and "in use by a live instance" in str(failed.value)
    assert twin.proc is not None and twin.proc.returncode == 2


async def test_printctl_cluster_status_through_an_instance_and_from_redis(
    cluster_factory: Any, redis_server: Any
) -> None:
    from tests.cli import run

    async def cli(*args: str) -> Any:  # printctl runs trio itself: give it its own thread
        return await trio.to_thread.run_sync(lambda: run(*args))

    p1, p2 = cluster_factory(2)
    await wait_members(p1, {"i1", "i2"})
    res = await cli("cluster", "status", "--url", p1.url, "--token", OPS)
    assert res.exit_code == 0, res.output
    assert "healthy" in res.stdout and "i1" in res.stdout and "(leader)" in res.stdout
    prefix = p1.env["REDIS_PREFIX"]
    res = await cli("cluster", "status", "--redis", redis_server.url, "--prefix", prefix, "--json")
    assert res.exit_code == 0, res.output
    body = json.loads(res.stdout)
    assert body["ok"] and {m["id"] for m in body["members"]} == {"i1", "i2"} and body["leader"]
    res = await cli("cluster", "status", "--url", p1.url)  # no token: the view names the cluster's insides
    assert res.exit_code == 2 and "401" in res.stderr
    p1.kill()
    p2.kill()  # no instance answers: Redis still says who was there until their TTL passes
    res = await cli("cluster", "status", "--redis", redis_server.url, "--prefix", prefix, "--json")
    assert res.exit_code == 0 and len(json.loads(res.stdout)["members"]) == 2
    await trio.sleep(7)
    res = await cli("cluster", "status", "--redis", redis_server.url, "--prefix", prefix, "--json")
    assert res.exit_code == 1
    assert json.loads(res.stdout)["problems"] == ["no members", "no leader"]
    res = await cli("cluster", "status", "--redis", "notaurl")
    assert res.exit_code == 2 and "redis://" in res.stderr


async def dashboard(p: Printd, company: str = "acme") -> WsClient:
    client = await WsClient.connect(ws_url(p.url), token=token("dashboard", company, sub=f"dash-{company}"))
    assert (await client.recv(5))["event"] == "hello"
    return client


async def test_status_fans_out_across_instances_batched_and_per_company(cluster_factory: Any) -> None:
    p1, p2, p3 = cluster_factory(3)
    await wait_members(p1, {"i1", "i2", "i3"})
    acme = await dashboard(p1)
    assert (await acme.recv(5))["event"] == "printer.status.snapshot"
    globex = await dashboard(p1, "globex")
    assert (await globex.recv(5))["event"] == "printer.status.snapshot"
    on_p2 = await WsClient.connect(ws_url(p2.url), token=token("agent", sub="a2"))
    on_p3 = await WsClient.connect(ws_url(p3.url), token=token("agent", sub="a3"))
    other = await WsClient.connect(ws_url(p3.url), token=token("agent", "globex", sub="g3"))
    for client in (on_p2, on_p3, other):
        assert (await client.recv(5))["event"] == "hello"
    seen: dict[str, int] = {}
    batches: list[tuple[float, dict[str, Any]]] = []
    with trio.fail_after(15):
        for n in range(1, 21):  # 20 updates each from two instances, faster than the window
            await on_p2.send("printer.status", {"printer_id": "p2", "status": "online", "n": n})
            await on_p3.send("printer.status", {"printer_id": "p3", "status": "online", "n": n})
            await trio.sleep(0.01)
        await other.send("printer.status", {"printer_id": "g", "status": "online"})
        while seen.get("p2") != 20 or seen.get("p3") != 20:
            msg = await acme.recv(5)
            if msg["event"] != "printer.status.batch":
                continue
            batches.append((time.monotonic(), msg["data"]))
            for item in msg["data"]["printers"]:
                assert item["printer_id"] in ("p2", "p3")  # never another company's
                seen[item["printer_id"]] = item["n"]
    assert len(batches) < 20  # coalesced: latest state per printer per window
    closed = [data["sent_at"] for _, data in batches]  # when each batch's window closed
    gaps = [b - a for a, b in zip(closed, closed[1:], strict=False)]
    assert all(g > 0.08 for g in gaps), gaps  # one batch per window (100 ms), merged across instances
    g = await globex.recv(5)
    assert [i["printer_id"] for i in g["data"]["printers"]] == ["g"]
    # a new dashboard anywhere gets every printer of its company in its snapshot
    late = await dashboard(p2)
    snapshot = await late.recv(5)
    assert snapshot["event"] == "printer.status.snapshot"
    assert {i["printer_id"]: i["n"] for i in snapshot["data"]["printers"]} == {"p2": 20, "p3": 20}
    for client in (acme, globex, on_p2, on_p3, other, late):
        await client.close()


async def test_job_completed_reaches_dashboards_on_every_instance(cluster_factory: Any) -> None:
    p1, p2 = cluster_factory(2)
    await wait_members(p1, {"i1", "i2"})
    watcher = await dashboard(p2)
    agent = await ScriptedAgent.connect(p1, ("k1",))
    res = submit(p1, printer="k1")
    job = await agent.dispatch()
    await agent.ack(job)
    await agent.result(job)
    with trio.fail_after(10):
        while True:
            msg = await watcher.recv(10)
            if msg["event"] == "job.completed":
                break
    assert msg["data"]["job_id"] == res.json()["job_id"] and msg["data"]["state"] == "printed"
    await watcher.close()
    await agent.close()
