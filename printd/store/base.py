"""The storage contract every backend satisfies, and its errors.

All methods are called from trio tasks. Job transitions are guarded compare-and-set updates
run inside one transaction, so a late or duplicated agent message can never move a finished
job again (that is what keeps a kitchen ticket from being lost or printed twice).

Single-job results (``create_job``, ``get_job`` and the transitions) carry ``Job.history``;
list methods (``list_jobs``, ``deliverable_jobs``, ``unfinished_jobs``) leave it empty to stay
one query.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from types import TracebackType
from typing import Any

from printd.jobs.model import Job, JobState, Printer


class StoreError(Exception):
    """Something the store cannot do (bad URL, closed store, unexpected database error)."""


class StoreUnavailable(StoreError):
    """The database cannot be reached right now; the caller may retry later."""


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
    async def list_printers(self, company: str, branch: str | None = None) -> list[Printer]:
        """A company's printers (optionally one branch), ordered by printer_id."""

    # -- jobs --------------------------------------------------------------------------------

    @abstractmethod
    async def create_job(
        self,
        *,
        company: str,
        branch: str,
        printer_id: str,
        agent_id: str,
        kind: str,
        payload: dict[str, Any],
        idempotency_key: str | None,
        now: float,
    ) -> tuple[Job, bool]:
        """Queue a job; with an idempotency key already used by the company, return that job."""

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
    async def record_dispatch(self, job_id: str, now: float) -> Job | None:
        """Count a send to the agent (queued -> dispatched); None if terminal or unknown."""

    @abstractmethod
    async def mark_acked(self, job_id: str, now: float) -> Job | None:
        """The agent took the job (queued|dispatched -> acked); None if terminal or unknown."""

    @abstractmethod
    async def finish_job(
        self, job_id: str, *, success: bool, result: dict[str, Any] | None, error: str | None, now: float
    ) -> tuple[Job | None, bool]:
        """Move a live job to printed/failed; (job, False) if it was already terminal."""

    @abstractmethod
    async def expire_job(self, job_id: str, *, reason: str, now: float) -> Job | None:
        """Give up on a live job (-> expired, error=reason); None if terminal or unknown."""

    @abstractmethod
    async def deliverable_jobs(
        self, company: str, agent_id: str, limit: int = 500, *, queued_only: bool = False
    ) -> list[Job]:
        """Live jobs for an agent in seq order: what it must get on (re)connect."""

    @abstractmethod
    async def agents_with_live_jobs(self, agents: Sequence[tuple[str, str]]) -> set[tuple[str, str]]:
        """Which of these (company, agent_id) have unfinished jobs: one query for a crowd of
        agents connecting at once, so only those with work start a delivery."""

    @abstractmethod
    async def unfinished_jobs(self, limit: int = 10000) -> list[Job]:
        """All live jobs in seq order, for recovery after a restart."""

    @abstractmethod
    async def fleet_summary(self, company: str, *, now: float) -> dict[str, Any]:
        """Printer and job counts for dashboards; ages and windows are relative to ``now``."""
