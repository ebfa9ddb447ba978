"""printd's log stream: one format for everything, libraries included, secrets masked."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import trio

from printctl.faults.proxy import TcpProxy
from tests.conftest import Printd
from tests.scripted import SVC


def log_lines(p: Printd) -> list[str]:
    return [line for line in p.log_path.read_text(errors="replace").splitlines() if line.strip()]


@pytest.mark.postgres
async def test_json_logs_stay_json_while_postgresql_is_down(
    printd_factory: Any, pg_database_url: str
) -> None:
    """psycopg_pool logs its reconnect attempts through the stdlib: they must be JSON lines too."""
    proxy = TcpProxy(("127.0.0.1", 5432))
    try:
        url = pg_database_url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
        p = printd_factory(
            env={"DATABASE_URL": url, "PRINTD_LOG_FORMAT": "json"},
            config={"store": {"pool_size": 2}, "circuits": {"store": {"open_timeout": 1.0}}},
        )
        assert p.get("/api/v1/jobs", SVC).status_code == 200
        proxy.down()
        deadline = time.monotonic() + 30
        # the sentinel: the pool's own complaint about the lost server, from the stdlib logger
        while not any("psycopg" in line for line in log_lines(p)):
            assert time.monotonic() < deadline, "\n".join(log_lines(p)[-20:])
            await trio.to_thread.run_sync(lambda: p.get("/api/v1/jobs", SVC))
            await trio.sleep(0.3)
        proxy.up()
    finally:
        proxy.close()
    records = []
    for line in log_lines(p):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            pytest.fail(f"not a JSON log line: {line!r}")
    pool = [r for r in records if "psycopg" in r.get("logger", "")]
    assert pool and all({"event", "level", "timestamp"} <= r.keys() for r in pool), pool
