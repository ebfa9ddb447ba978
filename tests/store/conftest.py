"""Store fixtures: every contract test runs against SQLite and a real PostgreSQL.

Each PostgreSQL test gets a fresh schema (selected through the URL's ``options``) that is
dropped afterwards, so tests never see each other's rows.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import quote

import psycopg
import pytest
from psycopg import sql

from printd.store import Store, open_store

PG_URL = os.environ.get("PRINTD_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")


def _pg_schema_url(schema: str) -> str:
    separator = "&" if "?" in PG_URL else "?"
    return f"{PG_URL}{separator}options={quote(f'-csearch_path={schema}')}"


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A PostgreSQL URL whose search_path is a brand-new schema."""
    schema = f"t_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    try:
        yield _pg_schema_url(schema)
    finally:
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite://{tmp_path}/db/printd.db"
    url: str = request.getfixturevalue("pg_url")
    return url


@pytest.fixture
async def raw_store(store_url: str) -> AsyncIterator[Store]:
    """An open store on an empty database (no migrations applied)."""
    store = open_store(store_url, pool_size=5)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


@pytest.fixture
async def store(raw_store: Store) -> Store:
    await raw_store.migrate()
    return raw_store
