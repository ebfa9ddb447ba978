from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
import trio
import trio.testing

from printd.cache import CacheResult, TTLCache


class Loader:
    """Counts calls; each call sleeps ``delay`` then returns the next value or raises."""

    def __init__(self, delay: float = 1.0) -> None:
        self.calls = 0
        self.delay = delay
        self.error: Exception | None = None

    async def __call__(self) -> str:
        self.calls += 1
        await trio.sleep(self.delay)
        if self.error is not None:
            raise self.error
        return f"v{self.calls}"


async def gather(
    n: int, fn: Callable[[], Awaitable[CacheResult[str]]]
) -> list[CacheResult[str] | BaseException]:
    results: list[CacheResult[str] | BaseException] = []

    async def one() -> None:
        try:
            results.append(await fn())
        except Exception as exc:
            results.append(exc)

    async with trio.open_nursery() as nursery:
        for _ in range(n):
            nursery.start_soon(one)
    return results


async def test_miss_then_hit_then_expiry(autojump_clock: trio.testing.MockClock) -> None:
    cache: TTLCache[str, str] = TTLCache(ttl=60.0)
    load = Loader()
    assert await cache.get_or_load("k", load) == CacheResult("v1", stale=False, age=0.0, hit=False)
    await trio.sleep(59.0)
    assert await cache.get_or_load("k", load) == CacheResult("v1", stale=False, age=59.0, hit=True)
    await trio.sleep(1.0)
    reloaded = await cache.get_or_load("k", load)
    assert (reloaded.value, reloaded.hit, load.calls) == ("v2", False, 2)


async def test_concurrent_misses_share_one_load(autojump_clock: trio.testing.MockClock) -> None:
    cache: TTLCache[str, str] = TTLCache()
    load = Loader()
    results = await gather(10, lambda: cache.get_or_load("k", load))
    assert load.calls == 1
    assert [r.value for r in results if isinstance(r, CacheResult)] == ["v1"] * 10
    assert len(cache) == 1


async def test_different_keys_load_separately(autojump_clock: trio.testing.MockClock) -> None:
    cache: TTLCache[str, str] = TTLCache()
    load = Loader()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(cache.get_or_load, "a", load)
        nursery.start_soon(cache.get_or_load, "b", load)
    assert load.calls == 2


async def test_loader_error_reaches_every_waiter(autojump_clock: trio.testing.MockClock) -> None:
    cache: TTLCache[str, str] = TTLCache()
    load = Loader()
    load.error = ConnectionError("store down")
    results = await gather(5, lambda: cache.get_or_load("k", load))
    assert load.calls == 1
    assert all(isinstance(r, ConnectionError) for r in results)
    load.error = None
    assert (await cache.get_or_load("k", load)).value == "v2"  # errors are not cached


async def test_failed_reload_serves_the_expired_value_as_stale(
    autojump_clock: trio.testing.MockClock,
) -> None:
    cache: TTLCache[str, str] = TTLCache(ttl=60.0, stale_on=(ConnectionError,))
    load = Loader()
    await cache.get_or_load("k", load)
    await trio.sleep(100.0)
    load.error = ConnectionError("store down")
    results = await gather(3, lambda: cache.get_or_load("k", load))
    assert load.calls == 2
    assert [(r.value, r.stale, r.age, r.hit) for r in results if isinstance(r, CacheResult)] == [
        ("v1", True, 101.0, False)
    ] * 3
    load.error = None
    fresh = await cache.get_or_load("k", load)
    assert (fresh.value, fresh.stale) == ("v3", False)


async def test_only_the_named_outages_are_served_stale(autojump_clock: trio.testing.MockClock) -> None:
    """A bug in the loader (a TypeError) is never hidden behind stale data."""
    cache: TTLCache[str, str] = TTLCache(ttl=60.0, stale_on=(ConnectionError,))
    load = Loader()
    await cache.get_or_load("k", load)
    await trio.sleep(100.0)
    load.error = TypeError("a bug")  # type: ignore[assignment]
    with pytest.raises(TypeError):
        await cache.get_or_load("k", load)
    without: TTLCache[str, str] = TTLCache(ttl=60.0)  # nothing named: nothing served stale
    await without.get_or_load("k", load := Loader())
    await trio.sleep(100.0)
    load.error = ConnectionError("store down")
    with pytest.raises(ConnectionError):
        await without.get_or_load("k", load)


async def test_cancelled_loader_hands_over_to_a_waiter(autojump_clock: trio.testing.MockClock) -> None:
    cache: TTLCache[str, str] = TTLCache()
    load = Loader(delay=10.0)
    follower_results: list[CacheResult[str]] = []

    async def follower() -> None:
        follower_results.append(await cache.get_or_load("k", load))

    async with trio.open_nursery() as nursery:
        with trio.move_on_after(1.0):
            nursery.start_soon(follower)
            await cache.get_or_load("k", load)  # leads the load, then is cancelled
    assert load.calls == 2
    assert [r.value for r in follower_results] == ["v2"]


async def test_invalidate(autojump_clock: trio.testing.MockClock) -> None:
    cache: TTLCache[str, str] = TTLCache()
    load = Loader()
    await cache.get_or_load("k", load)
    cache.invalidate("k")
    assert len(cache) == 0
    assert (await cache.get_or_load("k", load)).value == "v2"


async def test_load_running_during_invalidate_is_not_cached(autojump_clock: trio.testing.MockClock) -> None:
    cache: TTLCache[str, str] = TTLCache()
    load = Loader(delay=5.0)
    results: list[CacheResult[str]] = []

    async def first() -> None:
        results.append(await cache.get_or_load("k", load))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(first)
        await trio.sleep(1.0)
        cache.invalidate("k")
    assert results[0].value == "v1"  # its caller still gets it ...
    assert len(cache) == 0  # ... but it may predate the invalidation
    assert (await cache.get_or_load("k", load)).value == "v2"


async def test_least_recently_used_is_evicted(autojump_clock: trio.testing.MockClock) -> None:
    cache: TTLCache[str, str] = TTLCache(max_entries=2)
    load = Loader(delay=0.0)
    await cache.get_or_load("a", load)
    await cache.get_or_load("b", load)
    await cache.get_or_load("a", load)  # hit: a is now the most recent
    await cache.get_or_load("c", load)
    assert len(cache) == 2
    assert (await cache.get_or_load("a", load)).hit
    assert not (await cache.get_or_load("b", load)).hit


async def test_hit_does_not_yield_to_the_scheduler(autojump_clock: trio.testing.MockClock) -> None:
    cache: TTLCache[str, str] = TTLCache()
    await cache.get_or_load("k", Loader())
    with trio.CancelScope() as scope:
        scope.cancel()
        result = await cache.get_or_load("k", Loader())  # no checkpoint, so no Cancelled
    assert result.hit


@pytest.mark.parametrize(("ttl", "max_entries"), [(0.0, 10), (60.0, 0)])
def test_invalid_cache(ttl: float, max_entries: int) -> None:
    with pytest.raises(ValueError):
        TTLCache(ttl=ttl, max_entries=max_entries)
