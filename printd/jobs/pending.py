"""Requests sent to an agent that are waiting for their correlated reply.

``PendingRequests`` is the pure, bounded registry: it never grows past ``capacity`` (the
oldest request is evicted and handed back so its caller can be told) and ``sweep`` hands
back requests nobody answered within ``stale_after`` seconds. ``PendingWaiters`` is the trio
shell: one ``Waiter`` per request that a task can block on until the reply arrives.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, NoReturn, TypeVar

import trio

M = TypeVar("M")
V = TypeVar("V")


@dataclass(frozen=True, slots=True)
class PendingEntry(Generic[M]):
    correlation_id: str
    added_at: float
    meta: M | None = None

    def age(self, now: float) -> float:
        return now - self.added_at


@dataclass(frozen=True, slots=True)
class Evicted(Generic[M]):
    """A request pushed out because the registry was full; its caller must be failed."""

    entry: PendingEntry[M]

    @property
    def correlation_id(self) -> str:
        return self.entry.correlation_id


class PendingRequests(Generic[M]):
    """Bounded registry of outstanding requests, oldest first; O(1) add and resolve.

    Entries are kept in insertion order, which is age order as long as ``now`` never goes
    backwards, so eviction and ``sweep`` only ever look at the front.
    """

    def __init__(self, capacity: int = 1000, stale_after: float = 60.0) -> None:
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"capacity must be an int >= 1, got {capacity!r}")
        if not (math.isfinite(stale_after) and stale_after > 0):
            raise ValueError(f"stale_after must be a finite number of seconds > 0, got {stale_after!r}")
        self.capacity = capacity
        self.stale_after = stale_after
        self._entries: OrderedDict[str, PendingEntry[M]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, correlation_id: object) -> bool:
        return correlation_id in self._entries

    def add(self, correlation_id: str, now: float, meta: M | None = None) -> list[Evicted[M]]:
        """Track a new request; returns the requests evicted to make room (oldest first)."""
        if correlation_id in self._entries:
            raise ValueError(f"correlation id {correlation_id!r} is already pending")
        evicted: list[Evicted[M]] = []
        while len(self._entries) >= self.capacity:
            _, oldest = self._entries.popitem(last=False)
            evicted.append(Evicted(oldest))
        self._entries[correlation_id] = PendingEntry(correlation_id, now, meta)
        return evicted

    def get(self, correlation_id: str) -> PendingEntry[M] | None:
        return self._entries.get(correlation_id)

    def resolve(self, correlation_id: str) -> PendingEntry[M] | None:
        """Remove and return the request a reply belongs to; None for unknown or late replies."""
        return self._entries.pop(correlation_id, None)

    def discard(self, correlation_id: str) -> bool:
        """Forget a request whose caller gave up; True if it was pending."""
        return self._entries.pop(correlation_id, None) is not None

    def sweep(self, now: float) -> list[PendingEntry[M]]:
        """Remove and return the requests older than ``stale_after``."""
        stale: list[PendingEntry[M]] = []
        entries = self._entries
        while entries:
            oldest = next(iter(entries.values()))
            if now - oldest.added_at <= self.stale_after:
                break
            entries.popitem(last=False)
            stale.append(oldest)
        return stale

    def oldest_age(self, now: float) -> float | None:
        """Age of the oldest outstanding request (a health signal); None when empty."""
        if not self._entries:
            return None
        return now - next(iter(self._entries.values())).added_at


class PendingError(Exception):
    """A pending request ended without a reply."""

    def __init__(self, correlation_id: str, message: str) -> None:
        super().__init__(message)
        self.correlation_id = correlation_id


class PendingTimeout(PendingError, TimeoutError):
    """The waiting caller's own timeout expired."""


class PendingEvicted(PendingError):
    """Pushed out because too many requests were pending at once."""


class PendingStale(PendingError):
    """Nobody answered within ``stale_after`` seconds; found by the periodic sweep."""


class AgentGone(PendingError):
    """The agent the request was sent to disconnected before answering."""


class Waiter(Generic[V]):
    """One caller's handle on a pending request."""

    def __init__(self, owner: PendingWaiters[V], correlation_id: str) -> None:
        self.correlation_id = correlation_id
        self._owner = owner
        self._event = trio.Event()
        self._value: V | None = None
        self._error: PendingError | None = None

    @property
    def done(self) -> bool:
        return self._event.is_set()

    def _settle(self, value: V) -> None:
        self._value = value
        self._event.set()

    def _fail(self, error: PendingError) -> None:
        self._error = error
        self._event.set()

    async def wait(self, timeout: float | None = None) -> V:  # noqa: ASYNC109
        """The reply's value; raises PendingTimeout, PendingEvicted or PendingStale.

        ``timeout`` is a parameter rather than an enclosing ``trio.fail_after`` because
        expiring is an outcome of the request (PendingTimeout, request forgotten), not only a
        cancellation of the caller.

        If the waiting task is cancelled or times out, the request is forgotten so that the
        registry does not keep it until the stale sweep.
        """
        try:
            with trio.move_on_after(math.inf if timeout is None else timeout):
                await self._event.wait()
        finally:
            if not self._event.is_set():
                self._owner._forget(self)
        if not self._event.is_set():
            raise PendingTimeout(
                self.correlation_id,
                f"no reply for {self.correlation_id!r} within {timeout:g} s",
            )
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]  # set by _settle before the event


class PendingWaiters(Generic[V]):
    """Trio shell over ``PendingRequests``: callers wait, the reply path resolves."""

    def __init__(
        self,
        capacity: int = 1000,
        stale_after: float = 60.0,
        *,
        sweep_interval: float = 30.0,
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        if not (math.isfinite(sweep_interval) and sweep_interval > 0):
            raise ValueError(f"sweep_interval must be a finite number of seconds > 0, got {sweep_interval!r}")
        self.requests: PendingRequests[Waiter[V]] = PendingRequests(capacity, stale_after)
        self.sweep_interval = sweep_interval
        self._clock = clock

    def __len__(self) -> int:
        return len(self.requests)

    def __contains__(self, correlation_id: object) -> bool:
        return correlation_id in self.requests

    def register(self, correlation_id: str) -> Waiter[V]:
        """Start waiting for ``correlation_id``; register before sending to avoid a lost reply."""
        waiter = Waiter(self, correlation_id)
        for evicted in self.requests.add(correlation_id, self._clock(), waiter):
            if evicted.entry.meta is not None:
                evicted.entry.meta._fail(
                    PendingEvicted(
                        evicted.correlation_id,
                        f"{evicted.correlation_id!r} evicted: more than "
                        f"{self.requests.capacity} requests pending",
                    )
                )
        return waiter

    def resolve(self, correlation_id: str, value: V) -> bool:
        """Deliver a reply; False if nobody waits for it (unknown, late or duplicate)."""
        entry = self.requests.resolve(correlation_id)
        if entry is None or entry.meta is None:
            return False
        entry.meta._settle(value)
        return True

    def fail(self, correlation_id: str, error: PendingError) -> bool:
        """End a request with an error (e.g. the agent disconnected); False if unknown."""
        entry = self.requests.resolve(correlation_id)
        if entry is None or entry.meta is None:
            return False
        entry.meta._fail(error)
        return True

    def sweep(self) -> int:
        """Fail the requests older than ``stale_after``; returns how many."""
        stale = self.requests.sweep(self._clock())
        for entry in stale:
            if entry.meta is not None:
                entry.meta._fail(
                    PendingStale(
                        entry.correlation_id,
                        f"no reply for {entry.correlation_id!r} within {self.requests.stale_after:g} s",
                    )
                )
        return len(stale)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> NoReturn:
        """Sweep every ``sweep_interval`` seconds until cancelled."""
        task_status.started()
        while True:
            await trio.sleep(self.sweep_interval)
            self.sweep()

    def _forget(self, waiter: Waiter[V]) -> None:
        entry = self.requests.get(waiter.correlation_id)
        if entry is not None and entry.meta is waiter:
            self.requests.discard(waiter.correlation_id)
