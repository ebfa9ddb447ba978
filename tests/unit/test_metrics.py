"""The job and queue metrics as Prometheus reads them, on a real SQLite store."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from printd.metrics import JobMetrics, QueueSampler
from printd.model import Job, JobState
from printd.store import Store, open_store
from printd.store.base import AgentClaim


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = open_store(f"sqlite://{tmp_path}/printd.db")
    await s.open()
    await s.migrate()
    try:
        yield s
    finally:
        await s.close()


async def queue(store: Store, agent_id: str, now: float) -> Job:
    printer_id = f"p-{agent_id}"
    await store.upsert_printer(
        company="acme",
        branch="b1",
        agent_id=agent_id,
        printer_id=printer_id,
        status="ok",
        details={},
        now=now,
    )
    job, _ = await store.create_job(
        company="acme",
        printer_id=printer_id,
        kind="print",
        payload={"text": "1x soup"},
        idempotency_key=None,
        now=now,
    )
    return job


def finished(kind: str, state: JobState, created_at: float, finished_at: float) -> Job:
    return Job(
        job_id="j",
        correlation_id="c",
        company="acme",
        branch="b1",
        printer_id="p1",
        agent_id="a1",
        kind=kind,
        payload={},
        state=state,
        attempts=1,
        seq=1,
        created_at=created_at,
        updated_at=finished_at,
        finished_at=finished_at,
    )


def test_a_finished_job_lands_in_its_latency_bucket_and_outcome() -> None:
    registry = CollectorRegistry()
    metrics = JobMetrics(registry)
    get = registry.get_sample_value
    # every outcome exists from the start at 0, so rate() and alerts see the first job
    assert get("printd_jobs_finished_total", {"outcome": "expired"}) == 0.0
    assert get("printd_job_latency_seconds_count", {"kind": "test", "outcome": "failed"}) == 0.0

    metrics.observe(finished("print", JobState.PRINTED, 1000.0, 1000.3))
    metrics.observe(finished("print", JobState.EXPIRED, 1000.0, 1000.0 + 86_400))

    assert get("printd_jobs_finished_total", {"outcome": "printed"}) == 1.0
    assert get("printd_jobs_finished_total", {"outcome": "expired"}) == 1.0
    printed = {"kind": "print", "outcome": "printed"}
    assert get("printd_job_latency_seconds_bucket", {**printed, "le": "0.25"}) == 0.0
    assert get("printd_job_latency_seconds_bucket", {**printed, "le": "0.5"}) == 1.0
    assert get("printd_job_latency_seconds_sum", printed) == pytest.approx(0.3)
    expired = {"kind": "print", "outcome": "expired"}
    assert get("printd_job_latency_seconds_bucket", {**expired, "le": "21600.0"}) == 0.0
    assert get("printd_job_latency_seconds_bucket", {**expired, "le": "86400.0"}) == 1.0


async def test_the_queue_is_read_from_the_store_by_the_sampler_never_by_a_scrape(store: Store) -> None:
    now = [10_000.0]
    sampler = QueueSampler(store, clock=lambda: now[0])
    registry = CollectorRegistry()
    registry.register(sampler)
    get = registry.get_sample_value
    assert get("printd_jobs_queued", {"agent": "online"}) is None  # nothing before the first read

    await sampler.sample_once()
    assert get("printd_jobs_queued", {"agent": "online"}) == 0.0
    assert get("printd_jobs_queued_oldest_age_seconds", {"agent": "offline"}) == 0.0

    await queue(store, "a1", now=9_000.0)
    await queue(store, "a2", now=9_900.0)
    await store.claim_agents([AgentClaim("acme", "a2", "i1", "inc")], now=9_950.0)
    assert get("printd_jobs_queued", {"agent": "offline"}) == 0.0  # a scrape reads the last sample

    await sampler.sample_once()
    assert get("printd_jobs_queued", {"agent": "offline"}) == 1.0
    assert get("printd_jobs_queued", {"agent": "online"}) == 1.0
    assert get("printd_jobs_queued_oldest_age_seconds", {"agent": "offline"}) == 1000.0
    assert get("printd_jobs_queued_oldest_age_seconds", {"agent": "online"}) == 100.0
    now[0] += 60  # the age is taken at scrape time: it grows between samples
    assert get("printd_jobs_queued_oldest_age_seconds", {"agent": "online"}) == 160.0


async def test_the_sampler_keeps_its_last_sample_while_the_store_is_down(store: Store) -> None:
    now = [10_000.0]
    sampler = QueueSampler(store, clock=lambda: now[0])
    registry = CollectorRegistry()
    registry.register(sampler)
    await queue(store, "a1", now=9_000.0)
    await sampler.sample_once()
    await store.close()

    await sampler.sample_once()  # StoreError: logged at debug, not raised

    now[0] += 15
    assert registry.get_sample_value("printd_jobs_queued", {"agent": "offline"}) == 1.0
    assert registry.get_sample_value("printd_jobs_queued_oldest_age_seconds", {"agent": "offline"}) == 1015.0
