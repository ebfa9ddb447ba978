"""The SQL both backends share: every query and every guarded transition is written once.

Backends only differ in how they open a transaction in a worker thread (``SqlStore._run``)
and in a few dialect details (``Dialect``). Queries use ``?`` placeholders; the PostgreSQL
dialect rewrites them to ``%s``. A transition is a single ``UPDATE ... WHERE state IN (...)
RETURNING``: the database re-checks the state under the row lock, so two racing messages
cannot both move a job.
"""

from __future__ import annotations

import time
import uuid
from abc import abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, TypeVar

from printd.jobs.model import TERMINAL_STATES, Job, JobState, Printer
from printd.store import migrate
from printd.store.base import Store, StoreError

T = TypeVar("T")
Row = tuple[Any, ...]

JOB_COLUMNS = (
    "job_id, correlation_id, company, branch, printer_id, agent_id, kind, payload, state, attempts, seq,"
    " created_at, updated_at, idempotency_key, dispatched_at, acked_at, finished_at, result, error"
)
PRINTER_COLUMNS = "company, printer_id, branch, agent_id, status, details, created_at, updated_at"

# Spelled as literals (not parameters) so the partial index on live jobs can be used.
LIVE = tuple(s for s in JobState if s not in TERMINAL_STATES)
LIVE_SQL = "(" + ", ".join(f"'{s}'" for s in LIVE) + ")"


@dataclass(frozen=True, slots=True)
class Dialect:
    """What differs between the backends once a transaction is open."""

    name: str  # also the migrations subdirectory
    format_params: bool  # rewrite ``?`` to ``%s``
    dump_json: Callable[[Any], Any]
    load_json: Callable[[Any], Any]
    run_script: Callable[[Any, str], None]  # (cursor, sql) for migration files
    table_exists_sql: str  # one ``?`` parameter: the table name
    migration_lock_sql: str | None = None


class Tx:
    """One open transaction on a DB-API cursor, speaking the shared ``?`` SQL."""

    def __init__(self, cursor: Any, dialect: Dialect) -> None:
        self._cur = cursor
        self.dialect = dialect

    def all(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        if self.dialect.format_params:
            if "%" in sql:
                raise ValueError("shared SQL must not contain '%'")
            sql = sql.replace("?", "%s")
        # Enums go in as their value: psycopg would otherwise dump an Enum by its name.
        self._cur.execute(sql, tuple(p.value if isinstance(p, Enum) else p for p in params))
        # Always drain: SQLite keeps a RETURNING statement open until its rows are read.
        return [tuple(r) for r in self._cur.fetchall()] if self._cur.description else []

    def one(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        rows = self.all(sql, params)
        return rows[0] if rows else None

    def script(self, sql: str) -> None:
        self.dialect.run_script(self._cur, sql)

    def dump(self, value: dict[str, Any] | None) -> Any:
        return None if value is None else self.dialect.dump_json(value)

    def load(self, raw: Any) -> Any:
        return None if raw is None else self.dialect.load_json(raw)


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)


def job_from_row(tx: Tx, row: Row, history: tuple[tuple[str, float], ...] = ()) -> Job:
    """Map a ``JOB_COLUMNS`` row to a Job."""
    return Job(
        job_id=row[0],
        correlation_id=row[1],
        company=row[2],
        branch=row[3],
        printer_id=row[4],
        agent_id=row[5],
        kind=row[6],
        payload=tx.load(row[7]),
        state=JobState(row[8]),
        attempts=int(row[9]),
        seq=int(row[10]),
        created_at=float(row[11]),
        updated_at=float(row[12]),
        idempotency_key=row[13],
        dispatched_at=_opt_float(row[14]),
        acked_at=_opt_float(row[15]),
        finished_at=_opt_float(row[16]),
        result=tx.load(row[17]),
        error=row[18],
        history=history,
    )


def printer_from_row(tx: Tx, row: Row) -> Printer:
    """Map a ``PRINTER_COLUMNS`` row to a Printer."""
    return Printer(
        company=row[0],
        printer_id=row[1],
        branch=row[2],
        agent_id=row[3],
        status=row[4],
        details=tx.load(row[5]),
        created_at=float(row[6]),
        updated_at=float(row[7]),
    )


# -- job helpers, each runs inside a caller's transaction ------------------------------------


def _with_history(tx: Tx, row: Row | None) -> Job | None:
    if row is None:
        return None
    events = tx.all("SELECT state, at FROM job_events WHERE job_id = ? ORDER BY seq", (row[0],))
    return job_from_row(tx, row, tuple((str(s), float(at)) for s, at in events))


def _event(tx: Tx, job_id: str, state: JobState, at: float, detail: str | None = None) -> None:
    tx.all(
        "INSERT INTO job_events (job_id, state, at, detail) VALUES (?, ?, ?, ?)",
        (job_id, str(state), at, detail),
    )


def _load_job(tx: Tx, job_id: str) -> Job | None:
    return _with_history(tx, tx.one(f"SELECT {JOB_COLUMNS} FROM jobs WHERE job_id = ?", (job_id,)))


def _guarded_update(
    tx: Tx, job_id: str, from_states: Sequence[JobState], set_sql: str, params: Sequence[Any]
) -> Row | None:
    """Compare-and-set: update only if the job is still in one of ``from_states``."""
    marks = ", ".join("?" for _ in from_states)
    return tx.one(
        f"UPDATE jobs SET {set_sql} WHERE job_id = ? AND state IN ({marks}) RETURNING {JOB_COLUMNS}",
        (*params, job_id, *(str(s) for s in from_states)),
    )


def _transition(
    tx: Tx,
    job_id: str,
    from_states: Sequence[JobState],
    to: JobState,
    set_sql: str,
    params: Sequence[Any],
    now: float,
    detail: str | None = None,
) -> Job | None:
    row = _guarded_update(
        tx, job_id, from_states, f"state = ?, updated_at = ?, {set_sql}", (to, now, *params)
    )
    if row is None:
        return None
    _event(tx, job_id, to, now, detail)
    return _with_history(tx, row)


def _jobs(tx: Tx, where: str, params: Sequence[Any], order: str, limit: int) -> list[Job]:
    if limit <= 0:
        return []
    rows = tx.all(f"SELECT {JOB_COLUMNS} FROM jobs WHERE {where} ORDER BY {order} LIMIT ?", (*params, limit))
    return [job_from_row(tx, r) for r in rows]


class SqlStore(Store):
    """Store implemented once over ``_run``; subclasses provide connections and threads."""

    dialect: Dialect

    @abstractmethod
    async def _run(self, fn: Callable[[Tx], T], *, write: bool) -> T:
        """Run ``fn`` in a worker thread inside one transaction; map driver errors."""

    # -- lifecycle ---------------------------------------------------------------------------

    async def migrate(self) -> list[int]:
        migrations = migrate.load(self.dialect.name)
        return await self._run(lambda tx: migrate.apply(tx, migrations, time.time()), write=True)

    async def schema_version(self) -> int:
        return await self._run(migrate.current_version, write=False)

    async def ping(self) -> None:
        await self._run(lambda tx: tx.one("SELECT 1"), write=False)

    # -- printers ----------------------------------------------------------------------------

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
        def run(tx: Tx) -> tuple[Printer, bool]:
            # Insert first: DO NOTHING waits for a racing insert, then the UPDATE sees its row.
            row = tx.one(
                f"INSERT INTO printers ({PRINTER_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
                f" ON CONFLICT (company, printer_id) DO NOTHING RETURNING {PRINTER_COLUMNS}",
                (company, printer_id, branch, agent_id, status, tx.dump(details), now, now),
            )
            if row is not None:
                return printer_from_row(tx, row), True
            # Only the owner updates: the owner check and the write are one statement.
            row = tx.one(
                "UPDATE printers SET status = ?, details = ?, updated_at = ?"
                " WHERE company = ? AND printer_id = ? AND branch = ? AND agent_id = ?"
                f" RETURNING {PRINTER_COLUMNS}",
                (status, tx.dump(details), now, company, printer_id, branch, agent_id),
            )
            if row is None:
                row = tx.one(
                    f"SELECT {PRINTER_COLUMNS} FROM printers WHERE company = ? AND printer_id = ?",
                    (company, printer_id),
                )
            if row is None:
                raise StoreError(f"printer {company}/{printer_id} vanished during upsert")
            return printer_from_row(tx, row), False

        return await self._run(run, write=True)

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
        def run(tx: Tx) -> tuple[Printer, int] | None:
            row = tx.one(
                "UPDATE printers SET branch = ?, agent_id = ?, updated_at = ?"
                " WHERE company = ? AND printer_id = ? AND branch = ? AND agent_id = ?"
                f" RETURNING {PRINTER_COLUMNS}",
                (branch, agent_id, now, company, printer_id, *expected),
            )
            if row is None:
                return None
            moved = tx.all(
                "UPDATE jobs SET branch = ?, agent_id = ?, updated_at = ?"
                " WHERE company = ? AND printer_id = ? AND branch = ? AND agent_id = ? AND state = ?"
                " RETURNING job_id",
                (branch, agent_id, now, company, printer_id, *expected, JobState.QUEUED),
            )
            return printer_from_row(tx, row), len(moved)

        return await self._run(run, write=True)

    async def get_printer(self, company: str, printer_id: str) -> Printer | None:
        def run(tx: Tx) -> Printer | None:
            row = tx.one(
                f"SELECT {PRINTER_COLUMNS} FROM printers WHERE company = ? AND printer_id = ?",
                (company, printer_id),
            )
            return None if row is None else printer_from_row(tx, row)

        return await self._run(run, write=False)

    async def list_printers(self, company: str, branch: str | None = None) -> list[Printer]:
        where, params = "company = ?", [company]
        if branch is not None:
            where, params = where + " AND branch = ?", [company, branch]

        def run(tx: Tx) -> list[Printer]:
            rows = tx.all(f"SELECT {PRINTER_COLUMNS} FROM printers WHERE {where} ORDER BY printer_id", params)
            return [printer_from_row(tx, r) for r in rows]

        return await self._run(run, write=False)

    # -- jobs --------------------------------------------------------------------------------

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
        def run(tx: Tx) -> tuple[Job, bool]:
            job_id = uuid.uuid4().hex
            # With a racing insert of the same key, DO NOTHING waits for it to commit (PostgreSQL)
            # or never overlaps (SQLite's single writer), so the SELECT below finds the winner.
            row = tx.one(
                "INSERT INTO jobs (job_id, correlation_id, company, branch, printer_id, agent_id, kind,"
                " payload, state, attempts, idempotency_key, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?, ?, ?)"
                " ON CONFLICT (company, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING"
                f" RETURNING {JOB_COLUMNS}",
                (
                    *(job_id, uuid.uuid4().hex, company, branch, printer_id, agent_id, kind),
                    *(tx.dump(payload), JobState.QUEUED, idempotency_key, now, now),
                ),
            )
            if row is not None:
                _event(tx, job_id, JobState.QUEUED, now)
                return job_from_row(tx, row, ((JobState.QUEUED.value, float(now)),)), True
            existing = tx.one(
                f"SELECT {JOB_COLUMNS} FROM jobs WHERE company = ? AND idempotency_key = ?",
                (company, idempotency_key),
            )
            job = _with_history(tx, existing)
            if job is None:
                raise StoreError("idempotency key conflict but no existing job found")
            return job, False

        return await self._run(run, write=True)

    async def get_job(self, job_id: str, company: str | None = None) -> Job | None:
        def run(tx: Tx) -> Job | None:
            job = _load_job(tx, job_id)
            return None if job is None or (company is not None and job.company != company) else job

        return await self._run(run, write=False)

    async def list_jobs(
        self,
        company: str,
        *,
        printer_id: str | None = None,
        state: JobState | None = None,
        limit: int = 100,
    ) -> list[Job]:
        where, params = ["company = ?"], [company]
        if printer_id is not None:
            where.append("printer_id = ?")
            params.append(printer_id)
        if state is not None:
            where.append("state = ?")
            params.append(str(state))
        return await self._run(
            lambda tx: _jobs(tx, " AND ".join(where), params, "seq DESC", limit), write=False
        )

    async def record_dispatch(self, job_id: str, now: float) -> Job | None:
        def run(tx: Tx) -> Job | None:
            counted = "attempts = attempts + 1, dispatched_at = ?"
            job = _transition(tx, job_id, [JobState.QUEUED], JobState.DISPATCHED, counted, [now], now)
            if job is not None:
                return job
            # A re-send of a dispatched/acked job counts the attempt but keeps the state.
            row = _guarded_update(
                tx, job_id, [JobState.DISPATCHED, JobState.ACKED], f"updated_at = ?, {counted}", [now, now]
            )
            return _with_history(tx, row)

        return await self._run(run, write=True)

    async def mark_acked(self, job_id: str, now: float) -> Job | None:
        def run(tx: Tx) -> Job | None:
            live = [JobState.QUEUED, JobState.DISPATCHED]
            job = _transition(tx, job_id, live, JobState.ACKED, "acked_at = ?", [now], now)
            if job is not None:
                return job
            current = _load_job(tx, job_id)
            return current if current is not None and current.state is JobState.ACKED else None

        return await self._run(run, write=True)

    async def finish_job(
        self, job_id: str, *, success: bool, result: dict[str, Any] | None, error: str | None, now: float
    ) -> tuple[Job | None, bool]:
        to = JobState.PRINTED if success else JobState.FAILED

        def run(tx: Tx) -> tuple[Job | None, bool]:
            job = _transition(
                tx,
                job_id,
                LIVE,
                to,
                "finished_at = ?, result = ?, error = ?",
                [now, tx.dump(result), error],
                now,
                detail=error,
            )
            if job is not None:
                return job, True
            return _load_job(tx, job_id), False

        return await self._run(run, write=True)

    async def expire_job(self, job_id: str, *, reason: str, now: float) -> Job | None:
        return await self._run(
            lambda tx: _transition(
                tx, job_id, LIVE, JobState.EXPIRED, "finished_at = ?, error = ?", [now, reason], now, reason
            ),
            write=True,
        )

    async def deliverable_jobs(
        self, company: str, agent_id: str, limit: int = 500, *, queued_only: bool = False
    ) -> list[Job]:
        params: tuple[Any, ...]
        if queued_only:
            where, params = "company = ? AND agent_id = ? AND state = ?", (company, agent_id, JobState.QUEUED)
        else:
            where, params = f"company = ? AND agent_id = ? AND state IN {LIVE_SQL}", (company, agent_id)
        return await self._run(lambda tx: _jobs(tx, where, params, "seq", limit), write=False)

    async def agents_with_live_jobs(self, agents: Sequence[tuple[str, str]]) -> set[tuple[str, str]]:
        wanted = set(agents)
        ids = sorted({agent_id for _, agent_id in wanted})

        def run(tx: Tx) -> set[tuple[str, str]]:
            found: set[tuple[str, str]] = set()
            for i in range(0, len(ids), 500):  # well under every backend's parameter limit
                chunk = ids[i : i + 500]
                marks = ", ".join("?" * len(chunk))
                rows = tx.all(
                    f"SELECT DISTINCT company, agent_id FROM jobs"
                    f" WHERE agent_id IN ({marks}) AND state IN {LIVE_SQL}",
                    chunk,
                )
                found.update(
                    (company, agent_id) for company, agent_id in rows if (company, agent_id) in wanted
                )
            return found

        return await self._run(run, write=False) if ids else set()

    async def unfinished_jobs(self, limit: int = 10000) -> list[Job]:
        return await self._run(lambda tx: _jobs(tx, f"state IN {LIVE_SQL}", (), "seq", limit), write=False)

    async def fleet_summary(self, company: str, *, now: float) -> dict[str, Any]:
        def run(tx: Tx) -> dict[str, Any]:
            by_status = tx.all(
                "SELECT status, COUNT(*) FROM printers WHERE company = ? GROUP BY status", (company,)
            )
            by_state = tx.all("SELECT state, COUNT(*) FROM jobs WHERE company = ? GROUP BY state", (company,))
            oldest = tx.one(
                "SELECT MIN(created_at) FROM jobs WHERE company = ? AND state = ?", (company, JobState.QUEUED)
            )
            finished: dict[str, int] = dict(
                tx.all(
                    "SELECT state, COUNT(*) FROM jobs WHERE company = ? AND finished_at >= ?"
                    " AND state IN (?, ?) GROUP BY state",
                    (company, now - 3600.0, JobState.PRINTED, JobState.FAILED),
                )
            )
            states = {str(s): 0 for s in JobState} | {str(s): int(n) for s, n in by_state}
            oldest_at = None if oldest is None else oldest[0]
            return {
                "printers": {
                    "total": sum(int(n) for _, n in by_status),
                    "by_status": {str(s): int(n) for s, n in by_status},
                },
                "jobs": {
                    "by_state": states,
                    "oldest_queued_age_s": None if oldest_at is None else now - float(oldest_at),
                    "failed_last_hour": int(finished.get(JobState.FAILED.value, 0)),
                    "printed_last_hour": int(finished.get(JobState.PRINTED.value, 0)),
                },
            }

        return await self._run(run, write=False)
