"""`printctl cluster up / ls / down` and `printctl health --cluster` with real processes: printd
instances on the real PostgreSQL and Redis, nginx on its own prefix on a loopback port, a real
agent connecting through nginx. printctl runs as the operator runs it, as a separate process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import psutil
import pytest

from printd.auth import mint_token
from tests.conftest import Printd, free_port

T = TypeVar("T")

#: variables of the machine that would leak into the cluster under test
CLEAN = ("JWT_SECRET", "DATABASE_URL", "REDIS_URL", "PRINTD_CONFIG", "PRINTD_URL", "PORT", "INSTANCE_ID")


def printctl(*args: str | Path, env: dict[str, str] | None = None, cwd: Path | None = None) -> Any:
    base = {k: v for k, v in os.environ.items() if k not in CLEAN}
    return subprocess.run(
        [sys.executable, "-m", "printctl.main", *map(str, args)],
        capture_output=True,
        text=True,
        env={**base, "COLUMNS": "200", **(env or {})},
        cwd=cwd,
        timeout=90,
    )


def gone(pid: int) -> bool:
    """Exited: no such pid, or a zombie waiting for a parent that is not ours to reap it."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = 20.0) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value is not None:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def processes_in(state: Path) -> list[int]:
    """Any process still working in the state directory (a leftover of the cluster)."""
    found = []
    for proc in psutil.process_iter(["pid", "cwd", "status"]):
        cwd = proc.info.get("cwd") or ""
        if cwd.startswith(str(state)) and proc.info.get("status") != psutil.STATUS_ZOMBIE:
            found.append(proc.info["pid"])
    return found


@pytest.fixture
def state(tmp_path: Path) -> Iterator[Path]:
    """The cluster's state directory; whatever the test leaves running is stopped afterwards."""
    path = tmp_path / "cluster"
    yield path
    if (path / "cluster.json").exists():
        printctl("cluster", "down", "--state-dir", path, "--timeout", "5")


def connections(instances: list[dict[str, Any]]) -> dict[str, int]:
    """Open WebSockets per healthy instance, asked of each one (a state query)."""
    out = {}
    for p in instances:
        try:
            body = httpx.get(p["url"] + "/monitoring/health", timeout=2).json()
        except httpx.HTTPError:
            continue
        if body.get("status") == "ok":
            out[p["name"]] = body["connections"]
    return out


def test_three_instances_behind_nginx_an_agent_moves_on_drain_and_down_leaves_nothing(
    state: Path, tmp_path: Path, pg_database_url: str
) -> None:
    env = {"DATABASE_URL": pg_database_url}
    up = printctl("cluster", "up", "--instances", "3", "--port", "0", "--state-dir", state, "--json", env=env)
    assert up.returncode == 0, up.stdout + up.stderr
    body = json.loads(up.stdout)
    front, pids = body["front_url"], {p["name"]: p["pid"] for p in body["processes"]}
    assert set(pids) == {"printd-1", "printd-2", "printd-3", "nginx"}
    assert (state / "run" / "printd-2.pid").read_text().strip() == str(pids["printd-2"])
    instances = [p for p in body["processes"] if p["kind"] == "printd"]
    assert {httpx.get(p["url"] + "/monitoring/health").json()["instance"] for p in instances} == {
        "printd-1",
        "printd-2",
        "printd-3",
    }
    assert httpx.get(front + "/monitoring/health").status_code == 200
    assert httpx.get(front + "/no-such-route").status_code == 404  # only /api, /monitoring, /printing-ws

    again = printctl(
        "cluster", "up", "--instances", "3", "--port", "0", "--state-dir", state, "--json", env=env
    )
    assert again.returncode == 0
    assert json.loads(again.stdout)["already_up"] is True
    assert {p["name"]: p["pid"] for p in json.loads(again.stdout)["processes"]} == pids

    assert printctl("cluster", "ls", "--state-dir", state).returncode == 0
    health = printctl("health", "--cluster", "--state-dir", state, "--json")
    assert health.returncode == 0 and json.loads(health.stdout)["healthy"] == 3

    # An agent connects through nginx; draining the instance that holds it moves it to another.
    secret = (state / "jwt_secret").read_text().strip()
    agent_token = mint_token(secret, role="agent", company="acme", sub="agent-1", branch="b1", ttl=600)
    agent_log = open(tmp_path / "agent.log", "ab")
    agent = subprocess.Popen(
        [sys.executable, "-m", "printctl.main", "agent", "--url", front, "--token", agent_token]
        + ["--printer", "k1", "--output", str(tmp_path / "prints"), "--max-backoff", "1"],
        stdout=agent_log,
        stderr=subprocess.STDOUT,
    )
    try:
        holder = wait_for(
            "the agent on one instance",
            lambda: next((i for i, n in connections(instances).items() if n), None),
        )
        os.kill(pids[holder], signal.SIGTERM)
        moved = wait_for(
            "the agent on another instance",
            lambda: next((i for i, n in connections(instances).items() if n and i != holder), None),
        )
        assert moved != holder
        assert wait_for("the drained instance to exit", lambda: gone(pids[holder]) or None)
        report = printctl("health", "--cluster", "--state-dir", state, "--json")
        assert report.returncode == 1
        statuses = {r["instance"]: r["status"] for r in json.loads(report.stdout)["instances"]}
        assert statuses[holder] == "unreachable" and sum(s == "ok" for s in statuses.values()) == 2
        assert printctl("cluster", "ls", "--state-dir", state).returncode == 1
    finally:
        agent.terminate()
        agent.wait(10)

    down = printctl("cluster", "down", "--state-dir", state, "--json")
    assert down.returncode == 0, down.stdout + down.stderr
    stopped = json.loads(down.stdout)["stopped"]
    assert stopped[holder] == "not running"
    assert {name for name, outcome in stopped.items() if outcome == "stopped"} == set(pids) - {holder}
    assert all(gone(pid) for pid in pids.values())
    assert not (state / "cluster.json").exists() and not list((state / "run").iterdir())
    assert processes_in(state) == []
    assert printctl("cluster", "ls", "--state-dir", state).returncode == 1
    assert printctl("cluster", "down", "--state-dir", state).returncode == 0


def test_up_from_a_cluster_file_runs_its_settings(state: Path, tmp_path: Path) -> None:
    port, front = free_port(), free_port()
    cluster_file = tmp_path / "cluster.toml"
    cluster_file.write_text(
        'name = "demo"\nmode = "production"\n'
        f'[nginx]\nlisten = "127.0.0.1:{front}"\n'
        '[settings.auth]\ncors_origins = ["https://dash.example.com"]\n'
        f'[[instances]]\nid = "solo"\nport = {port}\n'
    )
    up = printctl("cluster", "up", "--config", cluster_file, "--state-dir", state, "--json")
    assert up.returncode == 0, up.stdout + up.stderr
    assert json.loads(up.stdout)["front_url"] == f"http://127.0.0.1:{front}"
    instance = httpx.get(f"http://127.0.0.1:{front}/monitoring/health").json()
    assert instance["instance"] == "solo" and instance["status"] == "ok"
    assert (state / "solo" / "printd.db").exists()  # one instance: its own SQLite
    assert printctl("cluster", "down", "--state-dir", state).returncode == 0


def test_an_instance_that_cannot_start_fails_up_and_leaves_nothing_running(state: Path) -> None:
    dead_db = f"postgresql://postgres@127.0.0.1:{free_port()}/test"
    up = printctl(
        "cluster", "up", "--instances", "2", "--port", "0", "--state-dir", state, "--json",
        env={"DATABASE_URL": dead_db},
    )  # fmt: skip
    assert up.returncode == 1
    error = json.loads(up.stdout)["error"]
    assert "exited at start" in error and "cannot use the store" in error
    assert not (state / "cluster.json").exists()
    assert wait_for("every started process to exit", lambda: processes_in(state) == [] or None, timeout=15)


def test_health_cluster_from_the_cluster_file(printd: Printd, tmp_path: Path) -> None:
    cluster_file = tmp_path / "cluster.toml"
    cluster_file.write_text(
        '[database]\nurl = "postgresql://printd@127.0.0.1/printd"\n'
        f'[[instances]]\nid = "up"\nport = {printd.port}\n'
        f'[[instances]]\nid = "down"\nport = {free_port()}\n'
    )
    out = printctl("health", "--cluster", "--config", cluster_file, "--json")
    assert out.returncode == 1
    body = json.loads(out.stdout)
    assert [(r["instance"], r["status"]) for r in body["instances"]] == [
        ("up", "ok"),
        ("down", "unreachable"),
    ]
    table = printctl("health", "--cluster", "--config", cluster_file)
    assert table.returncode == 1 and "1/2 healthy" in table.stdout
