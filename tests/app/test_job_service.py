"""JobService in-process: a real SQLite store, the in-memory cluster backend, and agent links
that are small real objects (what the gateway's connection offers the job pipeline)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
import trio

from printd import protocol as P
from printd.breakers.shell import CircuitRegistry
from printd.cluster.local import LocalCluster
from printd.cluster.routing import AgentRouter
from printd.config import JobsConfig
from printd.jobs.pending import PendingWaiters
from printd.jobs.service import PASS_PAGE, JobService
from printd.store import Store, open_store
from printd.store.base import AgentFence, Report, StaleSession, StoreError


@dataclass(eq=False)
class Link:
    """An agent connection as the job pipeline sees it; what it was sent, decoded."""

    company: str = "acme"
    agent_id: str = "agent-1"
    branch: str = "b1"
    session: int = 0
    closing: bool = False
    sent: list[dict[str, Any]] = field(default_factory=list)
    arrived: trio.Event = field(default_factory=trio.Event)

    def send(self, payload: bytes) -> bool:
        self.sent.append(orjson.loads(payload))
        self.arrived.set()
        self.arrived = trio.Event()
        return True

    def close(self, code: int, reason: str) -> None:
        self.closing = True

    async def next_message(self, timeout: float = 5.0) -> dict[str, Any]:
        with trio.fail_after(timeout):
            while not self.sent:
                await self.arrived.wait()
        return self.sent.pop(0)


@dataclass
class Harness:
    store: Store
    jobs: JobService
    links: dict[tuple[str, str], Link]
    announced: list[tuple[str, dict[str, Any]]]

    def connect(self, link: Link) -> None:
        self.links[(link.company, link.agent_id)] = link
        self.jobs.agent_connected(link)

    async def printer(self, printer_id: str = "p1", link: Link | None = None) -> None:
        link = link or Link()
        await self.store.upsert_printer(
            company=link.company,
            branch=link.branch,
            agent_id=link.agent_id,
            printer_id=printer_id,
            status="online",
            details={},
            now=time.time(),
        )


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    store = open_store(f"sqlite:///{tmp_path / 'printd.db'}")
    links: dict[tuple[str, str], Link] = {}
    announced: list[tuple[str, dict[str, Any]]] = []

    async def announce(company: str, payload: bytes) -> None:
        announced.append((company, orjson.loads(payload)))

    backend = LocalCluster("inc-1", lambda topic, payload: None)
    agents = AgentRouter(backend, lambda c, a: links.get((c, a)), instance_id="i1")
    jobs = JobService(
        store, agents, JobsConfig(), PendingWaiters(), announce, CircuitRegistry(), incarnation="inc-1"
    )
    async with store, trio.open_nursery() as nursery:
        await store.migrate()
        await nursery.start(jobs.run)
        yield Harness(store, jobs, links, announced)
        nursery.cancel_scope.cancel()


async def test_a_connect_is_a_plain_call_that_records_the_session_and_delivers(harness: Harness) -> None:
    await harness.printer()
    job, _ = await harness.jobs.submit(
        company="acme", printer_id="p1", kind="print", payload={"text": "x"}, idempotency_key=None
    )
    link = Link()
    harness.connect(link)  # from the gateway's read loop, without a task switch
    dispatch = await link.next_message()
    assert dispatch["event"] == "job.dispatch" and dispatch["data"]["job_id"] == job.job_id
    assert link.session > 0  # recorded in the store before the dispatch went out
    stored = await harness.store.get_job(job.job_id)
    assert stored is not None and stored.state.value == "dispatched" and stored.attempts == 1


async def test_a_backlog_longer_than_a_page_goes_out_whole_and_in_order(harness: Harness) -> None:
    """A pass reads the agent's jobs a page at a time (a backlog of 20,000 payloads of 256 KiB
    was read in one piece, found by review); every page is sent, in acceptance order."""
    await harness.printer()
    backlog = PASS_PAGE * 2 + 7
    ids = []
    for n in range(backlog):
        job, _ = await harness.jobs.submit(
            company="acme", printer_id="p1", kind="print", payload={"n": n}, idempotency_key=None
        )
        ids.append(job.job_id)
    link = Link()
    harness.connect(link)
    sent = [(await link.next_message())["data"]["job_id"] for _ in range(backlog)]
    assert sent == ids


@pytest.mark.parametrize("taken_over", [True, False])
async def test_a_report_refused_under_a_session_a_takeover_replaced_keeps_the_connection(
    harness: Harness, monkeypatch: pytest.MonkeyPatch, taken_over: bool
) -> None:
    """A takeover re-claims the live connection's session; an ack already on its way under the
    old one is refused by the store. The connection is not stale (found by review: it was closed
    with 4009, which the agent reads as another process using its id): the report is answered
    `unavailable` and the new session's pass sends the job again. A connection whose session
    did not move on is stale and closed, as before."""
    await harness.printer()
    link = Link()
    harness.connect(link)
    job, _ = await harness.jobs.submit(
        company="acme", printer_id="p1", kind="print", payload={"text": "x"}, idempotency_key=None
    )
    await link.next_message()

    async def refused(reports: list[Report], now: float, fence: AgentFence) -> list[StoreError]:
        if taken_over:
            link.session += 1  # the takeover's claim landed while the ack was on its way
        return [StaleSession("the agent's session moved on")]

    monkeypatch.setattr(harness.store, "report_jobs", refused)
    report = P.JobReport(job.job_id, job.correlation_id, None, None, {"job_id": job.job_id})
    (err,) = await harness.jobs.job_reports(link, [("job.ack", report)])
    assert err is not None
    assert (link.closing, err.code) == ((False, P.ERR_UNAVAILABLE) if taken_over else (True, P.ERR_FORBIDDEN))
