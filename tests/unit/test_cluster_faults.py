"""`printctl cluster up --db-proxy / --private-redis` without processes: the database URL through
the proxy, refusals before anything starts, and the records a restart is made from."""

from __future__ import annotations

import json
import signal
import stat
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from printctl.cluster import (
    Launch,
    LocalCluster,
    Process,
    StartFailed,
    proxied_database,
    stop_processes,
    via_proxy,
)
from tests.cli import run


def test_the_database_url_goes_through_the_proxy_with_everything_else_kept() -> None:
    url = "postgresql://printd:s3cret@db.internal:6543/printd?options=-csearch_path%3Dit_1&sslmode=disable"
    assert proxied_database(url) == ("db.internal", 6543)
    assert via_proxy(url, 40001) == (
        "postgresql://printd:s3cret@127.0.0.1:40001/printd?options=-csearch_path%3Dit_1&sslmode=disable"
    )
    assert proxied_database("postgres://[::1]/test") == ("::1", 5432)
    assert via_proxy("postgresql://127.0.0.1/test", 40002) == "postgresql://127.0.0.1:40002/test"


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("sqlite:///var/printd.db", "needs DATABASE_URL=postgresql://"),
        ("postgresql:///test?host=/var/run/postgresql", "not a Unix socket"),
        ("postgresql://h1:5432,h2:5432/test", "not a list of hosts"),
    ],
)
def test_a_database_the_proxy_cannot_stand_in_front_of_is_named(url: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        proxied_database(url)


def test_up_refuses_db_proxy_for_a_unix_socket_database_before_starting_anything(tmp_path: Path) -> None:
    args = ("cluster", "up", "--instances", "2", "--port", "0", "--db-proxy", "--state-dir", str(tmp_path))
    result = run(*args, "--json", env={"DATABASE_URL": "postgresql:///test?host=/var/run/postgresql"})
    assert result.exit_code == 2
    assert "--db-proxy needs DATABASE_URL's server as HOST:PORT" in json.loads(result.stdout)["error"]
    assert not (tmp_path / "cluster.json").exists()


def test_a_restart_is_made_from_a_private_record_and_replaces_the_process_of_its_name(tmp_path: Path) -> None:
    launch = Launch(
        "printd-1", "printd", ("printd", "run"), {"JWT_SECRET": "x" * 40}, str(tmp_path), "http://a"
    )
    launch.save(tmp_path)
    path = tmp_path / "run" / "printd-1.launch.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # the environment holds the secret
    assert Launch.load(tmp_path, "printd-1") == launch
    with pytest.raises(StartFailed, match="cannot tell how printd-2 was started"):
        Launch.load(tmp_path, "printd-2")

    old, new = (Process("printd-1", "printd", pid, 1.0, "http://a", "log") for pid in (10, 20))
    nginx = Process("nginx", "nginx", 30, 1.0, "http://f", "log")
    cluster = LocalCluster(tmp_path, "http://f", "p", (old, nginx)).with_process(new)
    assert cluster.processes == (new, nginx)
    assert cluster.process("nginx") is nginx
    with pytest.raises(StartFailed, match="no process 'redis'"):
        cluster.process("redis")


def test_down_stops_a_paused_process_by_its_own_shutdown_not_by_sigkill() -> None:
    """failover-test pauses instances (SIGSTOP); if it dies meanwhile, `cluster down` must still
    let such an instance drain: its SIGTERM handler only runs once it is resumed."""
    code = "import signal, sys, time\n"
    code += "signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))\nprint(1, flush=True)\ntime.sleep(60)"
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    try:
        assert child.stdout is not None and child.stdout.readline() == b"1\n"
        child.send_signal(signal.SIGSTOP)
        proc = Process("printd-1", "printd", child.pid, psutil.Process(child.pid).create_time(), "", "")
        # patience for a loaded machine (a CI run saw 'killed' at 5 s): what is asserted is that
        # it ends through its own handler, not how fast
        assert stop_processes((proc,), timeout=20) == {"printd-1": "stopped"}
        assert child.wait(5) == 0
    finally:
        child.kill()
        child.wait()
