"""open_store URL parsing and the migration files both backends ship."""

from __future__ import annotations

import pytest

from printd.store import StoreError, open_store
from printd.store.migrate import load
from printd.store.postgres import PostgresStore
from printd.store.sqlite import SQLiteStore


@pytest.mark.parametrize(
    "url", ["mysql://u:p@h/db", "sqlite:/one-slash.db", "sqlite://host/x.db", "", "x.db"]
)
def test_rejects_unknown_urls_naming_accepted_schemes(url: str) -> None:
    with pytest.raises(StoreError) as info:
        open_store(url)
    message = str(info.value)
    assert "sqlite:///" in message and "postgresql://" in message and "postgres://" in message


def test_picks_backend_by_scheme() -> None:
    assert isinstance(open_store("sqlite:///tmp/x.db"), SQLiteStore)
    assert isinstance(open_store("sqlite:x.db"), SQLiteStore)
    assert isinstance(open_store("postgresql://u@127.0.0.1/db"), PostgresStore)
    assert isinstance(open_store("postgres://u@127.0.0.1/db"), PostgresStore)


def test_both_backends_ship_the_same_migration_versions() -> None:
    sqlite, postgres = load("sqlite"), load("postgres")
    assert [m.version for m in sqlite] == [m.version for m in postgres]
    assert sqlite[0].version == 1
