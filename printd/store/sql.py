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

from printd.breakers.shell import Circuit, CircuitOpenError
from printd.model import LIVE_STATES, TRANSITIONS, Job, JobEvent, JobState, Printer
from printd.store import migrate
from printd.store.base import (
    AgentClaim,
    AgentFence,
    BacklogFull,
    ClaimedSession,
    InstanceConflict,
    InstanceRow,
    QueuedJobs,
    Report,
    Reported,
    StaleLeader,
    StaleSession,
    Store,
    StoreCircuitOpen,
    StoreError,
    UnknownJob,
    UnknownPrinter,
)
from printd.store.group import GroupCommit

T = TypeVar("T")
Row = tuple[Any, ...]

JOB_COLUMNS = (
    "job_id, correlation_id, company, branch, printer_id, agent_id, kind, payload, state, attempts, seq,"
    " created_at, updated_at, idempotency_key, dispatched_at, acked_at, finished_at, result, error, origin"
)
# What a job listing shows (Job.to_json): the payload (up to max_payload_bytes each) is left out
# and comes back as {}, so listing 1000 jobs never reads 1000 payloads only to drop them.
LIST_JOB_COLUMNS = JOB_COLUMNS.replace("payload", "NULL")
INSTANCE_COLUMNS = "instance_id, incarnation, clustered, url, started_at, heartbeat_at"
PRINTER_COLUMNS = "company, printer_id, branch, agent_id, status, details, created_at, updated_at"


def _states_sql(states: frozenset[JobState]) -> str:
    """A state set as SQL literals (not parameters), so partial indexes on states can be used."""
    return "(" + ", ".join(f"'{s}'" for s in sorted(states)) + ")"


LIVE_SQL = _states_sql(LIVE_STATES)
# Written exactly as the partial indexes' predicates (SQLite matches them term by term).
BACKLOG_SQL = (
    "SELECT COUNT(*) FROM (SELECT 1 FROM jobs WHERE jobs.company = ? AND jobs.printer_id = ?"
    f" AND jobs.state IN {LIVE_SQL} LIMIT ?) AS backlog"
)
LIVE_AGENT_WHERE = f"company = ? AND agent_id = ? AND state IN {LIVE_SQL} AND seq > ?"
QUEUED_AGENT_WHERE = "company = ? AND agent_id = ? AND state = 'queued' AND seq > ?"

#: A transition made for an agent holds only under the agent's current session.
FENCE_SQL = (
    "EXISTS (SELECT 1 FROM agent_sessions s WHERE s.company = jobs.company"
    " AND s.agent_id = jobs.agent_id AND s.session = ? AND s.instance_id IS NOT NULL)"
)
#: A leader chore holds only under the current fencing token.
LEADER_SQL = "(SELECT token FROM cluster_leader WHERE id = 1) = ?"


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
    row_lock_sql: str = ""  # appended to a SELECT that must lock the row it reads
    #: A write and its job_events row as one statement (a data-modifying WITH): one round trip
    #: instead of two on a networked database. SQLite has no DML in WITH.
    log_in_same_statement: bool = False


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
        payload=tx.load(row[7]) or {},
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
        origin=row[19],
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


def _event(tx: Tx, job_id: str, state: JobState, at: float, detail: str | None = None) -> None:
    tx.all(
        "INSERT INTO job_events (job_id, state, at, detail) VALUES (?, ?, ?, ?)",
        (job_id, str(state), at, detail),
    )


def _write_logged(
    tx: Tx, sql: str, params: Sequence[Any], state: JobState, at: float, detail: str | None = None
) -> Row | None:
    """Run a write of one job that returns JOB_COLUMNS (job_id first); when it wrote, record the
    state it moved to in job_events."""
    if tx.dialect.log_in_same_statement:
        logged = (
            f"WITH written AS ({sql}), logged AS (INSERT INTO job_events (job_id, state, at, detail)"
            " SELECT job_id, ?, ?, ? FROM written) SELECT * FROM written"
        )
        return tx.one(logged, (*params, state, at, detail))
    row = tx.one(sql, params)
    if row is not None:
        _event(tx, row[0], state, at, detail)
    return row


def _load_job(tx: Tx, job_id: str) -> Job | None:
    row = tx.one(f"SELECT {JOB_COLUMNS} FROM jobs WHERE job_id = ?", (job_id,))
    if row is None:
        return None
    events = tx.all("SELECT state, at FROM job_events WHERE job_id = ? ORDER BY seq", (row[0],))
    return job_from_row(tx, row, tuple((str(s), float(at)) for s, at in events))


def _apply(
    tx: Tx,
    job_id: str,
    event: JobEvent,
    set_sql: str,
    params: Sequence[Any],
    now: float,
    *,
    fence: AgentFence | None,
    detail: str | None = None,
) -> Job | None:
    """One lifecycle transition as a compare-and-set UPDATE: the database re-checks the state
    (and the agent's session, when fenced) under the row lock, so two racing messages cannot
    both move a job. None when the guard did not hold."""
    transition = TRANSITIONS[event]
    sets = ["updated_at = ?", set_sql] if set_sql else ["updated_at = ?"]
    values: list[Any] = [now, *params]
    if transition.to is not None:
        sets.insert(0, "state = ?")
        values.insert(0, transition.to)
    guard = f"state IN {_states_sql(transition.from_states)}"
    values.append(job_id)
    if fence is not None:
        guard += f" AND company = ? AND agent_id = ? AND {FENCE_SQL}"
        values += [fence.company, fence.agent_id, fence.session]
    # The guard is wrapped in IS TRUE (same meaning in a WHERE) so that the job can only be found
    # by its primary key: written plainly, its state and company terms let PostgreSQL pick a
    # partial index of live jobs that statistics taken while few jobs were live (a fresh
    # database, or any quiet hour before a backlog) estimate at one row, and each transition then
    # walked every live job of the company: 1 ms of server CPU per update at 3,000.
    sql = f"UPDATE jobs SET {', '.join(sets)} WHERE job_id = ? AND ({guard}) IS TRUE RETURNING {JOB_COLUMNS}"
    if transition.to is None:
        row = tx.one(sql, values)
    else:
        row = _write_logged(tx, sql, values, transition.to, now, detail)
    return None if row is None else job_from_row(tx, row)


def _why_not(tx: Tx, job_id: str, fence: AgentFence) -> Job:
    """After a fenced transition did not apply: raise if the job is not this agent's or the
    session is stale, else return the job as it is (its state did not allow the event)."""
    row = tx.one(f"SELECT {JOB_COLUMNS} FROM jobs WHERE job_id = ?", (job_id,))
    if row is None or row[2] != fence.company or row[5] != fence.agent_id:
        raise UnknownJob(f"job {job_id!r} is not dispatched to this agent")
    current = tx.one(
        "SELECT session, instance_id FROM agent_sessions WHERE company = ? AND agent_id = ?",
        (fence.company, fence.agent_id),
    )
    if current is None or int(current[0]) != fence.session or current[1] is None:
        raise StaleSession(
            f"agent {fence.agent_id!r} session {fence.session} is stale"
            f" (current: {None if current is None else current[0]})"
        )
    return job_from_row(tx, row)


def _each(fn: Callable[[Tx, Any], T], tx: Tx, arg: Any) -> T | StoreError:
    """One item of a batch: its domain error (raised before it wrote) is its own outcome."""
    try:
        return fn(tx, arg)
    except StoreError as exc:
        return exc


def _jobs(
    tx: Tx, where: str, params: Sequence[Any], order: str, limit: int, columns: str = JOB_COLUMNS
) -> list[Job]:
    if limit <= 0:
        return []
    rows = tx.all(f"SELECT {columns} FROM jobs WHERE {where} ORDER BY {order} LIMIT ?", (*params, limit))
    return [job_from_row(tx, r) for r in rows]


def _check_leader(tx: Tx, token: int) -> None:
    row = tx.one("SELECT token FROM cluster_leader WHERE id = 1")
    if row is None or int(row[0]) != token:
        raise StaleLeader(f"leader token {token} is stale (current: {None if row is None else row[0]})")


def instance_from_row(row: Row) -> InstanceRow:
    return InstanceRow(
        instance_id=row[0],
        incarnation=row[1],
        clustered=bool(row[2]),
        url=row[3],
        started_at=float(row[4]),
        heartbeat_at=float(row[5]),
    )


class SqlStore(Store):
    """Store implemented once over ``_run``; subclasses provide connections and threads.

    Every call passes through ``_run``, which is where the `store` circuit guards them: when the
    database stops answering, calls fail at once with StoreCircuitOpen (the API answers 503 +
    Retry-After) instead of piling up worker threads behind a dead connection. Migrations and
    the recovery probe are not guarded.
    """

    dialect: Dialect
    circuit: Circuit | None = None
    #: How many grouped write transactions may run at once (SQLite has one writer).
    group_width: int = 1
    _group: GroupCommit | None = None

    def guard_with(self, circuit: Circuit) -> None:
        self.circuit = circuit

    @abstractmethod
    async def _exec(self, fn: Callable[[Tx], T], *, write: bool) -> T:
        """Run ``fn`` in a worker thread inside one transaction; map driver errors."""

    async def _run(self, fn: Callable[[Tx], T], *, write: bool) -> T:
        circuit = self.circuit
        if circuit is None:
            return await self._exec(fn, write=write)
        try:
            async with circuit.guard():
                return await self._exec(fn, write=write)
        except CircuitOpenError as exc:
            raise StoreCircuitOpen(str(exc), retry_after=exc.retry_after, circuit=exc.circuit) from None

    def group_stats(self) -> tuple[int, int]:
        """(transactions, writes) of the grouped hot-path writes so far."""
        group = self._group
        return (0, 0) if group is None else (group.groups, group.grouped)

    async def _write_grouped(self, fn: Callable[[Tx], T]) -> T:
        """A hot-path write: shares a transaction with the writes queued beside it (group commit;
        `fn` raises its domain errors before writing, see printd/store/group.py)."""
        group = self._group
        if group is None:
            group = GroupCommit(lambda work: self._run(work, write=True), width=self.group_width)
            self._group = group
        return await group.run(fn)

    # -- lifecycle ---------------------------------------------------------------------------

    async def migrate(self) -> list[int]:
        migrations = migrate.load(self.dialect.name)
        return await self._exec(lambda tx: migrate.apply(tx, migrations, time.time()), write=True)

    async def probe(self) -> None:
        """One round trip that bypasses the circuit: how an open circuit learns the database is
        back without waiting out its open timeout."""
        await self._exec(lambda tx: tx.one("SELECT 1"), write=False)

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
            # Only jobs never sent to anyone follow the printer. One sent before (requeued when
            # its agent's instance died: queued again, attempts > 0) stays with the agent it went
            # to: only that agent knows whether it printed, and its journal answers a redelivery.
            moved = tx.all(
                "UPDATE jobs SET branch = ?, agent_id = ?, updated_at = ?"
                " WHERE company = ? AND printer_id = ? AND branch = ? AND agent_id = ? AND state = ?"
                " AND attempts = 0 RETURNING job_id",
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

    async def list_printers(
        self, company: str, branch: str | None = None, *, after: str | None = None, limit: int | None = None
    ) -> list[Printer]:
        where, params = ["company = ?"], [company]
        if branch is not None:
            where.append("branch = ?")
            params.append(branch)
        if after is not None:
            where.append("printer_id > ?")
            params.append(after)
        sql = f"SELECT {PRINTER_COLUMNS} FROM printers WHERE {' AND '.join(where)} ORDER BY printer_id"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"

        def run(tx: Tx) -> list[Printer]:
            rows = tx.all(sql, params)
            return [printer_from_row(tx, r) for r in rows]

        return await self._run(run, write=False)

    # -- jobs --------------------------------------------------------------------------------

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
        def replay(tx: Tx) -> Job | None:
            if idempotency_key is None:
                return None
            row = tx.one(
                f"SELECT {JOB_COLUMNS} FROM jobs WHERE company = ? AND idempotency_key = ?",
                (company, idempotency_key),
            )
            return None if row is None else job_from_row(tx, row)

        def run(tx: Tx) -> tuple[Job, bool]:
            # The printer's owner is read in the job's own transaction, its row locked against a
            # concurrent move: the move either sees this job (and takes it along) or happened
            # before (and this job goes to the new owner). Never a job for a printer's old owner.
            # Counting stops at the cap (the partial index of live jobs per printer): what one
            # client can make the database hold for a printer whose agent is away. One statement
            # with the owner's lookup: one round trip.
            count = f"({BACKLOG_SQL})" if max_backlog is not None else "0"
            owner = tx.one(
                f"SELECT branch, agent_id, {count} FROM printers WHERE company = ? AND printer_id = ?"
                + tx.dialect.row_lock_sql,
                (company, printer_id, max_backlog, company, printer_id)
                if max_backlog is not None
                else (company, printer_id),
            )
            if owner is None:
                raise UnknownPrinter(f"unknown printer {printer_id!r} in company {company!r}")
            branch, agent_id, live = owner
            if max_backlog is not None:
                if live >= max_backlog:
                    earlier = replay(tx)
                    if earlier is not None:
                        return earlier, False
                    raise BacklogFull(printer_id, max_backlog)
            job_id = uuid.uuid4().hex
            # With a racing insert of the same key, DO NOTHING waits for it to commit (PostgreSQL)
            # or never overlaps (SQLite's single writer), so the SELECT below finds the winner.
            row = _write_logged(
                tx,
                "INSERT INTO jobs (job_id, correlation_id, company, branch, printer_id, agent_id, kind,"
                " payload, state, attempts, idempotency_key, created_at, updated_at, origin)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?, ?, ?, ?)"
                " ON CONFLICT (company, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING"
                f" RETURNING {JOB_COLUMNS}",
                (
                    *(job_id, uuid.uuid4().hex, company, branch, printer_id, agent_id, kind),
                    *(tx.dump(payload), JobState.QUEUED, idempotency_key, now, now, origin),
                ),
                JobState.QUEUED,
                now,
            )
            if row is not None:
                return job_from_row(tx, row), True
            earlier = replay(tx)
            if earlier is None:
                raise StoreError("idempotency key conflict but no existing job found")
            return earlier, False

        return await self._write_grouped(run)

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
            lambda tx: _jobs(tx, " AND ".join(where), params, "seq DESC", limit, LIST_JOB_COLUMNS),
            write=False,
        )

    async def record_dispatches(
        self, job_ids: Sequence[str], now: float, fence: AgentFence
    ) -> list[Job | None | StoreError]:
        def one(tx: Tx, job_id: str) -> Job | None:
            counted = "attempts = attempts + 1, dispatched_at = ?"
            job = _apply(tx, job_id, JobEvent.DISPATCH, counted, [now], now, fence=fence)
            if job is None:
                job = _apply(tx, job_id, JobEvent.REDISPATCH, counted, [now], now, fence=fence)
            if job is None:
                _why_not(tx, job_id, fence)  # raises unless the job simply ended meanwhile
            return job

        return await self._write_grouped(lambda tx: [_each(one, tx, job_id) for job_id in job_ids])

    async def report_jobs(
        self, reports: Sequence[Report], now: float, fence: AgentFence
    ) -> list[Reported | StoreError]:
        def one(tx: Tx, report: Report) -> Reported:
            if report.ack:
                job = _apply(tx, report.job_id, JobEvent.ACK, "acked_at = ?", [now], now, fence=fence)
            else:
                event = JobEvent.PRINTED if report.success else JobEvent.FAILED
                sets = "finished_at = ?, result = ?, error = ?"
                params = [now, tx.dump(report.result), report.error]
                job = _apply(tx, report.job_id, event, sets, params, now, fence=fence, detail=report.error)
            if job is not None:
                return Reported(job, True)
            return Reported(_why_not(tx, report.job_id, fence), False)

        return await self._write_grouped(lambda tx: [_each(one, tx, report) for report in reports])

    async def expire_job(
        self, job_id: str, *, reason: str, now: float, fence: AgentFence | None = None
    ) -> Job | None:
        def run(tx: Tx) -> Job | None:
            sets = "finished_at = ?, error = ?"
            job = _apply(tx, job_id, JobEvent.EXPIRE, sets, [now, reason], now, fence=fence, detail=reason)
            if job is None and fence is not None:
                _why_not(tx, job_id, fence)
            return job

        return await self._run(run, write=True)

    async def deliverable_jobs(
        self, company: str, agent_id: str, limit: int = 500, *, queued_only: bool = False, after_seq: int = 0
    ) -> list[Job]:
        where = QUEUED_AGENT_WHERE if queued_only else LIVE_AGENT_WHERE
        params = (company, agent_id, after_seq)
        return await self._run(lambda tx: _jobs(tx, where, params, "seq", limit), write=False)

    # -- agent sessions ----------------------------------------------------------------------

    async def claim_agents(self, claims: Sequence[AgentClaim], now: float) -> list[ClaimedSession]:
        def run(tx: Tx) -> list[ClaimedSession]:
            out = []
            for c in claims:
                (session,) = tx.one(
                    "INSERT INTO agent_sessions (company, agent_id, session, instance_id, incarnation,"
                    " connected_at, released_at) VALUES (?, ?, 1, ?, ?, ?, NULL)"
                    " ON CONFLICT (company, agent_id) DO UPDATE SET session = agent_sessions.session + 1,"
                    " instance_id = excluded.instance_id, incarnation = excluded.incarnation,"
                    " connected_at = excluded.connected_at, released_at = NULL RETURNING session",
                    (c.company, c.agent_id, c.instance_id, c.incarnation, now),
                ) or (0,)
                live = tx.one(
                    f"SELECT 1 FROM jobs WHERE company = ? AND agent_id = ? AND state IN {LIVE_SQL} LIMIT 1",
                    (c.company, c.agent_id),
                )
                out.append(ClaimedSession(int(session), live is not None))
            return out

        return await self._run(run, write=True) if claims else []

    async def release_agent(self, fence: AgentFence, now: float) -> bool:
        row = await self._run(
            lambda tx: tx.one(
                "UPDATE agent_sessions SET instance_id = NULL, incarnation = NULL, released_at = ?"
                " WHERE company = ? AND agent_id = ? AND session = ? AND instance_id IS NOT NULL"
                " RETURNING session",
                (now, fence.company, fence.agent_id, fence.session),
            ),
            write=True,
        )
        return row is not None

    async def current_sessions(self, agents: Sequence[tuple[str, str]]) -> dict[tuple[str, str], int]:
        ids = sorted({agent_id for _, agent_id in agents})
        wanted = set(agents)

        def run(tx: Tx) -> dict[tuple[str, str], int]:
            found: dict[tuple[str, str], int] = {}
            for i in range(0, len(ids), 500):  # well under every backend's parameter limit
                chunk = ids[i : i + 500]
                rows = tx.all(
                    "SELECT company, agent_id, session FROM agent_sessions"
                    f" WHERE agent_id IN ({', '.join('?' * len(chunk))}) AND instance_id IS NOT NULL",
                    chunk,
                )
                found.update({(c, a): int(s) for c, a, s in rows if (c, a) in wanted})
            return found

        return await self._run(run, write=False) if ids else {}

    async def agents_with_queued_jobs(self, instance_id: str) -> set[tuple[str, str]]:
        rows = await self._run(
            lambda tx: tx.all(
                "SELECT DISTINCT j.company, j.agent_id FROM jobs j JOIN agent_sessions s"
                " ON s.company = j.company AND s.agent_id = j.agent_id"
                " WHERE j.state = 'queued' AND s.instance_id = ?",
                (instance_id,),
            ),
            write=False,
        )
        return {(str(c), str(a)) for c, a in rows}

    # -- instances and the leader ------------------------------------------------------------

    async def register_instance(self, row: InstanceRow, *, ttl: float) -> None:
        def run(tx: Tx) -> None:
            alive_after = row.heartbeat_at - ttl
            others = [
                instance_from_row(r)
                for r in tx.all(
                    f"SELECT {INSTANCE_COLUMNS} FROM instances WHERE heartbeat_at > ?", (alive_after,)
                )
            ]
            for other in others:
                if other.instance_id == row.instance_id and other.incarnation != row.incarnation:
                    raise InstanceConflict(
                        f"instance id {row.instance_id!r} is in use by a live instance at {other.url}"
                        f" (last heartbeat {row.heartbeat_at - other.heartbeat_at:.1f} s ago);"
                        " give this one another INSTANCE_ID"
                    )
                if other.instance_id != row.instance_id and not (other.clustered and row.clustered):
                    alone = other if not other.clustered else row
                    raise InstanceConflict(
                        f"instance {other.instance_id!r} at {other.url} uses this database"
                        f" (last heartbeat {row.heartbeat_at - other.heartbeat_at:.1f} s ago), and"
                        f" {'it' if alone is other else 'this one'} runs without a cluster: several"
                        " instances on one database need REDIS_URL (one cluster), or stop the other"
                    )
            tx.all(
                f"INSERT INTO instances ({INSTANCE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (instance_id) DO UPDATE SET incarnation = excluded.incarnation,"
                " clustered = excluded.clustered, url = excluded.url, started_at = excluded.started_at,"
                " heartbeat_at = excluded.heartbeat_at",
                (row.instance_id, row.incarnation, row.clustered, row.url, row.started_at, row.heartbeat_at),
            )

        await self._run(run, write=True)

    async def heartbeat_instance(self, instance_id: str, incarnation: str, now: float) -> bool:
        row = await self._run(
            lambda tx: tx.one(
                "UPDATE instances SET heartbeat_at = ? WHERE instance_id = ? AND incarnation = ?"
                " RETURNING instance_id",
                (now, instance_id, incarnation),
            ),
            write=True,
        )
        return row is not None

    async def remove_instance(self, instance_id: str, incarnation: str) -> None:
        await self._run(
            lambda tx: tx.all(
                "DELETE FROM instances WHERE instance_id = ? AND incarnation = ?", (instance_id, incarnation)
            ),
            write=True,
        )

    async def list_instances(self) -> list[InstanceRow]:
        rows = await self._run(
            lambda tx: tx.all(f"SELECT {INSTANCE_COLUMNS} FROM instances ORDER BY instance_id"), write=False
        )
        return [instance_from_row(r) for r in rows]

    async def take_leadership(self, instance_id: str, now: float) -> int:
        row = await self._run(
            lambda tx: tx.one(
                "UPDATE cluster_leader SET token = token + 1, instance_id = ?, since = ? WHERE id = 1"
                " RETURNING token",
                (instance_id, now),
            ),
            write=True,
        )
        if row is None:
            raise StoreError("cluster_leader row is missing (run the migrations)")
        return int(row[0])

    async def expire_queued(self, created_before: float, now: float, token: int) -> list[Job]:
        reason = "not delivered within job_ttl"

        def run(tx: Tx) -> list[Job]:
            _check_leader(tx, token)
            rows = tx.all(
                "UPDATE jobs SET state = ?, updated_at = ?, finished_at = ?, error = ?"
                f" WHERE state = 'queued' AND created_at < ? AND {LEADER_SQL} RETURNING {JOB_COLUMNS}",
                (JobState.EXPIRED, now, now, reason, created_before, token),
            )
            for r in rows:
                _event(tx, r[0], JobState.EXPIRED, now, reason)
            return [job_from_row(tx, r) for r in rows]

        return await self._run(run, write=True)

    async def release_orphans(self, heartbeat_before: float, now: float, token: int) -> list[Job]:
        def run(tx: Tx) -> list[Job]:
            _check_leader(tx, token)
            orphaned = tx.all(
                "UPDATE agent_sessions SET instance_id = NULL, incarnation = NULL, released_at = ?"
                " WHERE instance_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM instances i"
                " WHERE i.instance_id = agent_sessions.instance_id"
                " AND i.incarnation = agent_sessions.incarnation AND i.heartbeat_at >= ?)"
                " RETURNING company, agent_id",
                (now, heartbeat_before),
            )
            requeued: list[Job] = []
            for company, agent_id in orphaned:
                rows = tx.all(
                    "UPDATE jobs SET state = ?, updated_at = ?"
                    f" WHERE company = ? AND agent_id = ? AND state = 'dispatched' AND {LEADER_SQL}"
                    f" RETURNING {JOB_COLUMNS}",
                    (JobState.QUEUED, now, company, agent_id, token),
                )
                for r in rows:
                    _event(tx, r[0], JobState.QUEUED, now, "requeued: its instance is gone")
                requeued += [job_from_row(tx, r) for r in rows]
            return requeued

        return await self._run(run, write=True)

    async def queued_jobs(self) -> dict[str, QueuedJobs]:
        rows = await self._run(
            lambda tx: tx.all(
                "SELECT CASE WHEN s.instance_id IS NULL THEN 'offline' ELSE 'online' END,"
                " COUNT(*), MIN(j.created_at) FROM jobs j LEFT JOIN agent_sessions s"
                " ON s.company = j.company AND s.agent_id = j.agent_id"
                " WHERE j.state = 'queued' GROUP BY 1",
            ),
            write=False,
        )
        found = {str(k): QueuedJobs(int(n), _opt_float(oldest)) for k, n, oldest in rows}
        return {k: found.get(k, QueuedJobs(0, None)) for k in ("online", "offline")}

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
