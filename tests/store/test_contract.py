"""The contract every Store backend satisfies (run against SQLite and PostgreSQL)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
import trio

from printd.model import Job, JobState
from printd.store import Store, open_store
from printd.store.base import (
    AgentClaim,
    AgentFence,
    BacklogFull,
    InstanceConflict,
    InstanceRow,
    QueuedJobs,
    StaleLeader,
    StaleSession,
    UnknownJob,
)


async def new_job(store: Store, **overrides: Any) -> Job:
    """A new job for a printer of `agent_id` in `branch` (the printer is registered first; a
    job always goes to its printer's owner, so another agent means another printer)."""
    fields: dict[str, Any] = {
        "company": "acme",
        "branch": "north",
        "agent_id": "agent-1",
        "kind": "print",
        "payload": {"lines": ["1x soup"], "n": 1},
        "idempotency_key": None,
        "now": 100.0,
    }
    fields.update(overrides)
    branch, agent_id = fields.pop("branch"), fields.pop("agent_id")
    printer_id = fields.pop("printer_id", "kitchen-1" if agent_id == "agent-1" else f"p-{agent_id}")
    await store.upsert_printer(
        company=fields["company"],
        branch=branch,
        agent_id=agent_id,
        printer_id=printer_id,
        status="online",
        details={},
        now=1.0,
    )
    job, created = await store.create_job(printer_id=printer_id, **fields)
    assert created
    return job


def states(job: Job) -> list[str]:
    return [state for state, _ in job.history]


async def connect(
    store: Store, company: str = "acme", agent_id: str = "agent-1", instance: str = "i1", now: float = 1.0
) -> AgentFence:
    """The agent connects on `instance`: the session every transition for it is made under."""
    (claimed,) = await store.claim_agents([AgentClaim(company, agent_id, instance, "inc-1")], now)
    return AgentFence(company, agent_id, claimed.session)


def bare(job: Job | None) -> Job | None:
    """A job as the delivery path sees it: without the history only get_job reads."""
    return None if job is None else replace(job, history=())


# -- schema ----------------------------------------------------------------------------------


async def test_migrate_is_idempotent_and_versioned(raw_store: Store) -> None:
    assert await raw_store.schema_version() == 0
    assert await raw_store.migrate() == [1, 2, 3, 4]
    assert await raw_store.migrate() == []
    assert await raw_store.schema_version() == 4
    await raw_store.ping()


async def test_concurrent_migrators_apply_once(store_url: str) -> None:
    stores = [open_store(store_url, pool_size=2) for _ in range(4)]
    applied: list[list[int]] = []

    async def run(store: Store) -> None:
        async with store:
            applied.append(await store.migrate())

    async with trio.open_nursery() as nursery:
        for store in stores:
            nursery.start_soon(run, store)
    assert sorted(applied) == [[], [], [], [1, 2, 3, 4]]


# -- printers --------------------------------------------------------------------------------


async def test_upsert_printer_creates_then_updates_keeping_created_at(store: Store) -> None:
    common = {"company": "acme", "branch": "north", "printer_id": "p1", "agent_id": "a1"}
    first, created = await store.upsert_printer(
        **common, status="online", details={"model": "TM-T20"}, now=10.0
    )
    assert created
    assert (first.status, first.details, first.created_at, first.updated_at) == (
        "online",
        {"model": "TM-T20"},
        10.0,
        10.0,
    )
    second, created = await store.upsert_printer(
        **common, status="offline", details={"paper": "low"}, now=20.0
    )
    assert not created
    assert (second.branch, second.agent_id, second.status, second.details) == (
        "north",
        "a1",
        "offline",
        {"paper": "low"},
    )
    assert (second.created_at, second.updated_at) == (10.0, 20.0)
    assert await store.get_printer("acme", "p1") == second


async def test_upsert_printer_never_moves_a_printer_to_another_owner(store: Store) -> None:
    owned, _ = await store.upsert_printer(
        company="acme", branch="north", printer_id="p1", agent_id="a1", status="online", details={}, now=1.0
    )
    for branch, agent in [("south", "a2"), ("north", "a2"), ("south", "a1")]:
        seen, created = await store.upsert_printer(
            company="acme",
            branch=branch,
            printer_id="p1",
            agent_id=agent,
            status="error",
            details={},
            now=2.0,
        )
        assert not created and seen == owned  # returned as it is, untouched
    assert await store.get_printer("acme", "p1") == owned


async def test_move_printer_is_a_compare_and_set_and_queued_jobs_follow(store: Store) -> None:
    await store.upsert_printer(
        company="acme", branch="north", printer_id="kitchen-1", agent_id="agent-1",
        status="online", details={}, now=1.0,
    )  # fmt: skip
    queued = await new_job(store)
    sent = await new_job(store)
    fence = await connect(store)
    await store.record_dispatch(sent.job_id, 2.0, fence)
    acked = await new_job(store)
    await store.mark_acked(acked.job_id, 2.0, fence)
    other_printer = await new_job(store, printer_id="bar-1")
    assert (
        await store.move_printer(
            "acme", "kitchen-1", expected=("north", "agent-9"), branch="south", agent_id="agent-2", now=3.0
        )
        is None
    )  # not the current owner: nothing moves
    assert (
        await store.move_printer(
            "acme", "nope", expected=("north", "agent-1"), branch="south", agent_id="agent-2", now=3.0
        )
        is None
    )
    moved = await store.move_printer(
        "acme", "kitchen-1", expected=("north", "agent-1"), branch="south", agent_id="agent-2", now=3.0
    )
    assert moved is not None
    printer, jobs_moved = moved
    assert (printer.branch, printer.agent_id, printer.updated_at) == ("south", "agent-2", 3.0)
    assert jobs_moved == 1
    assert await store.get_printer("acme", "kitchen-1") == printer
    job = await store.get_job(queued.job_id)
    assert job is not None and (job.branch, job.agent_id, job.state) == ("south", "agent-2", JobState.QUEUED)
    # what was already sent stays with the agent that got it; other printers' jobs are untouched
    for kept in (sent, acked, other_printer):
        job = await store.get_job(kept.job_id)
        assert job is not None and (job.branch, job.agent_id) == ("north", "agent-1")
    assert [j.job_id for j in await store.deliverable_jobs("acme", "agent-2", queued_only=True)] == [
        queued.job_id
    ]


async def test_racing_moves_cannot_both_win(store: Store) -> None:
    await store.upsert_printer(
        company="acme", branch="north", printer_id="p1", agent_id="old", status="online", details={}, now=1.0
    )
    await new_job(store, printer_id="p1", agent_id="old")
    results: list[tuple[str, Any]] = []

    async def move(agent: str) -> None:
        moved = await store.move_printer(
            "acme", "p1", expected=("north", "old"), branch="north", agent_id=agent, now=2.0
        )
        results.append((agent, moved))

    async with trio.open_nursery() as nursery:
        for agent in ("new-1", "new-2", "new-3"):
            nursery.start_soon(move, agent)
    winners = [(agent, moved) for agent, moved in results if moved is not None]
    assert len(winners) == 1
    (winner, (printer, jobs_moved)), *_ = winners
    assert printer.agent_id == winner and jobs_moved == 1
    assert [j.agent_id for j in await store.list_jobs("acme")] == [winner]


async def test_list_printers_by_branch_and_company(store: Store) -> None:
    for company, branch, printer_id in [
        ("acme", "north", "p3"),
        ("acme", "south", "p1"),
        ("acme", "north", "p2"),
        ("other", "north", "p0"),
    ]:
        await store.upsert_printer(
            company=company,
            branch=branch,
            agent_id="a",
            printer_id=printer_id,
            status="online",
            details={},
            now=1.0,
        )
    assert [p.printer_id for p in await store.list_printers("acme")] == ["p1", "p2", "p3"]
    assert [p.printer_id for p in await store.list_printers("acme", "north")] == ["p2", "p3"]
    assert [p.printer_id for p in await store.list_printers("other")] == ["p0"]
    assert await store.list_printers("nobody") == []
    assert await store.get_printer("other", "p1") is None
    assert await store.get_printer("acme", "p1") is not None


# -- job creation ----------------------------------------------------------------------------


async def test_create_job(store: Store) -> None:
    job = await new_job(store, now=5.5)
    assert job.state is JobState.QUEUED
    assert len(job.job_id) == 32 and len(job.correlation_id) == 32 and job.job_id != job.correlation_id
    assert (job.attempts, job.created_at, job.updated_at) == (0, 5.5, 5.5)
    assert job.payload == {"lines": ["1x soup"], "n": 1}
    fetched = await store.get_job(job.job_id)
    assert bare(fetched) == job and fetched is not None and fetched.history == (("queued", 5.5),)
    later = await new_job(store)
    assert later.seq > job.seq


async def test_idempotency_key_returns_existing_job(store: Store) -> None:
    job = await new_job(store, idempotency_key="order-1")
    again, created = await store.create_job(
        company="acme",
        printer_id="kitchen-1",
        kind="print",
        payload={"other": True},  # the API answers 409 for a key reused for a different job
        idempotency_key="order-1",
        now=200.0,
    )
    assert not created
    assert again == job
    other_company = await new_job(store, company="other", idempotency_key="order-1")
    assert other_company.job_id != job.job_id
    no_key = [await new_job(store), await new_job(store)]
    assert no_key[0].job_id != no_key[1].job_id
    assert len(await store.list_jobs("acme")) == 3


async def test_concurrent_creates_with_same_key_make_one_job(store: Store) -> None:
    await new_job(store)  # registers kitchen-1
    results: list[tuple[Job, bool]] = []

    async def create(i: int) -> None:
        results.append(
            await store.create_job(
                company="acme",
                printer_id="kitchen-1",
                kind="print",
                payload={"i": i},
                idempotency_key="same",
                now=float(i),
            )
        )

    async with trio.open_nursery() as nursery:
        for i in range(20):
            nursery.start_soon(create, i)
    assert len(results) == 20
    assert sum(created for _, created in results) == 1
    assert len({job.job_id for job, _ in results}) == 1
    assert len(await store.list_jobs("acme")) == 2


# -- transitions -----------------------------------------------------------------------------


async def test_happy_path_history_in_order(store: Store) -> None:
    job = await new_job(store, now=1.0)
    fence = await connect(store)
    dispatched = await store.record_dispatch(job.job_id, 2.0, fence)
    assert dispatched is not None
    assert (dispatched.state, dispatched.attempts, dispatched.dispatched_at) == (JobState.DISPATCHED, 1, 2.0)
    assert dispatched.history == ()  # the delivery path does not read the audit trail
    acked = await store.mark_acked(job.job_id, 3.0, fence)
    assert acked is not None and (acked.state, acked.acked_at) == (JobState.ACKED, 3.0)
    done, changed = await store.finish_job(
        job.job_id, success=True, result={"cut": True}, error=None, now=4.0, fence=fence
    )
    assert changed
    assert (done.state, done.finished_at, done.result, done.error, done.updated_at) == (
        JobState.PRINTED,
        4.0,
        {"cut": True},
        None,
        4.0,
    )
    fetched = await store.get_job(job.job_id)
    assert bare(fetched) == done
    assert fetched is not None
    assert fetched.history == (("queued", 1.0), ("dispatched", 2.0), ("acked", 3.0), ("printed", 4.0))


async def test_finish_twice_keeps_first_outcome(store: Store) -> None:
    job = await new_job(store)
    fence = await connect(store)
    first, changed = await store.finish_job(
        job.job_id, success=True, result={"ok": 1}, error=None, now=2.0, fence=fence
    )
    assert changed
    second, changed = await store.finish_job(
        job.job_id, success=False, result={"ok": 0}, error="jam", now=3.0, fence=fence
    )
    assert not changed
    assert second == first
    assert second.state is JobState.PRINTED and second.result == {"ok": 1} and second.error is None
    fetched = await store.get_job(job.job_id)
    assert fetched is not None and states(fetched) == ["queued", "printed"]


async def test_failed_job_records_error(store: Store) -> None:
    job = await new_job(store)
    fence = await connect(store)
    failed, changed = await store.finish_job(
        job.job_id, success=False, result=None, error="paper out", now=2.0, fence=fence
    )
    assert changed
    assert (failed.state, failed.error, failed.result) == (JobState.FAILED, "paper out", None)


async def test_no_transition_after_terminal(store: Store) -> None:
    job = await new_job(store)
    fence = await connect(store)
    await store.record_dispatch(job.job_id, 2.0, fence)
    await store.finish_job(job.job_id, success=True, result=None, error=None, now=3.0, fence=fence)
    late_ack = await store.mark_acked(job.job_id, 4.0, fence)
    assert late_ack is not None and late_ack.state is JobState.PRINTED  # as it is: not moved
    assert await store.record_dispatch(job.job_id, 4.0, fence) is None
    assert await store.expire_job(job.job_id, reason="late", now=4.0, fence=fence) is None
    assert await store.expire_job(job.job_id, reason="late", now=4.0) is None
    final = await store.get_job(job.job_id)
    assert final is not None
    assert (final.state, final.attempts, final.updated_at) == (JobState.PRINTED, 1, 3.0)
    assert states(final) == ["queued", "dispatched", "printed"]


async def test_ack_is_idempotent(store: Store) -> None:
    job = await new_job(store)
    fence = await connect(store)
    acked = await store.mark_acked(job.job_id, 2.0, fence)  # straight from queued
    assert acked is not None and acked.state is JobState.ACKED
    again = await store.mark_acked(job.job_id, 3.0, fence)
    assert again == acked and again.acked_at == 2.0


async def test_expire(store: Store) -> None:
    job = await new_job(store)
    fence = await connect(store)
    await store.record_dispatch(job.job_id, 2.0, fence)
    expired = await store.expire_job(job.job_id, reason="agent offline too long", now=9.0)
    assert expired is not None
    assert (expired.state, expired.error, expired.finished_at) == (
        JobState.EXPIRED,
        "agent offline too long",
        9.0,
    )
    fetched = await store.get_job(job.job_id)
    assert fetched is not None and states(fetched) == ["queued", "dispatched", "expired"]
    late, changed = await store.finish_job(
        job.job_id, success=True, result=None, error=None, now=10.0, fence=fence
    )
    assert not changed and late == expired


async def test_attempts_count_every_dispatch(store: Store) -> None:
    job = await new_job(store)
    fence = await connect(store)
    for t in (2.0, 3.0, 4.0):
        current = await store.record_dispatch(job.job_id, t, fence)
    assert current is not None
    assert (current.state, current.attempts, current.dispatched_at) == (JobState.DISPATCHED, 3, 4.0)
    await store.mark_acked(job.job_id, 5.0, fence)
    redelivered = await store.record_dispatch(job.job_id, 6.0, fence)
    assert redelivered is not None
    assert (redelivered.state, redelivered.attempts) == (JobState.ACKED, 4)
    fetched = await store.get_job(job.job_id)
    assert fetched is not None and states(fetched) == ["queued", "dispatched", "acked"]


async def test_reports_for_unknown_or_foreign_jobs_are_refused(store: Store) -> None:
    mine = await new_job(store)
    theirs = await new_job(store, agent_id="agent-2")
    other_company = await new_job(store, company="other")
    fence = await connect(store)
    assert await store.get_job("missing") is None
    for job_id in ("missing", theirs.job_id, other_company.job_id):
        with pytest.raises(UnknownJob):
            await store.record_dispatch(job_id, 1.0, fence)
        with pytest.raises(UnknownJob):
            await store.mark_acked(job_id, 1.0, fence)
        with pytest.raises(UnknownJob):
            await store.finish_job(job_id, success=True, result=None, error=None, now=1.0, fence=fence)
    assert await store.expire_job("missing", reason="x", now=1.0) is None
    for job in (mine, theirs, other_company):
        fetched = await store.get_job(job.job_id)
        assert fetched is not None and fetched.state is JobState.QUEUED


async def test_a_stale_session_cannot_move_a_job(store: Store) -> None:
    """Fencing: the agent reconnected (here or elsewhere); the old connection's instance can
    neither dispatch, record an ack or a result, nor expire the agent's jobs."""
    job = await new_job(store)
    old = await connect(store, instance="i1")
    await store.record_dispatch(job.job_id, 2.0, old)
    new = await connect(store, instance="i2")
    assert new.session > old.session
    with pytest.raises(StaleSession):
        await store.record_dispatch(job.job_id, 3.0, old)
    with pytest.raises(StaleSession):
        await store.mark_acked(job.job_id, 3.0, old)
    with pytest.raises(StaleSession):
        await store.finish_job(job.job_id, success=True, result=None, error=None, now=3.0, fence=old)
    with pytest.raises(StaleSession):
        await store.expire_job(job.job_id, reason="x", now=3.0, fence=old)
    fetched = await store.get_job(job.job_id)
    assert fetched is not None and (fetched.state, fetched.attempts) == (JobState.DISPATCHED, 1)
    assert (await store.record_dispatch(job.job_id, 4.0, new)) is not None
    assert await store.release_agent(new, 5.0)
    with pytest.raises(StaleSession):  # released: offline, nobody may act for it
        await store.mark_acked(job.job_id, 6.0, new)


async def test_racing_finishes_change_the_job_once(store: Store) -> None:
    job = await new_job(store)
    fence = await connect(store)
    outcomes: list[tuple[Job, bool]] = []

    async def finish(i: int) -> None:
        outcomes.append(
            await store.finish_job(
                job.job_id, success=i % 2 == 0, result={"i": i}, error=None, now=float(i), fence=fence
            )
        )

    async with trio.open_nursery() as nursery:
        for i in range(20):
            nursery.start_soon(finish, i)
    winners = [j for j, changed in outcomes if changed]
    assert len(winners) == 1
    final = await store.get_job(job.job_id)
    assert final is not None and final.result == winners[0].result and final.state == winners[0].state
    assert len(final.history) == 2


async def test_racing_dispatches_lose_no_attempt(store: Store) -> None:
    job = await new_job(store)
    fence = await connect(store)
    async with trio.open_nursery() as nursery:
        for i in range(20):
            nursery.start_soon(store.record_dispatch, job.job_id, float(i), fence)
    final = await store.get_job(job.job_id)
    assert final is not None and final.attempts == 20
    assert states(final) == ["queued", "dispatched"]


# -- queries ---------------------------------------------------------------------------------


async def test_deliverable_jobs_in_seq_order_for_one_agent(store: Store) -> None:
    queued = await new_job(store)
    mine_other_printer = await new_job(store, printer_id="bar-1")
    other_agent = await new_job(store, agent_id="agent-2")
    other_company = await new_job(store, company="other")
    dispatched = await new_job(store)
    acked = await new_job(store)
    printed = await new_job(store)
    expired = await new_job(store)
    fence = await connect(store)
    await store.record_dispatch(dispatched.job_id, 2.0, fence)
    await store.mark_acked(acked.job_id, 2.0, fence)
    await store.finish_job(printed.job_id, success=True, result=None, error=None, now=2.0, fence=fence)
    await store.expire_job(expired.job_id, reason="x", now=2.0)

    jobs = await store.deliverable_jobs("acme", "agent-1")
    assert [j.job_id for j in jobs] == [
        queued.job_id,
        mine_other_printer.job_id,
        dispatched.job_id,
        acked.job_id,
    ]
    assert [j.state for j in jobs] == [JobState.QUEUED, JobState.QUEUED, JobState.DISPATCHED, JobState.ACKED]
    assert all(j.history == () for j in jobs)  # lists skip history
    first = await store.deliverable_jobs("acme", "agent-1", limit=2)
    assert [j.job_id for j in first] == [queued.job_id, mine_other_printer.job_id]
    # the next page starts after the last one's seq: a pass reads a backlog a page at a time
    rest = await store.deliverable_jobs("acme", "agent-1", limit=2, after_seq=first[-1].seq)
    assert [j.job_id for j in rest] == [dispatched.job_id, acked.job_id]
    assert await store.deliverable_jobs("acme", "agent-1", limit=2, after_seq=rest[-1].seq) == []
    assert [j.job_id for j in await store.deliverable_jobs("acme", "agent-2")] == [other_agent.job_id]
    waiting = await store.deliverable_jobs("acme", "agent-1", queued_only=True)
    assert [j.job_id for j in waiting] == [queued.job_id, mine_other_printer.job_id]
    assert [j.job_id for j in await store.deliverable_jobs("other", "agent-1")] == [other_company.job_id]


async def test_list_jobs_filters_newest_first(store: Store) -> None:
    jobs = [await new_job(store, printer_id=f"p{i % 2}", now=float(i)) for i in range(5)]
    await new_job(store, company="other")
    await store.finish_job(
        jobs[0].job_id, success=True, result=None, error=None, now=9.0, fence=await connect(store)
    )
    ids = [j.job_id for j in jobs]

    assert [j.job_id for j in await store.list_jobs("acme")] == ids[::-1]
    assert [j.job_id for j in await store.list_jobs("acme", limit=2)] == [ids[4], ids[3]]
    assert [j.job_id for j in await store.list_jobs("acme", printer_id="p0")] == [ids[4], ids[2], ids[0]]
    assert [j.job_id for j in await store.list_jobs("acme", state=JobState.PRINTED)] == [ids[0]]
    assert [j.job_id for j in await store.list_jobs("acme", printer_id="p0", state=JobState.QUEUED)] == [
        ids[4],
        ids[2],
    ]
    assert await store.list_jobs("nobody") == []


async def test_get_job_company_scoping(store: Store) -> None:
    job = await new_job(store)
    assert bare(await store.get_job(job.job_id, "acme")) == job
    assert await store.get_job(job.job_id, "other") is None


async def test_fleet_summary(store: Store) -> None:
    for printer_id, status in [("p1", "online"), ("p2", "online"), ("p3", "offline")]:
        await store.upsert_printer(
            company="acme",
            branch="b",
            agent_id="a",
            printer_id=printer_id,
            status=status,
            details={},
            now=0.0,
        )
    await store.upsert_printer(
        company="other", branch="b", agent_id="a", printer_id="p9", status="online", details={}, now=0.0
    )
    now = 10_000.0
    old_queued = await new_job(store, now=now - 120)
    await new_job(store, now=now - 30)
    acked = await new_job(store, now=now - 10)
    fence = await connect(store)
    await store.mark_acked(acked.job_id, now - 5, fence)
    for finished_at, success in [
        (now - 60, True),
        (now - 4000, True),
        (now - 100, False),
        (now - 7200, False),
    ]:
        job = await new_job(store, now=finished_at - 1)
        await store.finish_job(
            job.job_id, success=success, result=None, error=None, now=finished_at, fence=fence
        )
    await new_job(store, company="other", now=0.0)

    summary = await store.fleet_summary("acme", now=now)
    # p1-p3, and kitchen-1 that the jobs below are for
    assert summary["printers"] == {"total": 4, "by_status": {"online": 3, "offline": 1}}
    assert summary["jobs"]["by_state"] == {
        "queued": 2,
        "dispatched": 0,
        "acked": 1,
        "printed": 2,
        "failed": 2,
        "expired": 0,
    }
    assert old_queued.created_at == now - 120
    assert summary["jobs"]["oldest_queued_age_s"] == pytest.approx(120.0)
    assert summary["jobs"]["printed_last_hour"] == 1
    assert summary["jobs"]["failed_last_hour"] == 1

    empty = await store.fleet_summary("nobody", now=now)
    assert empty["printers"] == {"total": 0, "by_status": {}}
    assert empty["jobs"]["oldest_queued_age_s"] is None
    assert sum(empty["jobs"]["by_state"].values()) == 0


async def test_queued_jobs_by_whether_their_agent_is_connected(store: Store) -> None:
    """What the metrics sample every 15 s: the whole database's queued jobs, split by whether
    their agent is connected to some instance (stuck delivery) or not (an agent offline)."""
    assert await store.queued_jobs() == {"online": QueuedJobs(0, None), "offline": QueuedJobs(0, None)}
    await new_job(store, agent_id="agent-1", now=500.0)
    await new_job(store, agent_id="agent-1", now=300.0)
    sent = await new_job(store, agent_id="agent-1", now=100.0)
    await new_job(store, company="other", agent_id="agent-2", now=200.0)
    await new_job(store, agent_id="agent-3", now=50.0)  # offline: released below
    await new_job(store, agent_id="never-seen", now=400.0)  # offline: no session ever
    fence = await connect(store, agent_id="agent-1")
    await store.record_dispatch(sent.job_id, 600.0, fence)  # no longer queued
    await connect(store, company="other", agent_id="agent-2", instance="i2")
    gone = await connect(store, agent_id="agent-3")
    await store.release_agent(gone, 700.0)

    assert await store.queued_jobs() == {
        "online": QueuedJobs(3, 200.0),
        "offline": QueuedJobs(2, 50.0),
    }


# -- durability ------------------------------------------------------------------------------


async def test_job_survives_close_and_reopen(store_url: str) -> None:
    async with open_store(store_url) as store:
        await store.migrate()
        job = await new_job(store, idempotency_key="k")
        acked = await store.mark_acked(job.job_id, 2.0, await connect(store))
    async with open_store(store_url) as store:
        assert await store.migrate() == []
        assert bare(await store.get_job(job.job_id)) == acked
        again, created = await store.create_job(
            company="acme",
            printer_id="kitchen-1",
            kind="print",
            payload={},
            idempotency_key="k",
            now=3.0,
        )
        assert not created and again.job_id == job.job_id


# -- agent sessions --------------------------------------------------------------------------


async def test_claims_take_ever_newer_sessions_and_say_who_has_work(store: Store) -> None:
    await new_job(store)  # agent-1 has a live job
    done = await new_job(store, agent_id="agent-2")
    fence2 = await connect(store, agent_id="agent-2")
    await store.finish_job(done.job_id, success=True, result=None, error=None, now=2.0, fence=fence2)
    claims = [AgentClaim("acme", a, "i1", "inc") for a in ("agent-1", "agent-2", "agent-3")]
    first = await store.claim_agents(claims, 3.0)
    assert [c.has_live_jobs for c in first] == [True, False, False]
    again = await store.claim_agents(claims, 4.0)
    assert all(b.session > a.session for a, b in zip(first, again, strict=True))
    assert await store.claim_agents([], 5.0) == []


async def test_release_only_applies_to_the_current_session(store: Store) -> None:
    old = await connect(store)
    new = await connect(store, instance="i2")
    assert not await store.release_agent(old, 2.0)  # the newer connection stays online
    assert await store.release_agent(new, 2.0)
    assert not await store.release_agent(new, 3.0)  # once


async def test_agents_with_queued_jobs_are_the_ones_this_instance_holds(store: Store) -> None:
    await new_job(store, agent_id="here")
    await new_job(store, agent_id="elsewhere")
    sent = await new_job(store, agent_id="busy")
    await new_job(store, agent_id="offline")
    await connect(store, agent_id="here", instance="i1")
    await connect(store, agent_id="elsewhere", instance="i2")
    busy = await connect(store, agent_id="busy", instance="i1")
    await store.record_dispatch(sent.job_id, 2.0, busy)
    assert await store.agents_with_queued_jobs("i1") == {("acme", "here")}
    assert await store.agents_with_queued_jobs("i2") == {("acme", "elsewhere")}


# -- instances and the leader ----------------------------------------------------------------


def instance(instance_id: str, incarnation: str, *, clustered: bool = True, at: float = 100.0) -> InstanceRow:
    return InstanceRow(instance_id, incarnation, clustered, f"http://{instance_id}", at, at)


async def test_a_live_instance_id_cannot_start_twice(store: Store) -> None:
    await store.register_instance(instance("i1", "aaa"), ttl=6)
    with pytest.raises(InstanceConflict, match="in use by a live instance"):
        await store.register_instance(instance("i1", "bbb", at=103), ttl=6)
    await store.register_instance(instance("i1", "bbb", at=107), ttl=6)  # the old one stopped beating
    assert not await store.heartbeat_instance("i1", "aaa", 108)  # taken over
    assert await store.heartbeat_instance("i1", "bbb", 108)
    await store.register_instance(instance("i2", "ccc", at=108), ttl=6)  # clustered: fine
    assert [r.instance_id for r in await store.list_instances()] == ["i1", "i2"]
    await store.remove_instance("i1", "aaa")  # not ours any more: kept
    await store.remove_instance("i2", "ccc")
    assert [r.instance_id for r in await store.list_instances()] == ["i1"]


async def test_instances_without_a_cluster_do_not_share_a_database(store: Store) -> None:
    await store.register_instance(instance("alone", "aaa", clustered=False), ttl=6)
    with pytest.raises(InstanceConflict, match="runs without a cluster"):
        await store.register_instance(instance("other", "bbb", at=101), ttl=6)
    with pytest.raises(InstanceConflict, match="alone"):
        await store.register_instance(instance("other", "bbb", clustered=False, at=101), ttl=6)
    await store.register_instance(instance("other", "bbb", clustered=False, at=107), ttl=6)  # gone


async def test_leader_chores_need_the_current_token(store: Store) -> None:
    first = await store.take_leadership("i1", 1.0)
    second = await store.take_leadership("i2", 2.0)
    assert second > first
    old = await new_job(store, now=10.0)
    young = await new_job(store, now=50.0)
    with pytest.raises(StaleLeader):
        await store.expire_queued(40.0, 60.0, first)
    expired = await store.expire_queued(40.0, 60.0, second)
    assert [j.job_id for j in expired] == [old.job_id]
    fetched = await store.get_job(young.job_id)
    assert fetched is not None and fetched.state is JobState.QUEUED
    with pytest.raises(StaleLeader):
        await store.release_orphans(0.0, 60.0, first)


async def test_orphaned_agents_are_released_and_their_dispatched_jobs_requeued(store: Store) -> None:
    token = await store.take_leadership("i2", 1.0)
    await store.register_instance(instance("dead", "d1", at=100.0), ttl=6)
    await store.register_instance(instance("live", "l1", at=100.0), ttl=6)
    dispatched = await new_job(store, agent_id="orphan")
    acked = await new_job(store, agent_id="orphan")
    queued = await new_job(store, agent_id="orphan")
    kept = await new_job(store, agent_id="kept")
    (orphan, held) = await store.claim_agents(
        [AgentClaim("acme", "orphan", "dead", "d1"), AgentClaim("acme", "kept", "live", "l1")], 100.0
    )
    f_orphan = AgentFence("acme", "orphan", orphan.session)
    f_kept = AgentFence("acme", "kept", held.session)
    await store.record_dispatch(dispatched.job_id, 101.0, f_orphan)
    await store.mark_acked(acked.job_id, 101.0, f_orphan)
    await store.record_dispatch(kept.job_id, 101.0, f_kept)
    await store.heartbeat_instance("live", "l1", 110.0)
    requeued = await store.release_orphans(105.0, 111.0, token)
    assert [j.job_id for j in requeued] == [dispatched.job_id]
    states_now = {j.job_id: j.state for j in await store.deliverable_jobs("acme", "orphan")}
    assert states_now == {
        dispatched.job_id: JobState.QUEUED,
        acked.job_id: JobState.ACKED,  # the agent has it: redelivered when it comes back
        queued.job_id: JobState.QUEUED,
    }
    with pytest.raises(StaleSession):  # the dead instance cannot act for its agent any more
        await store.mark_acked(dispatched.job_id, 112.0, f_orphan)
    fetched = await store.get_job(kept.job_id)
    assert fetched is not None and fetched.state is JobState.DISPATCHED
    assert await store.release_orphans(105.0, 113.0, token) == []  # once


async def test_list_jobs_reads_no_payload(store: Store) -> None:
    """A listing shows no payload, so it does not read them (up to 1000 x 256 KiB)."""
    job = await new_job(store, payload={"blob": "x" * 100_000})
    listed = await store.list_jobs("acme")
    assert [j.job_id for j in listed] == [job.job_id] and listed[0].payload == {}
    got = await store.get_job(job.job_id)
    assert got is not None and got.payload == {"blob": "x" * 100_000}  # the job itself keeps it


async def test_list_printers_pages_by_printer_id(store: Store) -> None:
    for i in range(5):
        await store.upsert_printer(
            company="acme",
            branch="north" if i % 2 else "south",
            agent_id="a",
            printer_id=f"p{i}",
            status="online",
            details={},
            now=1.0,
        )
    assert [p.printer_id for p in await store.list_printers("acme", limit=2)] == ["p0", "p1"]
    assert [p.printer_id for p in await store.list_printers("acme", after="p1", limit=2)] == ["p2", "p3"]
    assert [p.printer_id for p in await store.list_printers("acme", after="p3", limit=2)] == ["p4"]
    assert [p.printer_id for p in await store.list_printers("acme", "north", after="p1")] == ["p3"]


async def test_current_sessions_show_which_connections_went_stale(store: Store) -> None:
    mine = await connect(store, agent_id="a1", instance="i1")
    moved = await connect(store, agent_id="a2", instance="i1")
    released = await connect(store, agent_id="a3", instance="i1")
    newer = await connect(store, agent_id="a2", instance="i2")
    await store.release_agent(released, 5.0)
    keys = [("acme", "a1"), ("acme", "a2"), ("acme", "a3"), ("acme", "nobody"), ("other", "a1")]
    current = await store.current_sessions(keys)
    assert current == {("acme", "a1"): mine.session, ("acme", "a2"): newer.session}
    assert current[("acme", "a2")] != moved.session
    assert await store.current_sessions([]) == {}


async def test_a_printers_backlog_is_capped_but_a_replay_is_still_answered(store: Store) -> None:
    """What one client can make the database hold for a printer whose agent is away: a new job
    beyond `max_backlog` unfinished ones is refused (nothing stored); a finished one frees room;
    a retry of an accepted Idempotency-Key still gets its job."""
    first = await new_job(store, idempotency_key="order-1", max_backlog=2)
    await new_job(store, max_backlog=2)

    async def third(key: str | None = None) -> tuple[Job, bool]:
        return await store.create_job(
            company="acme",
            printer_id="kitchen-1",
            kind="print",
            payload={"n": 3},
            idempotency_key=key,
            now=100.0,
            max_backlog=2,
        )

    with pytest.raises(BacklogFull) as refused:
        await third("order-3")
    assert refused.value.limit == 2 and "kitchen-1" in str(refused.value)
    assert len(await store.list_jobs("acme")) == 2
    replay, created = await third("order-1")
    assert replay.job_id == first.job_id and not created
    other_printer = await new_job(store, agent_id="agent-2", max_backlog=2)  # its own backlog
    assert other_printer.printer_id != "kitchen-1"
    await store.expire_job(first.job_id, reason="x", now=101.0)
    job, created = await third()
    assert created and job.state is JobState.QUEUED
