"""Who may report a printer: its branch owns it; a same-branch replacement only while the owner
is offline; anything else is an operator's audited move. Real printd, real agents, both stores."""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio
from typer.testing import CliRunner

from printctl.main import app as printctl_app
from printctl.wsclient import ConnectionClosed, WsClient, ws_url
from tests.conftest import Printd, token

SVC = token("service", "acme", sub="pos-1")
ADMIN = token("admin", "*", sub="ops-alice")


async def agent(p: Printd, sub: str, branch: str) -> WsClient:
    client = await WsClient.connect(ws_url(p.url), token=token("agent", "acme", sub=sub, branch=branch))
    assert (await client.recv(5))["event"] == "hello"
    return client


async def report(client: WsClient, printer: str, msg_id: int, status: str = "online") -> dict[str, Any]:
    """Send one printer.status with an id; the server's answer to it (ack or error)."""
    await client.send("printer.status", {"printer_id": printer, "status": status}, id=msg_id)
    with trio.fail_after(10):
        while True:
            msg = await client.recv()
            if msg.get("id") == msg_id:
                return msg  # type: ignore[no-any-return]


def owner(p: Printd, printer: str) -> tuple[str, str]:
    rows = [x for x in p.get("/api/v1/printers", SVC).json()["printers"] if x["printer_id"] == printer]
    assert len(rows) == 1, rows
    return rows[0]["branch"], rows[0]["agent_id"]


def submit(p: Printd, printer: str = "p1") -> str:
    r = p.post("/api/v1/jobs", SVC, json={"printer_id": printer, "payload": {"text": "2x soup"}})
    assert r.status_code == 202, r.text
    return str(r.json()["job_id"])


async def next_dispatch(client: WsClient, timeout: float = 10) -> dict[str, Any]:
    msg = await client.recv_event("job.dispatch", timeout)
    return msg["data"]  # type: ignore[no-any-return]


async def test_an_agent_of_another_branch_cannot_take_a_printer(
    printd_factory: Any, backend: dict[str, str]
) -> None:
    p = printd_factory(env=backend, config={"server": {"error_budget": 2}})
    owner_agent = await agent(p, "agent-y", "branch-y")
    assert (await report(owner_agent, "p1", 1))["event"] == "ack"
    intruder = await agent(p, "agent-x", "branch-x")
    err = await report(intruder, "p1", 7)
    assert err["event"] == "error" and err["data"]["code"] == "forbidden"
    assert "another branch" in err["data"]["message"] and "printctl printers move" in err["data"]["message"]
    assert owner(p, "p1") == ("branch-y", "agent-y")
    # the owner being offline changes nothing for another branch
    await owner_agent.close()
    assert (await report(intruder, "p1", 8))["data"]["code"] == "forbidden"
    assert owner(p, "p1") == ("branch-y", "agent-y")
    # the job goes to the owner when it is back, never to the intruder
    job_id = submit(p)
    owner_agent = await agent(p, "agent-y", "branch-y")
    assert (await next_dispatch(owner_agent))["job_id"] == job_id
    # refusals spend the error budget (2 here): the third closes the connection
    with pytest.raises(ConnectionClosed) as exc:
        await report(intruder, "p1", 9)
        await intruder.recv(10)
    assert exc.value.code == 1008
    await owner_agent.close()


async def test_a_replacement_agent_of_the_branch_takes_over_only_while_the_owner_is_offline(
    printd_factory: Any, backend: dict[str, str]
) -> None:
    p = printd_factory(env=backend)
    old = await agent(p, "pc-old", "downtown")
    assert (await report(old, "p1", 1))["event"] == "ack"
    new = await agent(p, "pc-new", "downtown")
    err = await report(new, "p1", 2)
    assert err["data"]["code"] == "forbidden" and "'pc-old'" in err["data"]["message"]
    assert owner(p, "p1") == ("downtown", "pc-old")
    await old.close()
    job_id = submit(p)  # accepted for pc-old while it is away
    assert (await report(new, "p1", 3))["event"] == "ack"
    assert owner(p, "p1") == ("downtown", "pc-new")
    # the queued job followed the printer to the new agent
    assert (await next_dispatch(new))["job_id"] == job_id
    # the old PC coming back cannot take it back while the new one is online
    old = await agent(p, "pc-old", "downtown")
    assert (await report(old, "p1", 4))["data"]["code"] == "forbidden"
    assert owner(p, "p1") == ("downtown", "pc-new")
    assert "printer taken over" in p.log() and "pc-old" in p.log()
    await old.close()
    await new.close()


async def test_dashboards_never_see_a_refused_report(printd: Printd) -> None:
    owner_agent = await agent(printd, "agent-y", "branch-y")
    assert (await report(owner_agent, "p1", 1, status="online"))["event"] == "ack"
    intruder = await agent(printd, "agent-x", "branch-x")
    assert (await report(intruder, "p1", 2, status="paper_out"))["data"]["code"] == "forbidden"
    dash = await WsClient.connect(ws_url(printd.url), token=token("dashboard", "acme", sub="wall"))
    await dash.recv_event("hello")
    snap = await dash.recv_event("printer.status.snapshot")
    (item,) = snap["data"]["printers"]
    assert (item["agent_id"], item["branch"], item["status"]) == ("agent-y", "branch-y", "online")
    for c in (owner_agent, intruder, dash):
        await c.close()


def printctl(*args: str) -> Any:
    runner = CliRunner(env={"PRINTD_URL": None, "PRINTD_TOKEN": None, "COLUMNS": "200"})
    return runner.invoke(printctl_app, list(args))


async def test_operator_moves_a_printer_with_printctl_and_it_is_audited(
    printd_factory: Any, backend: dict[str, str]
) -> None:
    p = printd_factory(env=backend)
    old = await agent(p, "agent-y", "branch-y")
    assert (await report(old, "p1", 1))["event"] == "ack"
    await old.close()
    job_id = submit(p)  # queued for agent-y
    move = ("printers", "move", "p1", "--branch", "branch-x", "--agent", "agent-x", "--url", p.url)
    # a service token may not move printers: exit 2 (fix the token) with the server's reason
    res = await trio.to_thread.run_sync(printctl, *move, "--company", "acme", "--token", SVC)
    assert res.exit_code == 2 and "admin" in res.stderr
    assert owner(p, "p1") == ("branch-y", "agent-y")
    res = await trio.to_thread.run_sync(printctl, *move, "--company", "acme", "--token", ADMIN, "--json")
    assert res.exit_code == 0, res.output
    body = json.loads(res.stdout)
    assert body["printer"]["branch"] == "branch-x" and body["printer"]["agent_id"] == "agent-x"
    assert body["moved_from"] == {"branch": "branch-y", "agent_id": "agent-y"}
    assert body["jobs_moved"] == 1
    assert owner(p, "p1") == ("branch-x", "agent-x")
    log = p.log()
    assert "printer moved" in log and "ops-alice" in log
    # the queued job went with it: the new agent gets it
    new = await agent(p, "agent-x", "branch-x")
    assert (await next_dispatch(new))["job_id"] == job_id
    assert (await report(new, "p1", 2))["event"] == "ack"
    # unknown printer: exit 1; a printer id that cannot be a path segment: usage error, exit 2
    res = await trio.to_thread.run_sync(
        printctl, "printers", "move", "nope", "--branch", "b", "--agent", "a", "--url", p.url,
        "--company", "acme", "--token", ADMIN,
    )  # fmt: skip
    assert res.exit_code == 1 and "nope" in res.stderr
    res = await trio.to_thread.run_sync(
        printctl, "printers", "move", "a/b", "--branch", "b", "--agent", "a", "--url", p.url, "--token", ADMIN
    )
    assert res.exit_code == 2
    # Rich output for people
    res = await trio.to_thread.run_sync(
        printctl, "printers", "move", "p1", "--branch", "branch-y", "--agent", "agent-y", "--url", p.url,
        "--company", "acme", "--token", ADMIN,
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "branch-x" in res.stdout and "branch-y" in res.stdout
    await new.close()


def test_move_endpoint_checks_its_input(printd: Printd) -> None:
    url = "/api/v1/printers/p1/move"
    r = printd.post(url, ADMIN, json={"branch": "b", "agent_id": "a"})
    assert r.status_code == 400 and "company" in r.json()["message"]  # a '*' token names the company
    r = printd.post(url, token("admin", "acme", sub="ops"), json={"branch": "", "agent_id": "a"})
    assert r.status_code == 400 and "branch" in r.json()["message"]
    r = printd.post(url, token("admin", "acme", sub="ops"), json={"branch": "b", "agent_id": "a"})
    assert r.status_code == 404
    r = printd.post(url, SVC, json={"branch": "b", "agent_id": "a"})
    assert r.status_code == 403 and "admin" in r.json()["message"]
    assert printd.post(url, None, json={"branch": "b", "agent_id": "a"}).status_code == 401
