"""GroupCommit: calls queued while a transaction runs share the next one; each caller gets its own
outcome. `execute` here stands in for SqlStore._run: it runs the work against a list that plays
the transaction (kept only when the work returns), so what "committed" is visible."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from printd.store.base import StoreError, StoreUnavailable, UnknownJob
from printd.store.group import MAX_BATCH, GroupCommit


class FakeDb:
    def __init__(self) -> None:
        self.committed: list[Any] = []
        self.transactions: list[int] = []  # calls per transaction, in order
        self.running = 0
        self.most_running = 0
        self.fail_with: StoreError | None = None
        self.poison = "poison"  # a write that makes the whole transaction fail (a constraint)

    async def execute(self, work: Any) -> Any:
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            await trio.sleep(0.01)  # the transaction takes time: calls queue behind it
            if self.fail_with is not None:
                raise self.fail_with
            tx: list[Any] = []
            result = work(tx)
            if self.poison in tx:
                raise StoreError("constraint violated")
            self.transactions.append(len(result) if isinstance(result, list) else 1)
            self.committed += tx
            return result
        finally:
            self.running -= 1


def write(value: Any) -> Any:
    def fn(tx: list[Any]) -> Any:
        tx.append(value)
        return value

    return fn


def refuse(tx: list[Any]) -> Any:
    raise UnknownJob("not this agent's job")  # raised before it wrote, as the contract says


async def run_all(group: GroupCommit, fns: list[Any]) -> list[Any]:
    outcomes: list[Any] = [None] * len(fns)

    async def one(i: int) -> None:
        try:
            outcomes[i] = await group.run(fns[i])
        except StoreError as exc:
            outcomes[i] = exc

    async with trio.open_nursery() as nursery:
        for i in range(len(fns)):
            nursery.start_soon(one, i)
    return outcomes


async def test_calls_that_arrive_while_one_commits_share_the_next_transaction(
    autojump_clock: trio.testing.MockClock,
) -> None:
    db = FakeDb()
    group = GroupCommit(db.execute)
    outcomes = await run_all(group, [write(i) for i in range(10)])
    assert outcomes == list(range(10))
    assert sorted(db.committed) == list(range(10))
    assert db.transactions == [1, 9]  # the first alone at once, the nine queued behind it together
    assert (group.groups, group.grouped) == (2, 10)


async def test_a_lone_call_commits_at_once(autojump_clock: trio.testing.MockClock) -> None:
    db = FakeDb()
    group = GroupCommit(db.execute)
    start = trio.current_time()
    assert await group.run(write("a")) == "a"
    assert trio.current_time() - start == pytest.approx(0.01)  # one transaction, no waiting for company


async def test_a_domain_error_is_its_callers_alone(autojump_clock: trio.testing.MockClock) -> None:
    db = FakeDb()
    outcomes = await run_all(GroupCommit(db.execute), [write(0), write(1), refuse, write(3)])
    assert outcomes[:2] == [0, 1] and outcomes[3] == 3
    assert isinstance(outcomes[2], UnknownJob)
    assert sorted(db.committed) == [0, 1, 3]


async def test_a_failing_transaction_is_run_again_one_call_each(
    autojump_clock: trio.testing.MockClock,
) -> None:
    db = FakeDb()
    outcomes = await run_all(GroupCommit(db.execute), [write(0), write(1), write("poison"), write(3)])
    assert outcomes[:2] == [0, 1] and outcomes[3] == 3
    assert isinstance(outcomes[2], StoreError) and "constraint" in str(outcomes[2])
    assert sorted(db.committed, key=str) == [0, 1, 3]  # the others committed once each


async def test_an_unavailable_store_fails_every_call_of_the_group(
    autojump_clock: trio.testing.MockClock,
) -> None:
    db = FakeDb()
    db.fail_with = StoreUnavailable("connection refused")
    outcomes = await run_all(GroupCommit(db.execute), [write(i) for i in range(5)])
    assert all(isinstance(o, StoreUnavailable) for o in outcomes)
    assert db.committed == []


async def test_width_bounds_concurrent_transactions_and_groups_are_capped(
    autojump_clock: trio.testing.MockClock,
) -> None:
    db = FakeDb()
    calls = MAX_BATCH * 3
    outcomes = await run_all(GroupCommit(db.execute, width=2), [write(i) for i in range(calls)])
    assert outcomes == list(range(calls))
    assert db.most_running == 2
    assert max(db.transactions) <= MAX_BATCH


async def test_a_caller_cancelled_while_queued_is_not_committed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    db = FakeDb()
    group = GroupCommit(db.execute)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(group.run, write("first"))
        await trio.sleep(0.001)  # "first" is committing; the next call queues behind it
        with trio.move_on_after(0.001):
            await group.run(write("cancelled"))
    assert db.committed == ["first"]
    assert await group.run(write("after")) == "after"


async def test_a_call_queued_behind_a_cancelled_commit_still_commits(
    autojump_clock: trio.testing.MockClock,
) -> None:
    db = FakeDb()
    group = GroupCommit(db.execute)
    results: dict[str, Any] = {}
    leader = trio.CancelScope()

    async def lead() -> None:
        with leader:
            await group.run(write("first"))
            results["first"] = "committed"

    async def call(name: str) -> None:
        results[name] = await group.run(write(name))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(lead)
        await trio.sleep(0.001)  # "first" is committing (10 ms)
        nursery.start_soon(call, "second")  # queued behind it
        await trio.sleep(0.004)
        leader.cancel()  # the committing caller goes away mid-COMMIT
    assert results == {"second": "second"}  # not stranded, not failed for the leader's sake
    assert db.committed == ["second"]
