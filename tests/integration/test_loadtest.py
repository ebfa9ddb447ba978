"""`printctl loadtest` against a real printd: the command a user runs before going live.

The generator runs as it would for a user (the CLI, two worker processes), printd is a real
process on its own store, and the report is read from the JSON file the run writes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from printctl.checker import compare, read_job_ids, read_print_log
from tests.conftest import SECRET, Printd

PERCENTILES = ("p50_ms", "p90_ms", "p99_ms", "p999_ms", "max_ms")


def loadtest(p: Printd, tmp: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    report = tmp / "report.json"
    cmd = [sys.executable, "-m", "printctl.main", "loadtest", "--url", p.url, "--workers", "2"]
    cmd += ["--json", str(report), *args]
    env = {k: v for k, v in os.environ.items() if k not in ("PRINTD_URL", "PRINTD_DATA_DIR", "PRINTD_CONFIG")}
    env["JWT_SECRET"] = SECRET
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert report.exists(), f"no report (exit {done.returncode}):\n{done.stdout}\n{done.stderr}\n{p.log()}"
    return done, json.loads(report.read_text())


@pytest.mark.slow
def test_a_small_load_prints_every_accepted_job_exactly_once(printd_factory: Any, tmp_path: Path) -> None:
    p = printd_factory()
    out = tmp_path / "run"
    done, report = loadtest(
        p,
        tmp_path,
        *("--agents", "50", "--dashboards", "5", "--companies", "6", "--duration", "10", "--ramp", "2"),
        *("--job-rate", "20", "--status-rate", "100", "--max-errors", "0", "--output", str(out)),
    )
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}\n{p.log()}"
    assert "PASS" in done.stdout

    once = report["exactly_once"]
    assert once["ok"] is True
    assert once["accepted"] == once["printed"] == report["jobs"]["accepted"] >= 150
    assert once["lost"] == [] and once["duplicated"] == {} and once["unexpected"] == []
    jobs = report["jobs"]
    assert jobs["completed"] == jobs["accepted"]  # every round trip seen to the end
    assert 0 < jobs["polled"] < jobs["completed"]  # company 5 has no dashboard: timed by GET

    for name in ("connect", "job_round_trip", "job_accept", "status"):
        summary = report["latency"][name]
        assert summary["n"] > 0, name
        assert all(summary[k] >= 0 for k in PERCENTILES), (name, summary)
        assert summary["p50_ms"] <= summary["p99_ms"] <= summary["max_ms"], (name, summary)

    instance = p.get("/monitoring/health").json()["instance"]
    assert report["connections"]["open_by_instance"] == {instance: 55}
    assert report["errors_total"] == 0, report["errors"]
    assert report["throughput"]["statuses_sent_per_s"] > 50
    assert report["bytes"]["dashboards"]["wire_rx"] > 0
    assert [c["ok"] for c in report["checks"]] == [True, True]
    assert report["exit_code"] == 0

    # the run's files are what `printctl verify-prints` reads
    accepted = [j for f in sorted(out.glob("accepted-w*.jsonl")) for j in read_job_ids(f)]
    printed = read_print_log(sorted(out.glob("prints-w*.jsonl")))
    assert compare(accepted, printed.job_ids).ok
    assert len(accepted) == once["accepted"]


def test_an_impossible_latency_threshold_fails_the_run_with_exit_1(
    printd_factory: Any, tmp_path: Path
) -> None:
    p = printd_factory()
    done, report = loadtest(
        p,
        tmp_path,
        *("--agents", "10", "--dashboards", "2", "--companies", "2", "--duration", "2", "--ramp", "0.5"),
        *("--job-rate", "10", "--max-p99-job-ms", "0.001", "--output", str(tmp_path / "run")),
    )
    assert done.returncode == 1, f"{done.stdout}\n{done.stderr}"
    checks = {c["name"]: c for c in report["checks"]}
    assert checks["exactly once"]["ok"] is True  # the jobs were fine ...
    assert checks["p99 job round trip"]["ok"] is False  # ... the latency was not
    assert report["ok"] is False and report["exit_code"] == 1
    assert "FAIL" in done.stdout
    assert report["output_dir"] == str(tmp_path / "run")
