"""Prometheus metrics of jobs and of the cluster, at no cost per message.

The counters already kept by the job service, the cluster node and the agent router are read
when Prometheus scrapes (`JobsCollector`, `ClusterCollector`); the job latency histogram is
observed once per finished job (`JobMetrics`); the cluster-wide queue is read from the store by
`QueueSampler` every `QUEUE_SAMPLE_INTERVAL` seconds on each instance, so a scrape never
touches the database. docs/operations.md §11 says what each metric means to an operator.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import structlog
import trio
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from printd.cluster.node import ClusterNode
from printd.cluster.routing import AgentRouter
from printd.jobs.service import JobService
from printd.model import JOB_KINDS, TERMINAL_STATES, Job
from printd.store import Store, StoreError
from printd.store.base import QueuedJobs
from printd.store.sql import SqlStore

log = structlog.get_logger("printd.metrics")

#: Seconds between two reads of the queue from the store (each instance reads it).
QUEUE_SAMPLE_INTERVAL = 15.0
#: From a fast print (0.1 s) to a job that expired unacknowledged (minutes) or undelivered (the
#: 24 h job_ttl).
LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 21600, 86400)
OUTCOMES = tuple(sorted(str(s) for s in TERMINAL_STATES))


class JobMetrics:
    """Per finished job: its latency from acceptance to its end, and its outcome. Fed by the job
    service when it announces `job.completed`, which happens once per job in the cluster (on the
    instance whose guarded transition finished it), so sums over instances count each job once."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.latency = Histogram(
            "printd_job_latency_seconds",
            "Seconds from acceptance (202) to the job's end, by kind and outcome (printed, failed,"
            " expired). Read the printed p95: how long a kitchen waits for its ticket",
            ["kind", "outcome"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.finished = Counter(
            "printd_jobs_finished",
            "Jobs that reached their end, by outcome. A rising failed or expired share means"
            " printers or agents are in trouble (runbook: docs/operations.md 4.2)",
            ["outcome"],
            registry=registry,
        )
        for outcome in OUTCOMES:  # every series from the start, so rate() sees the first job
            self.finished.labels(outcome)
            for kind in sorted(JOB_KINDS):
                self.latency.labels(kind, outcome)

    def observe(self, job: Job) -> None:
        outcome = str(job.state)
        self.finished.labels(outcome).inc()
        if job.finished_at is not None:
            self.latency.labels(job.kind, outcome).observe(max(0.0, job.finished_at - job.created_at))


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


def _gauge(name: str, doc: str, value: float | None = None) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


class JobsCollector(Collector):
    """This instance's job delivery, read from the job service's counters at scrape time."""

    def __init__(self, jobs: JobService) -> None:
        self._jobs = jobs

    def describe(self) -> Iterator[Metric]:
        return self._families(described=True)

    def collect(self) -> Iterator[Metric]:
        return self._families(described=False)

    def _families(self, *, described: bool) -> Iterator[Metric]:
        jobs = self._jobs
        yield _counter(
            "printd_jobs_dispatched",
            "Job sends to agents from this instance, first sends and re-sends",
            jobs.dispatched,
        )
        yield _counter(
            "printd_jobs_redelivered",
            "Sends of jobs that had been sent before (after a reconnect or an ack timeout). A high"
            " rate against dispatched means agents drop connections or do not acknowledge",
            jobs.redelivered,
        )
        yield _counter(
            "printd_jobs_stale_session_refused",
            "Agent connections closed here because the store says the agent connected again"
            " elsewhere (4009). Steady growth means agents flap between instances",
            jobs.stale_refused,
        )
        yield _gauge(
            "printd_jobs_awaiting_ack",
            "Jobs sent by this instance that the agent has not acknowledged yet (re-sent on a timer)",
            None if described else jobs.core.awaiting_ack(),
        )
        yield _gauge(
            "printd_jobs_in_flight",
            "Jobs sent by this instance and not finished yet (awaiting ack or a result)",
            None if described else jobs.core.inflight_count(),
        )


class StoreCollector(Collector):
    """Group commit at work (store/group.py): writes per transaction = writes / commits."""

    def __init__(self, store: SqlStore) -> None:
        self._store = store

    def describe(self) -> Iterator[Metric]:
        return self._families()

    def collect(self) -> Iterator[Metric]:
        return self._families()

    def _families(self) -> Iterator[Metric]:
        commits, writes = self._store.group_stats()
        yield _counter(
            "printd_store_group_commits",
            "Transactions that committed the hot-path writes (accept, dispatch, ack, result)",
            commits,
        )
        yield _counter(
            "printd_store_grouped_writes",
            "Hot-path writes those transactions carried; over group_commits, the writes one"
            " transaction carries on average (1 when idle, more under load)",
            writes,
        )


class ClusterCollector(Collector):
    """This instance's view of the cluster: the Redis link, members, leadership."""

    def __init__(
        self, node: ClusterNode, agents: AgentRouter, clock: Callable[[], float] = time.time
    ) -> None:
        self._node = node
        self._agents = agents
        self._clock = clock
        self._redis = node.backend.kind == "redis"

    def describe(self) -> Iterator[Metric]:
        return self._families(described=True)

    def collect(self) -> Iterator[Metric]:
        return self._families(described=False)

    def _families(self, *, described: bool) -> Iterator[Metric]:
        node = self._node
        if self._redis:
            state = node.backend.state()
            yield _gauge(
                "printd_redis_up",
                "1 while this instance reaches Redis. 0: routing between instances is down; each"
                " instance serves the agents it holds, jobs for agents elsewhere wait in the store",
                float(bool(state["available"])),
            )
            yield _counter(
                "printd_redis_outages",
                "Times this instance lost Redis. Steps mean Redis restarts, failovers or a flaky network",
                state.get("outages", 0),
            )
        view = node.view
        members = _gauge(
            "printd_cluster_members",
            "Live instances in the cluster as this instance last saw them (membership in Redis;"
            " itself alone without a cluster). Fewer than deployed: an instance is down or cut off",
        )
        age = _gauge(
            "printd_cluster_view_age_seconds",
            "Seconds since this instance last read the cluster view. Above a few heartbeats"
            " (2 s each) it cannot read Redis and serves a stale view",
        )
        if view is not None and not described:
            members.add_metric([], len(view.members))
            age.add_metric([], max(0.0, self._clock() - node.view_at))
        yield members
        yield age
        yield _gauge(
            "printd_cluster_is_leader",
            "1 on the instance that holds the leader lease and runs the cluster's chores (expiring"
            " old queued jobs, releasing agents of dead instances). Exactly one instance should be 1",
            None if described else float(node.is_leader),
        )
        yield _counter(
            "printd_agents_replaced_elsewhere",
            "Agents that connected here while another instance still held their older connection"
            " (that one was told to close). Bursts follow a drain, a rebalance or a network blip",
            self._agents.replaced_remote,
        )


class QueueSampler(Collector):
    """Cluster-wide queued jobs, read from the store every `interval` on each instance (every
    instance exports the same figures: aggregate with max, never sum). A failed read keeps the
    last sample; the oldest job's age is computed at scrape time, so it keeps growing."""

    def __init__(
        self, store: Store, interval: float = QUEUE_SAMPLE_INTERVAL, clock: Callable[[], float] = time.time
    ) -> None:
        self._store = store
        self.interval = interval
        self._clock = clock
        self.sample: dict[str, QueuedJobs] | None = None

    async def sample_once(self) -> None:
        try:
            self.sample = await self._store.queued_jobs()
        except StoreError as exc:
            log.debug("queue sample postponed: store unavailable", error=str(exc))

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            await self.sample_once()
            await trio.sleep(self.interval)

    def describe(self) -> Iterator[Metric]:
        return self._families(None)

    def collect(self) -> Iterator[Metric]:
        return self._families(self.sample)

    def _families(self, sample: dict[str, QueuedJobs] | None) -> Iterator[Metric]:
        count = GaugeMetricFamily(
            "printd_jobs_queued",
            "Jobs of the whole cluster waiting to be sent (sampled every 15 s, same on every"
            " instance). agent=online: their agent is connected, they should leave within seconds;"
            " agent=offline: they wait for their agent to connect",
            labels=["agent"],
        )
        age = GaugeMetricFamily(
            "printd_jobs_queued_oldest_age_seconds",
            "Age of the oldest queued job of the whole cluster (0 when none). agent=online growing"
            " past a minute means delivery is stuck (runbook: docs/operations.md 4.2)",
            labels=["agent"],
        )
        if sample is not None:
            now = self._clock()
            for agent, queued in sample.items():
                count.add_metric([agent], queued.count)
                oldest = queued.oldest_created_at
                age.add_metric([agent], 0.0 if oldest is None else max(0.0, now - oldest))
        yield count
        yield age
