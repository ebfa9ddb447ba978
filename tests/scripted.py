"""Scripted clients for integration tests: an agent whose every ack and result the test decides,
and the back office's submit."""

from __future__ import annotations

import time
from typing import Any, Protocol

import trio

from printctl.wsclient import WsClient, ws_url
from tests.conftest import Printd, token

SVC = token("service", "acme", sub="pos-1")


class Served(Protocol):
    """A printd to talk to: a subprocess (`Printd`) or one in-process (tests/app)."""

    @property
    def url(self) -> str: ...


class ScriptedAgent:
    """An agent whose every ack and result the test decides."""

    def __init__(self, client: WsClient, backlog: list[dict[str, Any]]) -> None:
        self.client = client
        self.backlog = backlog

    @staticmethod
    async def _next(
        client: WsClient, backlog: list[dict[str, Any]], event: str, timeout: float
    ) -> dict[str, Any]:
        """The next message with this event; others are kept, in order, for later calls."""
        for i, msg in enumerate(backlog):
            if msg["event"] == event:
                return backlog.pop(i)
        with trio.fail_after(timeout):
            while True:
                msg = await client.recv()
                if msg["event"] == event:
                    return msg  # type: ignore[no-any-return]
                backlog.append(msg)

    @classmethod
    async def connect(
        cls, p: Served, printers: tuple[str, ...] = ("p1",), *, company: str = "acme", sub: str = "agent-1"
    ) -> ScriptedAgent:
        client = await WsClient.connect(ws_url(p.url), token=token("agent", company, sub=sub))
        assert (await client.recv(5))["event"] == "hello"
        backlog: list[dict[str, Any]] = []
        for i, printer in enumerate(printers):
            await client.send("printer.status", {"printer_id": printer, "status": "online"}, id=i)
            assert (await cls._next(client, backlog, "ack", 5))["id"] == i  # registered in the store
        return cls(client, backlog)

    async def sentinel(self) -> list[dict[str, Any]]:
        """Everything printd sent this agent before it read a ping sent now (see `sentinel`)."""
        seen, self.backlog[:] = list(self.backlog), []
        return seen + await sentinel(self.client)

    async def dispatch(self, timeout: float = 10) -> dict[str, Any]:
        msg = await self._next(self.client, self.backlog, "job.dispatch", timeout)
        data: dict[str, Any] = msg["data"]
        return data

    async def ack(self, job: dict[str, Any]) -> None:
        await self.client.send("job.ack", {"job_id": job["job_id"], "correlation_id": job["correlation_id"]})

    async def result(self, job: dict[str, Any], success: bool = True, message: str = "printed") -> None:
        data = {
            "job_id": job["job_id"],
            "correlation_id": job["correlation_id"],
            "success": success,
            "message": message,
        }
        await self.client.send("job.result", data, id=99)
        await self._next(self.client, self.backlog, "ack", 5)

    async def close(self) -> None:
        await self.client.close()


SENTINEL_ID = 7_000_001


async def sentinel(client: WsClient, timeout: float = 5) -> list[dict[str, Any]]:
    """Ping with an id and read up to its ack; returns the messages that came before it.

    printd answers a ping in the read loop, after whatever it queued for this connection
    earlier, so a message caused by something that completed before the ping cannot arrive
    after the ack: asserting on what came before it lets no late event pass unnoticed (unlike
    waiting a fixed window for "nothing else")."""
    await client.send("ping", id=SENTINEL_ID)
    seen: list[dict[str, Any]] = []
    with trio.fail_after(timeout):
        while True:
            msg = await client.recv()
            if msg["event"] == "ack" and msg.get("id") == SENTINEL_ID:
                return seen
            seen.append(msg)


def submit(
    p: Printd,
    printer: str = "p1",
    payload: dict[str, Any] | None = None,
    key: str | None = None,
    tok: str = SVC,
) -> Any:
    headers = {"Idempotency-Key": key} if key else None
    return p.post(
        "/api/v1/jobs", tok, {"printer_id": printer, "payload": payload or {"text": "2x burger"}}, headers
    )


async def wait_offline(p: Printd, printer: str = "p1", timeout: float = 10) -> None:
    """Until printd counts the printer's agent as gone (its disconnect was handled)."""
    deadline = time.monotonic() + timeout
    while True:
        listed = p.get("/api/v1/printers", SVC).json()["printers"]
        found = next(x for x in listed if x["printer_id"] == printer)
        if found["agent_online"] is False:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"printer {printer}'s agent is still online: {found}")
        await trio.sleep(0.05)


async def wait_state(p: Printd, job_id: str, state: str, timeout: float = 10) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        job: dict[str, Any] = p.get(f"/api/v1/jobs/{job_id}", SVC).json()
        if job.get("state") == state:
            return job
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} is {job.get('state')}, expected {state}")
        await trio.sleep(0.05)
