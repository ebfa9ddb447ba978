"""What one agent or dashboard can make printd hold or do: bounded status items, printers per
agent and per company, eviction after an agent leaves, inbound message rate, chunked snapshots,
and the 101 before a 4008. Real printd processes, real sockets."""

from __future__ import annotations

import time
from typing import Any

import orjson
import pytest
import trio
from websockets.exceptions import InvalidState

from printctl.wsclient import ConnectionClosed, WsClient
from tests.conftest import Printd, token
from tests.integration.test_gateway import connect, raw_upgrade, read_close_code

SVC = token("service", "acme", sub="pos-1")
ADMIN = token("admin", "*", sub="ops-1")  # /monitoring/instance is for operators


async def answer(client: WsClient, msg_id: int, timeout: float = 10) -> dict[str, Any]:
    """Skip messages until the ack or error for `msg_id`."""
    with trio.fail_after(timeout):
        while True:
            msg = await client.recv()
            if msg.get("id") == msg_id:
                return msg  # type: ignore[no-any-return]


async def snapshot_ids(p: Printd) -> set[str]:
    """The printers a dashboard connecting now is shown (every snapshot part, up to a ping's ack)."""
    dash = await connect(p, "dashboard", sub="late")
    await dash.send("ping", id=424242)
    seen: set[str] = set()
    with trio.fail_after(10):
        while True:
            msg = await dash.recv()
            if msg["event"] == "ack" and msg["id"] == 424242:
                break
            if msg["event"] in ("printer.status.snapshot", "printer.status.batch"):
                seen |= {x["printer_id"] for x in msg["data"]["printers"]}
    await dash.close()
    return seen


def registered(p: Printd) -> set[str]:
    return {x["printer_id"] for x in p.get("/api/v1/printers", SVC).json()["printers"]}


async def test_a_status_item_over_4_kib_is_invalid_data_and_not_kept(printd: Printd) -> None:
    agent = await connect(printd)
    await agent.send("printer.status", {"printer_id": "big", "status": "online", "blob": "x" * 5000}, id=1)
    err = await answer(agent, 1)
    assert err["event"] == "error" and err["data"]["code"] == "invalid_data"
    assert "4096" in err["data"]["message"]
    await agent.send("printer.status", {"printer_id": "small", "status": "online", "blob": "x" * 3000}, id=2)
    assert (await answer(agent, 2))["event"] == "ack"
    assert await snapshot_ids(printd) == {"small"}
    assert registered(printd) == {"small"}
    await agent.close()


async def test_printers_per_agent_and_per_company_are_capped(printd_factory: Any) -> None:
    p = printd_factory(config={"status": {"max_printers_per_agent": 2, "max_printers_per_company": 3}})
    a1 = await connect(p, sub="agent-1")
    for i, printer in enumerate(["p1", "p2"]):
        await a1.send("printer.status", {"printer_id": printer, "status": "online"}, id=i)
        assert (await answer(a1, i))["event"] == "ack"
    # the agent's third printer is refused, again and again, without losing the connection
    for i in range(10, 40):  # more than the error budget (20): these refusals do not spend it
        await a1.send("printer.status", {"printer_id": "p3", "status": "online"}, id=i)
        err = await answer(a1, i)
        assert err["data"]["code"] == "limit_exceeded"
    assert "max_printers_per_agent" in err["data"]["message"]
    await a1.send("printer.status", {"printer_id": "p1", "status": "busy"}, id=50)
    assert (await answer(a1, 50))["event"] == "ack"  # its own printers go on
    a2 = await connect(p, sub="agent-2")
    await a2.send("printer.status", {"printer_id": "q1", "status": "online"}, id=1)
    assert (await answer(a2, 1))["event"] == "ack"
    await a2.send("printer.status", {"printer_id": "q2", "status": "online"}, id=2)
    err = await answer(a2, 2)
    assert err["data"]["code"] == "limit_exceeded" and "max_printers_per_company" in err["data"]["message"]
    assert await snapshot_ids(p) == {"p1", "p2", "q1"}
    assert registered(p) == {"p1", "p2", "q1"}  # refused printers are not registered either
    for c in (a1, a2):
        await c.close()


async def test_a_departed_agents_printers_are_evicted_and_shown_offline(printd_factory: Any) -> None:
    p = printd_factory(config={"status": {"evict_after": 0.5}})
    dash = await connect(p, "dashboard")
    await dash.recv_event("printer.status.snapshot")
    agent = await connect(p)
    await agent.send("printer.status", {"printer_id": "p1", "status": "online", "blob": "x" * 3000}, id=1)
    await answer(agent, 1)
    assert (await dash.recv_event("printer.status.batch"))["data"]["printers"][0]["status"] == "online"
    assert p.get("/monitoring/instance", ADMIN).json()["status"]["printers"] == 1
    await agent.close()
    batch = await dash.recv_event("printer.status.batch", timeout=10)
    (mark,) = batch["data"]["printers"]
    assert mark["printer_id"] == "p1" and mark["status"] == "offline" and mark["evicted"] is True
    assert mark["agent_id"] == "agent-1" and mark["branch"] == "b1"
    assert p.get("/monitoring/instance", ADMIN).json()["status"]["printers"] == 0
    assert await snapshot_ids(p) == set()
    assert registered(p) == {"p1"}  # still registered: it gets jobs when its agent is back
    await dash.close()


async def test_a_burst_over_the_message_rate_is_slowed_not_dropped(printd_factory: Any) -> None:
    p = printd_factory(config={"server": {"message_rate": 50.0, "message_burst": 50}})
    agent = await connect(p, deflate=False)
    start = time.monotonic()
    for i in range(120):
        agent.proto.send_text(orjson.dumps({"event": "ping", "id": i}))
    await agent._flush()  # 120 pings in one write: read and answered at once, 70 over the burst
    acks = [await answer(agent, i) for i in range(120)]
    assert all(a["event"] == "ack" for a in acks)
    await agent.send("ping", id=999)  # waits in the socket until the bucket has refilled
    assert (await answer(agent, 999))["event"] == "ack"
    assert time.monotonic() - start >= 1.0  # 70 over at 50/s: about 1.4 s


async def test_a_flood_is_closed_1008(printd_factory: Any) -> None:
    p = printd_factory(
        config={"server": {"message_rate": 50.0, "message_burst": 50, "rate_limit_close_after": 1.0}}
    )
    agent = await connect(p, deflate=False)
    bystander = await connect(p, sub="agent-2")
    ping = orjson.dumps({"event": "ping"})
    async with trio.open_nursery() as nursery:

        async def flood() -> None:
            try:
                while True:
                    for _ in range(20):
                        agent.proto.send_text(ping)
                    await agent._flush()
                    await trio.sleep(0.02)  # ~1000 messages/s, twenty times the rate
            except (trio.BrokenResourceError, trio.ClosedResourceError, RuntimeError, InvalidState):
                return  # closed under it (InvalidState: the reader already took printd's close frame)

        nursery.start_soon(flood)
        with pytest.raises(ConnectionClosed) as exc:
            with trio.fail_after(15):
                while True:
                    await agent.recv()
        nursery.cancel_scope.cancel()
    assert exc.value.code == 1008 and "rate" in exc.value.reason
    await bystander.send("ping", id=1)
    assert (await answer(bystander, 1))["event"] == "ack"
    await bystander.close()


async def test_a_big_snapshot_is_sent_in_bounded_parts(printd_factory: Any) -> None:
    p = printd_factory(config={"status": {"chunk_bytes": 8192}})
    agent = await connect(p)
    for i in range(24):
        await agent.send("printer.status", {"printer_id": f"p{i}", "status": "online", "blob": "x" * 900})
    await agent.send("ping", id=1)
    await answer(agent, 1)
    dash = await connect(p, "dashboard", deflate=False)
    await dash.send("ping", id=2)
    events, seen = [], set()
    with trio.fail_after(10):
        while True:
            msg = await dash.recv()
            if msg["event"] == "ack":
                break
            events.append(msg["event"])
            assert len(orjson.dumps(msg)) <= 8192
            seen |= {x["printer_id"] for x in msg["data"]["printers"]}
    assert events[0] == "printer.status.snapshot" and len(events) >= 3
    assert set(events[1:]) == {"printer.status.batch"}
    assert seen == {f"p{i}" for i in range(24)}
    await agent.close()
    await dash.close()


async def test_the_101_goes_out_before_a_4008_during_the_handshake(printd_factory: Any) -> None:
    p = printd_factory(config={"server": {"send_queue_max_bytes": 2048}})
    agent = await connect(p)
    for i in range(3):
        await agent.send("printer.status", {"printer_id": f"p{i}", "status": "online", "blob": "x" * 1000})
    await agent.send("ping", id=1)
    await answer(agent, 1)
    stream, rest = await raw_upgrade(p.port, token("dashboard"))  # asserts the 101
    assert await read_close_code(stream, rest) == 4008
    await stream.aclose()
    await agent.close()
