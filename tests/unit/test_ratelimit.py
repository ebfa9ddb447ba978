from __future__ import annotations

import pytest
import trio
import trio.testing

from printd.ratelimit import (
    Decision,
    LimitRule,
    LocalLimits,
    PrinterTestLimits,
    PrinterTestQuota,
    SlidingWindowLimiter,
)


def test_allows_up_to_the_limit_then_denies() -> None:
    limiter = SlidingWindowLimiter()
    remaining = [limiter.hit("k", 3, 60.0, float(t)).remaining for t in range(3)]
    assert remaining == [2, 1, 0]
    denied = limiter.hit("k", 3, 60.0, 10.0)
    assert denied == Decision(False, 0, 50.0, "k")  # the hit at t=0 frees a slot at t=60


def test_denied_hits_do_not_consume() -> None:
    limiter = SlidingWindowLimiter()
    limiter.hit("k", 1, 60.0, 0.0)
    for t in range(1, 59):
        assert not limiter.hit("k", 1, 60.0, float(t)).allowed
    assert limiter.hit("k", 1, 60.0, 60.0).allowed  # hammering did not extend the ban


def test_window_slides() -> None:
    limiter = SlidingWindowLimiter()
    for t in (0.0, 20.0, 40.0):
        assert limiter.hit("k", 3, 60.0, t).allowed
    assert limiter.hit("k", 3, 60.0, 59.9).retry_after == pytest.approx(0.1)
    assert limiter.hit("k", 3, 60.0, 60.0).allowed  # t=0 expired
    denied = limiter.hit("k", 3, 60.0, 61.0)
    assert not denied.allowed
    assert denied.retry_after == pytest.approx(19.0)  # t=20 expires at 80
    assert limiter.hit("k", 3, 60.0, 80.0).allowed


def test_keys_are_independent() -> None:
    limiter = SlidingWindowLimiter()
    assert limiter.hit("a", 1, 60.0, 0.0).allowed
    assert not limiter.hit("a", 1, 60.0, 0.0).allowed
    assert limiter.hit("b", 1, 60.0, 0.0).allowed


def test_peek_predicts_without_consuming() -> None:
    limiter = SlidingWindowLimiter()
    assert limiter.peek("k", 2, 60.0, 0.0) == Decision(True, 1, 0.0, "k")
    assert len(limiter) == 0
    limiter.hit("k", 2, 60.0, 0.0)
    limiter.hit("k", 2, 60.0, 1.0)
    assert limiter.peek("k", 2, 60.0, 30.0) == Decision(False, 0, 30.0, "k")
    assert limiter.peek("k", 2, 60.0, 60.0) == Decision(True, 0, 0.0, "k")


def test_shrunk_limit_waits_for_enough_expiries() -> None:
    limiter = SlidingWindowLimiter()
    for t in (0.0, 10.0, 20.0):
        limiter.hit("k", 5, 60.0, t)
    denied = limiter.hit("k", 2, 60.0, 30.0)  # 3 in the log, 2 must expire to fit one more
    assert denied.retry_after == pytest.approx(40.0)


@pytest.mark.parametrize(("limit", "window"), [(0, 60.0), (True, 60.0), (5, 0.0)])
def test_invalid_limits(limit: int, window: float) -> None:
    with pytest.raises(ValueError):
        SlidingWindowLimiter().hit("k", limit, window, 0.0)


def test_sweep_drops_idle_keys() -> None:
    limiter = SlidingWindowLimiter()
    for n in range(100):
        limiter.hit(f"printer-{n}", 5, 60.0, 0.0)
    limiter.hit("busy", 5, 60.0, 50.0)
    assert len(limiter) == 101
    assert limiter.sweep(60.0) == 100
    assert len(limiter) == 1
    assert limiter.peek("busy", 1, 60.0, 60.0).allowed is False  # the live key kept its log


def test_lazy_sweep_bounds_memory_without_explicit_calls() -> None:
    limiter = SlidingWindowLimiter(sweep_interval=60.0)
    for t in range(1000):  # one new key per second, each hit once
        limiter.hit(f"key-{t}", 5, 10.0, float(t))
    assert len(limiter) <= 70  # at most one sweep interval plus one window of live keys


async def test_local_limits_use_the_trio_clock(mock_clock: trio.testing.MockClock) -> None:
    limits = LocalLimits()
    rule = [LimitRule("k", 1, 60.0)]
    assert (await limits.hit_limits(rule)).allowed
    mock_clock.jump(45.0)
    denied = await limits.hit_limits(rule)
    assert denied.retry_after == pytest.approx(15.0)
    mock_clock.jump(15.0)
    assert (await limits.hit_limits(rule)).allowed


async def test_printer_limit_denies_without_consuming_branch(mock_clock: trio.testing.MockClock) -> None:
    local = LocalLimits()
    limits = PrinterTestLimits(local)
    assert limits.quota == PrinterTestQuota(branch_limit=10, printer_limit=5, window=60.0)
    for _ in range(5):
        assert (await limits.hit("acme", "b1", "p1")).allowed
    for _ in range(20):
        denied = await limits.hit("acme", "b1", "p1")
        assert not denied.allowed
        assert denied.key == "printer:acme:p1"
    branch = local.limiter.peek("branch:acme:b1", 10, 60.0, trio.current_time())
    assert branch.remaining == 4  # 5 used, the 20 denied requests took nothing
    for n in range(5):
        assert (await limits.hit("acme", "b1", f"p{n + 2}")).allowed
    denied = await limits.hit("acme", "b1", "p9")
    assert (denied.allowed, denied.key) == (False, "branch:acme:b1")
    assert local.limiter.peek("printer:acme:p9", 5, 60.0, trio.current_time()).remaining == 4  # not consumed


async def test_printer_limits_report_the_most_restrictive(mock_clock: trio.testing.MockClock) -> None:
    limits = PrinterTestLimits(LocalLimits(), PrinterTestQuota(branch_limit=3, printer_limit=2))
    first = await limits.hit("acme", "b1", "p2")
    assert (first.remaining, first.key) == (1, "printer:acme:p2")  # printer has less left
    mock_clock.jump(10.0)
    await limits.hit("acme", "b1", "p1")
    mock_clock.jump(10.0)
    await limits.hit("acme", "b1", "p1")  # branch: 0, 10, 20; printer p1: 10, 20
    mock_clock.jump(10.0)
    denied = await limits.hit("acme", "b1", "p1")  # branch frees at 60, printer at 70
    assert (denied.allowed, denied.key) == (False, "printer:acme:p1")
    assert denied.retry_after == pytest.approx(40.0)


def test_quota_validation() -> None:
    with pytest.raises(ValueError):
        PrinterTestQuota(printer_limit=0)
