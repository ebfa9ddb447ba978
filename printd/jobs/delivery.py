"""The exactly-once delivery policy, free of I/O (as h11 is for HTTP).

`DeliveryCore` decides, for the agents this instance holds, which job goes out when, what an
ack, a result, a timeout, a disconnect or a store failure means, and when to give up. It takes
events and the current time (trio's clock) and returns decisions; `JobService` executes them
against the store and the agents' connections. The rules, each closing a way to lose or double
a ticket:

- A pass over the store sends an agent its queued jobs (`Want.QUEUED`), or, right after it
  connects, every unfinished job (`Want.ALL`): queued ones and redeliveries of jobs dispatched
  or acknowledged on an earlier connection. A job already sent on this connection is not sent
  again by a pass: its timer owns it.
- Every job sent on a connection has a timer. Unacknowledged: re-sent after the ack timeout
  plus backoff, and expired after `max_attempts`. Acknowledged but without a result: re-sent
  after the result timeout (doubling), never expired (the agent has it; its journal answers a
  re-send with the stored result, or an ack while it is still printing).
- A report (ack or result) that the store could not record is re-sent shortly, whatever a pass
  would say: the agent was promised a redelivery, and its journal turns it into the result.
- A send whose store write failed is retried shortly: nothing is lost, it waits in the store.
- Each branch's circuit hears about unacknowledged dispatches only: an ack is a success, an ack
  timeout a failure, a disconnect neither (a lost connection says nothing about the agent). A
  disconnect releases that agent's admissions and nobody else's.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum

from printd.breakers.core import Admission, CircuitBreaker
from printd.model import JobState

AgentKey = tuple[str, str]


class Want(IntEnum):
    """What the next pass over an agent's jobs in the store must look at."""

    NONE = 0
    QUEUED = 1  # new jobs only (after a submit, a routed wake-up or a sweep)
    ALL = 2  # everything unfinished (after a connect)


#: Jobs one connection may have tracked at once by reports the store could not record (beyond
#: those it was sent here): a cap on what one agent can make printd hold during an outage.
MAX_INFLIGHT = 1000


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Backoff between re-sends of an unacknowledged dispatch: initial, doubling, capped."""

    initial: float
    maximum: float
    max_attempts: int

    def delay(self, attempts: int) -> float:
        return float(min(self.maximum, self.initial * (2 ** max(0, attempts - 1))))

    def exhausted(self, attempts: int) -> bool:
        return attempts >= self.max_attempts


@dataclass(frozen=True, slots=True)
class Timing:
    ack_timeout: float = 10.0
    result_timeout: float = 60.0
    result_timeout_max: float = 300.0
    store_retry: float = 1.0
    store_retry_max: float = 5.0


@dataclass(slots=True)
class InFlight:
    """A job sent on the agent's current connection, until its result is recorded."""

    job_id: str
    agent: AgentKey
    kind: str
    correlation_id: str
    origin: str | None  # the instance where a printer test's caller waits
    attempts: int
    acked: bool
    sent_at: float
    due: float = 0.0
    resends: int = 0  # re-sends since the ack (result timeout backoff) or store failures
    redeliver: bool = False  # must go out again: a report of it could not be recorded
    credits: int = 2  # reports (an ack, a result) the agent owes for this send: see `expects`
    admission: tuple[CircuitBreaker, Admission] | None = None


@dataclass(slots=True)
class HeldAgent:
    key: AgentKey
    branch: str
    session: int
    want: Want = Want.NONE
    pumping: bool = False
    inflight: dict[str, InFlight] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Send:
    """A timer fired: record and send the job again; hand `admission` back with `sent`."""

    job_id: str
    agent: AgentKey
    admission: tuple[CircuitBreaker, Admission] | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class Expire:
    """Give up on an unacknowledged job: `max_attempts` dispatches went unanswered."""

    job_id: str
    agent: AgentKey
    reason: str


@dataclass(frozen=True, slots=True)
class Skip:
    """The pass found a job that needs nothing now (sent on this connection, timer running)."""


@dataclass(frozen=True, slots=True)
class Hold:
    """The branch's circuit is open: stop the pass and try again after `retry_after` seconds."""

    retry_after: float


@dataclass(frozen=True, slots=True)
class Go:
    """Record and send the job; hand `admission` back with `sent` (None for acked jobs)."""

    admission: tuple[CircuitBreaker, Admission] | None


class DeliveryCore:
    def __init__(
        self,
        retry: RetryPolicy,
        timing: Timing,
        breaker_for: Callable[[str, str], CircuitBreaker],
    ) -> None:
        self.retry = retry
        self.timing = timing
        self._breaker_for = breaker_for  # (company, branch) -> the branch's dispatch circuit
        self.agents: dict[AgentKey, HeldAgent] = {}
        self._timers: list[tuple[float, int, str, AgentKey]] = []
        self._seq = itertools.count()

    # ------------------------------------------------------------ agents come and go

    def connected(self, key: AgentKey, branch: str, session: int, now: float) -> None:
        """A connection of this agent now lives here; anything of an older one is forgotten
        (its jobs are in the store and go out with the first full pass, `wake(key, Want.ALL)`)."""
        old = self.agents.get(key)
        if old is not None:
            self._release(old, now)
        self.agents[key] = HeldAgent(key, branch, session)

    def disconnected(self, key: AgentKey, session: int, now: float) -> list[InFlight]:
        """The connection with `session` ended. Returns what was in flight on it (test callers
        waiting for those can be told at once); their jobs stay in the store."""
        agent = self.agents.get(key)
        if agent is None or agent.session != session:
            return []
        del self.agents[key]
        return self._release(agent, now)

    def holds(self, key: AgentKey) -> HeldAgent | None:
        return self.agents.get(key)

    def _release(self, agent: HeldAgent, now: float) -> list[InFlight]:
        gone = list(agent.inflight.values())
        for item in gone:
            self._settle_admission(item, delivered=None, now=now)
        agent.inflight.clear()
        return gone

    # ------------------------------------------------------------ passes over the store

    def wake(self, key: AgentKey, want: Want = Want.QUEUED) -> bool:
        """Ask for a pass; True when the caller must start the agent's pump (none runs)."""
        agent = self.agents.get(key)
        if agent is None:
            return False
        agent.want = max(agent.want, want)
        if agent.pumping:
            return False
        agent.pumping = True
        return True

    def next_pass(self, key: AgentKey, session: int) -> Want:
        """The pass the pump must run now; NONE means the pump stops (and the agent is free
        for the next `wake` to start one)."""
        agent = self.agents.get(key)
        if agent is None or agent.session != session:
            return Want.NONE
        want, agent.want = agent.want, Want.NONE
        if want is Want.NONE:
            agent.pumping = False
        return want

    def pass_failed(self, key: AgentKey, session: int, want: Want) -> None:
        """The store could not be read: the same pass is due again (after `store_retry`)."""
        agent = self.agents.get(key)
        if agent is not None and agent.session == session:
            agent.want = max(agent.want, want)

    def decide(
        self, key: AgentKey, session: int, job_id: str, state: JobState, branch: str, now: float
    ) -> Skip | Hold | Go:
        """What to do with one job a pass found."""
        agent = self.agents.get(key)
        if agent is None or agent.session != session or state.terminal:
            return Skip()
        item = agent.inflight.get(job_id)
        if item is not None and not item.redeliver:
            return Skip()  # sent on this connection: its timer decides
        if state is JobState.ACKED:
            return Go(None)  # a redelivery of a job the agent has: not the circuit's business
        breaker = self._breaker_for(key[0], branch)
        admission = breaker.try_acquire(now)
        if not admission.allowed:
            return Hold(max(admission.retry_after, 0.5))
        return Go((breaker, admission))

    def sent(
        self,
        key: AgentKey,
        session: int,
        *,
        job_id: str,
        kind: str,
        correlation_id: str,
        origin: str | None,
        attempts: int,
        acked: bool,
        admission: tuple[CircuitBreaker, Admission] | None,
        now: float,
    ) -> None:
        """The dispatch was recorded and written to the agent's connection: start its timer."""
        agent = self.agents.get(key)
        if agent is None or agent.session != session:
            if admission is not None:
                admission[0].release(now, admission[1])
            return
        previous = agent.inflight.get(job_id)
        resends = 0
        if previous is not None:
            self._settle_admission(previous, delivered=None, now=now)
            resends = previous.resends if acked else 0
        item = InFlight(job_id, key, kind, correlation_id, origin, attempts, acked, now, resends=resends)
        item.admission = admission
        agent.inflight[job_id] = item
        if acked:
            wait = min(self.timing.result_timeout * 2**resends, self.timing.result_timeout_max)
        else:
            wait = self.timing.ack_timeout + self.retry.delay(attempts)
        self._schedule(item, now + wait)

    def give_back(self, admission: tuple[CircuitBreaker, Admission] | None, now: float) -> None:
        """An admission taken for a send that did not happen (finished meanwhile, store down)."""
        if admission is not None:
            admission[0].release(now, admission[1])

    def send_failed(self, key: AgentKey, session: int, job_id: str, now: float) -> None:
        """Recording a timer's re-send failed on the store: try again shortly."""
        agent = self.agents.get(key)
        item = agent.inflight.get(job_id) if agent is not None and agent.session == session else None
        if item is not None:
            item.resends += 1
            self._schedule(item, now + self._store_backoff(item.resends))

    # ------------------------------------------------------------ reports from the agent

    def expects(self, key: AgentKey, session: int, job_id: str) -> bool:
        """Is this report one the agent owes for a send on this connection (its ack, its result)?
        Owed reports are the server's own doing (it chose to send the job), so the connection's
        message rate does not charge them; each send earns at most two."""
        agent = self.agents.get(key)
        item = agent.inflight.get(job_id) if agent is not None and agent.session == session else None
        if item is None or item.credits <= 0:
            return False
        item.credits -= 1
        return True

    def acked(self, key: AgentKey, session: int, job_id: str, now: float) -> None:
        agent = self.agents.get(key)
        item = agent.inflight.get(job_id) if agent is not None and agent.session == session else None
        if item is None:
            return
        self._settle_admission(item, delivered=True, now=now)
        item.acked = True
        item.redeliver = False
        item.resends = 0
        self._schedule(item, now + self.timing.result_timeout)

    def finished(self, key: AgentKey, session: int, job_id: str, now: float) -> InFlight | None:
        """The result was recorded (or the job had ended already): nothing more to do."""
        agent = self.agents.get(key)
        if agent is None or agent.session != session:
            return None
        item = agent.inflight.pop(job_id, None)
        if item is not None:
            self._settle_admission(item, delivered=True, now=now)
        return item

    def report_failed(self, key: AgentKey, session: int, job_id: str, *, kind: str, now: float) -> bool:
        """An ack or result could not be recorded (store down): the job goes out again soon,
        even if a pass would skip it, and the agent answers from its journal. False when it
        is not tracked: the caller then asks for a full pass, which finds it in the store."""
        agent = self.agents.get(key)
        if agent is None or agent.session != session:
            return True  # not this connection's business any more
        item = agent.inflight.get(job_id)
        if item is None:
            if len(agent.inflight) >= MAX_INFLIGHT:
                # One agent's reports during an outage must not grow this without bound (they
                # may name jobs that are not its own); the full pass finds its own ones.
                return False
            item = agent.inflight[job_id] = InFlight(job_id, key, kind, "", None, 0, True, now)
        item.redeliver = True
        item.resends += 1
        self._schedule(item, now + self._store_backoff(item.resends))
        return True

    # ------------------------------------------------------------ time

    def _store_backoff(self, failures: int) -> float:
        t = self.timing
        return min(t.store_retry * 2 ** max(0, failures - 1), t.store_retry_max)

    def _schedule(self, item: InFlight, at: float) -> None:
        item.due = at
        heapq.heappush(self._timers, (at, next(self._seq), item.job_id, item.agent))

    def _current(self, job_id: str, key: AgentKey, at: float) -> InFlight | None:
        agent = self.agents.get(key)
        item = agent.inflight.get(job_id) if agent is not None else None
        return item if item is not None and item.due == at else None

    def next_due(self) -> float | None:
        timers = self._timers
        while timers and self._current(timers[0][2], timers[0][3], timers[0][0]) is None:
            heapq.heappop(timers)
        return timers[0][0] if timers else None

    def due(self, now: float) -> list[Send | Expire]:
        """Timers that fired: re-send, or expire an unacknowledged job out of attempts."""
        out: list[Send | Expire] = []
        timers = self._timers
        while timers and timers[0][0] <= now:
            at, _, job_id, key = heapq.heappop(timers)
            item = self._current(job_id, key, at)
            if item is None:
                continue
            item.due = 0.0
            if item.redeliver:
                out.append(Send(job_id, key))
                continue
            if item.acked:
                item.resends += 1  # the next result timeout doubles
                out.append(Send(job_id, key))
                continue
            self._settle_admission(item, delivered=False, now=now)  # no ack in time
            if self.retry.exhausted(item.attempts):
                out.append(Expire(job_id, key, f"no acknowledgement after {item.attempts} attempts"))
                continue
            breaker = self._breaker_for(key[0], self.agents[key].branch)
            admission = breaker.try_acquire(now)
            if admission.allowed:
                out.append(Send(job_id, key, (breaker, admission)))
            else:  # the branch's circuit is open: the re-send waits, the job stays where it is
                self._schedule(item, now + max(admission.retry_after, 0.5))
        return out

    def forget(self, key: AgentKey, session: int, job_id: str, now: float) -> None:
        """The job needs nothing more from this connection (expired, or ended elsewhere)."""
        self.finished(key, session, job_id, now)

    def awaiting_ack(self) -> int:
        return sum(1 for a in self.agents.values() for i in a.inflight.values() if not i.acked)

    def inflight_count(self) -> int:
        return sum(len(a.inflight) for a in self.agents.values())

    # ------------------------------------------------------------ circuits

    @staticmethod
    def _settle_admission(item: InFlight, *, delivered: bool | None, now: float) -> None:
        """Tell the branch's circuit how the unacknowledged dispatch went, once."""
        if item.admission is None:
            return
        breaker, admission = item.admission
        item.admission = None
        if delivered is None:
            breaker.release(now, admission)
        elif delivered:
            breaker.on_success(now, now - item.sent_at, admission)
        else:
            breaker.on_failure(now, now - item.sent_at, admission)
