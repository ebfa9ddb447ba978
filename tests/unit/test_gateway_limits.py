"""Per-connection inbound limits: the token bucket driven by trio's MockClock, and the budget."""

from __future__ import annotations

import math

import trio

from printd.gateway.limits import ErrorBudget, MessageRate


async def read_loop(rate: MessageRate, *, per_read: int, every: float, until: float) -> tuple[int, float]:
    """A client that offers `per_read` messages every `every` seconds, read the way the gateway
    does: charge a read, pause when told. Returns (messages read, when it was told to close or
    `until`)."""
    read = 0
    while trio.current_time() < until:
        pause = rate.spend(trio.current_time(), per_read)
        read += per_read
        if pause == math.inf:
            return read, trio.current_time()
        await trio.sleep(max(pause, every))
    return read, until


async def test_within_the_rate_is_never_paused(autojump_clock: trio.testing.MockClock) -> None:
    rate = MessageRate(100.0, 200, 5.0, trio.current_time())
    for _ in range(1000):  # 10 messages every 0.1 s = exactly the rate, for 100 s
        assert rate.spend(trio.current_time(), 10) == 0.0
        await trio.sleep(0.1)
    assert rate.over_since is None


async def test_a_burst_is_absorbed_then_paced(autojump_clock: trio.testing.MockClock) -> None:
    rate = MessageRate(100.0, 200, 5.0, trio.current_time())
    assert rate.spend(trio.current_time(), 200) == 0.0  # the burst allowance
    pause = rate.spend(trio.current_time(), 50)
    assert math.isclose(pause, 0.5)  # 50 messages over: half a second at 100/s
    await trio.sleep(pause)
    assert rate.spend(trio.current_time(), 0) == 0.0  # paid off: reading goes on
    await trio.sleep(1.0)
    assert rate.spend(trio.current_time(), 0) == 0.0
    assert rate.over_since is None  # half the burst is back: the client eased off


async def test_a_flood_is_held_to_the_rate_then_closed(autojump_clock: trio.testing.MockClock) -> None:
    start = trio.current_time()
    rate = MessageRate(100.0, 200, 5.0, start)
    # 1000 messages every 0.1 s: ten times the rate, sustained
    read, closed_at = await read_loop(rate, per_read=1000, every=0.1, until=start + 60)
    assert closed_at - start >= 5.0  # paused meanwhile, closed once over for close_after
    assert closed_at - start < 20.0
    # what was read while throttled: the burst plus the rate, plus one read of overdraft
    assert read <= 200 + 100 * (closed_at - start) + 1000


async def test_slightly_over_the_rate_for_long_is_closed(autojump_clock: trio.testing.MockClock) -> None:
    start = trio.current_time()
    rate = MessageRate(100.0, 200, 5.0, start)
    _, closed_at = await read_loop(rate, per_read=11, every=0.1, until=start + 300)  # 110/s
    # the 200-message burst allowance lasts 20 s at +10/s; then 5 s over the limit closes
    assert 20.0 <= closed_at - start <= 30.0


async def test_a_burst_now_and_then_is_never_closed(autojump_clock: trio.testing.MockClock) -> None:
    start = trio.current_time()
    rate = MessageRate(100.0, 200, 5.0, start)
    # 600 messages at once every 10 s: over the burst each time, 60/s on average
    _, closed_at = await read_loop(rate, per_read=600, every=10.0, until=start + 120)
    assert closed_at == start + 120


def test_error_budget_allows_the_limit_per_window() -> None:
    budget = ErrorBudget(3, window=60.0)
    assert [budget.spend(1.0 + i) for i in range(4)] == [False, False, False, True]
    assert budget.spend(100.0) is False  # a new window
