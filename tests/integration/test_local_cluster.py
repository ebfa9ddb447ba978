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

from tests.conftest import SECRET, Printd, free_port
from tests.drill import OPS, Agent, Orders, assert_exactly_once, routes_websocket_to, wait_until

T = TypeVar("T")

#: variables of the machine that would leak into the cluster under test
CLEAN = ("JWT_SECRET", "DATABASE_URL", "REDIS_URL", "PRINTD_CONFIG", "PRINTD_URL", "PORT", "INSTANCE_ID")


def printctl(
    *args: str | Path, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 90
) -> Any:
    """printctl as the operator runs it: a process of its own, without this machine's settings."""
    base = {k: v for k, v in os.environ.items() if k not in CLEAN}
    return subprocess.run(
        [sys.executable, "-m", "printctl.main", *map(str, args)],
        capture_output=True,
        text=True,
        env={**base, "COLUMNS": "200", **(env or {})},
        cwd=cwd,
        timeout=timeout,
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


def agents_on(instances: list[dict[str, Any]]) -> dict[str, int]:
    """Agents connected now per instance that answers, as each one counts them."""
    out = {}
    for p in instances:
        try:
            body = httpx.get(
                p["url"] + "/monitoring/instance", headers={"Authorization": f"Bearer {OPS}"}, timeout=2
            )
            out[p["name"]] = int(body.json()["connections"]["agent"])
        except (httpx.HTTPError, KeyError, ValueError):
            continue
    return out


def published(front: str) -> dict[str, int]:
    """Agents per healthy member as the cluster view shows them (the member records, refreshed
    at each heartbeat): what `cluster rebalance` plans from."""
    members = httpx.get(front + "/monitoring/cluster", headers={"Authorization": f"Bearer {OPS}"}).json()[
        "members"
    ]
    return {m["id"]: m["connections"]["agent"] for m in members if m["health"] == "ok"}


def test_up_drain_up_again_rebalance_and_down_lose_no_job_and_leave_nothing(
    state: Path, tmp_path: Path, pg_database_url: str
) -> None:
    """The operator's day with a local cluster: up (3 instances and nginx), agents and orders
    through nginx, one instance drained (its agents move, no job lost), `up` again starts it
    again, `cluster rebalance` evens the agents out, `down` leaves no process behind."""
    env = {"DATABASE_URL": pg_database_url, "JWT_SECRET": SECRET}
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
    assert json.loads(again.stdout)["already_up"] is True and json.loads(again.stdout)["restarted"] == []
    assert {p["name"]: p["pid"] for p in json.loads(again.stdout)["processes"]} == pids

    assert printctl("cluster", "ls", "--state-dir", state).returncode == 0
    health = printctl("health", "--cluster", "--state-dir", state, "--json")
    assert health.returncode == 0 and json.loads(health.stdout)["healthy"] == 3

    agents = [
        Agent(front, tmp_path / f"agent-{k}", sub=f"agent-{k}", printers=(f"r{k}",)).start() for k in range(6)
    ]
    orders = Orders(front, tuple(f"r{k}" for k in range(6)))
    try:
        wait_until(lambda: sum(agents_on(instances).values()) == 6, 20, "six agents connected")
        orders.start(every=0.2)
        # draining the instance holding the most agents moves them to the two others
        holder = max(agents_on(instances).items(), key=lambda kv: kv[1])[0]
        os.kill(pids[holder], signal.SIGTERM)
        wait_until(lambda: gone(pids[holder]), 20, "the drained instance exited")
        wait_until(lambda: sum(agents_on(instances).values()) == 6, 20, "its agents moved")
        report = printctl("health", "--cluster", "--state-dir", state, "--json")
        assert report.returncode == 1
        statuses = {r["instance"]: r["status"] for r in json.loads(report.stdout)["instances"]}
        assert statuses[holder] == "unreachable" and sum(s == "ok" for s in statuses.values()) == 2
        assert printctl("cluster", "ls", "--state-dir", state).returncode == 1

        # `up` on the partly-up cluster starts the drained instance again, empty
        restarted = printctl("cluster", "up", "--state-dir", state, "--json", env=env)
        assert restarted.returncode == 0, restarted.stdout + restarted.stderr
        assert json.loads(restarted.stdout)["restarted"] == [holder]
        new_pid = {p["name"]: p["pid"] for p in json.loads(restarted.stdout)["processes"]}[holder]
        assert new_pid != pids[holder]
        pids[holder] = new_pid
        assert printctl("health", "--cluster", "--state-dir", state).returncode == 0
        assert agents_on(instances)[holder] == 0

        # nginx skips the instance for its fail_timeout after the failures of the drain
        wait_until(lambda: routes_websocket_to(front, holder), 20, "the front routes to it again")
        wait_until(
            lambda: len(published(front)) == 3 and sum(published(front).values()) == 6, 10, "published"
        )
        rebalance = printctl("cluster", "rebalance", "--url", front, "--token", OPS, "--json")
        assert rebalance.returncode == 0, rebalance.stdout + rebalance.stderr
        assert json.loads(rebalance.stdout)["after"] == {"printd-1": 2, "printd-2": 2, "printd-3": 2}

        orders.wait_for(30)
        accepted = orders.stop()
        assert_exactly_once(front, accepted, [a.out for a in agents])
    finally:
        orders.stop()
        for agent in agents:
            agent.stop()

    down = printctl("cluster", "down", "--state-dir", state, "--json")
    assert down.returncode == 0, down.stdout + down.stderr
    assert set(json.loads(down.stdout)["stopped"].values()) == {"stopped"}
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
