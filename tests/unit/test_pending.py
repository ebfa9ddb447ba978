from __future__ import annotations

import pytest
import trio
import trio.testing

from printd.jobs.pending import (
    PendingError,
    PendingEvicted,
    PendingRequests,
    PendingStale,
    PendingTimeout,
    PendingWaiters,
)

# -- pure registry ------------------------------------------------------------------------


def test_add_and_resolve() -> None:
    pending: PendingRequests[str] = PendingRequests()
    assert pending.add("c1", 5.0, meta="job-1") == []
    assert "c1" in pending and len(pending) == 1
    entry = pending.resolve("c1")
    assert entry is not None
    assert (entry.correlation_id, entry.added_at, entry.meta) == ("c1", 5.0, "job-1")
    assert pending.resolve("c1") is None  # a duplicate reply finds nothing
    assert len(pending) == 0


def test_adding_a_pending_id_again_is_an_error() -> None:
    pending: PendingRequests[None] = PendingRequests()
    pending.add("c1", 0.0)
    with pytest.raises(ValueError, match="c1"):
        pending.add("c1", 1.0)
    assert pending.oldest_age(1.0) == 1.0  # the first entry is untouched


def test_full_registry_evicts_the_oldest() -> None:
    pending: PendingRequests[int] = PendingRequests(capacity=3)
    for n, cid in enumerate(["a", "b", "c"]):
        assert pending.add(cid, float(n), meta=n) == []
    pending.resolve("b")
    assert pending.add("d", 3.0) == []  # room again: nothing evicted
    evicted = pending.add("e", 4.0)
    assert [(e.correlation_id, e.entry.meta) for e in evicted] == [("a", 0)]
    assert len(pending) == 3
    assert "a" not in pending and "e" in pending
    assert [e.correlation_id for e in pending.add("f", 5.0)] == ["c"]


def test_sweep_removes_only_stale_entries() -> None:
    pending: PendingRequests[None] = PendingRequests(stale_after=60.0)
    pending.add("a", 0.0)
    pending.add("b", 30.0)
    pending.add("c", 50.0)
    assert pending.sweep(60.0) == []  # exactly 60 s old is not older than stale_after
    assert [e.correlation_id for e in pending.sweep(91.0)] == ["a", "b"]
    assert len(pending) == 1 and "c" in pending
    assert pending.oldest_age(91.0) == 41.0


def test_discard_and_oldest_age() -> None:
    pending: PendingRequests[None] = PendingRequests()
    assert pending.oldest_age(10.0) is None
    pending.add("a", 1.0)
    pending.add("b", 4.0)
    assert pending.oldest_age(10.0) == 9.0
    assert pending.discard("a") is True
    assert pending.discard("a") is False
    assert pending.oldest_age(10.0) == 6.0


@pytest.mark.parametrize(("capacity", "stale_after"), [(0, 60.0), (10, 0.0), (10, float("inf"))])
def test_invalid_registry(capacity: int, stale_after: float) -> None:
    with pytest.raises(ValueError):
        PendingRequests(capacity, stale_after)


# -- trio waiters -------------------------------------------------------------------------


async def test_resolve_wakes_the_waiter(autojump_clock: trio.testing.MockClock) -> None:
    waiters: PendingWaiters[dict[str, str]] = PendingWaiters()
    waiter = waiters.register("c1")

    async def reply() -> None:
        await trio.sleep(1.0)
        assert waiters.resolve("c1", {"status": "printed"})

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reply)
        start = trio.current_time()
        assert await waiter.wait(5.0) == {"status": "printed"}
        assert trio.current_time() - start == pytest.approx(1.0)
    assert len(waiters) == 0
    assert waiters.resolve("c1", {"status": "printed"}) is False  # duplicate reply
    assert waiters.resolve("unknown", {}) is False


async def test_timeout_raises_and_forgets(autojump_clock: trio.testing.MockClock) -> None:
    waiters: PendingWaiters[str] = PendingWaiters()
    waiter = waiters.register("c1")
    start = trio.current_time()
    with pytest.raises(PendingTimeout) as caught:
        await waiter.wait(2.0)
    assert trio.current_time() - start == pytest.approx(2.0)
    assert caught.value.correlation_id == "c1"
    assert isinstance(caught.value, TimeoutError)
    assert len(waiters) == 0
    assert waiters.resolve("c1", "late") is False


async def test_full_registry_fails_the_evicted_waiter(autojump_clock: trio.testing.MockClock) -> None:
    waiters: PendingWaiters[str] = PendingWaiters(capacity=2)
    first = waiters.register("a")
    second = waiters.register("b")
    waiters.register("c")
    assert first.done and not second.done
    with pytest.raises(PendingEvicted) as caught:
        await first.wait(10.0)
    assert caught.value.correlation_id == "a"
    assert len(waiters) == 2


async def test_run_sweeps_stale_requests(autojump_clock: trio.testing.MockClock) -> None:
    waiters: PendingWaiters[str] = PendingWaiters(stale_after=60.0, sweep_interval=30.0)
    async with trio.open_nursery() as nursery:
        await nursery.start(waiters.run)
        start = trio.current_time()
        waiter = waiters.register("c1")
        with trio.fail_after(1000.0), pytest.raises(PendingStale):
            await waiter.wait(None)
        # sweeps at 30 and 60 find it 30 and 60 s old, the one at 90 finds it stale
        assert trio.current_time() - start == pytest.approx(90.0)
        assert len(waiters) == 0
        nursery.cancel_scope.cancel()


async def test_cancelled_waiter_leaves_nothing_behind(autojump_clock: trio.testing.MockClock) -> None:
    waiters: PendingWaiters[str] = PendingWaiters()
    waiter = waiters.register("c1")
    with trio.move_on_after(1.0) as scope:
        await waiter.wait(30.0)
    assert scope.cancelled_caught
    assert len(waiters) == 0
    assert waiters.resolve("c1", "late") is False
    again = waiters.register("c1")  # the id can be reused
    assert waiters.resolve("c1", "ok")
    assert await again.wait(1.0) == "ok"


async def test_giving_up_does_not_drop_a_newer_registration(
    autojump_clock: trio.testing.MockClock,
) -> None:
    waiters: PendingWaiters[str] = PendingWaiters()
    old = waiters.register("c1")
    waiters.requests.discard("c1")  # forgotten behind the old waiter's back
    newer = waiters.register("c1")
    with pytest.raises(PendingTimeout):
        await old.wait(1.0)
    assert "c1" in waiters
    assert waiters.resolve("c1", "ok")
    assert await newer.wait(1.0) == "ok"


async def test_fail_delivers_the_error(autojump_clock: trio.testing.MockClock) -> None:
    waiters: PendingWaiters[str] = PendingWaiters()
    waiter = waiters.register("c1")
    assert waiters.fail("c1", PendingError("c1", "agent disconnected"))
    with pytest.raises(PendingError, match="agent disconnected"):
        await waiter.wait(1.0)
    assert waiters.fail("c1", PendingError("c1", "again")) is False
