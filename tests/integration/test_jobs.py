"""Durable jobs end to end: real printd, real store (SQLite and PostgreSQL), scripted agents."""

from __future__ import annotations

from typing import Any

import orjson
import trio

from printctl.wsclient import WsClient, ws_url
from tests.conftest import Printd, token
from tests.scripted import SVC, ScriptedAgent, sentinel, submit, wait_offline, wait_state


async def test_lifecycle_and_completion_pushed_to_dashboard(
    printd_factory: Any, backend: dict[str, str]
) -> None:
    p = printd_factory(env=backend)
    dash = await WsClient.connect(ws_url(p.url), token=token("dashboard", "acme"))
    agent = await ScriptedAgent.connect(p)
    r = submit(p)
    assert r.status_code == 202
    body = r.json()
    assert body["state"] in ("queued", "dispatched") and body["correlation_id"]
    job = await agent.dispatch()
    assert job["job_id"] == body["job_id"] and job["correlation_id"] == body["correlation_id"]
    assert job["payload"] == {"text": "2x burger"} and job["attempt"] == 1 and job["kind"] == "print"
    await agent.ack(job)
    await wait_state(p, job["job_id"], "acked")
    await agent.result(job)
    done = await wait_state(p, job["job_id"], "printed")
    assert [h["state"] for h in done["history"]] == ["queued", "dispatched", "acked", "printed"]
    assert done["attempts"] == 1 and done["finished_at"] >= done["created_at"]
    completed = await dash.recv_event("job.completed")
    assert completed["data"]["job_id"] == job["job_id"] and completed["data"]["state"] == "printed"
    # a late duplicate result changes nothing and is not pushed again: a completion is queued
    # to the dashboards before the agent's report is acknowledged, so it would precede the pong
    await agent.result(job, success=False, message="late duplicate")
    assert p.get(f"/api/v1/jobs/{job['job_id']}", SVC).json()["state"] == "printed"
    assert [m for m in await sentinel(dash) if m["event"] == "job.completed"] == []
    listed = p.get("/api/v1/jobs?printer=p1&state=printed", SVC).json()
    assert [j["job_id"] for j in listed["jobs"]] == [job["job_id"]]
    await agent.close()
    await dash.close()


async def test_idempotency_key_returns_the_same_job(printd: Printd) -> None:
    agent = await ScriptedAgent.connect(printd)
    first = submit(printd, key="order-42")
    second = submit(printd, key="order-42")
    assert first.status_code == second.status_code == 202
    assert first.json()["job_id"] == second.json()["job_id"] and second.json()["idempotent_replay"] is True
    job = await agent.dispatch()
    assert job["job_id"] == first.json()["job_id"]
    # one job for one key; a job accepted after it is the next one the agent gets (jobs go out
    # in acceptance order, so a second dispatch for the key would come first)
    after = submit(printd, key="order-43").json()["job_id"]
    assert (await agent.dispatch())["job_id"] == after
    listed = printd.get("/api/v1/jobs", SVC).json()["jobs"]
    assert sorted(j["job_id"] for j in listed) == sorted([job["job_id"], after])
    conflict = submit(printd, payload={"text": "something else"}, key="order-42")
    assert conflict.status_code == 409 and conflict.json()["job_id"] == job["job_id"]
    await agent.close()


async def test_offline_agent_gets_queued_jobs_in_order_on_connect(
    printd_factory: Any, backend: dict[str, str]
) -> None:
    p = printd_factory(env=backend)
    agent = await ScriptedAgent.connect(p, ("p1", "p2"))
    await agent.close()
    await wait_offline(p, "p1")
    ids = [submit(p, "p1" if i % 2 else "p2", {"n": i}).json()["job_id"] for i in range(6)]
    assert all(p.get(f"/api/v1/jobs/{j}", SVC).json()["state"] == "queued" for j in ids)
    printers = {x["printer_id"]: x for x in p.get("/api/v1/printers", SVC).json()["printers"]}
    assert printers["p1"]["agent_online"] is False
    agent = await ScriptedAgent.connect(p, ("p1", "p2"))
    got = [await agent.dispatch() for _ in ids]
    assert [j["job_id"] for j in got] == ids  # in acceptance order, so in order per printer
    await agent.close()


async def test_cut_after_printing_before_result_is_redelivered_not_reprinted(printd: Printd) -> None:
    agent = await ScriptedAgent.connect(printd)
    job_id = submit(printd).json()["job_id"]
    job = await agent.dispatch()
    await agent.ack(job)
    await wait_state(printd, job_id, "acked")
    await agent.client.stream.aclose()  # the connection dies before the result is sent
    agent = await ScriptedAgent.connect(printd)
    again = await agent.dispatch()
    assert again["job_id"] == job_id and again["attempt"] == 2  # redelivered to the agent
    await agent.result(again)  # the agent answers from its record instead of printing
    done = await wait_state(printd, job_id, "printed")
    assert done["attempts"] == 2
    await agent.close()


async def test_unacknowledged_dispatch_is_retried_with_backoff(printd_factory: Any) -> None:
    p = printd_factory(
        config={"jobs": {"ack_timeout": 0.3, "retry_initial": 0.2, "retry_max": 0.5, "max_attempts": 3}}
    )
    agent = await ScriptedAgent.connect(p)
    job_id = submit(p).json()["job_id"]
    first = await agent.dispatch()
    second = await agent.dispatch(timeout=5)
    assert first["job_id"] == second["job_id"] == job_id and (first["attempt"], second["attempt"]) == (1, 2)
    await agent.dispatch(timeout=5)
    expired = await wait_state(p, job_id, "expired")  # max_attempts without an ack
    assert "no acknowledgement" in expired["error"]
    await agent.close()


async def test_synchronous_printer_test(printd_factory: Any) -> None:
    p = printd_factory(config={"jobs": {"test_timeout": 1.0}})
    agent = await ScriptedAgent.connect(p, ("p1", "p2"))

    async def answer() -> None:
        job = await agent.dispatch()
        await agent.ack(job)
        await agent.result(job, message="test page ok")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(answer)
        r = await trio.to_thread.run_sync(lambda: p.post("/api/v1/printers/p1/test", SVC, {}))
    assert r.status_code == 200
    body = r.json()
    assert body["success"] is True and body["message"] == "test page ok" and body["correlation_id"]
    # the agent ignores the next test: 504 with the correlation id
    r = await trio.to_thread.run_sync(lambda: p.post("/api/v1/printers/p2/test", SVC, {}))
    assert r.status_code == 504 and r.json()["correlation_id"] and "no result" in r.json()["message"]
    await agent.close()
    await wait_offline(p, "p1")
    r = p.post("/api/v1/printers/p1/test", SVC, {})
    assert r.status_code == 503 and "offline" in r.json()["message"] and r.json()["correlation_id"]


async def test_printer_tests_are_rate_limited(printd_factory: Any) -> None:
    p = printd_factory(config={"jobs": {"test_timeout": 0.2}})
    agent = await ScriptedAgent.connect(p, tuple(f"p{i}" for i in range(4)))
    codes = [p.post("/api/v1/printers/p0/test", SVC, {}).status_code for _ in range(6)]
    assert codes[:5] == [504] * 5 and codes[5] == 429  # 5 per printer per minute
    r = p.post("/api/v1/printers/p0/test", SVC, {})
    assert 1 <= int(r.headers["Retry-After"]) <= 60 and "per printer" in r.json()["message"]
    codes = [p.post(f"/api/v1/printers/p{1 + i % 3}/test", SVC, {}).status_code for i in range(6)]
    assert codes[:5] == [504] * 5 and codes[5] == 429  # 10 per branch per minute
    await agent.close()


async def test_cross_company_access_is_refused(printd: Printd) -> None:
    agent = await ScriptedAgent.connect(printd)
    job_id = submit(printd).json()["job_id"]
    other = token("service", "globex", sub="pos-9")
    assert printd.get(f"/api/v1/jobs/{job_id}", other).status_code == 404
    assert submit(printd, tok=other).status_code == 404  # acme's printer does not exist for globex
    assert printd.get("/api/v1/printers", other).json()["printers"] == []
    r = printd.post("/api/v1/jobs", SVC, {"printer_id": "p1", "company": "globex"})
    assert r.status_code == 403
    assert printd.get("/api/v1/jobs", token("dashboard", "acme")).status_code == 403
    assert printd.get("/api/v1/jobs").status_code == 401
    await agent.close()


async def test_bad_input_gets_4xx_and_writes_nothing(printd: Printd) -> None:
    agent = await ScriptedAgent.connect(printd)
    url = printd.url + "/api/v1/jobs"
    import httpx

    h = {"Authorization": f"Bearer {SVC}"}
    assert httpx.post(url, headers=h, content=b"{not json").status_code == 400
    assert httpx.post(url, headers=h, json=[1, 2]).status_code == 400
    assert submit(printd, printer="nope").status_code == 404
    assert printd.post("/api/v1/jobs", SVC, {"printer_id": "p1", "kind": "fax"}).status_code == 400
    assert submit(printd, payload={"blob": "x" * 300_000}).status_code == 413
    assert submit(printd, key="bad key with spaces").status_code == 400
    assert httpx.post(url, headers=h, content=b"x" * 1_100_000).status_code == 413
    assert printd.get("/api/v1/jobs?limit=0", SVC).status_code == 400
    assert printd.get("/api/v1/jobs", SVC).json()["jobs"] == []  # nothing half-written
    accepted = submit(printd).json()["job_id"]  # the first job the agent gets is this one
    assert (await agent.dispatch())["job_id"] == accepted
    await agent.close()


async def test_fleet_health_is_cached(printd: Printd) -> None:
    agent = await ScriptedAgent.connect(printd, ("p1", "p2"))
    submit(printd)
    first = printd.get("/api/v1/fleet/health", SVC).json()
    second = printd.get("/api/v1/fleet/health", SVC).json()
    assert first["cached"] is False and second["cached"] is True
    assert (
        first["printers"]["total"] == 2
        and first["jobs"]["by_state"]["queued"] + first["jobs"]["by_state"]["dispatched"] == 1
    )
    await agent.close()


async def test_report_for_someone_elses_job_is_refused_with_the_frame_id(printd: Printd) -> None:
    agent = await ScriptedAgent.connect(printd)
    job_id = submit(printd).json()["job_id"]
    await agent.dispatch()
    intruder = await ScriptedAgent.connect(printd, ("x1",), sub="agent-2")
    await intruder.client.send("job.result", {"job_id": job_id, "success": True}, id=41)
    err = await intruder._next(intruder.client, intruder.backlog, "error", 5)
    assert err["id"] == 41 and err["data"]["code"] == "forbidden"
    assert printd.get(f"/api/v1/jobs/{job_id}", SVC).json()["state"] == "dispatched"
    await intruder.close()
    await agent.close()


async def test_expired_jobs_are_announced_to_dashboards(printd_factory: Any) -> None:
    p = printd_factory(
        config={"jobs": {"ack_timeout": 0.2, "retry_initial": 0.1, "retry_max": 0.1, "max_attempts": 2}}
    )
    dash = await WsClient.connect(ws_url(p.url), token=token("dashboard", "acme"))
    agent = await ScriptedAgent.connect(p)
    job_id = submit(p).json()["job_id"]
    done = await dash.recv_event("job.completed", timeout=10)
    assert done["data"]["job_id"] == job_id and done["data"]["state"] == "expired"
    await agent.close()
    await dash.close()


def test_cors_for_allowed_browser_origins_only(printd_factory: Any) -> None:
    import httpx

    p = printd_factory(config={"auth": {"cors_origins": ["https://dash.example.com"]}})
    ok = httpx.options(p.url + "/api/v1/jobs", headers={"Origin": "https://dash.example.com"})
    assert ok.status_code == 204 and ok.headers["access-control-allow-origin"] == "https://dash.example.com"
    assert "Idempotency-Key" in ok.headers["access-control-allow-headers"]
    bad = httpx.options(p.url + "/api/v1/jobs", headers={"Origin": "https://evil.example"})
    assert bad.status_code == 403 and "access-control-allow-origin" not in bad.headers
    r = httpx.get(
        p.url + "/api/v1/jobs",
        headers={"Origin": "https://dash.example.com", "Authorization": f"Bearer {SVC}"},
    )
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://dash.example.com"


async def test_jobs_accepted_during_a_backlog_redelivery_do_not_overtake_it(printd: Printd) -> None:
    agent = await ScriptedAgent.connect(printd)
    await agent.close()
    await wait_offline(printd, "p1")
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        for i in range(300):  # a backlog while the agent is away
            pool.submit(submit, printd, "p1", {"n": i})
    # new orders keep coming while the agent reconnects and its backlog goes out
    pool = concurrent.futures.ThreadPoolExecutor(4)
    futures = [pool.submit(submit, printd, "p1", {"n": 300 + i}) for i in range(80)]
    agent = await ScriptedAgent.connect(printd)
    codes = await trio.to_thread.run_sync(lambda: [f.result().status_code for f in futures])
    pool.shutdown()
    assert codes == [202] * 80
    got = [(await agent.dispatch())["job_id"] for _ in range(380)]
    accepted = [j["job_id"] for j in reversed(printd.get("/api/v1/jobs?limit=1000", SVC).json()["jobs"])]
    assert got == accepted  # one printer, one order: the store's acceptance order
    await agent.close()


async def test_answers_come_in_the_order_the_frames_were_sent(printd: Printd) -> None:
    """An agent's reports are applied by a task of their own while its connection goes on being
    read; a ping sent right behind a result is still answered after the result is."""
    agent = await ScriptedAgent.connect(printd)
    job_id = submit(printd).json()["job_id"]
    job = await agent.dispatch()
    ids = {"job_id": job_id, "correlation_id": job["correlation_id"]}
    client = agent.client
    client.proto.send_text(orjson.dumps({"event": "job.ack", "data": ids, "id": 1}))
    client.proto.send_text(orjson.dumps({"event": "job.result", "data": {**ids, "success": True}, "id": 2}))
    client.proto.send_text(orjson.dumps({"event": "ping", "id": 3}))
    await client._flush()  # one write: the ping is read with the reports it follows
    answers = []
    with trio.fail_after(10):
        while len(answers) < 3:
            msg = await client.recv()
            if msg["event"] == "ack":
                answers.append(msg["id"])
    assert answers == [1, 2, 3]
    assert printd.get(f"/api/v1/jobs/{job_id}", SVC).json()["state"] == "printed"  # before the ping's ack
    await agent.close()


async def test_the_reports_a_job_owes_are_not_charged_to_the_message_rate(printd_factory: Any) -> None:
    """An ack and a result per job sent are printd's doing: a busy agent is not slowed by its
    message rate for answering what it was sent (one agent completes thousands of jobs a second),
    while anything else it sends still is. At 1 message/s, 60 charged reports would take a minute."""
    slow = {"message_rate": 1.0, "message_burst": 5, "rate_limit_close_after": 60}
    p = printd_factory(config={"server": slow})
    agent = await ScriptedAgent.connect(p)
    ids = {submit(p, payload={"text": f"order {n}"}).json()["job_id"] for n in range(30)}
    client = agent.client
    done: set[str] = set()
    with trio.fail_after(20):
        while len(done) < len(ids):
            msg = await client.recv()
            if msg["event"] != "job.dispatch":
                continue
            data = {"job_id": msg["data"]["job_id"], "correlation_id": msg["data"]["correlation_id"]}
            client.proto.send_text(orjson.dumps({"event": "job.ack", "data": data}))
            client.proto.send_text(orjson.dumps({"event": "job.result", "data": {**data, "success": True}}))
            await client._flush()
            done.add(data["job_id"])
        for job_id in ids:
            await wait_state(p, job_id, "printed")
    await agent.close()
