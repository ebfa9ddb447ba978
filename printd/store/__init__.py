"""Durable storage for printers and print jobs (SQLite or PostgreSQL)."""

from __future__ import annotations

from printd.store.base import Store, StoreCircuitOpen, StoreError, StoreUnavailable
from printd.store.sql import SqlStore

__all__ = ["Store", "StoreCircuitOpen", "StoreError", "StoreUnavailable", "open_store"]

ACCEPTED_SCHEMES = "sqlite:///abs/path.db, sqlite:relative.db, postgresql://..., postgres://..."


def open_store(url: str, *, pool_size: int = 10, statement_timeout_ms: int = 5000) -> SqlStore:
    """Build the backend ``url`` names; it is not connected yet: ``await store.open()``.

    For SQLite ``statement_timeout_ms`` is how long a write waits for the file lock and
    ``pool_size`` is ignored (one connection).
    """
    if url.startswith(("postgresql://", "postgres://")):
        from printd.store.postgres import PostgresStore

        return PostgresStore(url, pool_size=pool_size, statement_timeout_ms=statement_timeout_ms)
    if url.startswith("sqlite:"):
        from printd.store.sqlite import SQLiteStore

        path = url.removeprefix("sqlite:")
        if path.startswith("///"):
            path = path[2:]
        elif path.startswith("/") or not path:
            raise StoreError(f"unsupported SQLite URL {url!r}; accepted: {ACCEPTED_SCHEMES}")
        return SQLiteStore(path, busy_timeout_ms=statement_timeout_ms)
    scheme = url.split(":", 1)[0] if ":" in url else url
    raise StoreError(f"unsupported store URL scheme {scheme!r}; accepted: {ACCEPTED_SCHEMES}")
