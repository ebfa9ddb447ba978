"""Per-connection limits on what a client sends, free of I/O: the read loop feeds them a clock
value and acts on the answer.

`ErrorBudget` bounds rejected frames, `MessageRate` bounds messages. Both are charged once per
socket read (not per message), so the read loop's fast path stays a local counter.
"""

from __future__ import annotations

import math


class ErrorBudget:
    """Rejected frames allowed per minute before the connection is closed (1008)."""

    __slots__ = ("limit", "window", "count", "since")

    def __init__(self, limit: int, window: float = 60.0) -> None:
        self.limit = limit
        self.window = window
        self.count = 0
        self.since = 0.0

    def spend(self, now: float) -> bool:
        """Record one error; True when the budget is exhausted."""
        if now - self.since > self.window:
            self.since = now
            self.count = 0
        self.count += 1
        return self.count > self.limit


class MessageRate:
    """A token bucket for one connection's inbound messages: `rate` per second, `burst` at once.

    Over the limit the read loop stops reading for the time the bucket needs to refill, so the
    excess waits in the client's socket buffer (TCP backpressure): printd spends nothing on it.
    A client that stays over the limit for `close_after` seconds (every read finds it over, and
    the bucket never refills to half its burst in between: the client never eased off) is not
    bursting but flooding, and `spend` answers `math.inf`: close the connection (1008).
    """

    __slots__ = ("rate", "burst", "close_after", "tokens", "stamp", "over_since")

    def __init__(self, rate: float, burst: int, close_after: float, now: float) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.close_after = close_after
        self.tokens = float(burst)
        self.stamp = now
        self.over_since: float | None = None

    def spend(self, now: float, n: int) -> float:
        """Charge `n` messages read at `now`: 0.0 within the limit, else the seconds to pause
        reading, or `math.inf` once the client has been over the limit for `close_after`."""
        refilled = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        if refilled >= self.burst / 2:
            self.over_since = None  # the client eased off since the last read
        tokens = self.tokens = refilled - n
        self.stamp = now
        if tokens >= 0.0:
            return 0.0
        if self.over_since is None:
            self.over_since = now
        elif now - self.over_since >= self.close_after:
            return math.inf
        return -tokens / self.rate
