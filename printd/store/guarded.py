"""The store behind its circuit breaker.

When the database stops answering, the `store` circuit opens after the threshold and every
call fails at once with `CircuitOpenError` (the API answers 503 + Retry-After) instead of
piling up worker threads behind a dead connection. Lifecycle calls are not guarded.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from printd.breakers import Circuit, CircuitOpenError
from printd.jobs.model import Job, JobState, Printer
from printd.store.base import Store, StoreUnavailable

T = TypeVar("T")


class StoreCircuitOpen(StoreUnavailable):
    """The store's circuit is open: the call was not even tried. Callers treat it like any
    other unavailability; `retry_after` says when the next trial is due."""

    def __init__(self, exc: CircuitOpenError) -> None:
        super().__init__(str(exc))
        self.retry_after = exc.retry_after
        self.circuit = exc.circuit


class GuardedStore(Store):
    def __init__(self, inner: Store, circuit: Circuit) -> None:
        self.inner = inner
        self.circuit = circuit

    async def _call(self, fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        try:
            async with self.circuit.guard():
                return await fn(*args, **kwargs)
        except CircuitOpenError as exc:
            raise StoreCircuitOpen(exc) from None

    async def open(self) -> None:
        await self.inner.open()

    async def close(self) -> None:
        await self.inner.close()

    async def migrate(self) -> list[int]:
        return await self.inner.migrate()

    async def schema_version(self) -> int:
        return await self._call(self.inner.schema_version)

    async def ping(self) -> None:
        await self._call(self.inner.ping)

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
        return await self._call(
            self.inner.upsert_printer,
            company=company,
            branch=branch,
            agent_id=agent_id,
            printer_id=printer_id,
            status=status,
            details=details,
            now=now,
        )

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
        return await self._call(
            self.inner.move_printer,
            company,
            printer_id,
            expected=expected,
            branch=branch,
            agent_id=agent_id,
            now=now,
        )

    async def get_printer(self, company: str, printer_id: str) -> Printer | None:
        return await self._call(self.inner.get_printer, company, printer_id)

    async def list_printers(self, company: str, branch: str | None = None) -> list[Printer]:
        return await self._call(self.inner.list_printers, company, branch)

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
        return await self._call(
            self.inner.create_job,
            company=company,
            branch=branch,
            printer_id=printer_id,
            agent_id=agent_id,
            kind=kind,
            payload=payload,
            idempotency_key=idempotency_key,
            now=now,
        )

    async def get_job(self, job_id: str, company: str | None = None) -> Job | None:
        return await self._call(self.inner.get_job, job_id, company)

    async def list_jobs(
        self, company: str, *, printer_id: str | None = None, state: JobState | None = None, limit: int = 100
    ) -> list[Job]:
        return await self._call(
            self.inner.list_jobs, company, printer_id=printer_id, state=state, limit=limit
        )

    async def record_dispatch(self, job_id: str, now: float) -> Job | None:
        return await self._call(self.inner.record_dispatch, job_id, now)

    async def mark_acked(self, job_id: str, now: float) -> Job | None:
        return await self._call(self.inner.mark_acked, job_id, now)

    async def finish_job(
        self, job_id: str, *, success: bool, result: dict[str, Any] | None, error: str | None, now: float
    ) -> tuple[Job | None, bool]:
        return await self._call(
            self.inner.finish_job, job_id, success=success, result=result, error=error, now=now
        )

    async def expire_job(self, job_id: str, *, reason: str, now: float) -> Job | None:
        return await self._call(self.inner.expire_job, job_id, reason=reason, now=now)

    async def deliverable_jobs(
        self, company: str, agent_id: str, limit: int = 500, *, queued_only: bool = False
    ) -> list[Job]:
        return await self._call(
            self.inner.deliverable_jobs, company, agent_id, limit, queued_only=queued_only
        )

    async def agents_with_live_jobs(self, agents: Sequence[tuple[str, str]]) -> set[tuple[str, str]]:
        return await self._call(self.inner.agents_with_live_jobs, agents)

    async def unfinished_jobs(self, limit: int = 10000) -> list[Job]:
        return await self._call(self.inner.unfinished_jobs, limit)

    async def fleet_summary(self, company: str, *, now: float) -> dict[str, Any]:
        return await self._call(self.inner.fleet_summary, company, now=now)
