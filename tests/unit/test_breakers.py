from __future__ import annotations

import math
from typing import Any, Literal

import pytest
import trio
import trio.testing
from prometheus_client import CollectorRegistry

from printd.breakers.core import (
    HALF_OPEN_RETRY_AFTER,
    BreakerConfig,
    CallOutcome,
    CircuitBreaker,
    CircuitState,
)
from printd.breakers.metrics import BreakerMetrics
from printd.breakers.shell import Circuit, CircuitOpenError, CircuitRegistry

CLOSED = CircuitState.CLOSED
OPEN = CircuitState.OPEN
HALF_OPEN = CircuitState.HALF_OPEN


def call(breaker: CircuitBreaker, now: float, *, ok: bool, duration: float = 0.01) -> None:
    admission = breaker.try_acquire(now)
    assert admission.allowed, f"call at {now} was rejected in {breaker.state}"
    if ok:
        breaker.on_success(now, duration, admission)
    else:
        breaker.on_failure(now, duration, admission)


def opened_breaker(config: BreakerConfig | None = None, at: float = 0.0) -> CircuitBreaker:
    breaker = CircuitBreaker("store", config or BreakerConfig())
    for _ in range(breaker.config.failure_threshold):
        call(breaker, at, ok=False)
    assert breaker.state_at(at) is OPEN
    return breaker


class Transitions:
    def __init__(self) -> None:
        self.seen: list[tuple[str, CircuitState, CircuitState, float, str]] = []

    def __call__(self, name: str, old: CircuitState, new: CircuitState, now: float, reason: str) -> None:
        self.seen.append((name, old, new, now, reason))

    @property
    def pairs(self) -> list[tuple[CircuitState, CircuitState]]:
        return [(old, new) for _, old, new, _, _ in self.seen]


# -- configuration ----------------------------------------------------------------------


def test_defaults_are_the_original_system() -> None:
    config = BreakerConfig()
    assert (config.failure_threshold, config.success_threshold) == (5, 2)
    assert (config.open_timeout, config.monitoring_window) == (60.0, 300.0)
    assert config.failure_rate_threshold is None
    assert config.slow_call_duration is None
    assert config.half_open_max_calls == 2


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("failure_threshold", 0),
        ("failure_threshold", True),
        ("success_threshold", 0),
        ("open_timeout", 0.0),
        ("open_timeout", math.inf),
        ("monitoring_window", -1.0),
        ("failure_rate_threshold", 0.0),
        ("failure_rate_threshold", 101.0),
        ("window_type", "sliding"),
        ("window_size", 0),
        ("minimum_calls", 0),
        ("minimum_calls", 101),
        ("slow_call_duration", 0.0),
        ("slow_call_rate_threshold", 50.0),  # without slow_call_duration
        ("half_open_max_calls", 0),
    ],
)
def test_invalid_config_names_the_field(field: str, value: Any) -> None:
    with pytest.raises(ValueError, match=field):
        BreakerConfig(**{field: value})


def test_time_window_allows_minimum_calls_above_window_size() -> None:
    config = BreakerConfig(window_type="time", window_size=5, minimum_calls=50)
    assert config.minimum_calls == 50


# -- CLOSED -> OPEN by count --------------------------------------------------------------


def test_opens_after_threshold_failures_within_window() -> None:
    breaker = CircuitBreaker("store")
    for t in (0.0, 10.0, 20.0, 30.0):
        call(breaker, t, ok=False)
    assert breaker.state_at(30.0) is CLOSED
    call(breaker, 300.0, ok=False)  # fifth failure, first one exactly 300 s ago
    assert breaker.state_at(300.0) is OPEN


def test_successes_do_not_clear_the_windowed_count() -> None:
    breaker = CircuitBreaker("store")
    for t in range(5):
        call(breaker, float(t), ok=True)
        call(breaker, float(t), ok=False)
    assert breaker.state_at(5.0) is OPEN


def test_failures_outside_monitoring_window_do_not_count() -> None:
    breaker = CircuitBreaker("store")
    for t in (0.0, 100.0, 200.0, 250.0):
        call(breaker, t, ok=False)
    call(breaker, 300.5, ok=False)  # the failure at t=0 left the window
    assert breaker.state_at(300.5) is CLOSED
    call(breaker, 301.0, ok=False)  # five failures within [100, 301]
    assert breaker.state_at(301.0) is OPEN


def test_open_rejects_with_time_left() -> None:
    breaker = opened_breaker(at=100.0)
    admission = breaker.try_acquire(142.0)
    assert not admission.allowed
    assert admission.state is OPEN
    assert admission.retry_after == pytest.approx(18.0)
    assert breaker.snapshot(142.0)["rejected"] == 1


# -- OPEN -> HALF_OPEN -> CLOSED / OPEN -------------------------------------------------


def test_open_becomes_half_open_lazily_after_timeout() -> None:
    breaker = opened_breaker(at=0.0)
    assert breaker.state_at(59.9) is OPEN
    assert breaker.state is OPEN  # nothing happens without being asked
    assert breaker.state_at(60.0) is HALF_OPEN


def test_half_open_closes_after_success_threshold() -> None:
    breaker = opened_breaker(at=0.0)
    call(breaker, 61.0, ok=True)
    assert breaker.state_at(61.0) is HALF_OPEN
    call(breaker, 62.0, ok=True)
    assert breaker.state_at(62.0) is CLOSED
    # a fresh CLOSED period: the five old failures are forgotten
    for _ in range(4):
        call(breaker, 63.0, ok=False)
    assert breaker.state_at(63.0) is CLOSED


def test_half_open_reopens_on_a_failed_trial() -> None:
    breaker = opened_breaker(at=0.0)
    call(breaker, 61.0, ok=True)
    call(breaker, 70.0, ok=False)
    assert breaker.state_at(70.0) is OPEN
    assert breaker.try_acquire(71.0).retry_after == pytest.approx(59.0)
    assert breaker.state_at(130.0) is HALF_OPEN


def test_half_open_admits_bounded_trial_calls() -> None:
    breaker = opened_breaker(at=0.0)
    first = breaker.try_acquire(60.0)
    second = breaker.try_acquire(60.0)
    third = breaker.try_acquire(60.0)
    assert first.allowed and first.trial
    assert second.allowed and second.trial
    assert not third.allowed
    assert third.state is HALF_OPEN
    assert third.retry_after == HALF_OPEN_RETRY_AFTER
    breaker.on_success(61.0, 1.0, first)  # a finished trial frees its slot
    assert breaker.try_acquire(61.0).allowed
    assert not breaker.try_acquire(61.0).allowed


def test_released_trial_frees_its_slot_without_counting() -> None:
    breaker = opened_breaker(at=0.0)
    first = breaker.try_acquire(60.0)
    breaker.try_acquire(60.0)
    breaker.release(60.5, first)
    assert breaker.snapshot(60.5)["half_open_calls_in_flight"] == 1
    assert breaker.try_acquire(60.5).allowed
    assert breaker.snapshot(60.5)["calls_by_outcome"]["success"] == 0


def test_report_from_an_earlier_generation_does_not_steer_the_state() -> None:
    breaker = CircuitBreaker("store")
    late = [breaker.try_acquire(0.0) for _ in range(3)]
    for _ in range(5):
        call(breaker, 1.0, ok=False)
    assert breaker.state_at(1.0) is OPEN
    breaker.on_failure(2.0, 2.0, late[0])  # must not re-arm the open timeout
    assert breaker.time_until_half_open(2.0) == pytest.approx(59.0)
    trial = breaker.try_acquire(61.0)
    breaker.on_success(62.0, 62.0, late[1])  # neither a trial success nor a freed slot
    breaker.on_success(62.0, 62.0, late[2])
    assert breaker.state_at(62.0) is HALF_OPEN
    assert breaker.snapshot(62.0)["half_open_calls_in_flight"] == 1
    breaker.on_success(63.0, 1.0, trial)
    assert breaker.state_at(63.0) is HALF_OPEN  # one real trial success out of two
    # ... but the late reports are still tallied
    assert breaker.snapshot(63.0)["calls_by_outcome"]["success"] == 3


# -- failure rate ---------------------------------------------------------------------------


def rate_config(
    window_size: int, minimum_calls: int, window_type: Literal["count", "time"] = "count"
) -> BreakerConfig:
    """Only the failure rate can open these circuits."""
    return BreakerConfig(
        failure_threshold=1000,
        failure_rate_threshold=50.0,
        window_type=window_type,
        window_size=window_size,
        minimum_calls=minimum_calls,
    )


def test_failure_rate_over_count_window_waits_for_minimum_calls() -> None:
    breaker = CircuitBreaker("store", rate_config(window_size=10, minimum_calls=4))
    call(breaker, 0.0, ok=False)
    call(breaker, 0.0, ok=False)
    call(breaker, 0.0, ok=True)
    assert breaker.snapshot(0.0)["failure_rate"] is None
    assert breaker.state_at(0.0) is CLOSED
    call(breaker, 0.0, ok=True)  # 4 calls, 50 %
    assert breaker.state_at(0.0) is OPEN
    assert breaker.snapshot(0.0)["failure_rate"] == pytest.approx(50.0)


def test_count_window_forgets_the_oldest_calls() -> None:
    breaker = CircuitBreaker("store", rate_config(window_size=4, minimum_calls=4))
    call(breaker, 0.0, ok=False)
    for _ in range(3):
        call(breaker, 0.0, ok=True)
    assert breaker.failure_rate(0.0) == pytest.approx(25.0)
    call(breaker, 0.0, ok=True)
    assert breaker.failure_rate(0.0) == pytest.approx(0.0)
    assert breaker.snapshot(0.0)["window_calls"] == 4


def test_failure_rate_over_time_window_forgets_old_calls() -> None:
    config = rate_config(window_type="time", window_size=10, minimum_calls=3)
    breaker = CircuitBreaker("store", config)
    call(breaker, 0.0, ok=False)
    call(breaker, 1.0, ok=False)
    call(breaker, 12.0, ok=True)
    call(breaker, 12.0, ok=True)
    assert breaker.failure_rate(12.0) is None  # the two failures expired: 2 calls < 3
    call(breaker, 12.5, ok=False)  # 1 of 3 = 33 %; a count window would say 3 of 5
    assert breaker.state_at(12.5) is CLOSED
    assert breaker.failure_rate(12.5) == pytest.approx(100 / 3)
    call(breaker, 13.0, ok=False)  # 2 of 4
    assert breaker.state_at(13.0) is OPEN


# -- slow calls ---------------------------------------------------------------------------


def test_slow_calls_count_as_failures_without_a_slow_rate_threshold() -> None:
    breaker = CircuitBreaker("store", BreakerConfig(failure_threshold=2, slow_call_duration=2.0))
    call(breaker, 0.0, ok=True, duration=2.0)  # not slower than the limit
    call(breaker, 1.0, ok=True, duration=2.5)
    assert breaker.state_at(1.0) is CLOSED
    call(breaker, 2.0, ok=True, duration=3.0)
    assert breaker.state_at(2.0) is OPEN
    snapshot = breaker.snapshot(2.0)
    assert snapshot["calls_by_outcome"] == {"success": 1, "failure": 0, "slow": 2, "rejected": 0}
    assert snapshot["failures"] == 2
    assert snapshot["successes"] == 1


def test_slow_call_rate_is_a_separate_threshold() -> None:
    config = BreakerConfig(
        failure_threshold=1000,
        slow_call_duration=2.0,
        slow_call_rate_threshold=50.0,
        window_size=10,
        minimum_calls=4,
    )
    breaker = CircuitBreaker("store", config)
    listener = Transitions()
    breaker.add_listener(listener)
    call(breaker, 0.0, ok=True, duration=5.0)
    call(breaker, 0.0, ok=True, duration=0.1)
    call(breaker, 0.0, ok=True, duration=5.0)
    assert breaker.state_at(0.0) is CLOSED
    assert breaker.snapshot(0.0)["failures"] == 0  # slow, but not failures
    call(breaker, 0.0, ok=True, duration=0.1)
    assert breaker.state_at(0.0) is OPEN
    assert listener.seen[-1][4].startswith("slow call rate 50.0%")
    snapshot = breaker.snapshot(0.0)
    assert snapshot["slow_call_rate"] == pytest.approx(50.0)
    assert snapshot["failure_rate"] == pytest.approx(0.0)


def test_slow_trial_reopens() -> None:
    config = BreakerConfig(slow_call_duration=2.0, slow_call_rate_threshold=80.0, minimum_calls=5)
    breaker = opened_breaker(config, at=0.0)
    call(breaker, 60.0, ok=True, duration=3.0)
    assert breaker.state_at(63.0) is OPEN


# -- operator states ------------------------------------------------------------------------


def test_forced_open_rejects_everything_until_reset() -> None:
    breaker = CircuitBreaker("store")
    breaker.force_open(0.0)
    for now in (0.0, 61.0, 10_000.0):
        admission = breaker.try_acquire(now)
        assert not admission.allowed
        assert admission.state is CircuitState.FORCED_OPEN
        assert admission.retry_after == 60.0
    assert breaker.snapshot(10_000.0)["time_until_half_open"] is None
    breaker.reset(10_001.0)
    assert breaker.try_acquire(10_001.0).allowed


def test_disabled_admits_everything_and_never_opens() -> None:
    breaker = CircuitBreaker("store", BreakerConfig(failure_rate_threshold=10.0, minimum_calls=1))
    breaker.disable(0.0)
    for _ in range(50):
        call(breaker, 1.0, ok=False)
    assert breaker.state_at(1.0) is CircuitState.DISABLED
    snapshot = breaker.snapshot(1.0)
    assert snapshot["calls_by_outcome"]["failure"] == 50  # tallied ...
    assert snapshot["consecutive_failures"] == 0  # ... but nothing toward opening
    assert snapshot["failure_rate"] is None
    breaker.reset(2.0)
    call(breaker, 2.0, ok=True)
    assert breaker.state_at(2.0) is CLOSED


def test_reset_closes_and_forgets_counts() -> None:
    breaker = CircuitBreaker("store")
    for _ in range(4):
        call(breaker, 0.0, ok=False)
    in_flight = breaker.try_acquire(0.0)
    breaker.reset(1.0)
    breaker.on_failure(1.0, 1.0, in_flight)  # admitted before the reset: ignored
    for _ in range(4):
        call(breaker, 2.0, ok=False)
    assert breaker.state_at(2.0) is CLOSED
    assert breaker.snapshot(2.0)["consecutive_failures"] == 4


def test_reset_from_open() -> None:
    breaker = opened_breaker(at=0.0)
    breaker.reset(5.0)
    assert breaker.state_at(5.0) is CLOSED
    assert breaker.try_acquire(5.0).allowed


# -- listeners and snapshot -------------------------------------------------------------------


def test_listeners_see_every_transition_with_time_and_reason() -> None:
    breaker = CircuitBreaker("store")
    listener = Transitions()
    breaker.add_listener(listener)
    for _ in range(5):
        call(breaker, 10.0, ok=False)
    breaker.state_at(70.0)
    call(breaker, 71.0, ok=False)
    breaker.state_at(131.0)
    call(breaker, 132.0, ok=True)
    call(breaker, 133.0, ok=True)
    breaker.force_open(140.0)
    breaker.disable(150.0)
    breaker.reset(160.0)
    breaker.reset(170.0)  # CLOSED -> CLOSED is not a transition
    assert listener.pairs == [
        (CLOSED, OPEN),
        (OPEN, HALF_OPEN),
        (HALF_OPEN, OPEN),
        (OPEN, HALF_OPEN),
        (HALF_OPEN, CLOSED),
        (CLOSED, CircuitState.FORCED_OPEN),
        (CircuitState.FORCED_OPEN, CircuitState.DISABLED),
        (CircuitState.DISABLED, CLOSED),
    ]
    assert listener.seen[0] == ("store", CLOSED, OPEN, 10.0, "5 failures within 300 s")
    assert listener.seen[1][3:] == (70.0, "open_timeout elapsed")
    assert listener.seen[2][4] == "trial call failed"
    breaker.remove_listener(listener)
    breaker.force_open(180.0)
    assert len(listener.seen) == 8


def test_snapshot_fields() -> None:
    breaker = CircuitBreaker("store", BreakerConfig(minimum_calls=3))
    call(breaker, 0.0, ok=True)
    call(breaker, 1.0, ok=True)
    call(breaker, 2.0, ok=False)
    snapshot = breaker.snapshot(2.0)
    assert snapshot["name"] == "store"
    assert snapshot["state"] == "closed"
    assert (snapshot["successes"], snapshot["failures"]) == (2, 1)
    assert (snapshot["consecutive_successes"], snapshot["consecutive_failures"]) == (0, 1)
    assert snapshot["failure_rate"] == pytest.approx(100 / 3)
    assert snapshot["slow_call_rate"] == 0.0
    assert snapshot["time_until_half_open"] is None
    assert snapshot["last_transition_at"] is None
    assert snapshot["config"]["failure_threshold"] == 5
    for _ in range(4):
        call(breaker, 10.0, ok=False)
    breaker.try_acquire(11.0)
    snapshot = breaker.snapshot(40.0)
    assert snapshot["state"] == "open"
    assert snapshot["rejected"] == 1
    assert snapshot["calls_by_outcome"] == {"success": 2, "failure": 5, "slow": 0, "rejected": 1}
    assert snapshot["last_transition_at"] == 10.0
    assert snapshot["time_until_half_open"] == pytest.approx(30.0)
    assert breaker.snapshot(69.5)["time_until_half_open"] == pytest.approx(0.5)
    later = breaker.snapshot(70.0)
    assert later["state"] == "half_open"
    assert later["time_until_half_open"] is None
    assert later["last_transition_at"] == 70.0


def test_circuit_open_error_message() -> None:
    error = CircuitOpenError("store", 41.2)
    assert str(error) == "circuit 'store' is open; retry in 42 s"
    assert (error.circuit, error.retry_after) == ("store", 41.2)


# -- trio shell -------------------------------------------------------------------------------


class Boom(Exception):
    pass


async def boom() -> None:
    raise Boom


async def test_circuit_call_counts_and_rejects(mock_clock: trio.testing.MockClock) -> None:
    circuit = Circuit(CircuitBreaker("store", BreakerConfig(failure_threshold=2)))

    async def answer(x: int, y: int) -> int:
        return x + y

    assert await circuit.call(answer, 1, 2) == 3
    for _ in range(2):
        with pytest.raises(Boom):
            await circuit.call(boom)
    mock_clock.jump(20.0)
    with pytest.raises(CircuitOpenError) as caught:
        await circuit.call(answer, 1, 2)
    assert caught.value.circuit == "store"
    assert caught.value.retry_after == pytest.approx(40.0)
    assert circuit.snapshot()["calls_by_outcome"] == {"success": 1, "failure": 2, "slow": 0, "rejected": 1}
    mock_clock.jump(40.0)
    assert circuit.state is HALF_OPEN


async def test_guard_times_calls_on_the_trio_clock(autojump_clock: trio.testing.MockClock) -> None:
    breaker = CircuitBreaker("agent", BreakerConfig(slow_call_duration=5.0, failure_threshold=1))
    circuit = Circuit(breaker)
    async with circuit.guard():
        await trio.sleep(4.0)
    assert circuit.state is CLOSED
    async with circuit.guard():
        await trio.sleep(6.0)
    assert circuit.state is OPEN
    assert circuit.snapshot()["calls_by_outcome"]["slow"] == 1


async def test_only_configured_exceptions_are_failures(mock_clock: trio.testing.MockClock) -> None:
    circuit = Circuit(
        CircuitBreaker("store", BreakerConfig(failure_threshold=1)), failure_exceptions=(OSError,)
    )
    with pytest.raises(ValueError):
        async with circuit.guard():
            raise ValueError("bad request, healthy dependency")
    assert circuit.state is CLOSED
    assert circuit.snapshot()["successes"] == 1
    with pytest.raises(ConnectionError):
        async with circuit.guard():
            raise ConnectionError
    assert circuit.state is OPEN


async def test_cancelled_call_is_neither_failure_nor_success(
    autojump_clock: trio.testing.MockClock,
) -> None:
    breaker = CircuitBreaker("store", BreakerConfig(half_open_max_calls=1))
    circuit = Circuit(breaker, failure_exceptions=(BaseException,))  # even a catch-all
    for _ in range(5):
        with pytest.raises(Boom):
            await circuit.call(boom)
    await trio.sleep(60.0)
    assert circuit.state is HALF_OPEN
    with trio.move_on_after(1.0) as scope:
        await circuit.call(trio.sleep_forever)
    assert scope.cancelled_caught
    snapshot = circuit.snapshot()
    assert snapshot["half_open_calls_in_flight"] == 0
    assert (snapshot["successes"], snapshot["failures"]) == (0, 5)
    assert circuit.state is HALF_OPEN
    await circuit.call(trio.sleep, 0)  # the slot was given back
    assert circuit.snapshot()["half_open_calls_in_flight"] == 0


async def test_cancelled_nursery_inside_guard_is_not_a_failure(
    autojump_clock: trio.testing.MockClock,
) -> None:
    breaker = CircuitBreaker("store", BreakerConfig(failure_threshold=1))
    circuit = Circuit(breaker, failure_exceptions=(BaseException,))
    with trio.move_on_after(1.0):
        async with circuit.guard():
            async with trio.open_nursery() as nursery:
                nursery.start_soon(trio.sleep_forever)
                nursery.start_soon(trio.sleep_forever)
    assert circuit.state is CLOSED
    assert circuit.snapshot()["failures"] == 0


# -- registry and metrics ---------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_registry_config_by_name_prefix() -> None:
    dispatch = BreakerConfig(failure_threshold=3)
    branch_7 = BreakerConfig(failure_threshold=9)
    registry = CircuitRegistry(
        BreakerConfig(failure_threshold=4),
        {"dispatch": dispatch, "dispatch:branch-7": branch_7},
        clock=FakeClock(),
    )
    assert registry.get_or_create("dispatch:branch-1").breaker.config is dispatch
    assert registry.get_or_create("dispatch").breaker.config is dispatch
    assert registry.get_or_create("dispatch:branch-7").breaker.config is branch_7
    assert registry.get_or_create("dispatcher").breaker.config.failure_threshold == 4
    explicit = BreakerConfig(failure_threshold=7)
    assert registry.get_or_create("store", explicit).breaker.config is explicit
    assert registry.get_or_create("store") is registry.get("store")
    assert registry.get("nope") is None
    assert registry.names() == ["dispatch", "dispatch:branch-1", "dispatch:branch-7", "dispatcher", "store"]


def test_registry_operator_actions_and_snapshot() -> None:
    clock = FakeClock()
    registry = CircuitRegistry(clock=clock)
    registry.get_or_create("store")
    registry.get_or_create("agents")
    registry.get_or_create("dispatch")
    registry.force_open("store")
    registry.disable("agents")
    snapshot = registry.snapshot()
    assert (snapshot["total"], snapshot["open"]) == (3, 1)
    assert [c["name"] for c in snapshot["circuits"]] == ["agents", "dispatch", "store"]
    assert [c["state"] for c in snapshot["circuits"]] == ["disabled", "closed", "forced_open"]
    registry.reset("store")
    assert registry.snapshot(5.0)["open"] == 0
    for action in (registry.reset, registry.force_open, registry.disable):
        with pytest.raises(KeyError, match="nope"):
            action("nope")


def test_prometheus_metrics() -> None:
    prometheus = CollectorRegistry()
    clock = FakeClock()
    registry = CircuitRegistry(
        BreakerConfig(failure_threshold=2, minimum_calls=2),
        metrics=BreakerMetrics(prometheus),
        clock=clock,
    )
    breaker = registry.get_or_create("store").breaker

    def sample(name: str, **labels: str) -> float | None:
        return prometheus.get_sample_value(name, labels)

    assert sample("printd_circuit_state", circuit="store", state="closed") == 1.0
    assert sample("printd_circuit_state", circuit="store", state="open") == 0.0
    assert sample("printd_circuit_calls_total", circuit="store", outcome="failure") == 0.0
    rate = sample("printd_circuit_failure_rate", circuit="store")
    assert rate is not None and math.isnan(rate)

    call(breaker, 0.0, ok=True)
    call(breaker, 0.0, ok=False)
    assert sample("printd_circuit_failure_rate", circuit="store") == pytest.approx(50.0)
    call(breaker, 1.0, ok=False)
    assert not breaker.try_acquire(2.0).allowed
    assert not breaker.try_acquire(3.0).allowed

    assert sample("printd_circuit_calls_total", circuit="store", outcome="success") == 1.0
    assert sample("printd_circuit_calls_total", circuit="store", outcome="failure") == 2.0
    assert sample("printd_circuit_calls_total", circuit="store", outcome="rejected") == 2.0
    assert sample("printd_circuit_rejected_total", circuit="store") == 2.0
    assert sample("printd_circuit_state", circuit="store", state="open") == 1.0
    assert sample("printd_circuit_state", circuit="store", state="closed") == 0.0
    assert (
        sample("printd_circuit_transitions_total", circuit="store", **{"from": "closed", "to": "open"}) == 1.0
    )

    breaker.state_at(61.0)
    call(breaker, 61.0, ok=True)
    call(breaker, 61.0, ok=True)
    assert sample("printd_circuit_state", circuit="store", state="closed") == 1.0
    assert (
        sample("printd_circuit_transitions_total", circuit="store", **{"from": "half_open", "to": "closed"})
        == 1.0
    )
    rate = sample("printd_circuit_failure_rate", circuit="store")
    assert rate is not None and math.isnan(rate)  # fresh window below minimum_calls


def test_outcome_listener_sees_rejections() -> None:
    breaker = opened_breaker(at=0.0)
    seen: list[tuple[str, CallOutcome, float]] = []
    breaker.add_outcome_listener(lambda name, outcome, now: seen.append((name, outcome, now)))
    breaker.try_acquire(1.0)
    assert seen == [("store", CallOutcome.REJECTED, 1.0)]
