"""`/monitoring/metrics` of a real clustered printd (PostgreSQL, a private Redis): the job and
cluster series after a job went through, Redis going down, the exposition accepted by promtool,
and every metric the Grafana dashboard and the alert rules use actually exported."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from typing import Any

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ROOT, Printd
from tests.promtool import promtool
from tests.scripted import ScriptedAgent, submit, wait_state

pytestmark = pytest.mark.postgres
METRICS_TOKEN = "3f1c0a6e9b2d47e58c9a1f0d2b3e4c5a"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(p: Printd) -> tuple[str, Samples]:
    r = p.get("/monitoring/metrics", METRICS_TOKEN)
    assert r.status_code == 200, r.text
    samples: Samples = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return r.text, samples


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


async def scrape_until(p: Printd, ok: Callable[[Samples], bool], timeout: float = 15) -> Samples:
    deadline = time.monotonic() + timeout
    while True:
        _, samples = scrape(p)
        if ok(samples):
            return samples
        if time.monotonic() > deadline:
            raise AssertionError(f"metrics never got there: { {k[0]: v for k, v in samples.items()} }")
        await trio.sleep(0.1)


def clustered(cluster_factory: Any) -> Printd:
    (p,) = cluster_factory(1, env={"PRINTD_METRICS_TOKEN": METRICS_TOKEN})
    return p


async def test_a_printed_job_shows_in_the_job_and_cluster_series(cluster_factory: Any) -> None:
    p = clustered(cluster_factory)
    agent = await ScriptedAgent.connect(p)
    r = submit(p)
    assert r.status_code == 202
    job = await agent.dispatch()
    await agent.ack(job)
    await agent.result(job)
    done = await wait_state(p, job["job_id"], "printed")
    latency = done["finished_at"] - done["created_at"]

    s = await scrape_until(p, lambda s: value(s, "printd_cluster_is_leader") == 1.0)
    printed = {"kind": "print", "outcome": "printed"}
    assert value(s, "printd_job_latency_seconds_count", **printed) == 1.0
    assert value(s, "printd_job_latency_seconds_sum", **printed) == pytest.approx(latency, abs=1e-3)
    assert value(s, "printd_job_latency_seconds_bucket", **printed, le="+Inf") == 1.0
    assert value(s, "printd_job_latency_seconds_count", kind="test", outcome="expired") == 0.0
    assert value(s, "printd_jobs_finished_total", outcome="printed") == 1.0
    assert value(s, "printd_jobs_finished_total", outcome="failed") == 0.0
    assert value(s, "printd_jobs_dispatched_total") == 1.0
    assert value(s, "printd_jobs_redelivered_total") == 0.0
    assert value(s, "printd_jobs_stale_session_refused_total") == 0.0
    assert value(s, "printd_jobs_awaiting_ack") == 0.0
    assert value(s, "printd_jobs_in_flight") == 0.0
    # accept, dispatch, then the ack and the result: in one store call when the reporter finds
    # both queued, else two; every call in a transaction of its own or shared
    writes = value(s, "printd_store_grouped_writes_total") or 0
    assert writes in (3.0, 4.0)
    assert 1.0 <= (value(s, "printd_store_group_commits_total") or 0) <= writes
    for agent_state in ("online", "offline"):  # sampled at start: nothing queued
        assert value(s, "printd_jobs_queued", agent=agent_state) == 0.0
        assert value(s, "printd_jobs_queued_oldest_age_seconds", agent=agent_state) == 0.0
    assert value(s, "printd_redis_up") == 1.0
    assert value(s, "printd_redis_outages_total") == 0.0
    assert value(s, "printd_cluster_members") == 1.0
    assert 0.0 <= (value(s, "printd_cluster_view_age_seconds") or -1) < 10.0
    assert value(s, "printd_agents_replaced_elsewhere_total") == 0.0
    assert value(s, "printd_connections", role="agent") == 1.0
    assert (value(s, "printd_tcp_connections") or 0) >= 2.0  # the agent and this scrape
    assert value(s, "printd_printer_registry_write_errors_total") == 0.0
    await agent.close()


async def test_promtool_accepts_the_exposition(cluster_factory: Any) -> None:
    p = clustered(cluster_factory)
    agent = await ScriptedAgent.connect(p)
    job = (submit(p).json(), await agent.dispatch())[1]
    await agent.ack(job)
    await agent.result(job)
    await wait_state(p, job["job_id"], "printed")
    text, _ = scrape(p)
    out = promtool("check", "metrics", stdin=text.encode())
    assert out.returncode == 0, out.stdout.decode() + out.stderr.decode()
    await agent.close()


async def test_redis_going_down_shows_as_redis_down_and_one_outage(
    cluster_factory: Any, redis_server: Any
) -> None:
    p = clustered(cluster_factory)
    await scrape_until(p, lambda s: value(s, "printd_redis_up") == 1.0)
    redis_server.stop()
    s = await scrape_until(p, lambda s: value(s, "printd_redis_up") == 0.0)
    assert value(s, "printd_redis_outages_total") == 1.0
    assert value(s, "printd_cluster_members") == 1.0  # the last view, kept while Redis is down
    redis_server.start()
    s = await scrape_until(p, lambda s: value(s, "printd_redis_up") == 1.0)
    assert value(s, "printd_redis_outages_total") == 1.0


def used_metrics(text: str) -> set[str]:
    """Metric names in PromQL expressions (recording rules are `printd:...`, never matched)."""
    return set(re.findall(r"\bprintd_[a-z_]+", text))


def dashboard_expressions() -> str:
    dashboard = json.loads((ROOT / "config/grafana/printd.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
    exprs += [v["query"]["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    return "\n".join(exprs)


async def test_the_dashboard_and_the_alerts_use_only_exported_metrics(cluster_factory: Any) -> None:
    p = clustered(cluster_factory)
    await scrape_until(p, lambda s: value(s, "printd_cluster_members") is not None)
    text, _ = scrape(p)
    exported = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line.startswith("printd_")}
    dashboard = used_metrics(dashboard_expressions())
    assert len(dashboard) >= 15
    assert dashboard - exported == set()
    alerts = used_metrics((ROOT / "config/prometheus/alerts.yml").read_text())
    assert alerts - exported == set()


async def test_alone_without_redis_it_leads_itself_and_exports_no_redis_series(printd_factory: Any) -> None:
    """A single instance without REDIS_URL must not trip PrintdNoLeader or PrintdRedisDown."""
    p = printd_factory(env={"PRINTD_METRICS_TOKEN": METRICS_TOKEN})
    s = await scrape_until(p, lambda s: value(s, "printd_cluster_is_leader") == 1.0)
    assert value(s, "printd_cluster_members") == 1.0
    assert not [name for name, _ in s if name.startswith("printd_redis_")]
