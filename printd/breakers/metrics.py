"""Prometheus view of a process's circuits, registered on an explicit registry."""

from __future__ import annotations

import math

from prometheus_client import CollectorRegistry, Counter, Gauge

from printd.breakers.core import CallOutcome, CircuitBreaker, CircuitState


class BreakerMetrics:
    """Prometheus view of a process's circuits, registered on an explicit registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.state = Gauge(
            "printd_circuit_state",
            "1 for the circuit's current state, 0 for the others",
            ["circuit", "state"],
            registry=registry,
        )
        self.calls = Counter(
            "printd_circuit_calls_total",
            "Calls through a circuit by outcome",
            ["circuit", "outcome"],
            registry=registry,
        )
        self.failure_rate = Gauge(
            "printd_circuit_failure_rate",
            "Failure percentage over the sliding window (NaN below minimum_calls)",
            ["circuit"],
            registry=registry,
        )
        self.rejected = Counter(
            "printd_circuit_rejected_total",
            "Calls rejected without reaching the dependency",
            ["circuit"],
            registry=registry,
        )
        self.transitions = Counter(
            "printd_circuit_transitions_total",
            "Circuit state transitions",
            ["circuit", "from", "to"],
            registry=registry,
        )

    def watch(self, breaker: CircuitBreaker, now: float) -> None:
        """Export ``breaker`` from now on."""
        name = breaker.name

        def on_transition(circuit: str, old: CircuitState, new: CircuitState, at: float, reason: str) -> None:
            self.transitions.labels(circuit, old.value, new.value).inc()
            self._set_state(circuit, new)
            self._set_failure_rate(breaker, at)

        def on_outcome(circuit: str, outcome: CallOutcome, at: float) -> None:
            self.calls.labels(circuit, outcome.value).inc()
            if outcome is CallOutcome.REJECTED:
                self.rejected.labels(circuit).inc()
            else:
                self._set_failure_rate(breaker, at)

        breaker.add_listener(on_transition)
        breaker.add_outcome_listener(on_outcome)
        self.rejected.labels(name)
        for outcome in CallOutcome:
            self.calls.labels(name, outcome.value)
        self._set_state(name, breaker.state_at(now))
        self._set_failure_rate(breaker, now)

    def _set_state(self, name: str, current: CircuitState) -> None:
        for state in CircuitState:
            self.state.labels(name, state.value).set(1 if state is current else 0)

    def _set_failure_rate(self, breaker: CircuitBreaker, now: float) -> None:
        rate = breaker.failure_rate(now)
        self.failure_rate.labels(breaker.name).set(math.nan if rate is None else rate)
