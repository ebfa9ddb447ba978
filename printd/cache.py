"""TTL cache with single-flight loading, for lookups that many requests repeat at once.

A burst of requests for the same cold key (say, a printer's configuration right after a
restart) must cost one store query, not one per request: the first caller loads, the others
wait for its result. When the store is down, an expired value is often better than an error,
so it can be served marked ``stale`` when the loader fails with one of the exceptions given as
``stale_on`` (the store being down), and only then.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

import trio

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


@dataclass(frozen=True, slots=True)
class CacheResult(Generic[V]):
    """A value with its provenance: ``hit`` if no load was waited for, ``stale`` if expired."""

    value: V
    stale: bool
    age: float
    hit: bool


class _Entry(Generic[V]):
    __slots__ = ("value", "loaded_at")

    def __init__(self, value: V, loaded_at: float) -> None:
        self.value = value
        self.loaded_at = loaded_at


class _Flight(Generic[V]):
    """One load in progress, shared by every caller that missed the same key meanwhile."""

    __slots__ = ("done", "entry", "stale", "error", "abandoned", "store")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.entry: _Entry[V] | None = None
        self.stale = False
        self.error: Exception | None = None
        self.abandoned = False  # the loading task was cancelled: waiters must retry
        self.store = True  # cleared by invalidate: the result may predate the invalidation

    def result(self, now: float) -> CacheResult[V]:
        if self.error is not None:
            raise self.error
        assert self.entry is not None
        return CacheResult(self.entry.value, self.stale, now - self.entry.loaded_at, hit=False)


class TTLCache(Generic[K, V]):
    """Values live ``ttl`` seconds; at most ``max_entries`` are kept, least recently used out.

    Expired values stay until evicted so they can be served stale when a reload fails. A hit
    is a dict lookup on the calling task: no task is spawned and, deliberately, it does not
    checkpoint.
    """

    def __init__(
        self,
        ttl: float = 60.0,
        max_entries: int = 10000,
        *,
        stale_on: tuple[type[Exception], ...] = (),
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        if not (math.isfinite(ttl) and ttl > 0):
            raise ValueError(f"ttl must be a finite number of seconds > 0, got {ttl!r}")
        if isinstance(max_entries, bool) or not isinstance(max_entries, int) or max_entries < 1:
            raise ValueError(f"max_entries must be an int >= 1, got {max_entries!r}")
        self.ttl = ttl
        self.max_entries = max_entries
        self.stale_on = stale_on
        self._clock = clock
        self._entries: OrderedDict[K, _Entry[V]] = OrderedDict()
        self._flights: dict[K, _Flight[V]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    async def get_or_load(self, key: K, loader: Callable[[], Awaitable[V]]) -> CacheResult[V]:
        """The cached value, or the result of one ``loader()`` shared by concurrent callers.

        A loader exception reaches every caller waiting on that load, unless it is one of
        ``stale_on`` (a dependency that is down, say) and an expired value exists: then they all
        get that with ``stale=True``. Any other exception (a bug) is never hidden behind stale
        data.
        If the loading task is cancelled, the callers waiting on it start a new load.
        """
        while True:
            now = self._clock()
            entry = self._entries.get(key)
            if entry is not None and now - entry.loaded_at < self.ttl:
                self._entries.move_to_end(key)
                return CacheResult(entry.value, False, now - entry.loaded_at, hit=True)
            flight = self._flights.get(key)
            if flight is None:
                return await self._load(key, loader)
            await flight.done.wait()
            if not flight.abandoned:
                return flight.result(self._clock())

    async def _load(self, key: K, loader: Callable[[], Awaitable[V]]) -> CacheResult[V]:
        flight: _Flight[V] = _Flight()
        self._flights[key] = flight
        try:
            try:
                value = await loader()
            except Exception as exc:
                previous = self._entries.get(key)
                if isinstance(exc, self.stale_on) and previous is not None:
                    flight.entry = previous
                    flight.stale = True
                else:
                    flight.error = exc
                    raise
            else:
                flight.entry = _Entry(value, self._clock())
                if flight.store:
                    self._store(key, flight.entry)
        except BaseException:
            if flight.error is None:
                flight.abandoned = True
            raise
        finally:
            if self._flights.get(key) is flight:
                del self._flights[key]
            flight.done.set()
        return flight.result(self._clock())

    def _store(self, key: K, entry: _Entry[V]) -> None:
        self._entries[key] = entry
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def invalidate(self, key: K) -> None:
        """Drop ``key``; a load already running for it is not cached, the next call reloads."""
        self._entries.pop(key, None)
        flight = self._flights.pop(key, None)
        if flight is not None:
            flight.store = False

    def clear(self) -> None:
        for key in list(self._flights):
            self.invalidate(key)
        self._entries.clear()
