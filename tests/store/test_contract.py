"""The contract every Store backend satisfies (run against SQLite and PostgreSQL)."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from printd.jobs.model import Job, JobState
from printd.store import Store, open_store


async def new_job(store: Store, **overrides: Any) -> Job:
    fields: dict[str, Any] = {
        "company": "acme",
        "branch": "north",
        "printer_id": "kitchen-1",
        "agent_id": "agent-1",
        "kind": "print",
        "payload": {"lines": ["1x soup"], "n": 1},
        "idempotency_key": None,
        "now": 100.0,
    }
    fields.update(overrides)
    job, created = await store.create_job(**fields)
    assert created
    return job


def states(job: Job) -> list[str]:
    return [state for state, _ in job.history]


# -- schema ----------------------------------------------------------------------------------


async def test_migrate_is_idempotent_and_versioned(raw_store: Store) -> None:
    assert await raw_store.schema_version() == 0
    assert await raw_store.migrate() == [1]
    assert await raw_store.migrate() == []
    assert await raw_store.schema_version() == 1
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
    assert sorted(applied) == [[], [], [], [1]]


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
    await store.record_dispatch(sent.job_id, 2.0)
    acked = await new_job(store)
    await store.mark_acked(acked.job_id, 2.0)
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
    assert job.history == (("queued", 5.5),)
    assert await store.get_job(job.job_id) == job
    later = await new_job(store)
    assert later.seq > job.seq


async def test_idempotency_key_returns_existing_job(store: Store) -> None:
    job = await new_job(store, idempotency_key="order-1")
    again, created = await store.create_job(
        company="acme",
        branch="north",
        printer_id="kitchen-2",
        agent_id="agent-2",
        kind="print",
        payload={"other": True},
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
    results: list[tuple[Job, bool]] = []

    async def create(i: int) -> None:
        results.append(
            await store.create_job(
                company="acme",
                branch="north",
                printer_id="kitchen-1",
                agent_id="agent-1",
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
    assert len(await store.list_jobs("acme")) == 1


# -- transitions -----------------------------------------------------------------------------


async def test_happy_path_history_in_order(store: Store) -> None:
    job = await new_job(store, now=1.0)
    dispatched = await store.record_dispatch(job.job_id, 2.0)
    assert dispatched is not None
    assert (dispatched.state, dispatched.attempts, dispatched.dispatched_at) == (JobState.DISPATCHED, 1, 2.0)
    acked = await store.mark_acked(job.job_id, 3.0)
    assert acked is not None and (acked.state, acked.acked_at) == (JobState.ACKED, 3.0)
    done, changed = await store.finish_job(
        job.job_id, success=True, result={"cut": True}, error=None, now=4.0
    )
    assert changed and done is not None
    assert (done.state, done.finished_at, done.result, done.error, done.updated_at) == (
        JobState.PRINTED,
        4.0,
        {"cut": True},
        None,
        4.0,
    )
    fetched = await store.get_job(job.job_id)
    assert fetched == done
    assert fetched.history == (("queued", 1.0), ("dispatched", 2.0), ("acked", 3.0), ("printed", 4.0))


async def test_finish_twice_keeps_first_outcome(store: Store) -> None:
    job = await new_job(store)
    first, changed = await store.finish_job(job.job_id, success=True, result={"ok": 1}, error=None, now=2.0)
    assert changed and first is not None
    second, changed = await store.finish_job(
        job.job_id, success=False, result={"ok": 0}, error="jam", now=3.0
    )
    assert not changed
    assert second == first
    assert second.state is JobState.PRINTED and second.result == {"ok": 1} and second.error is None
    assert states(second) == ["queued", "printed"]


async def test_failed_job_records_error(store: Store) -> None:
    job = await new_job(store)
    failed, changed = await store.finish_job(
        job.job_id, success=False, result=None, error="paper out", now=2.0
    )
    assert changed and failed is not None
    assert (failed.state, failed.error, failed.result) == (JobState.FAILED, "paper out", None)


async def test_no_transition_after_terminal(store: Store) -> None:
    job = await new_job(store)
    await store.record_dispatch(job.job_id, 2.0)
    await store.finish_job(job.job_id, success=True, result=None, error=None, now=3.0)
    assert await store.mark_acked(job.job_id, 4.0) is None
    assert await store.record_dispatch(job.job_id, 4.0) is None
    assert await store.expire_job(job.job_id, reason="late", now=4.0) is None
    final = await store.get_job(job.job_id)
    assert final is not None
    assert (final.state, final.attempts, final.updated_at) == (JobState.PRINTED, 1, 3.0)
    assert states(final) == ["queued", "dispatched", "printed"]


async def test_ack_is_idempotent(store: Store) -> None:
    job = await new_job(store)
    acked = await store.mark_acked(job.job_id, 2.0)  # straight from queued
    assert acked is not None and acked.state is JobState.ACKED
    again = await store.mark_acked(job.job_id, 3.0)
    assert again == acked and again.acked_at == 2.0


async def test_expire(store: Store) -> None:
    job = await new_job(store)
    await store.record_dispatch(job.job_id, 2.0)
    expired = await store.expire_job(job.job_id, reason="agent offline too long", now=9.0)
    assert expired is not None
    assert (expired.state, expired.error, expired.finished_at) == (
        JobState.EXPIRED,
        "agent offline too long",
        9.0,
    )
    assert states(expired) == ["queued", "dispatched", "expired"]
    late, changed = await store.finish_job(job.job_id, success=True, result=None, error=None, now=10.0)
    assert not changed and late == expired


async def test_attempts_count_every_dispatch(store: Store) -> None:
    job = await new_job(store)
    for t in (2.0, 3.0, 4.0):
        current = await store.record_dispatch(job.job_id, t)
    assert current is not None
    assert (current.state, current.attempts, current.dispatched_at) == (JobState.DISPATCHED, 3, 4.0)
    await store.mark_acked(job.job_id, 5.0)
    redelivered = await store.record_dispatch(job.job_id, 6.0)
    assert redelivered is not None
    assert (redelivered.state, redelivered.attempts) == (JobState.ACKED, 4)
    assert states(redelivered) == ["queued", "dispatched", "acked"]


async def test_unknown_job(store: Store) -> None:
    assert await store.get_job("missing") is None
    assert await store.record_dispatch("missing", 1.0) is None
    assert await store.mark_acked("missing", 1.0) is None
    assert await store.finish_job("missing", success=True, result=None, error=None, now=1.0) == (None, False)
    assert await store.expire_job("missing", reason="x", now=1.0) is None


async def test_racing_finishes_change_the_job_once(store: Store) -> None:
    job = await new_job(store)
    outcomes: list[tuple[Job | None, bool]] = []

    async def finish(i: int) -> None:
        outcomes.append(
            await store.finish_job(job.job_id, success=i % 2 == 0, result={"i": i}, error=None, now=float(i))
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
    async with trio.open_nursery() as nursery:
        for i in range(20):
            nursery.start_soon(store.record_dispatch, job.job_id, float(i))
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
    await store.record_dispatch(dispatched.job_id, 2.0)
    await store.mark_acked(acked.job_id, 2.0)
    await store.finish_job(printed.job_id, success=True, result=None, error=None, now=2.0)
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
    assert [j.job_id for j in await store.deliverable_jobs("acme", "agent-1", limit=2)] == [
        queued.job_id,
        mine_other_printer.job_id,
    ]
    assert [j.job_id for j in await store.deliverable_jobs("acme", "agent-2")] == [other_agent.job_id]
    waiting = await store.deliverable_jobs("acme", "agent-1", queued_only=True)
    assert [j.job_id for j in waiting] == [queued.job_id, mine_other_printer.job_id]
    assert [j.job_id for j in await store.deliverable_jobs("other", "agent-1")] == [other_company.job_id]


async def test_unfinished_jobs_across_companies(store: Store) -> None:
    a = await new_job(store)
    b = await new_job(store, company="other", agent_id="agent-9")
    c = await new_job(store)
    d = await new_job(store)
    await store.mark_acked(c.job_id, 2.0)
    await store.finish_job(d.job_id, success=False, result=None, error="x", now=2.0)
    assert [j.job_id for j in await store.unfinished_jobs()] == [a.job_id, b.job_id, c.job_id]
    assert [j.job_id for j in await store.unfinished_jobs(limit=1)] == [a.job_id]


async def test_list_jobs_filters_newest_first(store: Store) -> None:
    jobs = [await new_job(store, printer_id=f"p{i % 2}", now=float(i)) for i in range(5)]
    await new_job(store, company="other")
    await store.finish_job(jobs[0].job_id, success=True, result=None, error=None, now=9.0)
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
    assert await store.get_job(job.job_id, "acme") == job
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
    await store.mark_acked(acked.job_id, now - 5)
    for finished_at, success in [
        (now - 60, True),
        (now - 4000, True),
        (now - 100, False),
        (now - 7200, False),
    ]:
        job = await new_job(store, now=finished_at - 1)
        await store.finish_job(job.job_id, success=success, result=None, error=None, now=finished_at)
    await new_job(store, company="other", now=0.0)

    summary = await store.fleet_summary("acme", now=now)
    assert summary["printers"] == {"total": 3, "by_status": {"online": 2, "offline": 1}}
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


# -- durability ------------------------------------------------------------------------------


async def test_job_survives_close_and_reopen(store_url: str) -> None:
    async with open_store(store_url) as store:
        await store.migrate()
        job = await new_job(store, idempotency_key="k")
        acked = await store.mark_acked(job.job_id, 2.0)
    async with open_store(store_url) as store:
        assert await store.migrate() == []
        assert await store.get_job(job.job_id) == acked
        again, created = await store.create_job(
            company="acme",
            branch="north",
            printer_id="kitchen-1",
            agent_id="agent-1",
            kind="print",
            payload={},
            idempotency_key="k",
            now=3.0,
        )
        assert not created and again.job_id == job.job_id


async def test_agents_with_live_jobs(store: Store) -> None:
    live = await new_job(store)
    done = await new_job(store, agent_id="agent-2")
    await store.finish_job(done.job_id, success=True, result=None, error=None, now=2.0)
    await new_job(store, company="other", agent_id="agent-3")
    asked = [("acme", "agent-1"), ("acme", "agent-2"), ("acme", "agent-3"), ("acme", "nobody")]
    assert await store.agents_with_live_jobs(asked) == {("acme", live.agent_id)}
    assert await store.agents_with_live_jobs([]) == set()
    many = [("acme", f"a{i}") for i in range(1200)] + [("acme", "agent-1")]  # more than one chunk
    assert await store.agents_with_live_jobs(many) == {("acme", "agent-1")}
