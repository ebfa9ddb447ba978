"""Circuit breakers with real dependencies: PostgreSQL cut through a proxy, printctl resets."""

from __future__ import annotations

import subprocess
import sys
import time
from typing import Any

import httpx
import pytest
import trio

from printctl.faults.proxy import TcpProxy
from tests.conftest import Printd, token
from tests.scripted import SVC, ScriptedAgent, submit, wait_state

ADMIN = token("admin", "*", sub="ops-1")


def circuit(p: Printd, name: str) -> dict[str, Any]:
    snap = p.get("/monitoring/circuits", ADMIN).json()
    found: dict[str, Any] = next(c for c in snap["circuits"] if c["name"] == name)
    return found


def timed_get(p: Printd, path: str) -> tuple[int, float, httpx.Response]:
    start = time.monotonic()
    r = p.get(path, SVC)
    return r.status_code, time.monotonic() - start, r


@pytest.mark.postgres
async def test_store_circuit_opens_fails_fast_keeps_jobs_and_recovers(
    printd_factory: Any, pg_database_url: str
) -> None:
    proxy = TcpProxy(("127.0.0.1", 5432))
    try:
        url = pg_database_url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
        p = printd_factory(
            env={"DATABASE_URL": url},
            config={
                "circuits": {"store": {"failure_threshold": 3, "open_timeout": 3.0}},
                "health": {"fleet_cache_ttl": 0.3},
            },
        )
        agent = await ScriptedAgent.connect(p)
        await agent.close()
        accepted = submit(p).json()["job_id"]  # queued while the agent is away
        fresh = p.get("/api/v1/fleet/health", SVC).json()
        assert fresh["stale"] is False and fresh["printers"]["total"] == 1

        proxy.down()
        await trio.sleep(0.4)  # the cached fleet summary expires; the reload will fail
        stale = p.get("/api/v1/fleet/health", SVC)
        assert stale.status_code == 200 and stale.json()["stale"] is True  # last data, marked stale
        assert stale.json()["printers"]["total"] == 1
        codes = []
        for _ in range(2):  # failures up to the threshold (the fleet reload was the first)
            code, took, r = await trio.to_thread.run_sync(timed_get, p, "/api/v1/jobs")
            codes.append(code)
            assert took < 8, f"a request hung for {took:.1f} s"
        assert codes == [503, 503]
        assert circuit(p, "store")["state"] == "open"
        code, took, r = await trio.to_thread.run_sync(timed_get, p, "/api/v1/jobs")
        assert code == 503 and took < 0.5  # fails fast: no query, no worker thread
        assert "circuit 'store' is open" in r.json()["message"] and 1 <= int(r.headers["Retry-After"]) <= 3
        health = p.get("/monitoring/health").json()
        assert health["circuits_open"] == ["store"]
        # many callers at once while open: all answered at once, the process stays responsive
        start = time.monotonic()
        async with trio.open_nursery() as nursery:
            for _ in range(50):
                nursery.start_soon(trio.to_thread.run_sync, timed_get, p, "/api/v1/jobs")
        assert time.monotonic() - start < 5

        proxy.up()
        await trio.sleep(3.2)  # open_timeout: the next calls are half-open trials
        deadline = time.monotonic() + 15
        while p.get("/api/v1/jobs", SVC).status_code != 200:
            assert time.monotonic() < deadline, "store circuit did not close after the server came back"
            await trio.sleep(0.2)
        p.get("/api/v1/jobs", SVC)
        assert circuit(p, "store")["state"] == "closed"

        agent = await ScriptedAgent.connect(p)  # the job accepted before the outage is still there
        job = await agent.dispatch()
        assert job["job_id"] == accepted
        await agent.ack(job)
        await agent.result(job)
        await wait_state(p, accepted, "printed")
        await agent.close()
    finally:
        proxy.close()


def printctl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "printctl.main", *args], capture_output=True, text=True, timeout=60
    )


async def test_admin_actions_from_printctl_take_effect_and_need_an_admin(printd: Printd) -> None:
    agent = await ScriptedAgent.connect(printd)
    r = printd.post("/monitoring/circuits/store/force-open")
    assert r.status_code == 401
    r = printd.post("/monitoring/circuits/store/force-open", SVC)
    assert r.status_code == 403 and "admin" in r.json()["message"]
    assert circuit(printd, "store")["state"] == "closed"

    res = printctl("circuits", "force-open", "store", "--url", printd.url, "--token", ADMIN)
    assert res.returncode == 0, res.stderr
    assert circuit(printd, "store")["state"] == "forced_open"
    assert submit(printd).status_code == 503  # nothing reaches the database

    res = printctl("circuits", "reset", "store", "--url", printd.url, "--token", SVC)
    assert res.returncode == 2 and "admin" in (res.stderr + res.stdout)  # fix the token
    res = printctl("circuits", "reset", "store", "--url", printd.url, "--token", ADMIN)
    assert res.returncode == 0, res.stderr
    assert circuit(printd, "store")["state"] == "closed"
    assert submit(printd).status_code == 202

    res = printctl("circuits", "list", "--url", printd.url, "--json", "--token", ADMIN)
    assert res.returncode == 0
    assert "store" in res.stdout
    assert printd.post("/monitoring/circuits/nope/reset", ADMIN).status_code == 404
    company_admin = token("admin", "acme", sub="ops-acme")  # may not touch what all companies share
    r = printd.post("/monitoring/circuits/store/force-open", company_admin)
    assert r.status_code == 403 and "all-companies" in r.json()["message"]
    await agent.close()


async def test_unacknowledging_branch_opens_its_dispatch_circuit_only(printd_factory: Any) -> None:
    p = printd_factory(
        config={
            "jobs": {"ack_timeout": 0.2, "retry_initial": 0.1, "retry_max": 0.2, "max_attempts": 50},
            "circuits": {"dispatch": {"failure_threshold": 3, "open_timeout": 30.0}},
        }
    )
    mute = await ScriptedAgent.connect(p, ("m1",), sub="agent-mute")  # branch b1, never acks
    good_tok = token("agent", "acme", sub="agent-good", branch="b2")
    from printctl.wsclient import WsClient, ws_url

    good_client = await WsClient.connect(ws_url(p.url), token=good_tok)
    good = ScriptedAgent(good_client, [])
    await good_client.recv(5)
    await good_client.send("printer.status", {"printer_id": "g1", "status": "online"}, id=1)
    await good._next(good_client, good.backlog, "ack", 5)

    job_id = submit(p, "m1").json()["job_id"]
    for _ in range(3):
        await mute.dispatch(timeout=5)
    # open, and the job's next re-send already asked it and was held back
    deadline = time.monotonic() + 5
    while (c := circuit(p, "dispatch:acme:b1"))["state"] != "open" or c["rejected"] < 1:
        assert time.monotonic() < deadline, c
        await trio.sleep(0.1)
    # no more sends into the void: the store recorded none (a dispatch is recorded before it
    # leaves), and none is queued to the agent ahead of the answer to a ping sent now
    job = p.get(f"/api/v1/jobs/{job_id}", SVC).json()
    assert job["state"] == "dispatched" and job["attempts"] == 3  # kept, not lost
    assert [m for m in await mute.sentinel() if m["event"] == "job.dispatch"] == []
    # the other branch is unaffected
    other = submit(p, "g1").json()["job_id"]
    job = await good.dispatch()
    assert job["job_id"] == other
    await good.ack(job)
    await good.result(job)
    await wait_state(p, other, "printed")
    await mute.close()
    await good.close()
