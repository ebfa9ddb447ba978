"""What a load test simulates, who is who, and how the work splits over worker processes.

Pure functions of the plan: the coordinator, every worker and the tests compute the same names,
schedules and shares from the same numbers, so no worker needs to ask another anything.

Names are predictable, so a second run reuses the first run's printers instead of piling up new
ones: company c is `loadtest-c`, agent a (company a % C) is `lt-agent-a` in branch `b<(a // 10) % 4>`
with printers `lt-a-p0..`, dashboard d watches company d % C, and the back office of company c
submits as `lt-pos-c`.

The split over W workers:
- agents and dashboards: contiguous index ranges, as even as can be (`split`); an agent's jobs
  arrive on its own connection, so its journal and print log live in the worker that holds it;
- statuses: each worker sends for its own agents' printers; every printer reports at
  status_rate / printers per second, at a phase of its own;
- jobs: job n is due at t1 + n / job_rate and goes to printer n mod printers (every printer in
  turn, every company in turn); worker w submits the jobs n with n mod W = w, so the merged stream
  is evenly spaced and each worker's HTTP connections carry 1/W of it, to printers of any worker.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, fields
from typing import Any

BRANCHES_PER_COMPANY = 4
MAX_CONNECTIONS = 200_000
MAX_DURATION = 3600.0
MAX_RAMP = 600.0
MAX_DRAIN = 600.0
MAX_JOB_RATE = 10_000.0
MAX_STATUS_RATE = 500_000.0
MAX_PRINTERS_PER_AGENT = 64
MAX_WORKERS = 64
STATUS_BYTES = (120, 60_000)


@dataclass(frozen=True, slots=True)
class LoadPlan:
    agents: int = 100
    printers_per_agent: int = 2
    dashboards: int = 10
    companies: int = 10
    status_rate: float = 200.0  # printer.status messages per second, whole fleet
    job_rate: float = 10.0  # jobs submitted per second, whole back office
    duration: float = 30.0  # the steady window: statuses and jobs
    ramp: float = 5.0  # connections are opened evenly over this many seconds
    drain: float = 30.0  # after the window, at most this long for accepted jobs to print
    compression: bool = True
    workers: int = 1
    status_bytes: int = 400

    def problems(self) -> list[str]:
        """What is wrong with these numbers, as the option names a user typed (empty: usable)."""
        out = []
        if self.agents < 1:
            out.append("--agents must be at least 1")
        if not 1 <= self.printers_per_agent <= MAX_PRINTERS_PER_AGENT:
            out.append(f"--printers-per-agent must be 1-{MAX_PRINTERS_PER_AGENT}")
        if self.dashboards < 0:
            out.append("--dashboards must be 0 or more")
        if not 1 <= self.companies <= max(1, self.agents):
            out.append("--companies must be 1 to --agents (every company needs an agent)")
        if self.agents + self.dashboards > MAX_CONNECTIONS:
            out.append(f"--agents + --dashboards must stay within {MAX_CONNECTIONS} connections")
        if not 0 <= self.status_rate <= MAX_STATUS_RATE:
            out.append(f"--status-rate must be 0-{MAX_STATUS_RATE:.0f} per second")
        if not 0 <= self.job_rate <= MAX_JOB_RATE:
            out.append(f"--job-rate must be 0-{MAX_JOB_RATE:.0f} per second")
        if not 0 < self.duration <= MAX_DURATION:
            out.append(f"--duration must be more than 0 and at most {MAX_DURATION:.0f} s")
        if not 0 <= self.ramp <= MAX_RAMP:
            out.append(f"--ramp must be 0-{MAX_RAMP:.0f} s")
        if not 0 <= self.drain <= MAX_DRAIN:
            out.append(f"--drain must be 0-{MAX_DRAIN:.0f} s")
        if not 1 <= self.workers <= MAX_WORKERS:
            out.append(f"--workers must be 1-{MAX_WORKERS}")
        if not STATUS_BYTES[0] <= self.status_bytes <= STATUS_BYTES[1]:
            out.append(f"--status-bytes must be {STATUS_BYTES[0]}-{STATUS_BYTES[1]}")
        return out

    @property
    def printers(self) -> int:
        return self.agents * self.printers_per_agent

    @property
    def status_interval(self) -> float:
        """Seconds between two statuses of one printer (inf: no statuses)."""
        return self.printers / self.status_rate if self.status_rate > 0 else float("inf")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> LoadPlan:
        return cls(**{f.name: obj[f.name] for f in fields(cls) if f.name in obj})


# ---------------------------------------------------------------- who is who


def company_id(c: int) -> str:
    return f"loadtest-{c}"


def agent_company(plan: LoadPlan, a: int) -> int:
    return a % plan.companies


def dashboard_company(plan: LoadPlan, d: int) -> int:
    return d % plan.companies


def branch_id(a: int) -> str:
    """Agent a's branch, from a alone: a run of another shape (say --companies 30 after 10) finds
    each printer in the branch that registered it, where a branch that followed C would see
    another branch's printer and be refused (`forbidden`). Agents of a company still spread over
    the branches (with C = 10, branch k holds every 4th agent of each company)."""
    return f"b{(a // 10) % BRANCHES_PER_COMPANY}"


def agent_id(a: int) -> str:
    return f"lt-agent-{a}"


def printer_id(a: int, k: int) -> str:
    return f"lt-{a}-p{k}"


def dashboard_id(d: int) -> str:
    return f"lt-dash-{d}"


def service_id(c: int) -> str:
    return f"lt-pos-{c}"


def watched(plan: LoadPlan, c: int) -> bool:
    """Company c has a dashboard that times its jobs: dashboard d = c (the first one of that
    company). Jobs of other companies are timed by polling GET /api/v1/jobs/{id}."""
    return c < plan.dashboards


def job_printer(plan: LoadPlan, n: int) -> tuple[int, int]:
    """(agent, printer number) that job n goes to."""
    g = n % plan.printers
    return g // plan.printers_per_agent, g % plan.printers_per_agent


def job_due(plan: LoadPlan, t1: float, n: int) -> float:
    return t1 + n / plan.job_rate


def open_at(plan: LoadPlan, t0: float, kind: str, index: int) -> float:
    """When a connection is opened: dashboards first, then agents, evenly over the ramp."""
    position = index if kind == "dashboard" else plan.dashboards + index
    return t0 + plan.ramp * position / (plan.dashboards + plan.agents)


def status_phase(plan: LoadPlan, run_id: str, a: int, k: int) -> float:
    """Seconds into each status interval at which printer (a, k) reports: spread at random, the
    same in every worker."""
    return random.Random(f"{run_id}/{a}/{k}").random() * plan.status_interval


# ---------------------------------------------------------------- shares


def split(total: int, parts: int, i: int) -> tuple[int, int]:
    """(offset, count) of share i when `total` items are split over `parts` as evenly as can be."""
    base, extra = divmod(total, parts)
    return i * base + min(i, extra), base + (1 if i < extra else 0)


@dataclass(frozen=True, slots=True)
class Share:
    worker: int
    agents: range
    dashboards: range

    @property
    def connections(self) -> int:
        return len(self.agents) + len(self.dashboards)


def share(plan: LoadPlan, worker: int) -> Share:
    a0, na = split(plan.agents, plan.workers, worker)
    d0, nd = split(plan.dashboards, plan.workers, worker)
    return Share(worker, range(a0, a0 + na), range(d0, d0 + nd))


def dashboards_by_company(plan: LoadPlan) -> dict[int, int]:
    """How many dashboards watch each company (0 for the unwatched)."""
    out = dict.fromkeys(range(plan.companies), 0)
    for d in range(plan.dashboards):
        out[dashboard_company(plan, d)] += 1
    return out
