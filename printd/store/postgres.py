"""PostgreSQL backend: a sync psycopg pool driven from trio worker threads.

psycopg's async API does not run under trio, so each call takes a pooled connection in a
thread. ``statement_timeout`` bounds a statement on a server that answers; a server (or a
network path) that goes silent is bounded here: a call that has not ended within the statement
timeout plus a margin has its connection's socket shut down, which ends the thread's wait (the
pool then drops the connection), and fails with StoreUnavailable. Without it one silent
connection held its call, its thread and a pool slot forever, and health said ok. Libpq TCP
keepalives end idle connections to a host that vanished. Transactions run at READ COMMITTED: a guarded
``UPDATE ... WHERE state IN (...)`` re-checks the row after waiting on its lock, which is
all the compare-and-set needs.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

import orjson
import psycopg
import psycopg_pool
import structlog
import trio
from psycopg.conninfo import conninfo_to_dict
from psycopg.types.json import Jsonb, set_json_loads

from printd.store.base import StoreError, StoreUnavailable
from printd.store.sql import Dialect, SqlStore, Tx

T = TypeVar("T")
log = structlog.get_logger("printd.store")

CONNECT_TIMEOUT_S = 2  # libpq connect_timeout (whole seconds, min 2)
GETCONN_TIMEOUT_S = 2.0  # wait for a pooled connection, so a dead server fails fast
IDLE_CHECK_AFTER_S = 2.0  # a connection idle longer than this is probed before use
CALL_MARGIN_S = GETCONN_TIMEOUT_S + 1.0  # beyond statement_timeout, before a call is given up
# libpq TCP keepalives: a pooled connection to a host that vanished (no RST) errors within
# about idle + interval * count seconds instead of at the next call's timeout
KEEPALIVES = {"keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 3, "keepalives_count": 3}


def _run_script(cursor: Any, script: str) -> None:
    cursor.execute(script)  # no parameters: psycopg sends it as one multi-statement query


def _read_jsonb_with_orjson(conn: psycopg.Connection[Any]) -> None:
    """jsonb keeps a number such as 1e20 as the exact numeric 100000000000000000000, which the
    stdlib decoder returns as an int no 64-bit JSON writer takes (orjson refuses it, and a job
    whose payload or result held one could never be sent or announced). orjson reads it back
    as the float it was written from, as it reads every request."""
    set_json_loads(orjson.loads, conn)


DIALECT = Dialect(
    name="postgres",
    format_params=True,
    dump_json=Jsonb,
    load_json=lambda value: value,  # psycopg already decodes jsonb
    run_script=_run_script,
    table_exists_sql="SELECT 1 WHERE to_regclass(?) IS NOT NULL",
    row_lock_sql=" FOR SHARE",
    log_in_same_statement=True,
    # Scoped to the schema, so migrators of unrelated schemas do not wait for each other.
    migration_lock_sql=(
        "SELECT pg_advisory_xact_lock(hashtext('printd.migrate:' || COALESCE(current_schema(), '')))"
    ),
)


class PostgresStore(SqlStore):
    """Store in a PostgreSQL database reached through ``url``."""

    dialect = DIALECT

    def __init__(self, url: str, *, pool_size: int = 10, statement_timeout_ms: int = 5000) -> None:
        if pool_size < 1:
            raise StoreError("pool_size must be at least 1")
        try:
            params = conninfo_to_dict(url)
        except psycopg.Error:
            raise StoreError("invalid PostgreSQL URL") from None  # the message could echo a password
        self._url = url
        self._secret = str(params.get("password") or "")
        self._target = "postgresql://{}@{}:{}/{}".format(
            params.get("user", ""), params.get("host", ""), params.get("port", 5432), params.get("dbname", "")
        )
        # Appended to the URL's own options (e.g. a search_path), which a plain kwarg would replace.
        options = f"{params.get('options', '')} -c statement_timeout={int(statement_timeout_ms)}".strip()
        self._kwargs: dict[str, Any] = {
            "autocommit": True,  # transactions are explicit, see _in_tx
            "connect_timeout": CONNECT_TIMEOUT_S,
            "options": options,
            "application_name": "printd",
            **KEEPALIVES,
        }
        self._call_timeout = statement_timeout_ms / 1000 + CALL_MARGIN_S
        self._pool_size = pool_size
        # Two grouped write transactions at a time: one commits (its WAL flush) while the next
        # gathers. Measured (jobs_bench throughput, one agent): 1 -> 249 jobs/s, 2 -> 321-357,
        # 3 -> 308, 5 -> 256-299 (more transactions in flight, fewer writes each).
        self.group_width = min(2, pool_size)
        self._last_used: weakref.WeakKeyDictionary[psycopg.Connection[Any], float] = (
            weakref.WeakKeyDictionary()
        )
        self._pool: psycopg_pool.ConnectionPool | None = None
        self._limiter = trio.CapacityLimiter(pool_size)

    async def open(self) -> None:
        if self._pool is None:
            self._pool = await trio.to_thread.run_sync(self._connect, limiter=self._limiter)

    def _connect(self) -> psycopg_pool.ConnectionPool:
        try:
            # One direct attempt first: fails at once with the real reason (refused, auth, ...)
            # where the pool would retry quietly until its timeout.
            psycopg.connect(self._url, **self._kwargs).close()
            pool = psycopg_pool.ConnectionPool(
                self._url,
                kwargs=self._kwargs,
                min_size=1,
                max_size=self._pool_size,
                open=False,
                timeout=GETCONN_TIMEOUT_S,
                name="printd-store",
                configure=_read_jsonb_with_orjson,
            )
            try:
                pool.open(wait=True, timeout=CONNECT_TIMEOUT_S * 2)
            except BaseException:
                pool.close()  # stop its reconnect workers
                raise
        except psycopg.Error as exc:
            raise self._map_error(exc) from (None if self._leaks(exc) else exc)
        return pool

    async def probe(self) -> None:
        """A connection of its own, not the pool's: after an outage the pool may be waiting out its
        reconnect backoff (doubling, minutes long), so the store circuit would stay open well
        after the server is back. When the server answers and the pool has no usable
        connection, a fresh pool replaces it."""
        await trio.to_thread.run_sync(self._probe, abandon_on_cancel=True)

    def _probe(self) -> None:
        try:
            psycopg.connect(self._url, **self._kwargs).close()
        except psycopg.Error as exc:
            raise self._map_error(exc) from (None if self._leaks(exc) else exc)
        old = self._pool
        if old is None or old.get_stats().get("pool_available", 0) > 0:
            return
        self._pool = self._connect()
        old.close(timeout=0)

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            # no limiter: its tokens may all be held by calls stuck on a silent server; the caller
            # bounds how long it waits (the thread is abandoned, not the process held)
            await trio.to_thread.run_sync(pool.close, abandon_on_cancel=True)

    async def _exec(self, fn: Callable[[Tx], T], *, write: bool) -> T:
        # Reads and writes alike run in a READ COMMITTED transaction; ``write`` is not needed.
        pool = self._pool
        if pool is None:
            raise StoreError("store is not open")
        call = _Call()
        # abandoned on cancellation (shutdown, or the timeout below): the outcome of an abandoned
        # call is unknown, like a dropped connection's, and every caller already treats it that
        # way (a transition is retried or redelivered)
        with trio.move_on_after(self._call_timeout):
            return await trio.to_thread.run_sync(
                self._in_tx, pool, fn, call, limiter=self._limiter, abandon_on_cancel=True
            )
        call.abort()
        message = f"PostgreSQL unavailable at {self._target}: no answer within {self._call_timeout:g} s"
        log.warning("store call given up; its connection is closed", error=message)
        raise StoreUnavailable(message)

    def _in_tx(self, pool: psycopg_pool.ConnectionPool, fn: Callable[[Tx], T], call: _Call) -> T:
        """Run `fn` in one transaction on a pooled connection. A connection that sat idle is
        probed first (a server restart breaks them all) and, when broken, the next one is tried:
        the pool drops a broken connection when it comes back."""
        try:
            for _ in range(self._pool_size + 1):
                with pool.connection() as conn:
                    if not call.attach(conn):
                        raise StoreUnavailable(f"PostgreSQL unavailable at {self._target}: call given up")
                    try:
                        if time.monotonic() - self._last_used.get(conn, 0.0) > IDLE_CHECK_AFTER_S:
                            try:
                                psycopg_pool.ConnectionPool.check_connection(conn)
                            except psycopg.OperationalError:
                                if call.aborted:
                                    raise
                                continue  # broken by a restart: the pool drops it, take another
                        with conn.transaction(), conn.cursor() as cursor:
                            result = fn(Tx(cursor, self.dialect))
                        self._last_used[conn] = time.monotonic()
                        return result
                    finally:
                        call.detach()
            raise StoreUnavailable(f"PostgreSQL unavailable at {self._target}: no usable connection")
        except psycopg_pool.PoolClosed:
            raise StoreError("store is closed") from None
        except psycopg.Error as exc:
            raise self._map_error(exc) from (None if self._leaks(exc) else exc)

    def _leaks(self, exc: BaseException) -> bool:
        return bool(self._secret) and self._secret in str(exc)

    def _map_error(self, exc: psycopg.Error) -> StoreError:
        message = str(exc).strip()
        if self._secret:
            message = message.replace(self._secret, "***")
        if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
            return StoreUnavailable(f"PostgreSQL unavailable at {self._target}: {message}")
        return StoreError(f"PostgreSQL error: {message}")


class _Call:
    """The connection one store call is using, so the trio side can end a call the server does
    not answer: shutting the socket down wakes the worker thread's wait with an error (the
    connection is then broken, and the pool drops it). The lock makes sure only a connection
    still in this call's hands is shut, never one back in the pool or lent to another call."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._fd: int | None = None
        self.aborted = False

    def attach(self, conn: psycopg.Connection[Any]) -> bool:
        with self._lock:
            if self.aborted:
                return False
            self._fd = conn.fileno()
            return True

    def detach(self) -> None:
        with self._lock:
            self._fd = None

    def abort(self) -> None:
        with self._lock:
            self.aborted = True
            if self._fd is None:
                return
            try:
                with socket.socket(fileno=os.dup(self._fd)) as sock:
                    sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already closed: the call is ending on its own
