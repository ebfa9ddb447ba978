"""Found by review: store calls whose outcome the caller cannot know, and reports the store could
not record.

The store is the real SQLite store. Two small subclasses inject what PostgreSQL does under the
fault drills (a connection cut by RST just after COMMIT reached the server, or a call given up
by `PostgresStore._exec` after the server received COMMIT and then paused): the transaction is
committed, and the caller gets StoreUnavailable. SQLite cannot produce that on its own.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

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
from printd.model import Job, JobState
from printd.store.base import AgentFence, StoreError, StoreUnavailable
from printd.store.sql import Tx
from printd.store.sqlite import SQLiteStore
from tests.app.test_job_service import Link

T = TypeVar("T")


class LostReplyStore(SQLiteStore):
    """`lose_dispatch_replies`: that many `record_dispatches` calls commit, then fail as if the
    reply never came back. `down`: every call fails (the database unreachable)."""

    lose_dispatch_replies = 0
    down = False
    dispatch_calls = 0
    fail_next_page = False  # the next read of a pass's second or later page fails

    async def _exec(self, fn: Callable[[Tx], T], *, write: bool) -> T:
        if self.down:
            raise StoreUnavailable("PostgreSQL unavailable: connection refused")
        return await super()._exec(fn, write=write)

    async def deliverable_jobs(
        self, company: str, agent_id: str, limit: int = 500, *, queued_only: bool = False, after_seq: int = 0
    ) -> list[Job]:
        if after_seq and self.fail_next_page:
            self.fail_next_page = False
            raise StoreUnavailable("PostgreSQL unavailable: connection reset by peer")
        return await super().deliverable_jobs(
            company, agent_id, limit, queued_only=queued_only, after_seq=after_seq
        )

    async def record_dispatches(
        self, job_ids: Sequence[str], now: float, fence: AgentFence
    ) -> list[Job | None | StoreError]:
        self.dispatch_calls += len(job_ids)
        jobs = await super().record_dispatches(job_ids, now, fence)
        if self.lose_dispatch_replies:
            self.lose_dispatch_replies -= 1
            raise StoreUnavailable("PostgreSQL unavailable: server closed the connection unexpectedly")
        return jobs


async def until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    with trio.fail_after(timeout):
        while not predicate():  # noqa: ASYNC110 (state changes in the service's own tasks)
            await trio.sleep(0.01)


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[tuple[LostReplyStore, JobService, dict[Any, Link]]]:
    store = LostReplyStore(str(tmp_path / "printd.db"))
    links: dict[Any, Link] = {}

    async def announce(company: str, payload: bytes) -> None:
        orjson.loads(payload)

    backend = LocalCluster("inc-1", lambda topic, payload: None)
    agents = AgentRouter(backend, lambda c, a: links.get((c, a)), instance_id="i1")
    config = JobsConfig(sweep_interval=0.2, ack_timeout=1.0, retry_initial=0.2, retry_max=1.0)
    jobs = JobService(
        store, agents, config, PendingWaiters(), announce, CircuitRegistry(), incarnation="inc-1"
    )
    async with store, trio.open_nursery() as nursery:
        await store.migrate()
        await nursery.start(jobs.run)
        await store.upsert_printer(
            company="acme",
            branch="b1",
            agent_id="agent-1",
            printer_id="p1",
            status="online",
            details={},
            now=time.time(),
        )
        yield store, jobs, links
        nursery.cancel_scope.cancel()


Env = tuple[LostReplyStore, JobService, dict[Any, Link]]


async def connected(env: Env) -> tuple[LostReplyStore, JobService, Link]:
    """The store, the service and an agent connected to it (its session recorded)."""
    store, jobs, links = env
    link = Link()
    links[(link.company, link.agent_id)] = link
    jobs.agent_connected(link)
    await until(lambda: link.session > 0)
    return store, jobs, link


async def test_a_dispatch_committed_whose_reply_was_lost_still_reaches_the_connected_agent(
    env: tuple[LostReplyStore, JobService, dict[Any, Link]],
) -> None:
    store, jobs, link = await connected(env)  # connected, nothing to deliver yet

    store.lose_dispatch_replies = 1  # the next dispatch record commits, its reply is lost
    job, _ = await jobs.submit(
        company="acme", printer_id="p1", kind="print", payload={"text": "1x burger"}, idempotency_key=None
    )
    await until(lambda: store.lose_dispatch_replies == 0)
    # The agent stays connected: the job must still reach it in bounded time (store retry 1 s,
    # sweep 0.2 s, ack timeout 1 s here). 10 s is several times all of them.
    try:
        dispatch = await link.next_message(timeout=10.0)
    except trio.TooSlowError:
        stored = await store.get_job(job.job_id)
        assert stored is not None
        pytest.fail(
            f"job accepted (202) never sent to its connected agent: state={stored.state}"
            f" attempts={stored.attempts}; in flight on this connection: {jobs.core.inflight_count()}"
        )
    assert dispatch["event"] == "job.dispatch" and dispatch["data"]["job_id"] == job.job_id
    stored = await store.get_job(job.job_id)
    assert stored is not None and stored.state is JobState.DISPATCHED


async def test_reports_for_unknown_jobs_during_an_outage_do_not_stay_in_flight(
    env: tuple[LostReplyStore, JobService, dict[Any, Link]],
) -> None:
    store, jobs, link = await connected(env)

    store.down = True  # the database is unreachable (or its circuit is open)
    for i in range(50):  # a hostile agent: results for jobs that are not its own (or do not exist)
        report = P.JobReport(f"not-mine-{i}", None, True, None, {"job_id": f"not-mine-{i}", "success": True})
        (err,) = await jobs.job_reports(link, [("job.result", report)])
        assert err is not None and err.code == P.ERR_UNAVAILABLE  # budget-free: no 1008 for this
    assert jobs.core.inflight_count() == 50
    store.down = False
    store.dispatch_calls = 0

    # The store is back and answers "no such job of yours" for every one of them: nothing is
    # left to redeliver. 12 s covers the store backoff (1, 2, 4, 5 s) twice over.
    try:
        await until(lambda: jobs.core.inflight_count() == 0, timeout=12.0)
    except trio.TooSlowError:
        pytest.fail(
            f"{jobs.core.inflight_count()} entries for jobs that are not this agent's are still retried"
            f" after the outage: {store.dispatch_calls} store writes in 12 s, and counting"
        )


async def test_a_store_failure_between_pages_of_a_pass_still_sends_every_job_once(
    env: tuple[LostReplyStore, JobService, dict[Any, Link]],
) -> None:
    """A pass reads a backlog a page at a time; the store fails before the second page. The
    retried pass sends the rest, and nothing of the first page twice."""
    store, jobs, links = env
    backlog = []
    for n in range(PASS_PAGE + 5):
        job, _ = await jobs.submit(
            company="acme", printer_id="p1", kind="print", payload={"n": n}, idempotency_key=None
        )
        backlog.append(job.job_id)
    store.fail_next_page = True
    _, _, link = await connected(env)
    sent = [(await link.next_message(timeout=10.0))["data"]["job_id"] for _ in backlog]
    assert sent == backlog  # each once, in acceptance order
    assert not store.fail_next_page  # the fault did happen
    # sentinel: a job accepted now is the next thing the agent gets (no late duplicate before it)
    later, _ = await jobs.submit(
        company="acme", printer_id="p1", kind="print", payload={"n": "later"}, idempotency_key=None
    )
    assert (await link.next_message(timeout=10.0))["data"]["job_id"] == later.job_id
