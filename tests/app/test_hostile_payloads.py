"""JSON that printd reads but could not write back: a job or status that nests deeper than
orjson writes (254 levels; it reads 1024), or a number PostgreSQL's jsonb hands back as an
integer beyond 64 bits. Each used to end printd (an uncaught encode error in the delivery pump
or the agent's read loop), and a stored job did it again on every instance it was sent from.
Found by the adversarial review; the large number on PostgreSQL, the rest on any backend."""

from __future__ import annotations

import time
from typing import Any

import pytest
import trio

from printctl.wsclient import ConnectionClosed
from tests.app.conftest import RunningApp, StartApp
from tests.scripted import SVC, ScriptedAgent, sentinel


def nested(levels: int) -> dict[str, Any]:
    deep: dict[str, Any] = {"text": "1x burger"}
    for _ in range(levels):
        deep = {"a": deep}
    return deep


async def still_serving(running: RunningApp) -> None:
    assert not running.stopped.is_set(), "printd stopped"
    assert (await running.get("/monitoring/health")).status_code == 200


async def test_a_payload_nested_too_deep_is_refused_for_prints_and_test_pages(start_app: StartApp) -> None:
    running = await start_app()
    agent = await ScriptedAgent.connect(running)
    for path, body in (
        ("/api/v1/jobs", {"printer_id": "p1", "payload": nested(300)}),
        ("/api/v1/printers/p1/test", {"payload": nested(300)}),
    ):
        answer = await running.post(path, SVC, json=body)
        assert answer.status_code == 400, (path, answer.text)
        assert "nests deeper than 64 levels" in answer.json()["message"], answer.json()
    # nothing was stored or sent: the next job is the agent's next dispatch
    ok = await running.post("/api/v1/jobs", SVC, json={"printer_id": "p1", "payload": nested(60)})
    assert ok.status_code == 202
    assert (await agent.dispatch())["job_id"] == ok.json()["job_id"]
    await still_serving(running)
    await agent.close()


async def test_a_status_nested_too_deep_is_invalid_data_and_the_agent_stays(start_app: StartApp) -> None:
    running = await start_app()
    agent = await ScriptedAgent.connect(running)
    deep = b'{"a":' * 300 + b"{}" + b"}" * 300  # beyond what orjson (the client's too) writes
    frame = (
        b'{"event":"printer.status","id":5,"data":{"printer_id":"p2","status":"online","x":' + deep + b"}}"
    )
    await agent.client.send_raw(frame)
    seen = await sentinel(agent.client)
    errors = [m for m in seen if m["event"] == "error"]
    assert errors and errors[0]["id"] == 5 and errors[0]["data"]["code"] == "invalid_data", seen
    await still_serving(running)
    await agent.close()


@pytest.mark.postgres
async def test_a_large_number_in_a_payload_and_a_result_round_trips_on_postgresql(
    start_app: StartApp, pg_database_url: str
) -> None:
    running = await start_app(store={"database_url": pg_database_url})
    agent = await ScriptedAgent.connect(running)
    payload = {"text": "1x burger", "order_total_micros": 1e20, "big": 18446744073709551615}
    submitted = await running.post("/api/v1/jobs", SVC, json={"printer_id": "p1", "payload": payload})
    assert submitted.status_code == 202
    job = await agent.dispatch()
    assert job["payload"] == payload
    await agent.ack(job)
    data = {"job_id": job["job_id"], "correlation_id": job["correlation_id"], "success": True, "total": 1e25}
    await agent.client.send("job.result", data, id=99)
    with trio.fail_after(10):
        while True:
            got = await running.get(f"/api/v1/jobs/{job['job_id']}", SVC)
            if got.json()["state"] == "printed":
                break
            await trio.sleep(0.05)
    assert got.json()["result"]["total"] == 1e25
    await still_serving(running)
    await agent.close()


async def test_a_stored_job_that_cannot_be_sent_ends_expired_and_printd_keeps_running(
    start_app: StartApp,
) -> None:
    """A job stored before the API refused such payloads (here written to the store directly)
    is expired with the reason, once, instead of failing every dispatch."""
    running = await start_app()
    agent = await ScriptedAgent.connect(running)
    job, _ = await running.app.store.create_job(
        company="acme",
        printer_id="p1",
        kind="print",
        payload=nested(300),
        idempotency_key=None,
        now=time.time(),
    )
    after = await running.post("/api/v1/jobs", SVC, json={"printer_id": "p1", "payload": {"text": "next"}})
    assert (await agent.dispatch())["job_id"] == after.json()["job_id"]  # the stored one was never sent
    stored = (await running.get(f"/api/v1/jobs/{job.job_id}", SVC)).json()
    assert stored["state"] == "expired" and stored["error"].startswith("payload cannot be sent"), stored
    await still_serving(running)
    await agent.close()


async def test_a_failure_while_applying_reports_closes_that_connection_only(
    start_app: StartApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reports are applied by a task of the gateway's; a bug there (here: any exception) closes
    that agent's connection with 1011 and is logged, instead of ending the gateway's nursery."""
    running = await start_app()
    agent = await ScriptedAgent.connect(running)
    bystander = await ScriptedAgent.connect(running, ("p2",), sub="agent-2")
    posted = await running.post("/api/v1/jobs", SVC, json={"printer_id": "p1", "payload": {"text": "x"}})
    job_id = posted.json()["job_id"]
    job = await agent.dispatch()
    assert job["job_id"] == job_id

    async def broken(*args: Any) -> list[Any]:
        raise RuntimeError("a bug in the report path")

    monkeypatch.setattr(running.app.jobs, "job_reports", broken)
    await agent.client.send("job.ack", {"job_id": job_id, "correlation_id": job["correlation_id"]})
    with pytest.raises(ConnectionClosed) as closed, trio.fail_after(10):
        while True:
            await agent.client.recv()
    assert closed.value.code == 1011
    monkeypatch.undo()
    await still_serving(running)
    assert [m for m in await sentinel(bystander.client) if m["event"] == "error"] == []
    await bystander.close()
