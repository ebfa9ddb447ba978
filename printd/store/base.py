"""The storage contract every backend satisfies, and its errors.

All methods are called from trio tasks. Job transitions are guarded compare-and-set updates
run inside one transaction, so a late or duplicated agent message can never move a finished
job again (that is what keeps a kitchen ticket from being lost or printed twice).

Only ``get_job`` reads ``Job.history`` (the audit trail an operator asks for); everything on
the delivery path leaves it empty, so a transition is one statement.

Fencing (docs/architecture.md): every transition made for an agent carries the agent's session
(`AgentFence`), and leader chores carry the leader's token; the store refuses a stale one
(`StaleSession`, `StaleLeader`), so an instance that was paused or cut off and still believes it
holds an agent or the leadership cannot act on that belief, whatever Redis says.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from printd.model import Job, JobState, Printer


class StoreError(Exception):
    """Something the store cannot do (bad URL, closed store, unexpected database error)."""


class StoreUnavailable(StoreError):
    """The database cannot be reached right now; the caller may retry later."""


class StoreCircuitOpen(StoreUnavailable):
    """The store's circuit is open: the call was not even tried. Callers treat it like any
    other unavailability; `retry_after` says when the next trial is due."""

    def __init__(self, message: str, *, retry_after: float, circuit: str) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.circuit = circuit


class StaleSession(StoreError):
    """The agent connected again since (here or on another instance): the session a transition
    was made under is no longer the agent's current one, and the store refused it."""


class StaleLeader(StoreError):
    """Another instance became leader since: this one's fencing token is out of date."""


class UnknownPrinter(StoreError, LookupError):
    """No such printer in this company."""


class BacklogFull(StoreError):
    """The printer already has its cap of unfinished jobs: a new one is refused, not stored."""

    def __init__(self, printer_id: str, limit: int) -> None:
        super().__init__(f"printer {printer_id!r} has {limit} unfinished jobs (jobs.max_backlog_per_printer)")
        self.printer_id = printer_id
        self.limit = limit


class UnknownJob(StoreError, LookupError):
    """No such job for this agent (unknown id, another company, or another agent's job)."""


class InstanceConflict(StoreError):
    """Another live instance makes this one's start unsafe (same id, or no cluster to share)."""


@dataclass(frozen=True, slots=True)
class AgentFence:
    """The agent session a transition is made under."""

    company: str
    agent_id: str
    session: int


@dataclass(frozen=True, slots=True)
class AgentClaim:
    """An agent connected on `instance_id`: it takes a new session."""

    company: str
    agent_id: str
    instance_id: str
    incarnation: str


@dataclass(frozen=True, slots=True)
class ClaimedSession:
    session: int
    has_live_jobs: bool


@dataclass(frozen=True, slots=True)
class InstanceRow:
    instance_id: str
    incarnation: str
    clustered: bool
    url: str
    started_at: float
    heartbeat_at: float


@dataclass(frozen=True, slots=True)
class QueuedJobs:
    """How many jobs wait in `queued`, and since when the oldest (None when there is none)."""

    count: int
    oldest_created_at: float | None


@dataclass(frozen=True, slots=True)
class Report:
    """An agent's `job.ack` (ack=True) or `job.result` for one job."""

    job_id: str
    ack: bool
    success: bool = False
    result: dict[str, Any] | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Reported:
    """A report applied: the job after it, and whether it moved the job's state."""

    job: Job
    changed: bool


class Store(ABC):
    """Durable printers and print jobs. Open it, ``migrate()`` it, use it, close it."""

    async def __aenter__(self) -> Store:
        await self.open()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # -- lifecycle ---------------------------------------------------------------------------

    @abstractmethod
    async def open(self) -> None:
        """Connect; raises StoreUnavailable if the database cannot be reached."""

    @abstractmethod
    async def close(self) -> None:
        """Release connections after in-flight calls finish; safe to call twice."""

    @abstractmethod
    async def migrate(self) -> list[int]:
        """Apply pending schema migrations and return their versions (empty when up to date)."""

    @abstractmethod
    async def schema_version(self) -> int:
        """Highest applied migration version, 0 on an empty database."""

    @abstractmethod
    async def ping(self) -> None:
        """One cheap round trip, for health checks; raises StoreUnavailable when down."""

    @abstractmethod
    async def probe(self) -> None:
        """Like ping, but never held back by the store's circuit (its recovery probe)."""

    # -- printers ----------------------------------------------------------------------------

    @abstractmethod
    async def upsert_printer(
        self,
        *,
        company: str,
        branch: str,
        agent_id: str,
        printer_id: str,
        status: str,
        details: dict[str, Any],
        now: float,
    ) -> tuple[Printer, bool]:
        """Create the printer keyed by (company, printer_id) for this branch and agent (True),
        or update its status and details if they own it. A printer owned by another branch or
        agent is returned unchanged (False): it moves only by `move_printer`."""

    @abstractmethod
    async def move_printer(
        self,
        company: str,
        printer_id: str,
        *,
        expected: tuple[str, str],
        branch: str,
        agent_id: str,
        now: float,
    ) -> tuple[Printer, int] | None:
        """Compare-and-set the printer's owner from `expected` (branch, agent_id) to this branch
        and agent; its queued jobs follow in the same transaction. Returns the moved printer and
        the number of jobs that moved, or None if the printer is unknown or its owner is no
        longer `expected` (someone else moved it first: two racing moves cannot both win).
        Jobs already sent (dispatched, acked) stay with the agent that got them: only it knows
        whether they printed."""

    @abstractmethod
    async def get_printer(self, company: str, printer_id: str) -> Printer | None:
        """The printer, or None."""

    @abstractmethod
    async def list_printers(
        self, company: str, branch: str | None = None, *, after: str | None = None, limit: int | None = None
    ) -> list[Printer]:
        """A company's printers (optionally one branch), ordered by printer_id; a page of at most
        `limit` with printer_id greater than `after` (keyset pagination)."""

    # -- jobs --------------------------------------------------------------------------------

    @abstractmethod
    async def create_job(
        self,
        *,
        company: str,
        printer_id: str,
        kind: str,
        payload: dict[str, Any],
        idempotency_key: str | None,
        now: float,
        origin: str | None = None,
        max_backlog: int | None = None,
    ) -> tuple[Job, bool]:
        """Queue a job for the printer's current owner (branch and agent, read in the same
        transaction); with an idempotency key already used by the company, return that job.
        `origin` is the accepting instance (a printer test's caller waits there). Raises
        UnknownPrinter, and BacklogFull when the printer already has `max_backlog` unfinished
        jobs (a replay of an accepted key is still answered)."""

    @abstractmethod
    async def get_job(self, job_id: str, company: str | None = None) -> Job | None:
        """The job with its history, or None (also when it belongs to another company)."""

    @abstractmethod
    async def list_jobs(
        self,
        company: str,
        *,
        printer_id: str | None = None,
        state: JobState | None = None,
        limit: int = 100,
    ) -> list[Job]:
        """A company's jobs, newest first, without history."""

    @abstractmethod
    async def record_dispatches(
        self, job_ids: Sequence[str], now: float, fence: AgentFence
    ) -> list[Job | None | StoreError]:
        """Count sends to the agent, in one transaction (queued -> dispatched, or a re-send of a
        dispatched/acked job): per job the job, None if it ended meanwhile, or the error that job
        alone met (UnknownJob: not this agent's; StaleSession)."""

    @abstractmethod
    async def report_jobs(
        self, reports: Sequence[Report], now: float, fence: AgentFence
    ) -> list[Reported | StoreError]:
        """Apply an agent's acks (queued|dispatched -> acked) and results (live -> printed|failed)
        in order, in one transaction: per report the job (`changed` False when its state did
        not allow the report: acked or ended already) or the error that report alone met."""

    async def record_dispatch(self, job_id: str, now: float, fence: AgentFence) -> Job | None:
        """`record_dispatches` for one job; its error raised."""
        (outcome,) = await self.record_dispatches([job_id], now, fence)
        if isinstance(outcome, StoreError):
            raise outcome
        return outcome

    async def mark_acked(self, job_id: str, now: float, fence: AgentFence) -> Job | None:
        """The agent took the job; the job as it is (acked or terminal) otherwise."""
        return (await self._report_one(Report(job_id, ack=True), now, fence)).job

    async def finish_job(
        self,
        job_id: str,
        *,
        success: bool,
        result: dict[str, Any] | None,
        error: str | None,
        now: float,
        fence: AgentFence,
    ) -> tuple[Job, bool]:
        """Move a live job to printed/failed; (job, False) if it had ended already."""
        report = Report(job_id, ack=False, success=success, result=result, error=error)
        done = await self._report_one(report, now, fence)
        return done.job, done.changed

    async def _report_one(self, report: Report, now: float, fence: AgentFence) -> Reported:
        (outcome,) = await self.report_jobs([report], now, fence)
        if isinstance(outcome, StoreError):
            raise outcome
        return outcome

    @abstractmethod
    async def expire_job(
        self, job_id: str, *, reason: str, now: float, fence: AgentFence | None = None
    ) -> Job | None:
        """Give up on a live job (-> expired, error=reason); None if it had ended already.
        Without a fence (the API's own decision, e.g. an offline agent's test) the state guard
        alone applies."""

    @abstractmethod
    async def deliverable_jobs(
        self, company: str, agent_id: str, limit: int = 500, *, queued_only: bool = False, after_seq: int = 0
    ) -> list[Job]:
        """Live jobs for an agent in seq order: what it must get on (re)connect. One page of
        `limit` jobs after `after_seq`, so a pass over a big backlog holds one page of payloads."""

    # -- agent sessions ----------------------------------------------------------------------

    @abstractmethod
    async def claim_agents(self, claims: Sequence[AgentClaim], now: float) -> list[ClaimedSession]:
        """Agents connected: each takes a new session (higher than any before) on its instance;
        also says which have unfinished jobs. One transaction for a crowd of reconnects."""

    @abstractmethod
    async def release_agent(self, fence: AgentFence, now: float) -> bool:
        """The agent's connection ended: mark it offline, only if `fence` is still current."""

    @abstractmethod
    async def current_sessions(self, agents: Sequence[tuple[str, str]]) -> dict[tuple[str, str], int]:
        """The current session of each of these agents that is online (released ones are
        absent): how an instance that was cut off finds which of its connections went stale."""

    @abstractmethod
    async def agents_with_queued_jobs(self, instance_id: str) -> set[tuple[str, str]]:
        """(company, agent_id) of the agents held by `instance_id` that have queued jobs: the
        sweep that delivers what a lost routing message would have woken."""

    # -- instances and the leader ------------------------------------------------------------

    @abstractmethod
    async def register_instance(self, row: InstanceRow, *, ttl: float) -> None:
        """Record this instance at start. Raises InstanceConflict when a live instance (heartbeat
        within `ttl`) has the same id with another incarnation, or when either this one or a
        live other one runs without a cluster (two such instances on one database would each
        think they hold every agent)."""

    @abstractmethod
    async def heartbeat_instance(self, instance_id: str, incarnation: str, now: float) -> bool:
        """Refresh our heartbeat; False if the row was taken over by another incarnation."""

    @abstractmethod
    async def remove_instance(self, instance_id: str, incarnation: str) -> None:
        """Leave at a clean stop (compare-and-delete)."""

    @abstractmethod
    async def list_instances(self) -> list[InstanceRow]:
        """Every instance row, live or not, by id."""

    @abstractmethod
    async def take_leadership(self, instance_id: str, now: float) -> int:
        """A new leader's fencing token (always higher than any before)."""

    @abstractmethod
    async def expire_queued(self, created_before: float, now: float, token: int) -> list[Job]:
        """Leader chore: queued jobs older than the cutoff never reached their agent: expire
        them. Raises StaleLeader when `token` is not the current one."""

    @abstractmethod
    async def release_orphans(self, heartbeat_before: float, now: float, token: int) -> list[Job]:
        """Leader chore: agents held by instances whose heartbeat stopped before the cutoff are
        offline; their dispatched jobs go back to queued (to be delivered wherever the agent
        reconnects). Returns the requeued jobs. Raises StaleLeader on a stale token."""

    @abstractmethod
    async def queued_jobs(self) -> dict[str, QueuedJobs]:
        """Every company's queued jobs, under "online" (their agent holds a session on some
        instance: delivery should take seconds) and "offline" (they wait for the agent). What
        the metrics sample, every few seconds per instance: one indexed read."""

    @abstractmethod
    async def fleet_summary(self, company: str, *, now: float) -> dict[str, Any]:
        """Printer and job counts for dashboards; ages and windows are relative to ``now``."""
