"""An authenticated client's malformed job (an unhashable `kind`, a payload nested beyond what
orjson writes) is a 400, not a 500: 500s are printd's own errors, counted into the health error
rate, so enough of them through the load balancer took every instance out of the pool (found by
review)."""

from __future__ import annotations

import httpx
import trio

from tests.app.conftest import StartApp
from tests.conftest import token
from tests.scripted import ScriptedAgent

DEEP = {"a": 1}
for _ in range(300):
    DEEP = {"a": DEEP}
BAD_JOBS = [{"printer_id": "p1", "kind": []}, {"printer_id": "p1", "payload": DEEP}]


async def test_malformed_jobs_are_400_and_do_not_make_the_instance_unhealthy(start_app: StartApp) -> None:
    running = await start_app(health={"check_interval": 0.5})
    headers = {"Authorization": f"Bearer {token('service')}"}

    def hammer() -> list[int]:
        with httpx.Client(base_url=running.url, headers=headers, timeout=10) as client:
            return [client.post("/api/v1/jobs", json=BAD_JOBS[i % 2]).status_code for i in range(60)]

    codes = await trio.to_thread.run_sync(hammer)
    sampled = running.app.health.sample.at
    with trio.fail_after(5):
        while running.app.health.sample.at == sampled:  # noqa: ASYNC110 (the monitor's own task)
            await trio.sleep(0.05)
    health = await running.get("/monitoring/health")
    assert set(codes) == {400} and health.status_code == 200, (
        f"answers to malformed jobs: {sorted(set(codes))}; then /monitoring/health: {health.status_code}"
        f" {health.text[:300]}"
    )


async def test_a_printers_backlog_is_capped_with_a_429_that_says_why(start_app: StartApp) -> None:
    """One service token queueing for a printer whose agent is away cannot fill the database:
    beyond `jobs.max_backlog_per_printer` unfinished jobs it gets 429 (nothing stored), a replay
    of an accepted key still gets 202, and test pages are refused the same way."""
    running = await start_app(jobs={"max_backlog_per_printer": 2})
    agent = await ScriptedAgent.connect(running)  # registers p1 ...
    await agent.close()  # ... and goes away: its jobs wait
    svc = token("service")
    accepted = []
    for n in range(2):
        body = {"printer_id": "p1", "payload": {"n": n}}
        answer = await running.post("/api/v1/jobs", svc, json=body, headers={"Idempotency-Key": f"k{n}"})
        assert answer.status_code == 202, answer.text
        accepted.append(answer.json()["job_id"])
    refused = await running.post("/api/v1/jobs", svc, json={"printer_id": "p1", "payload": {"n": 2}})
    assert refused.status_code == 429 and refused.headers["Retry-After"] == "30", refused.text
    assert "already has 2 unfinished jobs; nothing was stored" in refused.json()["message"]
    replay = await running.post(
        "/api/v1/jobs", svc, json={"printer_id": "p1", "payload": {"n": 0}}, headers={"Idempotency-Key": "k0"}
    )
    assert replay.status_code == 202 and replay.json()["job_id"] == accepted[0]
    test_page = await running.post("/api/v1/printers/p1/test", svc, json={})
    assert test_page.status_code == 429, test_page.text
    listed = (await running.get("/api/v1/jobs?printer_id=p1", svc)).json()
    assert sorted(j["job_id"] for j in listed["jobs"]) == sorted(accepted)
