"""The trio shell around the breakers: ``Circuit`` reads ``trio.current_time()`` and measures
calls, ``CircuitRegistry`` holds the named circuits of one process."""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from types import TracebackType
from typing import Any, TypeVar, TypeVarTuple, Unpack

import structlog
import trio

from printd.breakers.core import Admission, BreakerConfig, CircuitBreaker, CircuitState, TransitionListener
from printd.breakers.metrics import BreakerMetrics

T = TypeVar("T")
Ts = TypeVarTuple("Ts")

log = structlog.get_logger("printd.breakers")


class CircuitOpenError(Exception):
    """Raised by ``Circuit`` instead of calling a dependency whose circuit rejects calls."""

    def __init__(self, circuit: str, retry_after: float, state: CircuitState = CircuitState.OPEN) -> None:
        self.circuit = circuit
        self.retry_after = retry_after
        self.state = state
        what = {
            CircuitState.FORCED_OPEN: "forced open",
            CircuitState.HALF_OPEN: "half-open with every trial call in flight",
        }.get(state, "open")
        super().__init__(f"circuit {circuit!r} is {what}; retry in {math.ceil(retry_after)} s")


def _is_cancellation(exc: BaseException) -> bool:
    if isinstance(exc, trio.Cancelled):
        return True
    if isinstance(exc, BaseExceptionGroup):
        _, rest = exc.split(trio.Cancelled)
        return rest is None
    return False


class CircuitGuard:
    """``async with circuit.guard():`` admits one call, then times it and reports its outcome."""

    def __init__(self, circuit: Circuit) -> None:
        self._circuit = circuit
        self._admission: Admission | None = None
        self._started = 0.0

    async def __aenter__(self) -> Admission:
        circuit = self._circuit
        now = circuit.clock()
        admission = circuit.breaker.try_acquire(now)
        if not admission.allowed:
            raise CircuitOpenError(circuit.name, admission.retry_after, admission.state)
        self._admission = admission
        self._started = now
        return admission

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        circuit = self._circuit
        breaker = circuit.breaker
        now = circuit.clock()
        duration = now - self._started
        if exc is None:
            breaker.on_success(now, duration, self._admission)
        elif _is_cancellation(exc):
            # Cancellation says nothing about the dependency's health.
            breaker.release(now, self._admission)
        elif isinstance(exc, circuit.failure_exceptions):
            breaker.on_failure(now, duration, self._admission)
        elif isinstance(exc, Exception):
            # The dependency answered; the error is the caller's (resilience4j does the same).
            breaker.on_success(now, duration, self._admission)
        else:
            breaker.release(now, self._admission)


class Circuit:
    """Trio shell around a ``CircuitBreaker``: reads the trio clock and reports call outcomes.

    Exceptions in ``failure_exceptions`` count as failures, other ``Exception``s as successes
    (the dependency did answer), and cancellation counts as nothing.
    """

    def __init__(
        self,
        breaker: CircuitBreaker,
        *,
        failure_exceptions: tuple[type[BaseException], ...] = (Exception,),
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        self.breaker = breaker
        self.failure_exceptions = failure_exceptions
        self.clock = clock

    @property
    def name(self) -> str:
        return self.breaker.name

    @property
    def state(self) -> CircuitState:
        return self.breaker.state_at(self.clock())

    def guard(self) -> CircuitGuard:
        """Protect the body of an ``async with`` block; raises CircuitOpenError when rejected."""
        return CircuitGuard(self)

    async def call(self, fn: Callable[[Unpack[Ts]], Awaitable[T]], *args: *Ts) -> T:
        """``await fn(*args)`` through the breaker."""
        async with self.guard():
            return await fn(*args)

    def snapshot(self) -> dict[str, Any]:
        return self.breaker.snapshot(self.clock())

    async def probe_while_open(
        self, probe: Callable[[], Awaitable[object]], *, interval: float = 1.0
    ) -> None:
        """Run forever: while the circuit is OPEN, call ``probe`` every ``interval`` seconds
        and close the circuit on the first success, so a dependency back after a few seconds
        costs a few seconds of 503s, not the whole ``open_timeout``."""
        while True:
            await trio.sleep(interval)
            if self.breaker.state_at(self.clock()) is not CircuitState.OPEN:
                continue
            try:
                await probe()
            except Exception:  # still down: the next probe tries again
                continue
            self.breaker.recover(self.clock(), "probe answered")


class CircuitRegistry:
    """The named circuits of one process, with per-name configuration.

    Names are hierarchical with ``:``; an override for ``dispatch`` applies to
    ``dispatch:branch-7`` unless a more specific override exists.
    """

    def __init__(
        self,
        defaults: BreakerConfig | None = None,
        overrides: Mapping[str, BreakerConfig] | None = None,
        *,
        metrics: BreakerMetrics | None = None,
        failure_exceptions: tuple[type[BaseException], ...] = (Exception,),
        clock: Callable[[], float] = trio.current_time,
        listeners: Sequence[TransitionListener] = (),
    ) -> None:
        self.defaults = defaults if defaults is not None else BreakerConfig()
        self.listeners = tuple(listeners)
        self.overrides = dict(overrides or {})
        self.metrics = metrics
        self.failure_exceptions = failure_exceptions
        self.clock = clock
        self._circuits: dict[str, Circuit] = {}

    def reconfigure(self, defaults: BreakerConfig, overrides: Mapping[str, BreakerConfig]) -> None:
        """New thresholds for every circuit, existing ones included (a reload)."""
        self.defaults = defaults
        self.overrides = dict(overrides)
        now = self.clock()
        for name, circuit in self._circuits.items():
            circuit.breaker.reconfigure(self.config_for(name), now)

    def config_for(self, name: str) -> BreakerConfig:
        """The most specific override for ``name`` (``a:b:c``, then ``a:b``, then ``a``)."""
        parts = name.split(":")
        for end in range(len(parts), 0, -1):
            config = self.overrides.get(":".join(parts[:end]))
            if config is not None:
                return config
        return self.defaults

    def get_or_create(self, name: str, config: BreakerConfig | None = None) -> Circuit:
        """The circuit called ``name``; ``config`` only applies when it is created here."""
        circuit = self._circuits.get(name)
        if circuit is None:
            breaker = CircuitBreaker(name, config if config is not None else self.config_for(name))
            for listener in self.listeners:
                breaker.add_listener(listener)
            if self.metrics is not None:
                self.metrics.watch(breaker, self.clock())
            circuit = Circuit(breaker, failure_exceptions=self.failure_exceptions, clock=self.clock)
            self._circuits[name] = circuit
        return circuit

    def get(self, name: str) -> Circuit | None:
        return self._circuits.get(name)

    def names(self) -> list[str]:
        return sorted(self._circuits)

    def _require(self, name: str) -> CircuitBreaker:
        circuit = self._circuits.get(name)
        if circuit is None:
            raise KeyError(f"unknown circuit {name!r}")
        return circuit.breaker

    def reset(self, name: str) -> None:
        self._require(name).reset(self.clock())

    def force_open(self, name: str) -> None:
        self._require(name).force_open(self.clock())

    def disable(self, name: str) -> None:
        self._require(name).disable(self.clock())

    def snapshot(self, now: float | None = None) -> dict[str, Any]:
        """Every circuit's snapshot; ``open`` counts the circuits rejecting calls by state."""
        at = self.clock() if now is None else now
        circuits = [self._circuits[name].breaker.snapshot(at) for name in self.names()]
        rejecting = {CircuitState.OPEN.value, CircuitState.FORCED_OPEN.value}
        return {
            "total": len(circuits),
            "open": sum(1 for c in circuits if c["state"] in rejecting),
            "circuits": circuits,
        }
