"""SQLite backend: one connection, one worker thread at a time, WAL.

WAL with ``synchronous=NORMAL`` keeps every committed transaction across a process crash
(SIGKILL); only an OS crash or power loss can drop the last few commits. Writes start with
``BEGIN IMMEDIATE`` so a transaction never has to upgrade its lock halfway.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import trio

from printd.store.base import StoreError, StoreUnavailable
from printd.store.sql import Dialect, SqlStore, Tx

T = TypeVar("T")

# Result codes that mean "the file is busy or unreachable", not "the SQL is wrong".
_UNAVAILABLE = (
    "SQLITE_BUSY",
    "SQLITE_LOCKED",
    "SQLITE_IOERR",
    "SQLITE_CANTOPEN",
    "SQLITE_FULL",
    "SQLITE_READONLY",
)


def split_script(script: str) -> list[str]:
    """Split a migration file into statements (sqlite3 runs one per ``execute``)."""
    statements: list[str] = []
    start = 0
    for i, char in enumerate(script):
        if char == ";" and sqlite3.complete_statement(script[start : i + 1]):
            statements.append(script[start : i + 1])
            start = i + 1
    if script[start:].strip():
        statements.append(script[start:])  # trailing comment, or an error sqlite will report
    return statements


def _run_script(cursor: Any, script: str) -> None:
    # Not executescript(): it would COMMIT the migration transaction first.
    for statement in split_script(script):
        cursor.execute(statement)


DIALECT = Dialect(  # no row locks: BEGIN IMMEDIATE makes every write transaction exclusive
    name="sqlite",
    format_params=False,
    dump_json=lambda value: json.dumps(value, separators=(",", ":")),
    load_json=json.loads,
    run_script=_run_script,
    table_exists_sql="SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
)


class SQLiteStore(SqlStore):
    """Store in one SQLite file (``":memory:"`` works too, for throwaway use)."""

    dialect = DIALECT

    def __init__(self, path: str, *, busy_timeout_ms: int = 5000) -> None:
        self._path = path
        self._busy_timeout_ms = busy_timeout_ms
        self._conn: sqlite3.Connection | None = None
        self._limiter = trio.CapacityLimiter(1)  # the connection is used by one thread at a time

    async def open(self) -> None:
        if self._conn is None:
            self._conn = await trio.to_thread.run_sync(self._connect, limiter=self._limiter)

    def _connect(self) -> sqlite3.Connection:
        if self._path != ":memory:":
            # the data directory and the database (its -wal and -shm files inherit the mode)
            # hold every ticket: readable by printd's user only
            Path(self._path).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.close(os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600))
        try:
            conn = sqlite3.connect(
                self._path,
                check_same_thread=False,
                isolation_level=None,
                timeout=self._busy_timeout_ms / 1000,
            )
        except sqlite3.Error as exc:
            raise _map_error(exc) from exc
        try:
            self._enter_wal(conn)
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute(f"PRAGMA busy_timeout={int(self._busy_timeout_ms)}")
        except sqlite3.Error as exc:
            conn.close()
            raise _map_error(exc) from exc
        return conn

    def _enter_wal(self, conn: sqlite3.Connection) -> None:
        """Switch to WAL, waiting out a lock like any statement would: SQLite answers "database is
        locked" here at once, without its busy handler, while another connection is switching the
        file or has it locked (several processes or stores opening one new file together)."""
        deadline = time.monotonic() + self._busy_timeout_ms / 1000
        while True:
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() >= deadline:
                    raise
                time.sleep(0.005)

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await trio.to_thread.run_sync(conn.close, limiter=self._limiter, abandon_on_cancel=True)

    async def _exec(self, fn: Callable[[Tx], T], *, write: bool) -> T:
        conn = self._conn
        if conn is None:
            raise StoreError("store is not open")
        # abandoned on cancellation (shutdown), like PostgreSQL's; the limiter stays held until the
        # abandoned thread is done with the connection
        return await trio.to_thread.run_sync(
            self._in_tx, conn, fn, write, limiter=self._limiter, abandon_on_cancel=True
        )

    def _in_tx(self, conn: sqlite3.Connection, fn: Callable[[Tx], T], write: bool) -> T:
        try:
            conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                result = fn(Tx(conn.cursor(), self.dialect))
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise _map_error(exc) from exc
        return result


def _map_error(exc: sqlite3.Error) -> StoreError:
    name = getattr(exc, "sqlite_errorname", "")
    if name.startswith(_UNAVAILABLE):
        return StoreUnavailable(f"SQLite unavailable: {exc}")
    return StoreError(f"SQLite error: {exc}")
