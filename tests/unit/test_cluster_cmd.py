"""printctl cluster / health --cluster without processes: refusals before anything starts, and the
cluster table built from a /monitoring/cluster answer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from printctl.cluster import all_healthy, cluster_table, local_spec, member_rows
from printctl.clusterspec import ClusterFileError
from printctl.main import app

ROOT = Path(__file__).resolve().parents[2]


def run(*args: str, env: dict[str, str | None] | None = None) -> Result:
    clean: dict[str, str | None] = {
        "DATABASE_URL": None,
        "REDIS_URL": None,
        "PRINTD_URL": None,
        "COLUMNS": "200",
    }
    return CliRunner(env={**clean, **(env or {})}).invoke(app, list(args))


def test_several_instances_need_a_shared_database(tmp_path: Path) -> None:
    result = run("cluster", "up", "--instances", "2", "--port", "0", "--state-dir", str(tmp_path), "--json")
    assert result.exit_code == 2
    error = json.loads(result.stdout)
    assert "2 instances need one shared PostgreSQL database: set DATABASE_URL=postgresql://" in error["error"]
    assert not (tmp_path / "cluster.json").exists()


def test_a_local_cluster_stays_on_unprivileged_loopback_ports() -> None:
    with pytest.raises(ClusterFileError, match="binds ports from 1024 up"):
        local_spec(None, 1, 80)
    with pytest.raises(ClusterFileError, match="describes 3; drop one"):
        local_spec(ROOT / "config/cluster.toml", 2, None)
    spec = local_spec(ROOT / "config/cluster.toml", None, 0)
    assert spec.nginx.port >= 1024 and spec.nginx.host == "127.0.0.1"
    assert [i.port for i in spec.instances] == [3011, 3012, 3013]


def test_ls_and_down_without_a_cluster(tmp_path: Path) -> None:
    ls = run("cluster", "ls", "--state-dir", str(tmp_path), "--json")
    assert ls.exit_code == 1 and "no local cluster" in json.loads(ls.stdout)["error"]
    down = run("cluster", "down", "--state-dir", str(tmp_path), "--json")
    assert down.exit_code == 0 and json.loads(down.stdout)["stopped"] == {}


def test_health_cluster_refuses_watch() -> None:
    result = run("health", "--cluster", "--watch", "2", "--json")
    assert result.exit_code == 2 and "--watch does not combine" in json.loads(result.stdout)["error"]


def test_cluster_members_become_rows() -> None:
    body = {
        "leader": "printd-2",
        "members": [
            {"instance_id": "printd-1", "address": "10.0.0.1:3001", "status": "ok", "connections": 12},
            {
                "instance_id": "printd-2",
                "address": "10.0.0.2:3001",
                "status": "ok",
                "connections": {"agent": 3},
            },
            {"instance_id": "printd-3", "address": "10.0.0.3:3001", "status": "draining", "connections": 0},
        ],
    }
    rows = member_rows(body)
    assert [(r["instance"], r["status"], r["connections"], r["leader"]) for r in rows] == [
        ("printd-1", "ok", 12, False),
        ("printd-2", "ok", 3, True),
        ("printd-3", "draining", 0, False),
    ]
    assert not all_healthy(rows)
    assert all_healthy(rows[:2])
    assert not all_healthy([])  # no member at all is not a healthy cluster
    assert cluster_table(rows, "front").title is not None and "2/3 healthy" in str(
        cluster_table(rows, "x").title
    )
    with pytest.raises(ValueError, match="no `members` list"):
        member_rows({"status": "ok"})
