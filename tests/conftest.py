"""Shared fixtures: real printd processes on loopback ports, tokens, the store backends.

Integration tests never fake a dependency: each `printd` here is a subprocess with its own data
directory, talking to the real SQLite file or the real PostgreSQL server.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import structlog
import tomli_w
from psycopg import sql

from printd.auth import mint_token

ROOT = Path(__file__).resolve().parent.parent
SECRET = "integration-test-secret-0123456789abcdef"
PG_URL = os.environ.get("PRINTD_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
#: `make coverage` measures every Python process it starts (see pyproject's [tool.coverage])
UNDER_COVERAGE = bool(os.environ.get("COVERAGE_PROCESS_START"))


@pytest.fixture(autouse=True)
def _structlog_defaults() -> Iterator[None]:
    """A command run in-process (CliRunner) may configure structlog to print to its captured
    stderr, which is closed afterwards: the next test's log lines would fail. Each test starts
    from structlog's defaults."""
    structlog.reset_defaults()
    yield
    structlog.reset_defaults()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def token(
    role: str, company: str = "acme", *, sub: str | None = None, branch: str | None = None, ttl: int = 3600
) -> str:
    if role == "agent" and branch is None:
        branch = "b1"
    return mint_token(SECRET, role=role, company=company, sub=sub or f"{role}-1", branch=branch, ttl=ttl)


class Printd:
    """One printd subprocess. `start()` waits until /monitoring/health answers."""

    def __init__(
        self, data_dir: Path, *, config: dict[str, Any] | None = None, env: dict[str, str] | None = None
    ):
        self.data_dir = data_dir
        self.port = free_port()
        self.config = config or {}
        self.env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir / f"printd-{self.port}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 15.0) -> Printd:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        cfg_path = self.data_dir / "printd.toml"
        cfg = {"data_dir": str(self.data_dir), "log_level": "info", **self.config}
        cfg.setdefault("server", {})
        cfg["server"] = {"port": self.port, "host": "127.0.0.1", **cfg["server"]}
        cfg_path.write_text(tomli_w.dumps(cfg))
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("DATABASE_URL", "PORT", "REDIS_URL", "CORS_ORIGINS")
        }
        env.update({"JWT_SECRET": SECRET, "PYTHONUNBUFFERED": "1", **self.env})
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "printd", "run", "--config", str(cfg_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=self.data_dir,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"printd exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(self.url + "/monitoring/health", timeout=1).status_code in (200, 503):
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"printd did not become ready:\n{self.log()}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-5000:]
        except OSError:
            return ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def finish(self) -> None:
        """End it after the test: SIGKILL, or under `make coverage` SIGTERM first (a killed
        process cannot write its coverage data; printd drains and exits on SIGTERM)."""
        if UNDER_COVERAGE and self.proc is not None:
            try:
                self.stop(signal.SIGTERM, timeout=10)
            except subprocess.TimeoutExpired:
                pass  # stop() killed it
        self.kill()

    def get(self, path: str, token: str | None = None, **kw: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.get(self.url + path, headers=headers, timeout=20, **kw)

    def post(
        self, path: str, token: str | None = None, json: Any = None, headers: dict[str, str] | None = None
    ) -> httpx.Response:
        h = {"Authorization": f"Bearer {token}"} if token else {}
        h.update(headers or {})
        return httpx.post(self.url + path, headers=h, json=json, timeout=30)


#: `PRINTD_TEST_BACKEND=postgres` runs every printd of the integration suite on PostgreSQL (a
#: fresh schema each) instead of its embedded SQLite: `make test` runs the suite both ways.
TEST_BACKEND = os.environ.get("PRINTD_TEST_BACKEND", "sqlite")


@pytest.fixture
def printd_factory(tmp_path: Path) -> Iterator[Any]:
    """Start printd processes; all are killed (and their PostgreSQL schemas dropped) at the end."""
    started: list[Printd] = []
    schemas: list[str] = []

    def make(name: str = "p1", *, start: bool = True, **kw: Any) -> Printd:
        env = dict(kw.pop("env", None) or {})
        if TEST_BACKEND == "postgres" and "DATABASE_URL" not in env:
            schema = f"it_{uuid.uuid4().hex[:12]}"
            schemas.append(schema)
            env["DATABASE_URL"] = _new_schema_url(schema)
        p = Printd(tmp_path / name, env=env, **kw)
        started.append(p)
        return p.start() if start else p

    yield make
    for p in started:
        p.finish()
    for schema in schemas:
        _drop_schema(schema)


def _new_schema_url(schema: str) -> str:
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    sep = "&" if "?" in PG_URL else "?"
    return f"{PG_URL}{sep}options=-csearch_path%3D{schema}"


def _drop_schema(schema: str) -> None:
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


@pytest.fixture
def printd(printd_factory: Any) -> Printd:
    p: Printd = printd_factory()
    return p


@pytest.fixture
def pg_database_url() -> Iterator[str]:
    """A fresh schema on the real PostgreSQL server, as a DATABASE_URL; dropped afterwards."""
    schema = f"it_{uuid.uuid4().hex[:12]}"
    try:
        yield _new_schema_url(schema)
    finally:
        _drop_schema(schema)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend(request: pytest.FixtureRequest) -> dict[str, str]:
    """Environment that selects the store backend for a printd under test."""
    if request.param == "sqlite":
        return {}
    url: str = request.getfixturevalue("pg_database_url")
    return {"DATABASE_URL": url}


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[Any]:
    """A private redis-server (no persistence) that a test may stop, pause or restart."""
    from tests.redis_server import RedisServer

    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


@pytest.fixture
def cluster_factory(printd_factory: Any, redis_server: Any, pg_database_url: str) -> Any:
    """Start printd instances forming one cluster: one PostgreSQL schema, one private Redis."""
    prefix = f"t{uuid.uuid4().hex[:8]}"

    def make(
        n: int, *, config: dict[str, Any] | None = None, env: dict[str, str] | None = None
    ) -> list[Printd]:
        common = {
            "DATABASE_URL": pg_database_url,
            "REDIS_URL": redis_server.url,
            "REDIS_PREFIX": prefix,
            **(env or {}),
        }
        return [
            printd_factory(f"i{k}", config=config, env={**common, "INSTANCE_ID": f"i{k}"})
            for k in range(1, n + 1)
        ]

    return make
