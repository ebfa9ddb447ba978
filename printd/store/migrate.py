"""Versioned schema migrations, shared by both backends.

Migrations are ``migrations/<dialect>/NNNN_name.sql`` files shipped as package data. They are
applied in one transaction together with their ``schema_migrations`` rows, so a crash leaves
either all or none of them; ``migrate()`` is therefore safe to call at every start.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING

from printd.store.base import StoreError

if TYPE_CHECKING:
    from printd.store.sql import Tx

_NAME = re.compile(r"^(\d+)_[\w-]+\.sql$")

BOOTSTRAP = (
    "CREATE TABLE IF NOT EXISTS schema_migrations ("
    " version INTEGER PRIMARY KEY, applied_at DOUBLE PRECISION NOT NULL)"
)


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


def load(dialect: str) -> list[Migration]:
    """The dialect's migration files, ordered by version."""
    root = resources.files("printd.store") / "migrations" / dialect
    found: dict[int, Migration] = {}
    for entry in root.iterdir():
        match = _NAME.match(entry.name)
        if match is None:
            continue
        version = int(match.group(1))
        if version in found:
            raise StoreError(f"duplicate migration version {version} in {dialect}")
        found[version] = Migration(version, entry.name, entry.read_text(encoding="utf-8"))
    return [found[v] for v in sorted(found)]


def current_version(tx: Tx) -> int:
    """Highest applied version, 0 when nothing was ever applied."""
    if tx.one(tx.dialect.table_exists_sql, ("schema_migrations",)) is None:
        return 0
    row = tx.one("SELECT MAX(version) FROM schema_migrations")
    return 0 if row is None or row[0] is None else int(row[0])


def apply(tx: Tx, migrations: list[Migration], now: float) -> list[int]:
    """Apply what is pending inside the caller's write transaction; return the versions."""
    if tx.dialect.migration_lock_sql:
        tx.one(tx.dialect.migration_lock_sql)  # concurrent migrators queue here
    tx.all(BOOTSTRAP)
    applied = {int(r[0]) for r in tx.all("SELECT version FROM schema_migrations")}
    newest = max((m.version for m in migrations), default=0)
    if applied and max(applied) > newest:
        raise StoreError(f"database schema version {max(applied)} is newer than this printd ({newest})")
    done: list[int] = []
    for migration in migrations:
        if migration.version in applied:
            continue
        tx.script(migration.sql)
        tx.all("INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)", (migration.version, now))
        done.append(migration.version)
    return done
