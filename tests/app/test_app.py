"""One printd in the test's own process: health and figures, a job end to end, the printer test
answered at once when its agent drops, the store circuit's 503, CORS, reload and drain."""

from __future__ import annotations

import os
import signal
import time
from dataclasses import replace
from typing import Any

import pytest
import trio

from printctl.wsclient import ConnectionClosed, WsClient, ws_url
from printd.config import Config
from printd.protocol import CLOSE_GOING_AWAY, CLOSE_RECONNECT_NOW
from tests.app.conftest import RunningApp, StartApp, app_config
from tests.conftest import token
from tests.scripted import SVC, ScriptedAgent

ADMIN = token("admin", "*", sub="ops-1")


async def job_state(p: RunningApp, job_id: str, state: str, timeout: float = 10) -> dict[str, Any]:
    with trio.fail_after(timeout):
        while True:
            job: dict[str, Any] = (await p.get(f"/api/v1/jobs/{job_id}", SVC)).json()
            if job["state"] == state:
                return job
            await trio.sleep(0.02)


async def test_health_instance_figures_and_metrics(start_app: StartApp) -> None:
    p: RunningApp = await start_app()
    health = await p.get("/monitoring/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert (await p.get("/monitoring/instance")).status_code == 401  # operators only
    agent = await ScriptedAgent.connect(p, ("p1", "p2"))
    dash = await WsClient.connect(ws_url(p.url), token=token("dashboard", "acme", sub="dash-1"))
    await dash.recv_event("printer.status.snapshot")

    instance = (await p.get("/monitoring/instance", ADMIN)).json()
    assert instance["instance"] == "inproc-1"
    assert instance["connections"]["agent"] == 1 and instance["connections"]["dashboard"] == 1
    assert instance["status"]["printers"] == 2
    assert instance["jobs"]["in_flight"] == 0 and instance["cluster"]["backend"] == "local"
    metrics = await p.get("/monitoring/metrics", ADMIN)
    assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")
    assert 'printd_connections{role="agent"} 1.0' in metrics.text
    circuits = (await p.get("/monitoring/circuits", ADMIN)).json()
    assert [c["name"] for c in circuits["circuits"]] == ["store"]
    cluster = (await p.get("/monitoring/cluster", ADMIN)).json()
    assert [(m["id"], m["leader"]) for m in cluster["members"]] == [("inproc-1", True)]
    await agent.close()
    await dash.close()


async def test_a_job_through_a_scripted_agent(start_app: StartApp) -> None:
    p: RunningApp = await start_app()
    dash = await WsClient.connect(ws_url(p.url), token=token("dashboard", "acme", sub="dash-1"))
    agent = await ScriptedAgent.connect(p)
    submitted = await p.post("/api/v1/jobs", SVC, json={"printer_id": "p1", "payload": {"text": "2x burger"}})
    assert submitted.status_code == 202
    job = await agent.dispatch()
    assert job["job_id"] == submitted.json()["job_id"] and job["payload"] == {"text": "2x burger"}
    await agent.ack(job)
    await job_state(p, job["job_id"], "acked")
    await agent.result(job)
    done = await job_state(p, job["job_id"], "printed")
    assert [h["state"] for h in done["history"]] == ["queued", "dispatched", "acked", "printed"]
    completed = await dash.recv_event("job.completed")
    assert completed["data"]["job_id"] == job["job_id"]
    # the figures count it; nothing is left in flight
    figures = (await p.get("/monitoring/instance", ADMIN)).json()["jobs"]
    assert figures["dispatched"] == 1 and figures["completed"] == 1 and figures["in_flight"] == 0
    assert p.app.jobs.core.inflight_count() == 0
    await agent.close()
    await dash.close()


async def test_printer_test_answers_503_at_once_when_its_agent_drops(start_app: StartApp) -> None:
    p: RunningApp = await start_app(jobs={"test_timeout": 30.0})
    agent = await ScriptedAgent.connect(p)
    answer: list[Any] = []
    async with trio.open_nursery() as nursery:

        async def caller() -> None:
            answer.append(await p.post("/api/v1/printers/p1/test", SVC, json={}))

        started = time.monotonic()
        nursery.start_soon(caller)
        test_job = await agent.dispatch()
        assert test_job["kind"] == "test"
        await agent.client.abort()  # the agent drops before answering
    took = time.monotonic() - started
    r = answer[0]
    assert r.status_code == 503 and "disconnected" in r.json()["message"] and r.json()["correlation_id"]
    assert took < 10  # not the 30 s test timeout
    # the agent is now offline: the next test is refused before any job goes out
    offline = await p.post("/api/v1/printers/p1/test", SVC, json={})
    assert offline.status_code == 503 and "offline" in offline.json()["message"]


async def test_an_open_store_circuit_is_503_with_retry_after_and_the_circuit(start_app: StartApp) -> None:
    p: RunningApp = await start_app()
    assert (await p.post("/monitoring/circuits/store/force-open", ADMIN)).status_code == 200
    r = await p.get("/api/v1/jobs", SVC)
    assert r.status_code == 503 and r.json()["circuit"] == "store" and int(r.headers["Retry-After"]) >= 1
    assert (await p.get("/monitoring/health")).json()["circuits_open"] == ["store"]
    assert (await p.post("/monitoring/circuits/store/reset", ADMIN)).status_code == 200
    assert (await p.get("/api/v1/jobs", SVC)).status_code == 200


async def test_cors_preflight_for_allowed_origins_only(start_app: StartApp) -> None:
    p: RunningApp = await start_app(auth={"cors_origins": ["https://dash.example.com"]})
    ok = await p.request("OPTIONS", "/api/v1/jobs", headers={"Origin": "https://dash.example.com"})
    assert ok.status_code == 204 and ok.headers["access-control-allow-origin"] == "https://dash.example.com"
    bad = await p.request("OPTIONS", "/api/v1/jobs", headers={"Origin": "https://evil.example"})
    assert bad.status_code == 403 and "access-control-allow-origin" not in bad.headers
    missing = await p.get("/api/v1/nope", SVC, headers={"Origin": "https://dash.example.com"})
    assert missing.status_code == 404 and missing.headers["access-control-allow-origin"]


async def test_sighup_applies_a_reloaded_config(start_app: StartApp, tmp_path: Any) -> None:
    wanted: list[Config] = []
    p: RunningApp = await start_app(load_config=lambda: wanted[0])
    base = p.app.config
    wanted.append(
        replace(app_config(base.data_dir, jobs={"test_timeout": 2.5}), instance_id=base.instance_id)
    )
    os.kill(os.getpid(), signal.SIGHUP)  # the app's signal receiver is open while it runs
    with trio.fail_after(5):
        while p.app.config.jobs.test_timeout != 2.5:  # noqa: ASYNC110 (the app offers no event)
            await trio.sleep(0.01)
    assert p.app.jobs.config.test_timeout == 2.5 and p.app.jobs_api.config.test_timeout == 2.5
    assert (await p.get("/monitoring/health")).status_code == 200


async def test_sigterm_drains_agents_with_4012_dashboards_with_1001(start_app: StartApp) -> None:
    p: RunningApp = await start_app(server={"shutdown_grace": 2.0})
    agent = await ScriptedAgent.connect(p)
    dash = await WsClient.connect(ws_url(p.url), token=token("dashboard", "acme", sub="dash-1"))
    await dash.recv_event("printer.status.snapshot")
    os.kill(os.getpid(), signal.SIGTERM)
    for client, code in ((agent.client, CLOSE_RECONNECT_NOW), (dash, CLOSE_GOING_AWAY)):
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                await client.recv(5)
        assert closed.value.code == code
        await client.close()
    with trio.fail_after(5):
        await p.stopped.wait()  # run() returned by itself: drained, store closed
    assert p.app.draining
