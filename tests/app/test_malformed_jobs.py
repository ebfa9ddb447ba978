"""An authenticated client's malformed job (an unhashable `kind`, a payload nested beyond what
orjson writes) is a 400, not a 500: 500s are printd's own errors, counted into the health error
rate, so enough of them through the load balancer took every instance out of the pool (found by
review)."""

from __future__ import annotations

import httpx
import trio

from tests.app.conftest import StartApp
from tests.conftest import token

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
