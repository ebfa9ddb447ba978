"""SQLite uses a partial index only when the query repeats the index's predicate term by term
(an IN list in the same order): the hot-path queries must find theirs, or they walk a
printer's or a company's whole job history (the backlog count once did, at every accept)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from printd.store.migrate import load
from printd.store.sql import BACKLOG_SQL, LIVE_AGENT_WHERE, QUEUED_AGENT_WHERE
from printd.store.sqlite import split_script


@pytest.fixture
def db(tmp_path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(tmp_path / "plans.db")
    for migration in load("sqlite"):
        for statement in split_script(migration.sql):
            conn.execute(statement)
    return conn


def plan(db: sqlite3.Connection, sql: str, params: tuple[object, ...]) -> str:
    return " | ".join(row[3] for row in db.execute("EXPLAIN QUERY PLAN " + sql, params))


def test_the_backlog_count_reads_only_live_jobs(db: sqlite3.Connection) -> None:
    assert "USING INDEX jobs_live_printer_idx" in plan(db, BACKLOG_SQL, ("acme", "p1", 10_000))


@pytest.mark.parametrize(
    ("where", "index"),
    [(LIVE_AGENT_WHERE, "jobs_live_agent_idx"), (QUEUED_AGENT_WHERE, "jobs_queued_agent_idx")],
)
def test_a_delivery_pass_reads_only_the_agents_unfinished_jobs(
    db: sqlite3.Connection, where: str, index: str
) -> None:
    sql = f"SELECT job_id FROM jobs WHERE {where} ORDER BY seq LIMIT ?"
    found = plan(db, sql, ("acme", "agent-1", 0, 50))
    assert f"USING INDEX {index}" in found and "TEMP B-TREE" not in found, found
