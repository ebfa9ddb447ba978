"""Accept, dispatch, track and finish print jobs so that each accepted job prints exactly once.

The rules, in the order that makes them safe:
- a job is persisted (`queued`) before the caller hears 202, so nothing accepted lives only in
  memory;
- a dispatch is recorded (attempts + 1) before it is sent; a dispatch that gets no `job.ack`
  within `ack_timeout` is sent again with backoff, and every non-terminal job is sent again
  when its agent reconnects (after an agent, printd or network failure);
- agents de-duplicate by `job_id` (a MUST in docs/protocol.md): a redelivered job that already
  printed is answered with its stored result, never printed again;
- the store's guarded transitions ignore a late or repeated result, so a finished job never
  changes and `job.completed` goes out once;
- each branch has a `dispatch:<company>:<branch>` circuit: an agent that stops acknowledging
  opens it, and its jobs wait in the store (queued) instead of being sent into the void; the
  circuit's half-open trials find out when the agent works again.
"""

from __future__ import annotations

import heapq
import time
from dataclasses import dataclass
from typing import Any

import structlog
import trio

from printd.breakers import Admission, Circuit, CircuitRegistry
from printd.config import JobsConfig
from printd.gateway import protocol as P
from printd.gateway.connection import WsConnection
from printd.gateway.hub import Hub
from printd.inputs import dispatch_circuit_name
from printd.jobs.model import Job, JobState
from printd.jobs.pending import PendingEvicted, PendingStale, PendingTimeout, PendingWaiters
from printd.store import Store, StoreError

log = structlog.get_logger("printd.jobs")

DISPATCH_EVENT = "job.dispatch"
#: Unfinished jobs sent to an agent when it connects: all of them in practice, bounded anyway.
MAX_REDELIVERY = 20_000
#: Seconds agents connecting together wait so that one query finds which of them have work.
ARRIVAL_BATCH_DELAY = 0.005
#: Seconds before a delivery that failed on the store is tried again.
STORE_RETRY_DELAY = 1.0
COMPLETED_EVENT = "job.completed"


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


class AckTimers:
    """When each unacknowledged dispatch is due for a re-send (a heap with lazy deletion)."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, str]] = []
        self._due: dict[str, float] = {}

    def schedule(self, job_id: str, at: float) -> None:
        self._due[job_id] = at
        heapq.heappush(self._heap, (at, job_id))

    def cancel(self, job_id: str) -> None:
        self._due.pop(job_id, None)

    def pop_due(self, now: float) -> list[str]:
        out = []
        while self._heap and self._heap[0][0] <= now:
            at, job_id = heapq.heappop(self._heap)
            if self._due.get(job_id) == at:
                del self._due[job_id]
                out.append(job_id)
        return out

    def next_at(self) -> float | None:
        while self._heap and self._due.get(self._heap[0][1]) != self._heap[0][0]:
            heapq.heappop(self._heap)
        return self._heap[0][0] if self._heap else None

    def __len__(self) -> int:
        return len(self._due)


class DeliveryPump:
    """The state of one agent's delivery task: work was asked for, and of which kind."""

    __slots__ = ("conn", "kicked", "redeliver")

    def __init__(self, conn: WsConnection, *, redeliver: bool) -> None:
        self.conn = conn
        self.kicked = True
        self.redeliver = redeliver


class TestOutcome:
    """What a synchronous printer test ended with."""

    __slots__ = ("job", "result", "error", "status")

    def __init__(
        self, job: Job, *, result: dict[str, Any] | None = None, error: str | None = None, status: int = 200
    ):
        self.job = job
        self.result = result
        self.error = error
        self.status = status


class JobService:
    def __init__(
        self,
        store: Store,
        hub: Hub,
        config: JobsConfig,
        pending: PendingWaiters[dict[str, Any]],
        publish_company: Any,
        circuits: CircuitRegistry,
    ) -> None:
        self.store = store
        self.hub = hub
        self.config = config
        self.pending = pending
        self.retry = RetryPolicy(config.retry_initial, config.retry_max, config.max_attempts)
        self.timers = AckTimers()
        self._publish_company = publish_company
        self._wakeup = trio.Event()
        self.circuits = circuits
        self._admissions: dict[str, tuple[Circuit, Admission, float]] = {}
        self._pumps: dict[tuple[str, str], DeliveryPump] = {}
        self._arrivals: list[WsConnection] = []
        self._arrived = trio.Event()
        self._nursery: trio.Nursery | None = None
        self.dispatched = 0
        self.redelivered = 0
        self.completed = 0

    # ---------------------------------------------------------------- API side

    async def submit(
        self,
        *,
        company: str,
        printer_id: str,
        kind: str,
        payload: dict[str, Any],
        idempotency_key: str | None,
    ) -> tuple[Job, bool]:
        """Persist a job (or find the one with the same idempotency key), then try to send it."""
        printer = await self.store.get_printer(company, printer_id)
        if printer is None:
            raise LookupError(printer_id)
        job, created = await self.store.create_job(
            company=company,
            branch=printer.branch,
            printer_id=printer_id,
            agent_id=printer.agent_id,
            kind=kind,
            payload=payload,
            idempotency_key=idempotency_key,
            now=time.time(),
        )
        if created:
            # the agent's pump sends it; a store failure from here on is the pump's to retry,
            # never an error for the caller (who would retry and create a second job)
            conn = self.hub.agent(company, job.agent_id)
            if conn is not None:
                self._kick(conn)
        return job, created

    def agent_online(self, company: str, agent_id: str) -> bool:
        return self.hub.agent(company, agent_id) is not None

    async def test_printer(self, company: str, printer_id: str, payload: dict[str, Any]) -> TestOutcome:
        """The synchronous test: dispatch and wait up to `test_timeout` for the agent's result."""
        job, _ = await self.submit(
            company=company, printer_id=printer_id, kind="test", payload=payload, idempotency_key=None
        )
        if self.hub.agent(company, job.agent_id) is None:
            expired = await self._expire(job.job_id, "agent offline")
            return TestOutcome(
                expired or job, error=f"agent {job.agent_id!r} of this printer is offline", status=503
            )
        # registered before our next checkpoint, so before the agent's pump can even send the job
        waiter = self.pending.register(job.correlation_id)
        try:
            result = await waiter.wait(self.config.test_timeout)
        except PendingTimeout:
            return TestOutcome(
                job, error=f"no result from the agent within {self.config.test_timeout:g} s", status=504
            )
        except (PendingEvicted, PendingStale):
            return TestOutcome(job, error="too many printer tests in flight; try again", status=503)
        done = await self.store.get_job(job.job_id) or job
        return TestOutcome(done, result=result)

    # ---------------------------------------------------------------- agent side

    async def agent_connected(self, conn: WsConnection) -> None:
        """Send every unfinished job of this agent, in order: queued ones and redeliveries.

        Agents arriving together (a restart brings thousands) are looked up in one query, and
        only those with unfinished jobs start a delivery.
        """
        self._arrivals.append(conn)
        self._arrived.set()

    async def _sort_arrivals(self) -> None:
        while True:
            await self._arrived.wait()
            self._arrived = trio.Event()
            await trio.sleep(ARRIVAL_BATCH_DELAY)  # let a crowd of reconnects gather
            arrivals = [c for c in self._arrivals if not c.closing]
            self._arrivals = []
            try:
                with_work = await self.store.agents_with_live_jobs(
                    [(c.company, c.agent_id) for c in arrivals]
                )
            except StoreError as exc:
                log.warning(
                    "delivery check postponed: store unavailable", agents=len(arrivals), error=str(exc)
                )
                with_work = {(c.company, c.agent_id) for c in arrivals}  # their pumps retry
            for conn in arrivals:
                if (conn.company, conn.agent_id) in with_work:
                    self._kick(conn, redeliver=True)

    def _kick(self, conn: WsConnection, *, redeliver: bool = False) -> None:
        """Make sure the agent's delivery pump runs (and, with `redeliver`, resends everything
        unfinished rather than just the queued jobs)."""
        key = (conn.company, conn.agent_id)
        pump = self._pumps.get(key)
        if pump is not None and pump.conn is conn:
            pump.kicked = True
            pump.redeliver |= redeliver
            return
        pump = DeliveryPump(conn, redeliver=redeliver)
        self._pumps[key] = pump
        assert self._nursery is not None, "JobService.run() is not running"
        self._nursery.start_soon(self._run_pump, key, pump)

    async def _run_pump(self, key: tuple[str, str], pump: DeliveryPump) -> None:
        """One task per agent sends its jobs in acceptance order (store `seq`), so a job accepted
        while older ones are still going out can never overtake them on the same printer."""
        conn = pump.conn
        try:
            while pump.kicked and not conn.closing:
                pump.kicked = False
                redeliver, pump.redeliver = pump.redeliver, False
                try:
                    jobs = await self.store.deliverable_jobs(
                        conn.company, conn.agent_id, limit=MAX_REDELIVERY, queued_only=not redeliver
                    )
                    for job in jobs:
                        if conn.closing:
                            return  # the agent is gone again; its next connection starts over
                        if job.state is not JobState.QUEUED:
                            if (job.dispatched_at or 0.0) >= conn.connected_at:
                                continue  # already sent on this very connection
                            self.redelivered += 1
                        held = await self._dispatch(conn, job)
                        if held is not None:  # the branch's circuit is open: try again later
                            pump.kicked = True
                            await trio.sleep(held)
                            break
                except StoreError as exc:
                    log.warning("delivery postponed: store unavailable", agent=conn.agent_id, error=str(exc))
                    pump.kicked = True
                    pump.redeliver |= redeliver
                    await trio.sleep(STORE_RETRY_DELAY)
        finally:
            if self._pumps.get(key) is pump:
                del self._pumps[key]

    async def agent_disconnected(self, conn: WsConnection) -> None:
        """Unfinished jobs stay in the store and go out on reconnect; a lost connection says
        nothing about whether the agent would have acknowledged, so the circuit is not told."""
        for job_id, (circuit, _, _) in list(self._admissions.items()):
            if conn.claims.branch and circuit.name == dispatch_circuit_name(conn.company, conn.claims.branch):
                self._report_dispatch(job_id, delivered=None)

    async def job_report(self, conn: WsConnection, event: str, report: P.JobReport) -> P.FrameError | None:
        try:
            return await self._record_report(conn, event, report)
        except StoreError:
            # not recorded: the job is redelivered once the store is back, and the agent answers
            # the redelivery from its de-duplication record
            self._kick(conn, redeliver=True)
            return P.FrameError(P.ERR_UNAVAILABLE, "store unavailable; the job will be redelivered")

    async def _record_report(
        self, conn: WsConnection, event: str, report: P.JobReport
    ) -> P.FrameError | None:
        job = await self.store.get_job(report.job_id, conn.company)
        if job is None or job.agent_id != conn.agent_id:
            return P.FrameError(P.ERR_FORBIDDEN, f"job {report.job_id!r} is not dispatched to this agent")
        now = time.time()
        self._report_dispatch(job.job_id, delivered=True)
        self.timers.cancel(job.job_id)
        if event == "job.ack":
            await self.store.mark_acked(job.job_id, now)
            return None
        result = dict(report.data)
        finished, changed = await self.store.finish_job(
            job.job_id,
            success=bool(report.success),
            result=result,
            error=None if report.success else (report.message or "printing failed"),
            now=now,
        )
        if finished is not None:
            self.pending.resolve(finished.correlation_id, result)
        if changed and finished is not None:
            await self._announce(finished)
        return None

    async def _announce(self, job: Job) -> None:
        """`job.completed` to the company's dashboards: once, when the job reaches its end."""
        self.completed += 1
        await self._publish_company(job.company, P.encode_event(COMPLETED_EVENT, job.to_json()))

    async def _expire(self, job_id: str, reason: str) -> Job | None:
        expired = await self.store.expire_job(job_id, reason=reason, now=time.time())
        if expired is not None:
            await self._announce(expired)
        return expired

    # ---------------------------------------------------------------- dispatch

    def dispatch_circuit(self, job: Job) -> Circuit:
        return self.circuits.get_or_create(dispatch_circuit_name(job.company, job.branch))

    def _report_dispatch(self, job_id: str, *, delivered: bool | None) -> None:
        """Tell the branch's circuit how a dispatch went: acked, unanswered, or unknown (None)."""
        entry = self._admissions.pop(job_id, None)
        if entry is None:
            return
        circuit, admission, sent_at = entry
        now = trio.current_time()
        if delivered is None:
            circuit.breaker.release(now, admission)
        elif delivered:
            circuit.breaker.on_success(now, now - sent_at, admission)
        else:
            circuit.breaker.on_failure(now, now - sent_at, admission)

    async def _dispatch(self, conn: WsConnection, job: Job) -> float | None:
        """Record and send one dispatch. Returns None when done with it, or the seconds to wait
        when the branch's circuit holds it back (the job stays where it is, nothing is lost)."""
        circuit = self.dispatch_circuit(job)
        now = trio.current_time()
        admission = circuit.breaker.try_acquire(now)
        if not admission.allowed:
            return max(admission.retry_after, 0.5)
        recorded = await self.store.record_dispatch(job.job_id, time.time())
        if recorded is None:
            circuit.breaker.release(now, admission)
            return None  # finished meanwhile: nothing to send
        if recorded.state is JobState.DISPATCHED:
            self._report_dispatch(job.job_id, delivered=None)
            self._admissions[job.job_id] = (circuit, admission, now)
            wait = self.config.ack_timeout + self.retry.delay(recorded.attempts)
            self.timers.schedule(job.job_id, now + wait)
            self._wakeup.set()
        else:
            circuit.breaker.release(now, admission)  # a redelivery of an acked job proves nothing
        message = {
            "job_id": recorded.job_id,
            "correlation_id": recorded.correlation_id,
            "printer_id": recorded.printer_id,
            "kind": recorded.kind,
            "payload": recorded.payload,
            "attempt": recorded.attempts,
        }
        self.dispatched += 1
        conn.send(P.encode_event(DISPATCH_EVENT, message))
        return None

    async def _resend_due(self) -> None:
        for job_id in self.timers.pop_due(trio.current_time()):
            job = await self.store.get_job(job_id)
            if job is None or job.state not in (JobState.QUEUED, JobState.DISPATCHED):
                self._report_dispatch(job_id, delivered=None)
                continue
            if job.state is JobState.DISPATCHED:
                self._report_dispatch(job_id, delivered=False)  # no ack within the timeout
            if self.retry.exhausted(job.attempts):
                await self._expire(job_id, f"no acknowledgement after {job.attempts} attempts")
                log.warning("job expired", job_id=job_id, attempts=job.attempts)
                continue
            conn = self.hub.agent(job.company, job.agent_id)
            if conn is None:
                continue  # offline: redelivered on reconnect
            held = await self._dispatch(conn, job)
            if held is not None:
                self.timers.schedule(job_id, trio.current_time() + held)

    async def expire_old(self) -> int:
        """Queued jobs older than `job_ttl` never reached their agent: mark them expired."""
        n = 0
        cutoff = time.time() - self.config.job_ttl
        for job in await self.store.unfinished_jobs():
            if job.state is JobState.QUEUED and job.created_at < cutoff:
                if await self._expire(job.job_id, "not delivered within job_ttl"):
                    n += 1
        return n

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own the agents' delivery pumps and run the maintenance loop (ack timers, expiry)."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._sort_arrivals)
            task_status.started()
            await self._maintain()

    async def _maintain(self) -> None:
        next_expiry = trio.current_time()
        while True:
            nxt = self.timers.next_at()
            wake = min(nxt if nxt is not None else float("inf"), next_expiry)
            with trio.move_on_at(wake):
                await self._wakeup.wait()
            self._wakeup = trio.Event()
            try:
                await self._resend_due()
                if trio.current_time() >= next_expiry:
                    next_expiry = trio.current_time() + 60.0
                    await self.expire_old()
            except StoreError as exc:
                log.warning("job maintenance postponed: store unavailable", error=str(exc))
                await trio.sleep(1.0)
