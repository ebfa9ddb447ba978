"""README's "Before you go live" as an operator runs it: a local cluster of three printd behind
nginx with its own Redis and a proxy in front of the real PostgreSQL (`cluster up
--private-redis --db-proxy`), a 20 s `printctl loadtest` of 300 agents through the front, then
`printctl failover-test`: five rounds covering every server-side fault under a small load. The
reports are read from their JSON files, and `cluster down` leaves nothing running."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.integration.test_local_cluster import gone, printctl, processes_in

pytestmark = [pytest.mark.postgres, pytest.mark.slow]
FAULTS = ["kill", "drain", "pause", "redis", "db"]


def pids(state: Path) -> dict[str, int]:
    return {p["name"]: p["pid"] for p in json.loads((state / "cluster.json").read_text())["processes"]}


def test_a_load_test_then_five_rounds_of_every_server_fault_lose_and_double_nothing(
    tmp_path: Path, pg_database_url: str
) -> None:
    state, report_file = tmp_path / "cluster", tmp_path / "report.json"
    every_pid: set[int] = set()
    try:
        up = printctl(
            "cluster", "up", "--instances", "3", "--port", "0", "--private-redis", "--db-proxy",
            "--state-dir", state, "--json", env={"DATABASE_URL": pg_database_url},
        )  # fmt: skip
        assert up.returncode == 0, up.stdout + up.stderr
        processes = {p["name"]: p for p in json.loads(up.stdout)["processes"]}
        assert {n: p["kind"] for n, p in processes.items()} == {
            "db-proxy": "db-proxy",
            "redis": "redis",
            "printd-1": "printd",
            "printd-2": "printd",
            "printd-3": "printd",
            "nginx": "nginx",
        }
        before = pids(state)
        every_pid |= set(before.values())
        # the instances use the cluster's own Redis, and PostgreSQL through its proxy
        env = json.loads((state / "run" / "printd-2.launch.json").read_text())["env"]
        assert env["REDIS_URL"] == processes["redis"]["url"]
        database = urlsplit(env["DATABASE_URL"])
        assert database.port == urlsplit(processes["db-proxy"]["url"]).port
        assert (
            database.path == urlsplit(pg_database_url).path
            and database.query == urlsplit(pg_database_url).query
        )

        load_file = tmp_path / "load.json"
        load = printctl(
            "loadtest", "--url", json.loads(up.stdout)["front_url"], "--data-dir", state, "--agents", "300",
            "--dashboards", "6", "--companies", "6", "--job-rate", "20", "--status-rate", "150",
            "--duration", "20", "--ramp", "3", "--max-errors", "0", "--workers", "2",
            "--json", load_file, "--output", tmp_path / "load", timeout=150,
        )  # fmt: skip
        assert load_file.exists(), load.stdout + load.stderr
        load_report = json.loads(load_file.read_text())
        assert load.returncode == 0, load.stdout + load.stderr
        once = load_report["exactly_once"]
        assert once["ok"] and once["lost"] == [] and once["duplicated"] == {}
        assert once["accepted"] == once["printed"] >= 300
        # the front spreads 306 connections over the three instances
        spread = load_report["connections"]["open_by_instance"]
        assert len(spread) == 3 and sum(spread.values()) == 306, spread

        run = printctl(
            "failover-test", "--state-dir", state, "--rounds", "5", "--faults", ",".join(FAULTS),
            "--seed", "1", "--agents", "60", "--hold-min", "1", "--hold-max", "2",
            "--json", report_file, "--output", tmp_path / "run", timeout=240,
        )  # fmt: skip
        every_pid |= set(pids(state).values())
        assert report_file.exists(), run.stdout + run.stderr
        report = json.loads(report_file.read_text())
        assert run.returncode == 0, json.dumps(report["rounds"], indent=1) + run.stdout + run.stderr
        assert "PASS printctl failover-test" in run.stdout

        rounds = report["rounds"]
        assert sorted(r["fault"] for r in rounds) == sorted(FAULTS)  # five rounds deal every fault once
        for r in rounds:
            assert r["applied"] and r["healed"] and r["settled"] and r["ok"], r
            assert r["problems"] == [] and r["never_back"] == [], r
            if r["fault"] != "db":
                assert r["detect_s"] is not None, r  # membership showed it
        for r in (r for r in rounds if r["fault"] in ("kill", "drain")):
            assert r["orphans"] > 0 and r["reconnect"]["p99_s"] <= 10, r  # agents moved, in time
        jobs = report["jobs"]
        assert jobs["lost"] == {} and jobs["duplicated"] == {} and jobs["unexpected"] == []
        assert jobs["still_pending"] == {}
        assert jobs["accepted"] == jobs["printed"] > 100
        assert report["summary"]["accepted_during_faults"] > 0
        assert all(c["ok"] for c in report["checks"]), report["checks"]
        assert report["error"] is None and report["exit_code"] == 0

        # what was stopped came back as a new process: the killed and drained instance, Redis
        after = pids(state)
        for r in rounds:
            if r["fault"] in ("kill", "drain", "redis"):
                name = r["target"] if r["fault"] != "redis" else "redis"
                assert after[name] != before[name], r
        assert after["nginx"] == before["nginx"] and after["db-proxy"] == before["db-proxy"]
    finally:
        if (state / "cluster.json").exists():
            every_pid |= set(pids(state).values())
        down = printctl("cluster", "down", "--state-dir", state, "--json")
    assert down.returncode == 0, down.stdout + down.stderr
    assert set(json.loads(down.stdout)["stopped"].values()) == {"stopped"}
    assert all(gone(pid) for pid in every_pid)
    assert processes_in(state) == []
