"""SQLite-specific behaviour: URL forms, file setup, crash durability."""

from __future__ import annotations

import signal
import sqlite3
import sys
from pathlib import Path

import pytest
import trio

from printd.model import JobState
from printd.store import StoreError, StoreUnavailable, open_store
from printd.store.sqlite import split_script

CRASH_SCRIPT = """
import os, signal, sys, trio
from printd.store import open_store
from printd.store.base import AgentClaim, AgentFence

async def main():
    store = open_store(sys.argv[1])
    await store.open()
    await store.migrate()
    await store.upsert_printer(company="acme", branch="b", agent_id="a", printer_id="p", status="ok",
                               details={}, now=1.0)
    job, _ = await store.create_job(company="acme", printer_id="p",
                                    kind="print", payload={"n": 1}, idempotency_key=None, now=1.0)
    (claimed,) = await store.claim_agents([AgentClaim("acme", "a", "i1", "x")], 2.0)
    await store.mark_acked(job.job_id, 2.0, AgentFence("acme", "a", claimed.session))
    print(job.job_id, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)

trio.run(main)
"""


async def test_committed_job_survives_sigkill(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path}/crash.db"
    proc = await trio.run_process([sys.executable, "-c", CRASH_SCRIPT, url], capture_stdout=True, check=False)
    assert proc.returncode == -signal.SIGKILL
    job_id = proc.stdout.decode().strip()
    async with open_store(url) as store:
        job = await store.get_job(job_id)
    assert job is not None and job.state is JobState.ACKED
    assert job.history == (("queued", 1.0), ("acked", 2.0))


async def test_creates_parent_dir_and_uses_wal(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "printd.db"
    async with open_store(f"sqlite://{path}") as store:
        await store.migrate()
    assert path.exists()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)


async def test_relative_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    async with open_store("sqlite:var/rel.db") as store:
        assert await store.migrate() == [1, 2, 3, 4]
    assert (tmp_path / "var" / "rel.db").exists()


async def test_memory_url() -> None:
    async with open_store("sqlite::memory:") as store:
        assert await store.migrate() == [1, 2, 3, 4]


async def test_closed_store_raises(tmp_path: Path) -> None:
    store = open_store(f"sqlite://{tmp_path}/x.db")
    with pytest.raises(StoreError, match="not open"):
        await store.ping()
    await store.open()
    await store.close()
    await store.close()  # twice is fine
    with pytest.raises(StoreError, match="not open"):
        await store.get_job("x")


async def test_locked_database_is_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "locked.db"
    async with open_store(f"sqlite://{path}", statement_timeout_ms=100) as store:
        await store.migrate()
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        try:
            with pytest.raises(StoreUnavailable, match="locked"):
                await store.upsert_printer(
                    company="c", branch="b", agent_id="a", printer_id="p", status="s", details={}, now=1.0
                )
        finally:
            other.execute("ROLLBACK")
            other.close()
        printer, created = await store.upsert_printer(
            company="c", branch="b", agent_id="a", printer_id="p", status="s", details={}, now=1.0
        )
        assert created


def test_split_script_keeps_trigger_bodies_whole() -> None:
    script = """
    -- a comment; with a semicolon
    CREATE TABLE t (x TEXT DEFAULT 'a;b');
    CREATE TRIGGER tr AFTER INSERT ON t BEGIN UPDATE t SET x = 'y'; END;
    -- trailing comment
    """
    parts = split_script(script)
    assert len(parts) == 3
    assert "DEFAULT 'a;b'" in parts[0]
    assert parts[1].strip().startswith("CREATE TRIGGER") and parts[1].strip().endswith("END;")
    conn = sqlite3.connect(":memory:")
    for part in parts:
        conn.execute(part)
