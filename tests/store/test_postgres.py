"""PostgreSQL-specific behaviour: failing fast and quietly when the server is unreachable."""

from __future__ import annotations

import time

import pytest

from printd.store import StoreUnavailable, open_store
from printd.store.postgres import PostgresStore
from printd.store.sql import Tx

pytestmark = pytest.mark.postgres


async def test_unreachable_server_fails_fast_without_leaking_password() -> None:
    store = open_store("postgresql://u:s3cret@127.0.0.1:1/x")
    started = time.monotonic()
    with pytest.raises(StoreUnavailable) as info:
        await store.open()
    assert time.monotonic() - started < 5.0
    assert "s3cret" not in str(info.value)
    assert "s3cret" not in repr(info.value.__cause__)
    assert "127.0.0.1:1" in str(info.value)


async def test_sessions_get_statement_timeout_and_keep_url_options(pg_url: str) -> None:
    store = open_store(pg_url, statement_timeout_ms=1234)
    assert isinstance(store, PostgresStore)
    async with store:

        def settings(tx: Tx) -> tuple[object, ...] | None:
            return tx.one("SELECT current_setting('statement_timeout'), current_schema()")

        row = await store._run(settings, write=False)
    assert row is not None
    assert row[0] == "1234ms"
    assert str(row[1]).startswith("t_")


async def test_postgres_scheme_alias(pg_url: str) -> None:
    """`postgres://` (Heroku's and many tools' spelling) opens the same database, options and all."""
    store = open_store(pg_url.replace("postgresql://", "postgres://", 1))
    assert isinstance(store, PostgresStore)
    async with store:
        assert await store.migrate() == [1, 2, 3, 4]
        row = await store._run(lambda tx: tx.one("SELECT current_schema()"), write=False)
    assert row is not None and row[0] == pg_url.rsplit("%3D", 1)[1]  # the URL's search_path


async def test_dropped_connection_is_unavailable_then_recovers(pg_url: str) -> None:
    async with open_store(pg_url, pool_size=1) as store:
        await store.migrate()
        with pytest.raises(StoreUnavailable):
            await store._run(lambda tx: tx.one("SELECT pg_terminate_backend(pg_backend_pid())"), write=True)
        await store.ping()  # the pool replaced the dead connection
        assert await store.schema_version() == 4
