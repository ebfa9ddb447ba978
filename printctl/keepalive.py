"""How an agent keeps its connection to printd: when to reconnect, when to call a connection dead.

Two pure policies, fed events and clock values, so MockClock tests drive them through hours of
outages in milliseconds; `printctl agent` executes what they decide. Third-party agents can copy
them (docs/protocol.md §7 and §9 describe the same rules).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from enum import StrEnum

from printd.protocol import CLOSE_GOING_AWAY, CLOSE_REPLACED

#: "Reconnect now, to any instance": printd hands agents over (drain, rebalance). Like 1001.
#: (docs/protocol.md §10; the cluster work adds it to printd.protocol.)
CLOSE_RECONNECT_NOW = 4012
RECONNECT_NOW = frozenset({CLOSE_GOING_AWAY, CLOSE_RECONNECT_NOW})

BACKOFF_INITIAL = 0.5
BACKOFF_CAP = 30.0
EARLY_CAP = 5.0  # the ceiling of the first attempts after a hello: a restart is over in seconds
EARLY_ATTEMPTS = 6  # 0.5, 1, 2, 4, 5, 5 s ceilings; then up to the cap
RECONNECT_NOW_JITTER = 0.25  # 1001/4012: reconnect after 0-250 ms, spread over the fleet


class Reconnect:
    """Delays between connection attempts: capped exponential backoff with full jitter,
    uniform(0, min(cap, initial * 2**failures)).

    - a `hello` (printd accepted us) resets the failures, so one late reconnect does not make the
      next printd restart wait long;
    - the first EARLY_ATTEMPTS after that are capped at EARLY_CAP, then the full cap applies (a
      long outage is not hammered);
    - 1001 and 4012 are not failures: reconnect at once, with 0-250 ms of jitter;
    - 4009 (another connection took over our agent id) escalates on its own counter that a hello
      does not reset: two agents sharing one token back off instead of replacing each other twice
      a second.
    Full jitter spreads a fleet that lost printd at the same moment.
    """

    def __init__(
        self,
        initial: float = BACKOFF_INITIAL,
        cap: float = BACKOFF_CAP,
        *,
        early_cap: float = EARLY_CAP,
        early_attempts: int = EARLY_ATTEMPTS,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.initial = initial
        self.cap = max(cap, initial)
        self.early_cap = min(max(early_cap, initial), self.cap)
        self.early_attempts = early_attempts
        self.rng = rng
        self.failures = 0  # since the last hello
        self.replaced = 0  # 4009 closes in a row

    def ceiling(self) -> float:
        cap = self.early_cap if self.failures < self.early_attempts else self.cap
        return float(min(cap, self.initial * 2 ** min(self.failures, 62)))

    def hello(self) -> None:
        self.failures = 0

    def failed(self) -> float:
        """A connection attempt failed (refused, timed out, an HTTP error): the delay before the next."""
        delay = self.rng() * self.ceiling()
        self.failures += 1
        return delay

    def closed(self, code: int | None) -> float:
        """A connection ended with this close code (None: lost without one): the delay."""
        if code in RECONNECT_NOW:
            self.replaced = 0
            return self.rng() * RECONNECT_NOW_JITTER
        if code == CLOSE_REPLACED:
            self.replaced += 1
            return self.rng() * min(self.cap, self.initial * 2 ** min(self.replaced, 62))
        self.replaced = 0
        return self.failed()


class Check(StrEnum):
    WAIT = "wait"
    PING = "ping"
    DEAD = "dead"


class Liveness:
    """Is printd still at the other end? A connection dropped silently (a NAT or firewall that
    forgot the flow, a cable) shows nothing to a client that only waits. So: after `interval`
    seconds without a message from printd, send an app-level `ping` with an id (printd answers
    `ack`); no message within `timeout` seconds after it means the connection is dead. Any
    message counts as an answer. A dead connection is noticed at most `interval + timeout`
    seconds after printd last spoke.
    """

    def __init__(self, interval: float, timeout: float, now: float) -> None:
        self.interval = interval
        self.timeout = timeout
        self.last_heard = now
        self.ping_id = 0
        self.ping_sent_at: float | None = None

    def heard(self, now: float) -> None:
        self.last_heard = now
        self.ping_sent_at = None

    def pinged(self, now: float) -> int:
        """A ping is going out now; its id."""
        self.ping_id += 1
        self.ping_sent_at = now
        return self.ping_id

    def check(self, now: float) -> tuple[Check, float]:
        """What to do now, and when to check again."""
        if self.ping_sent_at is not None:
            deadline = self.ping_sent_at + self.timeout
            return (Check.DEAD, now) if now >= deadline else (Check.WAIT, deadline)
        quiet_until = self.last_heard + self.interval
        return (Check.PING, now) if now >= quiet_until else (Check.WAIT, quiet_until)
