"""The circuit breaker state machine and its configuration, free of I/O.

``CircuitBreaker`` is fed clock values (``now``, seconds) and call outcomes and answers with
decisions, so every transition can be tested without sleeping. It imports neither trio nor
Prometheus: `printd.config` (and so every `printctl` command) loads only this module.

The semantics follow resilience4j, with the original printd rule kept as the default:

* CLOSED opens when ``failure_threshold`` failures happened within ``monitoring_window``
  seconds, or (optional) when the failure rate / slow-call rate over a sliding window reaches
  its threshold once ``minimum_calls`` calls were seen.
* OPEN rejects calls until ``open_timeout`` has passed, then becomes HALF_OPEN lazily (the
  next time the breaker is asked, there is no timer). Where the dependency can be probed
  cheaply (the store, Redis), a successful probe closes it at once (``recover``).
* HALF_OPEN admits at most ``half_open_max_calls`` trial calls at a time; one failed (or
  slow) trial reopens, ``success_threshold`` successful trials close.
* FORCED_OPEN and DISABLED are operator states, left only through ``reset``.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any, Literal

#: Hint given to callers rejected because every HALF_OPEN trial slot is taken: the next
#: decision comes as soon as a trial call reports back, which is usually quick.
HALF_OPEN_RETRY_AFTER = 1.0


def _require(ok: bool, field_name: str, why: str) -> None:
    if not ok:
        raise ValueError(f"BreakerConfig.{field_name} {why}")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_positive_number(value: object) -> bool:
    return (
        isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value > 0
    )


def _is_percent(value: object) -> bool:
    return _is_positive_number(value) and isinstance(value, int | float) and value <= 100


@dataclass(frozen=True, slots=True)
class BreakerConfig:
    """How eagerly a circuit opens and how it recovers; defaults are the original system's."""

    failure_threshold: int = 5
    success_threshold: int = 2
    open_timeout: float = 60.0
    monitoring_window: float = 300.0
    failure_rate_threshold: float | None = None
    window_type: Literal["count", "time"] = "count"
    window_size: int = 100
    minimum_calls: int = 10
    slow_call_duration: float | None = None
    slow_call_rate_threshold: float | None = None
    half_open_max_calls: int = 2

    def __post_init__(self) -> None:
        _require(
            _is_int(self.failure_threshold) and self.failure_threshold >= 1,
            "failure_threshold",
            "must be an int >= 1 (failures that open the circuit)",
        )
        _require(
            _is_int(self.success_threshold) and self.success_threshold >= 1,
            "success_threshold",
            "must be an int >= 1 (trial successes that close the circuit)",
        )
        _require(
            _is_positive_number(self.open_timeout),
            "open_timeout",
            "must be a finite number of seconds > 0",
        )
        _require(
            _is_positive_number(self.monitoring_window),
            "monitoring_window",
            "must be a finite number of seconds > 0",
        )
        _require(
            self.failure_rate_threshold is None or _is_percent(self.failure_rate_threshold),
            "failure_rate_threshold",
            "must be None or a percentage in (0, 100]",
        )
        _require(
            self.window_type in ("count", "time"),
            "window_type",
            "must be 'count' (last N calls) or 'time' (last N seconds)",
        )
        _require(
            _is_int(self.window_size) and self.window_size >= 1,
            "window_size",
            "must be an int >= 1 (calls for a count window, seconds for a time window)",
        )
        _require(
            _is_int(self.minimum_calls) and self.minimum_calls >= 1,
            "minimum_calls",
            "must be an int >= 1",
        )
        _require(
            self.window_type != "count" or self.minimum_calls <= self.window_size,
            "minimum_calls",
            f"({self.minimum_calls}) must not exceed window_size ({self.window_size}) for a count "
            "window, otherwise the rate could never be evaluated",
        )
        _require(
            self.slow_call_duration is None or _is_positive_number(self.slow_call_duration),
            "slow_call_duration",
            "must be None or a finite number of seconds > 0",
        )
        _require(
            self.slow_call_rate_threshold is None or _is_percent(self.slow_call_rate_threshold),
            "slow_call_rate_threshold",
            "must be None or a percentage in (0, 100]",
        )
        _require(
            self.slow_call_rate_threshold is None or self.slow_call_duration is not None,
            "slow_call_rate_threshold",
            "needs slow_call_duration, which defines what a slow call is",
        )
        _require(
            _is_int(self.half_open_max_calls) and self.half_open_max_calls >= 1,
            "half_open_max_calls",
            "must be an int >= 1 (concurrent trial calls while half-open)",
        )

    def summary(self) -> dict[str, Any]:
        """Plain-data view for snapshots and the operator CLI."""
        return asdict(self)


class CircuitState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"
    FORCED_OPEN = "forced_open"
    DISABLED = "disabled"


class CallOutcome(StrEnum):
    """How one call ended, as counted in ``calls_by_outcome`` and the Prometheus counter.

    A call that raised is a FAILURE whatever its duration; SLOW is a call that succeeded but
    took longer than ``slow_call_duration``.
    """

    SUCCESS = "success"
    FAILURE = "failure"
    SLOW = "slow"
    REJECTED = "rejected"


@dataclass(frozen=True, slots=True)
class Admission:
    """The breaker's answer to ``try_acquire``.

    Hand it back to ``on_success``/``on_failure``/``release``: ``generation`` lets the breaker
    recognise a report for a call admitted before the last transition (which must not count
    toward the new state), and ``trial`` marks a HALF_OPEN trial slot to give back.
    """

    allowed: bool
    state: CircuitState
    generation: int
    retry_after: float = 0.0
    trial: bool = False


TransitionListener = Callable[[str, CircuitState, CircuitState, float, str], None]
OutcomeListener = Callable[[str, CallOutcome, float], None]


class _CountWindow:
    """The last ``size`` calls, with running totals so a rate costs O(1)."""

    def __init__(self, size: int) -> None:
        self._calls: deque[tuple[bool, bool]] = deque(maxlen=size)
        self._failures = 0
        self._slow = 0

    def record(self, now: float, failed: bool, slow: bool) -> None:
        if len(self._calls) == self._calls.maxlen:
            old_failed, old_slow = self._calls[0]
            self._failures -= old_failed
            self._slow -= old_slow
        self._calls.append((failed, slow))
        self._failures += failed
        self._slow += slow

    def totals(self, now: float) -> tuple[int, int, int]:
        return len(self._calls), self._failures, self._slow


class _TimeWindow:
    """Calls of the last ``size`` seconds in one-second buckets, so memory is O(size)."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._buckets: deque[list[int]] = deque()  # [second, calls, failures, slow]
        self._calls = 0
        self._failures = 0
        self._slow = 0

    def _prune(self, now: float) -> None:
        oldest_kept = math.floor(now) - self._size + 1
        while self._buckets and self._buckets[0][0] < oldest_kept:
            _, calls, failures, slow = self._buckets.popleft()
            self._calls -= calls
            self._failures -= failures
            self._slow -= slow

    def record(self, now: float, failed: bool, slow: bool) -> None:
        self._prune(now)
        second = math.floor(now)
        if not self._buckets or self._buckets[-1][0] != second:
            self._buckets.append([second, 0, 0, 0])
        bucket = self._buckets[-1]
        bucket[1] += 1
        bucket[2] += failed
        bucket[3] += slow
        self._calls += 1
        self._failures += failed
        self._slow += slow

    def totals(self, now: float) -> tuple[int, int, int]:
        self._prune(now)
        return self._calls, self._failures, self._slow


class CircuitBreaker:
    """The breaker state machine for one dependency; pure, driven by explicit clock values."""

    def __init__(self, name: str, config: BreakerConfig | None = None) -> None:
        self.name = name
        self.config = config if config is not None else BreakerConfig()
        self._state = CircuitState.CLOSED
        self._generation = 0
        self._last_transition_at: float | None = None
        self._opened_at = 0.0
        self._listeners: list[TransitionListener] = []
        self._outcome_listeners: list[OutcomeListener] = []
        # lifetime totals (observation only)
        self._outcomes = dict.fromkeys(CallOutcome, 0)
        self._failures = 0
        self._successes = 0
        # decision state, cleared when entering CLOSED or HALF_OPEN
        self._recent_failures: deque[float] = deque(maxlen=self.config.failure_threshold)
        self._window = self._new_window()
        self._consecutive_failures = 0
        self._consecutive_successes = 0
        self._trials_in_flight = 0
        self._trial_successes = 0

    def _new_window(self) -> _CountWindow | _TimeWindow:
        if self.config.window_type == "time":
            return _TimeWindow(self.config.window_size)
        return _CountWindow(self.config.window_size)

    # -- listeners -----------------------------------------------------------------------

    def add_listener(self, listener: TransitionListener) -> None:
        """Call ``listener(name, old_state, new_state, now, reason)`` after each transition.

        Listeners run synchronously once the breaker is consistent; an exception from one
        propagates to whoever caused the transition.
        """
        self._listeners.append(listener)

    def remove_listener(self, listener: TransitionListener) -> None:
        self._listeners.remove(listener)

    def add_outcome_listener(self, listener: OutcomeListener) -> None:
        """Call ``listener(name, outcome, now)`` for every reported or rejected call (metrics)."""
        self._outcome_listeners.append(listener)

    # -- state ---------------------------------------------------------------------------

    @property
    def state(self) -> CircuitState:
        """State as of the last call; use ``state_at`` to let OPEN expire into HALF_OPEN."""
        return self._state

    def state_at(self, now: float) -> CircuitState:
        """Current state, applying the lazy OPEN -> HALF_OPEN transition first."""
        self._advance(now)
        return self._state

    def time_until_half_open(self, now: float) -> float | None:
        """Seconds until an OPEN circuit admits trial calls; None in every other state."""
        self._advance(now)
        if self._state is not CircuitState.OPEN:
            return None
        return max(0.0, self._opened_at + self.config.open_timeout - now)

    def failure_rate(self, now: float) -> float | None:
        """Failure percentage over the sliding window, None until ``minimum_calls`` were seen."""
        calls, failures, _ = self._window.totals(now)
        return self._rate(calls, failures)

    def slow_call_rate(self, now: float) -> float | None:
        """Slow-call percentage over the sliding window, None until ``minimum_calls``."""
        calls, _, slow = self._window.totals(now)
        return self._rate(calls, slow)

    def _rate(self, calls: int, count: int) -> float | None:
        if calls == 0 or calls < self.config.minimum_calls:
            return None
        return 100.0 * count / calls

    def _advance(self, now: float) -> None:
        if self._state is CircuitState.OPEN and now - self._opened_at >= self.config.open_timeout:
            self._transition(CircuitState.HALF_OPEN, now, "open_timeout elapsed")

    def _transition(self, new: CircuitState, now: float, reason: str) -> None:
        old = self._state
        self._state = new
        self._generation += 1
        self._last_transition_at = now
        if new in (CircuitState.CLOSED, CircuitState.HALF_OPEN):
            self._recent_failures.clear()
            self._window = self._new_window()
            self._consecutive_failures = 0
            self._consecutive_successes = 0
        self._trials_in_flight = 0
        self._trial_successes = 0
        if new is CircuitState.OPEN:
            self._opened_at = now
        if old is not new:
            for listener in list(self._listeners):
                listener(self.name, old, new, now, reason)

    def _notify_outcome(self, outcome: CallOutcome, now: float) -> None:
        for listener in list(self._outcome_listeners):
            listener(self.name, outcome, now)

    # -- calls ---------------------------------------------------------------------------

    def try_acquire(self, now: float) -> Admission:
        """Decide whether one call may go to the dependency now."""
        self._advance(now)
        state = self._state
        if state in (CircuitState.CLOSED, CircuitState.DISABLED):
            return Admission(True, state, self._generation)
        if state is CircuitState.HALF_OPEN:
            if self._trials_in_flight < self.config.half_open_max_calls:
                self._trials_in_flight += 1
                return Admission(True, state, self._generation, trial=True)
            return self._reject(now, HALF_OPEN_RETRY_AFTER)
        if state is CircuitState.OPEN:
            return self._reject(now, self._opened_at + self.config.open_timeout - now)
        # FORCED_OPEN has no timeout; open_timeout is the back-off hint we can honestly give.
        return self._reject(now, self.config.open_timeout)

    def _reject(self, now: float, retry_after: float) -> Admission:
        self._outcomes[CallOutcome.REJECTED] += 1
        self._notify_outcome(CallOutcome.REJECTED, now)
        return Admission(False, self._state, self._generation, retry_after=max(0.0, retry_after))

    def on_success(self, now: float, duration: float, admission: Admission | None = None) -> None:
        """Report that an admitted call returned; a slow one may still count against the circuit.

        Without ``admission`` the call is assumed to belong to the current state.
        """
        self._record(now, duration, False, admission)

    def on_failure(self, now: float, duration: float, admission: Admission | None = None) -> None:
        """Report that an admitted call failed."""
        self._record(now, duration, True, admission)

    def release(self, now: float, admission: Admission | None = None) -> None:
        """Give back an admission whose call ended without an outcome (e.g. it was cancelled).

        Nothing is counted; a HALF_OPEN trial slot becomes free again.
        """
        self._advance(now)
        if self._is_current_trial(admission):
            self._trials_in_flight -= 1

    def _is_current(self, admission: Admission | None) -> bool:
        return admission is None or admission.generation == self._generation

    def _is_current_trial(self, admission: Admission | None) -> bool:
        return (
            self._state is CircuitState.HALF_OPEN
            and self._is_current(admission)
            and (admission is None or admission.trial)
            and self._trials_in_flight > 0
        )

    def _record(self, now: float, duration: float, error: bool, admission: Admission | None) -> None:
        self._advance(now)
        config = self.config
        slow = config.slow_call_duration is not None and duration > config.slow_call_duration
        # resilience4j: without a slow-call rate threshold, a slow call is simply a failure.
        failed = error or (slow and config.slow_call_rate_threshold is None)
        outcome = CallOutcome.FAILURE if error else CallOutcome.SLOW if slow else CallOutcome.SUCCESS
        self._outcomes[outcome] += 1
        if failed:
            self._failures += 1
        else:
            self._successes += 1
        was_trial = self._is_current_trial(admission)
        if was_trial:
            self._trials_in_flight -= 1
        # Reports from an earlier generation (admitted before a transition or reset) and
        # reports while disabled or open are tallied above but never steer the state.
        if self._is_current(admission):
            self._steer(now, failed, slow, was_trial)
        self._notify_outcome(outcome, now)

    def _steer(self, now: float, failed: bool, slow: bool, was_trial: bool) -> None:
        if self._state is CircuitState.CLOSED:
            self._count(failed)
            self._window.record(now, failed, slow)
            if failed:
                self._recent_failures.append(now)
            reason = self._trip_reason(now)
            if reason is not None:
                self._transition(CircuitState.OPEN, now, reason)
        elif self._state is CircuitState.HALF_OPEN and was_trial:
            self._count(failed)
            if failed or slow:
                self._transition(
                    CircuitState.OPEN, now, "trial call failed" if failed else "trial call was slow"
                )
            else:
                self._trial_successes += 1
                if self._trial_successes >= self.config.success_threshold:
                    self._transition(
                        CircuitState.CLOSED, now, f"{self._trial_successes} trial calls succeeded"
                    )

    def _count(self, failed: bool) -> None:
        if failed:
            self._consecutive_failures += 1
            self._consecutive_successes = 0
        else:
            self._consecutive_successes += 1
            self._consecutive_failures = 0

    def _trip_reason(self, now: float) -> str | None:
        config = self.config
        recent = self._recent_failures
        if len(recent) == config.failure_threshold and now - recent[0] <= config.monitoring_window:
            return f"{len(recent)} failures within {config.monitoring_window:g} s"
        calls, failures, slow = self._window.totals(now)
        failure_rate = self._rate(calls, failures)
        if (
            config.failure_rate_threshold is not None
            and failure_rate is not None
            and failure_rate >= config.failure_rate_threshold
        ):
            return (
                f"failure rate {failure_rate:.1f}% >= {config.failure_rate_threshold:g}% over {calls} calls"
            )
        slow_rate = self._rate(calls, slow)
        if (
            config.slow_call_rate_threshold is not None
            and slow_rate is not None
            and slow_rate >= config.slow_call_rate_threshold
        ):
            return (
                f"slow call rate {slow_rate:.1f}% >= {config.slow_call_rate_threshold:g}% over {calls} calls"
            )
        return None

    def reconfigure(self, config: BreakerConfig, now: float) -> None:
        """New thresholds (a reload): the state is kept, the counting starts again under the
        new rules."""
        if config == self.config:
            return
        self.config = config
        self._recent_failures = deque(self._recent_failures, maxlen=config.failure_threshold)
        self._window = self._new_window()
        self._advance(now)

    def recover(self, now: float, reason: str) -> bool:
        """An active probe found the dependency answering: an OPEN (or HALF_OPEN) circuit
        closes now instead of waiting out ``open_timeout``. True when it closed."""
        self._advance(now)
        if self._state in (CircuitState.OPEN, CircuitState.HALF_OPEN):
            self._transition(CircuitState.CLOSED, now, reason)
            return True
        return False

    # -- operator actions ----------------------------------------------------------------

    def reset(self, now: float) -> None:
        """Back to CLOSED with empty counters (lifetime totals are kept)."""
        self._transition(CircuitState.CLOSED, now, "reset")

    def force_open(self, now: float) -> None:
        """Reject every call until ``reset``, e.g. while a dependency is under maintenance."""
        if self._state is not CircuitState.FORCED_OPEN:
            self._transition(CircuitState.FORCED_OPEN, now, "forced open")

    def disable(self, now: float) -> None:
        """Admit every call and never open until ``reset``; outcomes are only tallied."""
        if self._state is not CircuitState.DISABLED:
            self._transition(CircuitState.DISABLED, now, "disabled")

    def snapshot(self, now: float) -> dict[str, Any]:
        """Plain-data view for the admin API, printctl and tests."""
        self._advance(now)
        calls, failures, slow = self._window.totals(now)
        return {
            "name": self.name,
            "state": self._state.value,
            "failures": self._failures,
            "successes": self._successes,
            "consecutive_failures": self._consecutive_failures,
            "consecutive_successes": self._consecutive_successes,
            "failure_rate": self._rate(calls, failures),
            "slow_call_rate": self._rate(calls, slow),
            "window_calls": calls,
            "rejected": self._outcomes[CallOutcome.REJECTED],
            "calls_by_outcome": {outcome.value: n for outcome, n in self._outcomes.items()},
            "half_open_calls_in_flight": self._trials_in_flight,
            "time_until_half_open": self.time_until_half_open(now),
            "last_transition_at": self._last_transition_at,
            "config": self.config.summary(),
        }
