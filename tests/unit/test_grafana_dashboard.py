"""config/grafana/printd.json: valid JSON Grafana can import, every expression valid PromQL
(promtool parses them as rules), and the panels an operator needs are there.
tests/integration/test_metrics.py checks its metric names against a real printd's exposition."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from tests.conftest import ROOT
from tests.promtool import promtool

DASHBOARD = ROOT / "config/grafana/printd.json"


def load() -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return dashboard


def expressions(dashboard: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]


def test_the_dashboard_is_well_formed() -> None:
    dashboard = load()
    assert dashboard["uid"] == "printd" and dashboard["title"] == "printd"
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    for p in panels:
        pos = p["gridPos"]
        assert pos["x"] + pos["w"] <= 24, p["title"]
        if p["type"] == "row":
            continue
        assert p["targets"] and p["description"], p["title"]
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert [t["refId"] for t in p["targets"]] == [chr(65 + i) for i in range(len(p["targets"]))]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["instance"]["query"]["query"] == "label_values(printd_connections, instance)"


def test_every_expression_is_valid_promql(tmp_path: Path) -> None:
    rules = [
        {
            "record": f"dashboard:expr_{i}",
            "expr": e.replace("$__rate_interval", "5m").replace("$instance", ".*"),
        }
        for i, e in enumerate(expressions(load()))
    ]
    path = tmp_path / "dashboard-rules.json"  # JSON is YAML: promtool parses each expression
    path.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}))
    out = promtool("check", "rules", str(path))
    assert out.returncode == 0, out.stdout.decode() + out.stderr.decode()


def test_the_operator_finds_connections_traffic_jobs_circuits_and_the_cluster() -> None:
    used = set(re.findall(r"\bprintd_[a-z_]+", "\n".join(expressions(load()))))
    assert {
        "printd_connections",
        "printd_ws_messages_total",
        "printd_ws_bytes_total",
        "printd_status_batches_total",
        "printd_jobs_finished_total",
        "printd_job_latency_seconds_bucket",
        "printd_jobs_awaiting_ack",
        "printd_jobs_in_flight",
        "printd_jobs_queued_oldest_age_seconds",
        "printd_circuit_state",
        "printd_redis_up",
        "printd_cluster_members",
        "printd_cluster_is_leader",
    } <= used
    latency = [e for e in expressions(load()) if "printd_job_latency_seconds_bucket" in e]
    assert any(e.startswith("histogram_quantile(0.95,") for e in latency)
