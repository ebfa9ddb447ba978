"""The rounds of a failover test, run in a thread while the load runs in the main one.

Before each round the agents are evened out over the instances if one holds too few (a
restarted instance holds none until agents move; POST /monitoring/rebalance, as an operator
would). Each round: look at the cluster (who leads), inject the fault, hold it
(a pause: until membership dropped the instance, then the hold), heal it, and wait until the
cluster settled: every instance healthy, membership complete with a leader, every agent
connected, and all of it still true SETTLE_STABLE seconds later (a resumed instance closes its
stale connections at its next heartbeat, not at once). Then measure from the agents' events:
who was orphaned, how long each took to come back, what errors the clients saw.

A round that does not settle within the settle timeout ends the rounds: what follows would not
be a failover from a healthy cluster. Whatever happens (an error, Ctrl-C), what was injected is
healed before the thread ends, and the load's window is ended so the drain and the check run.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from printctl.faults.board import Board, EventFiles
from printctl.faults.inject import FaultError, Injector
from printctl.faults.observe import Observer, Survey, detected, rebalance_shares, unsettled
from printctl.faults.plan import INSTANCE_FAULTS, Fault, RoundPlan
from printctl.faults.report import DETECTION_REQUIRED, RoundResult

SETTLE_STABLE = 3.0  # seconds the settled state must last (more than one 2 s heartbeat)
POLL = 0.25


@dataclass(frozen=True, slots=True)
class Load:
    """What the rounds need from the load that runs meanwhile (the conductor's live figures)."""

    phase: Callable[[], str]  # starting, ramp, steady, drain, stopping
    accepted: Callable[[], int]  # jobs accepted so far
    interrupted: Callable[[], bool]  # Ctrl-C
    end_window: Callable[[], None]  # stop the load now and drain


class Rounds:
    def __init__(
        self,
        plans: Sequence[RoundPlan],
        injector: Injector,
        observer: Observer,
        events: EventFiles,
        board: Board,
        load: Load,
        settle_timeout: float,
        say: Callable[[str], None],
    ) -> None:
        self.plans = list(plans)
        self.injector = injector
        self.observer = observer
        self.events = events
        self.board = board
        self.load = load
        self.settle_timeout = settle_timeout
        self.say = say
        self.expected = set(injector.instances())
        self.results: list[RoundResult] = []
        self.error: str | None = None
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="failover-rounds", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def join(self, timeout: float) -> None:
        self.stop.set()
        self.thread.join(timeout)

    def _stopping(self) -> bool:
        return self.stop.is_set() or self.load.interrupted() or self.load.phase() not in ("ramp", "steady")

    def _look(self, skip: str | None = None) -> Survey:
        self.board.feed(self.events.read())
        return self.observer.survey(self.board.connected(), skip)

    def _run(self) -> None:
        try:
            while self.load.phase() in ("starting", "ramp") and not self.stop.is_set():
                time.sleep(POLL)
            if self._stopping():
                return
            self.say("waiting for the cluster to settle before the first round")
            waited, problems = self._settle(time.monotonic() + self.settle_timeout)
            if waited is None:
                self.error = f"the cluster did not settle before the first round: {'; '.join(problems)}"
                return
            for plan in self.plans:
                if self._stopping() or not self._balance():
                    return
                result = self._round(plan)
                self.results.append(result)
                if not result.settled and not result.interrupted:
                    self.error = (
                        f"round {plan.number} did not settle within {self.settle_timeout:g} s "
                        f"({'; '.join(result.not_settled)}): the remaining rounds were not run"
                    )
                    return
        except Exception as exc:  # the report says it; the load still drains and is checked
            self.error = f"the rounds stopped: {type(exc).__name__}: {exc}"
        finally:
            self.load.end_window()

    def _settle(
        self, deadline: float, on_look: Callable[[Survey], None] | None = None
    ) -> tuple[float | None, list[str]]:
        """Until settled for SETTLE_STABLE s: (epoch time it became so, []); or (None, what was
        still wrong) at the deadline or when stopped."""
        since = None
        while True:
            survey = self._look()
            if on_look is not None:
                on_look(survey)
            problems = unsettled(self.expected, self.board.agents, survey)
            now = time.time()
            if problems:
                since = None
            elif since is None:
                since = now
            elif now - since >= SETTLE_STABLE:
                return since, []
            if time.monotonic() > deadline or self._stopping():
                return None, problems or ["stopped before it settled"]
            time.sleep(POLL)

    def _balance(self) -> bool:
        """Even the agents out (observe.rebalance_shares) and wait until they settled again, so
        that a round starts with agents on every instance. The front must first route to the
        emptiest instance again: nginx skips a server that failed for fail_timeout (10 s), and
        agents moved meanwhile would land on the others. False when it does not settle."""
        held = {i: len(self.board.on(i)) for i in self.expected}
        shares = rebalance_shares(held, self.board.agents)
        if not shares:
            return True
        emptiest = min(held, key=lambda i: held[i])
        deadline = time.monotonic() + self.settle_timeout
        while self.observer.front_picks() != emptiest:
            if time.monotonic() > deadline or self._stopping():
                self.say(f"the front does not route to {emptiest}: the agents stay where they are ({held})")
                return not self._stopping()
            time.sleep(POLL)
        # all within about a second: shedding still going on when the round starts would count
        moved = sum(self.observer.rebalance(i, share, max(50, held[i])) for i, share in shares.items())
        self.say(f"rebalancing: {moved} agents asked to move from {', '.join(shares)} (held: {held})")
        settled_at, problems = self._settle(time.monotonic() + self.settle_timeout)
        if settled_at is None and not self._stopping():
            self.error = f"the cluster did not settle after a rebalance: {'; '.join(problems)}"
        return settled_at is not None

    def _round(self, plan: RoundPlan) -> RoundResult:
        fault, target, n = plan.fault, plan.target, len(self.plans)
        r = RoundResult(plan)
        frozen = target if fault in INSTANCE_FAULTS else None  # not asked while the fault lasts
        before = self.observer.view(skip=frozen)
        r.was_leader = before is not None and before.get("leader") == target
        label = f"round {plan.number}/{n}: {fault} {target}" + (" (leader)" if r.was_leader else "")
        self.board.feed(self.events.read())
        accepted = self.load.accepted()
        t0 = r.started_at = time.time()
        self.board.trim(t0 - 1.0)

        def watch(survey: Survey) -> None:
            if r.detect_s is None and detected(fault, target, before, survey):
                r.detect_s = round(time.time() - t0, 3)
                self.say(f"{label}: detected after {r.detect_s:.1f} s")

        self.say(f"{label}: injecting (hold {plan.hold:g} s)")
        try:
            self.injector.inject(fault, target)
            r.applied = True
        except FaultError as exc:
            r.problems.append(f"inject: {exc}")
        try:
            if r.applied:
                self._hold(r, watch, frozen)
        finally:
            r.heal_s = round(time.time() - t0, 3)
            r.accepted_during = self.load.accepted() - accepted
            if r.applied:
                self.say(f"{label}: healing after {r.heal_s:.1f} s")
                try:
                    r.problems += self.injector.heal(fault, target)
                    r.healed = True
                except FaultError as exc:
                    r.problems.append(f"heal: {exc}")
        shut_until = time.time() if fault is Fault.AGENT_CUT else None
        if not r.interrupted:
            settled_at, r.not_settled = self._settle(time.monotonic() + self.settle_timeout, watch)
            r.interrupted = settled_at is None and self._stopping()
            if settled_at is not None:
                r.settled = True
                r.settle_s = round(settled_at - t0, 3)
        self.board.feed(self.events.read())
        now = time.time()
        back = self.board.reconnects(t0, now, shut_until)
        r.reconnect_times, r.never_back = back.times, back.never
        r.errors = self.board.errors(t0, now)
        if r.applied and r.detect_s is None and fault in DETECTION_REQUIRED:
            r.problems.append("membership never showed the fault")
        summary = r.reconnect()
        self.say(
            f"{label}: "
            + (f"settled after {r.settle_s:.1f} s" if r.settled else "NOT settled")
            + f", {summary['n']} orphaned agents"
            + (f" back in p50 {summary['p50_s']} s / max {summary['max_s']} s" if summary["n"] else "")
            + (f", {summary['never']} never back" if summary["never"] else "")
        )
        return r

    def _hold(self, r: RoundResult, watch: Callable[[Survey], None], frozen: str | None) -> None:
        """Keep the fault for its hold time, watching for its detection. A pause is held until
        membership dropped the instance (its lease ended) and then for the hold time."""
        plan, t0 = r.plan, r.started_at
        while True:
            watch(self._look(frozen))
            if self._stopping():
                r.interrupted = True
                return
            elapsed = time.time() - t0
            if plan.fault is Fault.PAUSE:
                if r.detect_s is None:
                    if elapsed > self.settle_timeout:
                        return  # reported as never detected
                elif elapsed >= r.detect_s + plan.hold:
                    return
            elif elapsed >= plan.hold:
                return
            time.sleep(POLL)
