"""The store failing under a running printd (issue 7 A, B, C, 20): results in flight while the
database is cut still end printed with the connection up; a stop is bounded while the database
holds traffic without answering; the store circuit closes as soon as the database answers again,
and health says why it is degraded meanwhile; a second instance on the same database without a
cluster refuses to start."""

from __future__ import annotations

import signal
import sqlite3
import threading
import time
from typing import Any

import httpx
import pytest
import trio

from tests.conftest import Printd, token
from tests.scripted import SVC, ScriptedAgent, submit, wait_state
from tests.toxiproxy import TcpProxy

OPS = token("admin", "*", sub="ops-1")


def circuit_state(p: Printd, name: str) -> str:
    circuits = p.get("/monitoring/circuits", OPS).json()["circuits"]
    return str(next(c for c in circuits if c["name"] == name)["state"])


@pytest.mark.postgres
async def test_results_sent_while_postgresql_is_cut_end_printed_with_the_connection_up(
    printd_factory: Any, pg_database_url: str
) -> None:
    proxy = TcpProxy(("127.0.0.1", 5432))
    try:
        url = pg_database_url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
        p = printd_factory(env={"DATABASE_URL": url}, config={"store": {"statement_timeout_ms": 1000}})
        agent = await ScriptedAgent.connect(p, ("k1",))
        jobs = [submit(p, printer="k1").json()["job_id"] for _ in range(3)]
        dispatched = [await agent.dispatch() for _ in jobs]
        for job in dispatched:
            await agent.ack(job)
        await wait_state(p, jobs[-1], "acked")
        proxy.down()  # RST on every connection: the results cannot be recorded
        for job in dispatched:
            data = {"job_id": job["job_id"], "correlation_id": job["correlation_id"], "success": True}
            await agent.client.send("job.result", data, id=7)
            err = await agent._next(agent.client, agent.backlog, "error", 10)
            assert err["data"]["code"] == "unavailable" and "redelivered" in err["data"]["message"]
        await trio.sleep(2)
        proxy.up()
        back = time.monotonic()
        # each job comes again (the agent answers from its journal, here: the same result)
        redelivered = set()
        with trio.fail_after(20):
            while redelivered != set(jobs):
                job = await agent.dispatch()
                redelivered.add(job["job_id"])
                await agent.ack(job)
                await agent.result(job)
        for job_id in jobs:
            await wait_state(p, job_id, "printed", timeout=10)
        assert time.monotonic() - back < 15  # bounded after the store is back
        await agent.client.send("ping", id=1)  # and the connection stayed up all along
        assert (await agent._next(agent.client, agent.backlog, "ack", 5))["id"] == 1
        await agent.close()
    finally:
        proxy.close()


async def test_results_while_sqlite_is_locked_by_another_process_end_printed(printd_factory: Any) -> None:
    p = printd_factory(config={"store": {"statement_timeout_ms": 300}})
    agent = await ScriptedAgent.connect(p, ("k1",))
    job_id = submit(p, printer="k1").json()["job_id"]
    job = await agent.dispatch()
    await agent.ack(job)
    await wait_state(p, job_id, "acked")
    holder = sqlite3.connect(p.data_dir / "printd.db", timeout=0.1, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # another process holds the database lock
    released = threading.Event()
    try:
        data = {"job_id": job_id, "correlation_id": job["correlation_id"], "success": True}
        await agent.client.send("job.result", data, id=7)
        err = await agent._next(agent.client, agent.backlog, "error", 10)
        assert err["data"]["code"] == "unavailable"
    finally:
        holder.execute("ROLLBACK")
        holder.close()
        released.set()
    with trio.fail_after(20):
        again = await agent.dispatch()
    assert again["job_id"] == job_id
    await agent.ack(again)
    await agent.result(again)
    await wait_state(p, job_id, "printed", timeout=10)
    await agent.close()


@pytest.mark.postgres
async def test_sigterm_is_bounded_while_postgresql_holds_traffic_without_answering(
    printd_factory: Any, pg_database_url: str
) -> None:
    proxy = TcpProxy(("127.0.0.1", 5432))
    try:
        url = pg_database_url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
        p = printd_factory(env={"DATABASE_URL": url}, config={"server": {"shutdown_grace": 2.0}})
        agent = await ScriptedAgent.connect(p, ("k1",))
        proxy.blackhole()  # every pooled connection: the bytes go nowhere, nothing comes back

        def stuck_submit() -> None:
            try:
                httpx.post(
                    p.url + "/api/v1/jobs",
                    headers={"Authorization": f"Bearer {SVC}"},
                    json={"printer_id": "k1", "payload": {}},
                    timeout=30,
                )
            except httpx.HTTPError:
                pass

        threads = [threading.Thread(target=stuck_submit, daemon=True) for _ in range(3)]
        for t in threads:
            t.start()
        await trio.sleep(1)  # the requests hang on the store
        assert p.proc is not None
        started = time.monotonic()
        p.proc.send_signal(signal.SIGTERM)
        code = await trio.to_thread.run_sync(p.proc.wait, 20)
        took = time.monotonic() - started
        assert code == 0 and took < 2.0 * 2 + 3, took  # drain grace + store-close grace, not forever
        assert "printd stopped" in p.log()
        await agent.close()
    finally:
        proxy.close()


@pytest.mark.postgres
async def test_a_call_on_a_postgresql_connection_gone_silent_ends_and_the_next_calls_are_served(
    printd_factory: Any, pg_database_url: str
) -> None:
    """A network path that drops every byte without a reset: the calls on it fail with 503 soon
    after the statement timeout (never hang), their connections are dropped, and the next calls
    get fresh connections, with no pool slot or thread lost to the silent ones."""
    proxy = TcpProxy(("127.0.0.1", 5432))
    try:
        url = pg_database_url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
        p = printd_factory(
            env={"DATABASE_URL": url}, config={"store": {"statement_timeout_ms": 1000, "pool_size": 2}}
        )
        assert p.get("/api/v1/jobs", SVC).status_code == 200
        proxy.blackhole()  # the connections open now go silent; new ones work

        def timed_get() -> tuple[int, float]:
            started = time.monotonic()
            status = httpx.get(p.url + "/api/v1/jobs", headers={"Authorization": f"Bearer {SVC}"}, timeout=30)
            return status.status_code, time.monotonic() - started

        status, took = await trio.to_thread.run_sync(timed_get)
        assert status == 503 and took < 1.0 + 3.0 + 1.5, (status, took)  # statement timeout + margin
        assert "no answer within" in p.log()
        # more calls than pool slots: a slot still held by a silent call would make them wait
        served = [await trio.to_thread.run_sync(timed_get) for _ in range(4)]
        assert [s for s, _ in served][-2:] == [200, 200], served
        assert p.get("/monitoring/health").json()["status"] in ("ok", "degraded")
    finally:
        proxy.close()


@pytest.mark.postgres
async def test_the_store_circuit_closes_as_soon_as_postgresql_answers_again(
    printd_factory: Any, pg_database_url: str
) -> None:
    proxy = TcpProxy(("127.0.0.1", 5432))
    try:
        url = pg_database_url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
        p = printd_factory(
            env={"DATABASE_URL": url},
            config={
                "circuits": {"store": {"failure_threshold": 2}},
                "health": {"check_interval": 0.5, "error_rate": 2.0},
            },
        )
        assert p.get("/monitoring/health").json()["status"] == "ok"
        proxy.down()
        for _ in range(3):
            assert p.get("/api/v1/jobs", SVC).status_code == 503
        assert circuit_state(p, "store") == "open"
        # back offices retrying fast: their 503s are the database's, not the instance's errors
        with httpx.Client(headers={"Authorization": f"Bearer {SVC}"}) as client:
            assert {client.get(p.url + "/api/v1/jobs").status_code for _ in range(60)} == {503}
        burst_end = time.time()
        with trio.fail_after(10):
            while (health := p.get("/monitoring/health")).json()["sampled_at"] <= burst_end:  # noqa: ASYNC110 (another process)
                await trio.sleep(0.1)
        assert health.status_code == 200 and health.json()["status"] == "degraded", health.json()
        assert health.json()["checks"]["errors"]["status"] == "ok"  # the instance stays in the pool
        assert any("database unavailable" in r for r in health.json()["reasons"])
        await trio.sleep(5)  # a few seconds of outage
        proxy.up()
        back = time.monotonic()
        with trio.fail_after(10):
            while circuit_state(p, "store") != "closed":  # noqa: ASYNC110 (another process)
                await trio.sleep(0.1)
        assert time.monotonic() - back < 4  # the probe, not the 60 s open timeout
        assert p.get("/api/v1/jobs", SVC).status_code == 200
        assert p.get("/monitoring/health").json()["status"] == "ok"
    finally:
        proxy.close()


@pytest.mark.postgres
def test_a_second_instance_on_the_database_without_a_cluster_refuses_naming_the_first(
    printd_factory: Any, pg_database_url: str
) -> None:
    first = printd_factory("first", env={"DATABASE_URL": pg_database_url, "INSTANCE_ID": "kitchen-gw-1"})
    second = printd_factory(
        "second", env={"DATABASE_URL": pg_database_url, "INSTANCE_ID": "kitchen-gw-2"}, start=False
    )
    with pytest.raises(RuntimeError) as failed:
        second.start(timeout=30)
    assert second.proc is not None and second.proc.returncode == 2
    message = str(failed.value)
    assert "refusing to start" in message and "'kitchen-gw-1'" in message and first.url in message
    assert "REDIS_URL" in message  # and says how to run several: one cluster
    assert first.get("/monitoring/health").status_code == 200
