"""Accept, dispatch, track and finish print jobs so that each accepted job prints exactly once.

`DeliveryCore` (jobs/delivery.py) holds the policy; this is the shell that executes it:
store calls, the agents' delivery pumps, the timer loop and the sweep. The rules, in the order
that makes them safe:

- a job is persisted (`queued`) before the caller hears 202, so nothing accepted lives only in
  memory; routing it to its agent is best effort from there on (a lost wake-up is made good by
  the holding instance's sweep, or by the agent's next connect);
- a dispatch is recorded (attempts + 1) under the agent's session before it is sent, so an
  instance whose connection was superseded (the agent reconnected elsewhere) is refused by the
  store and cannot send, acknowledge, finish or expire anything for that agent;
- agents de-duplicate by `job_id` (a MUST in docs/protocol.md): a redelivered job that already
  printed is answered with its stored result, never printed again;
- the store's guarded transitions ignore a late or repeated result, so a finished job never
  changes and `job.completed` goes out once.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import structlog
import trio

from printd import protocol as P
from printd.agents import AgentDirectory, AgentKey, AgentLink
from printd.breakers.core import CircuitBreaker
from printd.breakers.shell import CircuitRegistry
from printd.cluster.base import ClusterUnavailable
from printd.config import JobsConfig
from printd.inputs import dispatch_circuit_name
from printd.jobs.delivery import DeliveryCore, Expire, Go, Hold, RetryPolicy, Send, Skip, Timing, Want
from printd.jobs.pending import AgentGone, PendingError, PendingTimeout, PendingWaiters
from printd.model import Job, JobState
from printd.store import Store, StoreError
from printd.store.base import (
    AgentClaim,
    AgentFence,
    Report,
    Reported,
    StaleLeader,
    StaleSession,
    UnknownJob,
)

log = structlog.get_logger("printd.jobs")

DISPATCH_EVENT = "job.dispatch"
COMPLETED_EVENT = "job.completed"
#: Unfinished jobs sent to an agent in one pass: all of them in practice, bounded anyway.
PASS_PAGE = 50  # jobs read per store call of a pass: at most 50 payloads (12.5 MiB at 256 KiB) held
#: Seconds agents connecting together wait so that one transaction records all their sessions.
ARRIVAL_BATCH_DELAY = 0.005
#: Seconds between retries of store work that failed (claims, releases, passes).
STORE_RETRY_DELAY = 1.0
#: Seconds a report sent right after connecting waits for the connection's session.
CLAIM_WAIT = 2.0

Announce = Callable[[str, bytes], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class PrinterTestResult:
    """What a synchronous printer test ended with: the job, and the agent's result or why not."""

    job: Job
    result: dict[str, Any] | None = None
    error: str | None = None
    status: int = 200


class JobService:
    def __init__(
        self,
        store: Store,
        agents: AgentDirectory,
        config: JobsConfig,
        pending: PendingWaiters[dict[str, Any]],
        announce: Announce,
        circuits: CircuitRegistry,
        *,
        incarnation: str,
    ) -> None:
        self.store = store
        self.agents = agents
        self.config = config
        self.pending = pending
        self._announce_to = announce
        self.circuits = circuits
        self.instance_id = agents.instance_id
        self.incarnation = incarnation
        self.core = DeliveryCore(
            RetryPolicy(config.retry_initial, config.retry_max, config.max_attempts),
            Timing(ack_timeout=config.ack_timeout, result_timeout=config.result_timeout),
            self._breaker,
        )
        self._wakeup = trio.Event()
        self._arrivals: list[AgentLink] = []
        self._arrived = trio.Event()
        self._recorded = trio.Event()  # set after each crowd of arrivals got its sessions
        self._unreleased: list[AgentFence] = []
        self._early: set[AgentKey] = set()
        self._nursery: trio.Nursery | None = None
        self.dispatched = 0
        self.redelivered = 0
        self.completed = 0
        self.stale_refused = 0
        self.on_finished: Callable[[Job], None] | None = None  # the metrics, once per finished job

    def reconfigure(self, config: JobsConfig) -> None:
        """New timeouts and retry rules (a reload): they apply to the next dispatch and timer."""
        self.config = config
        self.core.retry = RetryPolicy(config.retry_initial, config.retry_max, config.max_attempts)
        self.core.timing = Timing(ack_timeout=config.ack_timeout, result_timeout=config.result_timeout)

    def _breaker(self, company: str, branch: str) -> CircuitBreaker:
        return self.circuits.get_or_create(dispatch_circuit_name(company, branch)).breaker

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
        """Persist a job (or find the one with the same idempotency key), then route it."""
        job, created = await self._create(company, printer_id, kind, payload, idempotency_key)
        if created:
            await self._route(job)
        return job, created

    async def _create(
        self, company: str, printer_id: str, kind: str, payload: dict[str, Any], key: str | None
    ) -> tuple[Job, bool]:
        return await self.store.create_job(  # UnknownPrinter is a LookupError
            company=company,
            printer_id=printer_id,
            kind=kind,
            payload=payload,
            idempotency_key=key,
            now=time.time(),
            origin=self.instance_id,
            max_backlog=self.config.max_backlog_per_printer,
        )

    async def _route(self, job: Job) -> None:
        await self.deliver_queued(job.company, job.agent_id)

    async def deliver_queued(self, company: str, agent_id: str) -> None:
        """Wake the delivery of the agent's queued jobs, here or on the instance holding it.
        Never raises: from here on a failure only delays a job, which waits in the store."""
        key = (company, agent_id)
        if self.agents.local(key) is not None:
            self._wake(key, Want.QUEUED)
            return
        try:
            where = (await self.agents.locate([key])).get(key)
            if where is not None and where != self.instance_id:
                await self.agents.wake(key, where)
        except ClusterUnavailable:
            pass  # the holding instance's sweep finds the job

    async def agent_online(self, company: str, agent_id: str) -> bool:
        return (company, agent_id) in await self.agents_online([(company, agent_id)])

    async def agents_online(self, keys: Sequence[AgentKey]) -> set[AgentKey]:
        """Which of these agents are connected to any instance (this one's, when the cluster
        view is unavailable)."""
        online = {k for k in keys if self.agents.local(k) is not None}
        rest = [k for k in keys if k not in online]
        if rest:
            try:
                online.update((await self.agents.locate(rest)).keys())
            except ClusterUnavailable:
                pass
        return online

    async def test_printer(self, company: str, printer_id: str, payload: dict[str, Any]) -> PrinterTestResult:
        """The synchronous test: dispatch and wait up to `test_timeout` for the agent's result."""
        job, _ = await self._create(company, printer_id, "test", payload, None)
        key = (job.company, job.agent_id)
        if key not in await self.agents_online([key]):
            expired = await self._expire_unfenced(job, "agent offline")
            return PrinterTestResult(
                expired or job, error=f"agent {job.agent_id!r} of this printer is offline", status=503
            )
        waiter = self.pending.register(job.correlation_id)  # before the job can reach the agent
        await self._route(job)
        timeout = self.config.test_timeout
        try:
            result = await waiter.wait(timeout)
        except PendingTimeout:
            done = await self.store.get_job(job.job_id)
            if done is not None and done.state.terminal and done.result is not None:
                return PrinterTestResult(done, result=done.result)  # finished; the reply was lost
            return PrinterTestResult(
                done or job, error=f"no result from the agent within {timeout:g} s", status=504
            )
        except AgentGone:
            return PrinterTestResult(job, error=f"agent {job.agent_id!r} disconnected", status=503)
        except PendingError:
            return PrinterTestResult(job, error="too many printer tests in flight; try again", status=503)
        done = await self.store.get_job(job.job_id) or job
        return PrinterTestResult(done, result=result)

    def test_outcome(self, correlation_id: str, result: dict[str, Any] | None, gone: bool) -> None:
        """A printer test's outcome routed from the instance holding the agent."""
        if gone:
            self.pending.fail(correlation_id, AgentGone(correlation_id, "the agent disconnected"))
        elif result is not None:
            self.pending.resolve(correlation_id, result)

    # ---------------------------------------------------------------- agents come and go

    def agent_connected(self, link: AgentLink) -> None:
        """Record the connection as the agent's current session, then deliver everything it
        has unfinished. Agents arriving together (a restart brings thousands) are recorded in
        one transaction."""
        self._arrivals.append(link)
        self._arrived.set()

    async def _record_arrivals(self) -> None:
        while True:
            await self._arrived.wait()
            self._arrived = trio.Event()
            await trio.sleep(ARRIVAL_BATCH_DELAY)  # let a crowd of reconnects gather
            arrivals = [link for link in self._arrivals if not link.closing]
            self._arrivals = []
            if not arrivals:
                continue
            claims = [AgentClaim(x.company, x.agent_id, self.instance_id, self.incarnation) for x in arrivals]
            try:
                sessions = await self.store.claim_agents(claims, time.time())
            except StoreError as exc:
                log.warning(
                    "agent sessions not recorded yet: store unavailable", agents=len(arrivals), error=str(exc)
                )
                self._arrivals = arrivals + self._arrivals  # tried again; reports wait meanwhile
                await trio.sleep(STORE_RETRY_DELAY)
                self._arrived.set()
                continue
            now = trio.current_time()
            for link, claimed in zip(arrivals, sessions, strict=True):
                link.session = claimed.session
                if link.closing:
                    self._unreleased.append(AgentFence(link.company, link.agent_id, claimed.session))
                    continue
                key = (link.company, link.agent_id)
                self.core.connected(key, link.branch, claimed.session, now)
                woken = key in self._early  # a job routed here while the session was recorded
                self._early.discard(key)
                if claimed.has_live_jobs or woken:
                    self._wake(key, Want.ALL)
            self._recorded.set()
            self._recorded = trio.Event()
            try:
                await self.agents.register([x for x in arrivals if not x.closing])
            except ClusterUnavailable:
                pass  # re-registered from the hub when the cluster is back

    async def agent_disconnected(self, link: AgentLink) -> None:
        """Unfinished jobs stay in the store and go out on the next connect, wherever it is.
        Printer tests waiting for this agent are answered at once."""
        key = (link.company, link.agent_id)
        self._early.discard(key)
        for item in self.core.disconnected(key, link.session, trio.current_time()):
            if item.kind != "test":
                continue
            if item.origin in (None, self.instance_id):
                self.test_outcome(item.correlation_id, None, gone=True)
            else:
                await self._tell(item.origin, {"t": "test", "cid": item.correlation_id, "gone": True})
        if link.session:
            fence = AgentFence(link.company, link.agent_id, link.session)
            try:
                await self.store.release_agent(fence, time.time())
            except StoreError:
                self._unreleased.append(fence)
        try:
            await self.agents.unregister(link)
        except ClusterUnavailable:
            pass

    def wake_local(self, key: AgentKey) -> None:
        """A routed wake-up: another instance accepted a job for an agent held here."""
        self._wake(key, Want.QUEUED)

    def _wake(self, key: AgentKey, want: Want) -> None:
        link = self.agents.local(key)
        if link is None:
            return
        if self.core.holds(key) is None:
            self._early.add(key)  # connected, its session not recorded yet: woken after that
        elif self.core.wake(key, want):
            assert self._nursery is not None, "JobService.run() is not running"
            self._nursery.start_soon(self._pump, link)

    def _stale(self, link: AgentLink, session: int) -> bool:
        """The store refused `session`: the agent connected again since. Close this connection,
        unless it holds a newer session itself by now (a takeover re-claims the live connection:
        a call made under its old session fails, the connection is not stale, and its new
        session's full pass sends everything again). True when it was closed."""
        if link.session != session:
            return False
        self.stale_refused += 1
        log.warning(
            "stale agent connection refused by the store; closing it",
            company=link.company,
            agent=link.agent_id,
            session=link.session,
        )
        link.close(P.CLOSE_REPLACED, "replaced by a newer connection of the same agent")
        return True

    # ---------------------------------------------------------------- delivery

    async def _pump(self, link: AgentLink) -> None:
        """One task per agent sends its jobs in acceptance order (store `seq`), so a job accepted
        while older ones are still going out can never overtake them on the same printer."""
        key = (link.company, link.agent_id)
        session = link.session
        while not link.closing:
            want = self.core.next_pass(key, session)
            if want is Want.NONE:
                return
            await self._pass(link, session, want)

    async def _pass(self, link: AgentLink, session: int, want: Want) -> None:
        """One pass over the agent's jobs, a page at a time (a backlog of thousands of large
        payloads is never in memory at once). Returns early when the store fails or the
        branch's circuit holds; the core then has the pass due again."""
        key = (link.company, link.agent_id)
        after = 0
        while not link.closing:
            try:
                jobs = await self.store.deliverable_jobs(
                    link.company,
                    link.agent_id,
                    limit=PASS_PAGE,
                    queued_only=want is Want.QUEUED,
                    after_seq=after,
                )
            except StoreError as exc:
                log.warning("delivery postponed: store unavailable", agent=link.agent_id, error=str(exc))
                self.core.pass_failed(key, session, want)
                await trio.sleep(STORE_RETRY_DELAY)
                return
            go: list[tuple[str, Any]] = []
            hold: Hold | None = None
            for job in jobs:
                decision = self.core.decide(
                    key, session, job.job_id, job.state, job.branch, trio.current_time()
                )
                if isinstance(decision, Skip):
                    continue
                if isinstance(decision, Hold):  # the branch's circuit is open: the rest waits
                    hold = decision
                    break
                assert isinstance(decision, Go)
                if job.state is not JobState.QUEUED:
                    self.redelivered += 1
                go.append((job.job_id, decision.admission))
            if go and not await self._dispatch_many(link, go):
                # The store did not answer; it may still have recorded the dispatches (a reply
                # lost after COMMIT), making them `dispatched` under this session, which a
                # queued-only pass would never find again: the retry is a full pass.
                self.core.pass_failed(key, session, Want.ALL)
                await trio.sleep(STORE_RETRY_DELAY)
                return
            if hold is not None:
                self.core.pass_failed(key, session, want)
                await trio.sleep(hold.retry_after)
                return
            if len(jobs) < PASS_PAGE:
                return
            after = jobs[-1].seq

    async def _dispatch_many(self, link: AgentLink, sends: Sequence[tuple[str, Any]]) -> bool:
        """Record the dispatches of `(job_id, admission)` under the agent's session in one
        transaction, then send them in order. False when the store could not record them
        (nothing was sent; the caller retries)."""
        key = (link.company, link.agent_id)
        fence = _fence(link)
        try:
            outcomes = await self.store.record_dispatches([job_id for job_id, _ in sends], time.time(), fence)
        except StoreError as exc:
            outcomes = [exc] * len(sends)
        recorded = True
        for (job_id, admission), outcome in zip(sends, outcomes, strict=True):
            now = trio.current_time()
            if isinstance(outcome, Job) and not link.closing:
                await self._send(link, outcome, admission)
                continue
            self.core.give_back(admission, now)
            if isinstance(outcome, StaleSession):
                self._stale(link, fence.session)
            elif isinstance(outcome, UnknownJob) or outcome is None:
                # finished meanwhile, or not this agent's job (a report for someone else's during
                # an outage put it here): nothing to send, nothing to retry
                self.core.forget(key, link.session, job_id, now)
            elif isinstance(outcome, StoreError):
                recorded = False
        return recorded

    async def _dispatch(self, link: AgentLink, job_id: str, admission: Any) -> bool:
        """A timer's re-send of one job."""
        return await self._dispatch_many(link, [(job_id, admission)])

    async def _send(self, link: AgentLink, job: Job, admission: Any) -> None:
        """Send a job whose dispatch is recorded, and start its timer."""
        now = trio.current_time()
        try:
            frame = P.encode_event(
                DISPATCH_EVENT,
                {
                    "job_id": job.job_id,
                    "correlation_id": job.correlation_id,
                    "printer_id": job.printer_id,
                    "kind": job.kind,
                    "payload": job.payload,
                    "attempt": job.attempts,
                },
            )
        except orjson.JSONEncodeError as exc:
            # Stored before the API refused such payloads: it can never be sent, so it ends
            # here (expired, announced) instead of failing every dispatch on every instance.
            self.core.give_back(admission, now)
            await self._unsendable(link, job, str(exc))
            return
        self.core.sent(
            (link.company, link.agent_id),
            link.session,
            job_id=job.job_id,
            kind=job.kind,
            correlation_id=job.correlation_id,
            origin=job.origin,
            attempts=job.attempts,
            acked=job.state is JobState.ACKED,
            admission=admission,
            now=now,
        )
        self._wakeup.set()
        self.dispatched += 1
        link.send(frame)

    async def _unsendable(self, link: AgentLink, job: Job, why: str) -> None:
        log.error("job payload cannot be encoded; expiring it", job_id=job.job_id, error=why)
        try:
            expired = await self.store.expire_job(
                job.job_id, reason=f"payload cannot be sent: {why}", now=time.time(), fence=_fence(link)
            )
        except StoreError:  # a stale session or an unknown job included
            return  # the next pass meets it again
        if expired is not None:
            await self._announce(expired)

    # ---------------------------------------------------------------- reports from agents

    def expects(self, link: AgentLink, job_id: str) -> bool:
        """The report is one this connection owes for a job sent on it (DeliveryCore.expects)."""
        return self.core.expects((link.company, link.agent_id), link.session, job_id)

    async def job_reports(
        self, link: AgentLink, reports: Sequence[tuple[str, P.JobReport]]
    ) -> list[P.FrameError | None]:
        """Apply a connection's acks and results (`(event, report)` in the order they came) in
        one store transaction; the answer to each, in the same order."""
        with trio.move_on_after(CLAIM_WAIT):  # a report right after connecting (a pending result)
            while not link.session and not link.closing:
                await self._recorded.wait()
        if not link.session:
            busy = P.FrameError(P.ERR_UNAVAILABLE, "store unavailable; the job will be redelivered")
            return [busy] * len(reports)
        fence = _fence(link)
        items = [_store_report(event, report) for event, report in reports]
        outcomes: Sequence[Reported | StoreError]
        try:
            outcomes = await self.store.report_jobs(items, time.time(), fence)
        except StoreError as exc:
            outcomes = [exc] * len(items)
        return [
            await self._reported(link, fence, item, outcome)
            for item, outcome in zip(items, outcomes, strict=True)
        ]

    async def _reported(
        self, link: AgentLink, fence: AgentFence, item: Report, outcome: Reported | StoreError
    ) -> P.FrameError | None:
        key = (link.company, link.agent_id)
        if isinstance(outcome, UnknownJob):
            return P.FrameError(P.ERR_FORBIDDEN, f"job {item.job_id!r} is not dispatched to this agent")
        if isinstance(outcome, StaleSession):
            if self._stale(link, fence.session):
                return P.FrameError(P.ERR_FORBIDDEN, "this connection was replaced by a newer one")
            # recorded under this connection's new session by the redelivery its full pass makes
            return P.FrameError(P.ERR_UNAVAILABLE, "not recorded; the job will be redelivered")
        if isinstance(outcome, StoreError):
            # not recorded: the job goes out again once the store is back, and the agent
            # answers the redelivery from its de-duplication journal
            if not self.core.report_failed(
                key, link.session, item.job_id, kind="print", now=trio.current_time()
            ):
                self._wake(key, Want.ALL)  # not tracked (cap): the full pass finds it once the store is back
            self._wakeup.set()
            return P.FrameError(P.ERR_UNAVAILABLE, "store unavailable; the job will be redelivered")
        if item.ack:
            self.core.acked(key, link.session, item.job_id, trio.current_time())
            return None
        job = outcome.job
        self.core.finished(key, link.session, item.job_id, trio.current_time())
        if job.kind == "test":
            result = item.result or {}
            if job.origin in (None, self.instance_id):
                self.test_outcome(job.correlation_id, result, gone=False)
            else:
                await self._tell(job.origin, {"t": "test", "cid": job.correlation_id, "result": result})
        if outcome.changed:
            await self._announce(job)
        return None

    async def _tell(self, instance_id: str, message: dict[str, Any]) -> None:
        try:
            await self.agents.tell(instance_id, message)
        except ClusterUnavailable:
            pass  # the waiting caller re-reads the job from the store at its timeout

    async def _announce(self, job: Job) -> None:
        """`job.completed` to the company's dashboards: once, when the job reaches its end."""
        self.completed += 1
        if self.on_finished is not None:
            self.on_finished(job)
        await self._announce_to(job.company, P.encode_event(COMPLETED_EVENT, job.to_json()))

    async def _expire_unfenced(self, job: Job, reason: str) -> Job | None:
        expired = await self.store.expire_job(job.job_id, reason=reason, now=time.time())
        if expired is not None:
            await self._announce(expired)
        return expired

    # ---------------------------------------------------------------- timers and sweeps

    async def _on_timers(self) -> None:
        """Execute what the core's timers decided: re-sends and expiries."""
        now = trio.current_time()
        for action in self.core.due(now):
            key = action.agent
            link = self.agents.local(key)
            held = self.core.holds(key)
            if link is None or held is None or held.session != link.session:
                continue
            if isinstance(action, Send):
                if not await self._dispatch(link, action.job_id, action.admission):
                    self.core.send_failed(key, link.session, action.job_id, trio.current_time())
                continue
            assert isinstance(action, Expire)
            fence = _fence(link)
            try:
                expired = await self.store.expire_job(
                    action.job_id, reason=action.reason, now=time.time(), fence=fence
                )
            except StaleSession:
                self._stale(link, fence.session)
                continue
            except StoreError:
                self.core.send_failed(key, link.session, action.job_id, trio.current_time())
                continue
            self.core.forget(key, link.session, action.job_id, trio.current_time())
            if expired is not None:
                log.warning("job expired", job_id=action.job_id, reason=action.reason)
                await self._announce(expired)

    async def _timers(self) -> None:
        while True:
            nxt = self.core.next_due()
            with trio.move_on_at(nxt if nxt is not None else float("inf")):
                await self._wakeup.wait()
            self._wakeup = trio.Event()
            await self._on_timers()

    async def revalidate(self) -> int:
        """This instance was cut off (paused, partitioned) long enough for the leader to count it
        gone: the agents it still holds may have reconnected elsewhere, or been released. Close
        every connection whose session is no longer the agent's current one; the agent comes
        back with a fresh one and gets everything unfinished. Returns how many were closed."""
        held = [(link, link.session) for link in self._held_links() if link.session]
        current = await self.store.current_sessions([(x.company, x.agent_id) for x, _ in held])
        closed = 0
        for link, session in held:
            if current.get((link.company, link.agent_id)) != session and self._stale(link, session):
                closed += 1
        return closed

    def _held_links(self) -> list[AgentLink]:
        out = []
        for key in list(self.core.agents):
            link = self.agents.local(key)
            if link is not None and not link.closing:
                out.append(link)
        return out

    async def sweep(self) -> None:
        """Deliver queued jobs of the agents held here that no wake-up announced (a routing
        message lost, or sent while the cluster was down), and retry session releases."""
        unreleased, self._unreleased = self._unreleased, []
        for fence in unreleased:
            try:
                await self.store.release_agent(fence, time.time())
            except StoreError:
                self._unreleased.append(fence)
        for key in await self.store.agents_with_queued_jobs(self.instance_id):
            self._wake(key, Want.QUEUED)

    async def _sweeps(self) -> None:
        while True:
            await trio.sleep(self.config.sweep_interval)
            try:
                await self.sweep()
            except StoreError as exc:
                log.debug("sweep postponed: store unavailable", error=str(exc))

    async def leader_chores(self, token: int, *, orphan_after: float) -> None:
        """What one instance of the cluster does for all (the leader, under its fencing token):
        expire jobs never delivered within the TTL, and release agents of instances that are
        gone (their dispatched jobs wait for the agent's reconnect, queued again)."""
        now = time.time()
        try:
            for job in await self.store.expire_queued(now - self.config.job_ttl, now, token):
                await self._announce(job)
            requeued = await self.store.release_orphans(now - orphan_after, now, token)
        except StaleLeader as exc:
            log.warning("leader chore refused: another instance leads now", error=str(exc))
            raise
        if requeued:
            log.info("requeued jobs of agents whose instance is gone", jobs=len(requeued))
            for job in requeued:
                await self._route(job)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own the agents' delivery pumps, the timers, arrivals and the sweep."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._record_arrivals)
            nursery.start_soon(self._timers)
            nursery.start_soon(self._sweeps)
            task_status.started()


def _store_report(event: str, report: P.JobReport) -> Report:
    if event == "job.ack":
        return Report(report.job_id, ack=True)
    return Report(
        report.job_id,
        ack=False,
        success=bool(report.success),
        result=dict(report.data),
        error=None if report.success else (report.message or "printing failed"),
    )


def _fence(link: AgentLink) -> AgentFence:
    return AgentFence(link.company, link.agent_id, link.session)
