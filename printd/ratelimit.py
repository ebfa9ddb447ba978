"""Rate limits for operator-triggered actions such as printer test pages.

``SlidingWindowLimiter`` is the pure core: an exact sliding-window log per key (the limits
are small, 5-10 per minute, so keeping every timestamp is cheaper than approximating), and
``hit_all`` the all-or-nothing check of several rules on it. A ``LimitCounter`` counts hits:
``LocalLimits`` in this process, or the cluster backend for the whole cluster (the same rule in
one Lua script on Redis). ``PrinterTestLimits`` is the policy combining a branch and a printer
limit.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import trio


@dataclass(frozen=True, slots=True)
class Decision:
    """Whether a hit is allowed, what is left of the limit, and when to come back if not."""

    allowed: bool
    remaining: int
    retry_after: float
    key: str = ""


def _check_limit(limit: int, window: float) -> None:
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"limit must be an int >= 1, got {limit!r}")
    if not window > 0:
        raise ValueError(f"window must be > 0 seconds, got {window!r}")


class _Log:
    __slots__ = ("stamps", "window")

    def __init__(self, window: float) -> None:
        self.stamps: deque[float] = deque()
        self.window = window

    def prune(self, now: float) -> None:
        # A hit at t stops counting at t + window exactly.
        horizon = now - self.window
        stamps = self.stamps
        while stamps and stamps[0] <= horizon:
            stamps.popleft()


class SlidingWindowLimiter:
    """Exact sliding-window log: at most ``limit`` hits per key in any ``window`` seconds.

    Denied hits are not recorded, so a client hammering a limit does not extend its own
    ban. Memory stays bounded: a key's log is pruned whenever it is touched, and ``sweep``
    (run automatically every ``sweep_interval`` seconds of clock time by ``hit``/``peek``)
    drops keys whose hits have all expired.
    """

    def __init__(self, *, sweep_interval: float = 60.0) -> None:
        if not sweep_interval > 0:
            raise ValueError(f"sweep_interval must be > 0 seconds, got {sweep_interval!r}")
        self._logs: dict[str, _Log] = {}
        self._sweep_interval = sweep_interval
        self._next_sweep: float | None = None

    def __len__(self) -> int:
        """Number of keys currently tracked."""
        return len(self._logs)

    def peek(self, key: str, limit: int, window: float, now: float) -> Decision:
        """What ``hit`` would decide now, without recording anything."""
        _check_limit(limit, window)
        self._maybe_sweep(now)
        log = self._logs.get(key)
        if log is None:
            return Decision(True, limit - 1, 0.0, key)
        log.window = window
        log.prune(now)
        return self._decide(log, key, limit, now)

    def hit(self, key: str, limit: int, window: float, now: float) -> Decision:
        """Record one hit for ``key`` if the limit allows it."""
        _check_limit(limit, window)
        self._maybe_sweep(now)
        log = self._logs.get(key)
        if log is None:
            log = self._logs[key] = _Log(window)
        log.window = window
        log.prune(now)
        decision = self._decide(log, key, limit, now)
        if decision.allowed:
            log.stamps.append(now)
        return decision

    @staticmethod
    def _decide(log: _Log, key: str, limit: int, now: float) -> Decision:
        used = len(log.stamps)
        if used < limit:
            return Decision(True, limit - used - 1, 0.0, key)
        # The hit that must expire before one more fits (more than one if the limit shrank).
        freeing = log.stamps[used - limit]
        return Decision(False, 0, max(0.0, freeing + log.window - now), key)

    def sweep(self, now: float) -> int:
        """Prune every key and forget the idle ones; returns how many keys were dropped."""
        idle = []
        for key, log in self._logs.items():
            log.prune(now)
            if not log.stamps:
                idle.append(key)
        for key in idle:
            del self._logs[key]
        self._next_sweep = now + self._sweep_interval
        return len(idle)

    def _maybe_sweep(self, now: float) -> None:
        if self._next_sweep is None:
            self._next_sweep = now + self._sweep_interval
        elif now >= self._next_sweep:
            self.sweep(now)


@dataclass(frozen=True, slots=True)
class LimitRule:
    """One rate limit to check and consume: at most `limit` hits of `key` per `window` seconds."""

    key: str
    limit: int
    window: float


def hit_all(limiter: SlidingWindowLimiter, rules: Sequence[LimitRule], now: float) -> Decision:
    """Check every rule, then consume one unit of each only if all allow: the most restrictive
    decision. A denial consumes nothing, so a printer over its limit does not eat into its
    branch's budget. No await between the steps, so it is atomic within one trio run."""
    peeked = [limiter.peek(r.key, r.limit, r.window, now) for r in rules]
    denied = [d for d in peeked if not d.allowed]
    if denied:
        return max(denied, key=lambda d: d.retry_after)
    consumed = [limiter.hit(r.key, r.limit, r.window, now) for r in rules]
    return min(consumed, key=lambda d: d.remaining)


class LimitCounter(Protocol):
    """Where hits are counted: this process (`LocalLimits`), or the whole cluster (the cluster
    backend's `hit_limits`, one atomic script on Redis)."""

    async def hit_limits(self, rules: Sequence[LimitRule]) -> Decision: ...


class LocalLimits:
    """Hits counted in this process, on the trio clock."""

    def __init__(self, *, clock: Callable[[], float] = trio.current_time) -> None:
        self.limiter = SlidingWindowLimiter()
        self._clock = clock

    async def hit_limits(self, rules: Sequence[LimitRule]) -> Decision:
        return hit_all(self.limiter, rules, self._clock())


@dataclass(frozen=True, slots=True)
class PrinterTestQuota:
    """Test pages allowed per branch and per printer within ``window`` seconds."""

    branch_limit: int = 10
    printer_limit: int = 5
    window: float = 60.0

    def __post_init__(self) -> None:
        _check_limit(self.branch_limit, self.window)
        _check_limit(self.printer_limit, self.window)


class PrinterTestLimits:
    """Test pages are limited per branch and per printer; both must allow a request, and a
    refused request consumes neither (one atomic check-and-hit of both rules)."""

    def __init__(self, counter: LimitCounter, quota: PrinterTestQuota | None = None) -> None:
        self.counter = counter
        self.quota = quota if quota is not None else PrinterTestQuota()

    # Keys join ids with ":"; ids cannot contain ":" (printd.inputs), so no two tenants' keys
    # are equal (company "acme" cannot spend the quota of company "acme:eu").
    @staticmethod
    def branch_key(company: str, branch: str) -> str:
        return f"branch:{company}:{branch}"

    @staticmethod
    def printer_key(company: str, printer_id: str) -> str:
        return f"printer:{company}:{printer_id}"

    async def hit(self, company: str, branch: str, printer_id: str) -> Decision:
        """The most restrictive decision of the two limits; consumes both only if both allow."""
        q = self.quota
        return await self.counter.hit_limits(
            [
                LimitRule(self.branch_key(company, branch), q.branch_limit, q.window),
                LimitRule(self.printer_key(company, printer_id), q.printer_limit, q.window),
            ]
        )
