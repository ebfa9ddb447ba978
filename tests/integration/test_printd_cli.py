"""`printd run` as an operator starts it: which config file, start-up failures, the start-up log."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import tomli_w

from tests.conftest import SECRET, free_port

#: Variables of the machine that would change which config printd uses.
MACHINE_ENV = ("PRINTD_CONFIG", "JWT_SECRET", "PORT", "HOST", "DATABASE_URL", "REDIS_URL", "REDIS_HOST")


def printd_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in MACHINE_ENV}
    return {**env, "PYTHONUNBUFFERED": "1", **extra}


class Run:
    """One `printd run` with its output in a file."""

    def __init__(self, cwd: Path, args: list[str], env: dict[str, str]) -> None:
        cwd.mkdir(parents=True, exist_ok=True)
        self.out = cwd / f"printd-{time.monotonic_ns()}.log"
        with open(self.out, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "printd", "run", *args],
                cwd=cwd,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def output(self) -> str:
        return self.out.read_text(errors="replace")

    def wait_exit(self, timeout: float = 20) -> int:
        return self.proc.wait(timeout)

    def wait_ready(self, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while "printd ready" not in self.output():
            assert self.proc.poll() is None, self.output()
            assert time.monotonic() < deadline, self.output()
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def runs() -> Iterator[Any]:
    started: list[Run] = []

    def start(cwd: Path, *args: str, **env: str) -> Run:
        r = Run(cwd, list(args), printd_env(**env))
        started.append(r)
        return r

    yield start
    for r in started:
        r.stop()


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


# ------------------------------------------------------------------ start-up failures: one line, exit 2


def test_port_in_use_is_one_line_and_exit_2(runs: Any, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = runs(tmp_path, "--port", str(port), "--data-dir", str(tmp_path / "var"), JWT_SECRET=SECRET)
        assert r.wait_exit() == 2, r.output()
    out = r.output()
    assert out.splitlines()[-1] == f"printd: cannot listen on 127.0.0.1:{port}: address already in use"
    assert "Traceback" not in out and "ExceptionGroup" not in out and len(out.splitlines()) <= 4, out


@pytest.mark.parametrize("host", ["no-such-host.invalid", "999.1.1.1"])
def test_bad_or_unknown_host_is_one_line_and_exit_2(runs: Any, tmp_path: Path, host: str) -> None:
    port = free_port()
    r = runs(
        tmp_path, "--host", host, "--port", str(port), "--data-dir", str(tmp_path / "var"), JWT_SECRET=SECRET
    )
    assert r.wait_exit() == 2, r.output()
    out = r.output()
    last = out.splitlines()[-1]
    assert last.startswith(f"printd: cannot listen on {host}:{port}: ") and len(last) < 160, out
    assert "Traceback" not in out and "ExceptionGroup" not in out, out


def test_bad_redis_settings_refuse_to_start(runs: Any, tmp_path: Path) -> None:
    r = runs(tmp_path, "--port", "0", JWT_SECRET=SECRET, REDIS_URL="notaurl")
    assert r.wait_exit() == 2, r.output()
    assert "redis.url (REDIS_URL)" in r.output()
    r = runs(tmp_path, "--port", "0", JWT_SECRET=SECRET, REDIS_HOST="cache", REDIS_PORT="sixthousand")
    assert r.wait_exit() == 2, r.output()
    assert "REDIS_PORT: expected a TCP port" in r.output()


# ------------------------------------------------------------------ which config file


def write_config(path: Path, **values: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(tomli_w.dumps(values))
    return path


def test_run_uses_the_file_config_init_writes_and_says_so(runs: Any, tmp_path: Path) -> None:
    """`printctl config init` writes ./config/printd.toml; `printd run` with no flag uses it."""
    port = free_port()
    local = write_config(
        tmp_path / "config" / "printd.toml", server={"port": port}, data_dir=str(tmp_path / "v")
    )
    r = runs(tmp_path, JWT_SECRET=SECRET, PRINTD_LOG_FORMAT="json")
    r.wait_ready()
    assert httpx.get(f"http://127.0.0.1:{port}/monitoring/health", timeout=5).status_code in (200, 503)
    [config_line] = [x for x in json_lines(r.output()) if x["event"] == "config"]
    assert config_line["file"] == str(local.resolve())


def test_printd_config_env_wins_over_the_search_path(runs: Any, tmp_path: Path) -> None:
    port = free_port()
    write_config(tmp_path / "config" / "printd.toml", server={"port": free_port()})
    named = write_config(tmp_path / "elsewhere.toml", server={"port": port}, data_dir=str(tmp_path / "v"))
    r = runs(tmp_path, JWT_SECRET=SECRET, PRINTD_CONFIG=str(named), PRINTD_LOG_FORMAT="json")
    r.wait_ready()
    assert httpx.get(f"http://127.0.0.1:{port}/monitoring/health", timeout=5).status_code in (200, 503)
    [config_line] = [x for x in json_lines(r.output()) if x["event"] == "config"]
    assert config_line["file"] == str(named.resolve())


def test_no_config_file_is_said_at_start_up(runs: Any, tmp_path: Path) -> None:
    # the last place of the search order is the machine's own: a test machine must not have one
    assert not Path("/etc/printd/printd.toml").exists(), "this machine has /etc/printd/printd.toml"
    r = runs(tmp_path, "--port", "0", JWT_SECRET=SECRET)
    r.wait_ready()
    assert "no config file; defaults + environment" in r.output()


# ------------------------------------------------------------------ where the JWT secret came from


def _jwt_from(r: Run) -> str:
    r.wait_ready()
    lines = json_lines(r.output())
    [config_line] = [x for x in lines if x["event"] == "config"]
    [ready] = [x for x in lines if x["event"] == "printd ready"]
    assert "jwt_from" not in ready  # said once, on the config line
    return str(config_line["jwt_from"])


def test_start_up_log_says_where_the_jwt_secret_came_from(runs: Any, tmp_path: Path) -> None:
    data = tmp_path / "var"
    with_key = write_config(tmp_path / "printd.toml", auth={"jwt_secret": "k" * 40}, data_dir=str(data))
    base = ("--port", "0")
    r = runs(tmp_path, *base, "-c", str(with_key), JWT_SECRET=SECRET, PRINTD_LOG_FORMAT="json")
    assert _jwt_from(r) == "env JWT_SECRET"
    r.stop()
    r = runs(tmp_path, *base, "-c", str(with_key), PRINTD_LOG_FORMAT="json")
    assert _jwt_from(r) == f"auth.jwt_secret in {with_key}"
    r.stop()
    r = runs(tmp_path, *base, "--data-dir", str(data), PRINTD_LOG_FORMAT="json")
    assert _jwt_from(r) == f"{data / 'jwt_secret'} (generated now)"
    r.stop()
    r = runs(tmp_path, *base, "--data-dir", str(data), PRINTD_LOG_FORMAT="json")
    assert _jwt_from(r) == f"{data / 'jwt_secret'} (generated earlier)"
    assert SECRET not in r.output() and "k" * 40 not in r.output()
