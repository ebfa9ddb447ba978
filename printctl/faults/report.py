"""The failover test's figures and verdict: each round's result, the jobs' fate, the SLOs. Pure.

Percentiles are nearest-rank over the measured values: with fewer than 100 orphans the p99 is the
slowest one, and no interpolation hides the worst agent. An orphaned agent that never came back
counts as infinitely slow, so it fails the reconnect SLO by itself.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from printctl.faults.plan import INSTANCE_FAULTS, Fault, RoundPlan
from printctl.loadgen.plan import agent_id

#: faults that membership must show: the instance gone, or the view stale
DETECTION_REQUIRED = INSTANCE_FAULTS | {Fault.REDIS}
#: faults whose orphans the reconnect SLO judges. After the agents' own network was cut, an agent
#: comes back at its next attempt after the heal, and its backoff decides when that is (the
#: reference policy's ceiling reaches 30 s after six failures): reported, not judged, but every
#: agent must be back.
RECONNECT_JUDGED = frozenset(Fault) - {Fault.AGENT_CUT}


@dataclass(frozen=True, slots=True)
class Slo:
    reconnect_p99: float = 10.0  # seconds: the system we replace claimed failover under 10 s
    lost: int = 0
    duplicated: int = 0


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0-100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def spread(times: Iterable[float], never: int = 0) -> dict[str, Any]:
    """{n, p50_s, p99_s, max_s, never}: seconds, with agents that never came back as infinite
    (shown as None, and counted in `never`)."""
    values = [*times, *([math.inf] * never)]

    def s(v: float | None) -> float | None:
        return None if v is None or math.isinf(v) else round(v, 3)

    return {
        "n": len(values),
        "p50_s": s(percentile(values, 50)),
        "p99_s": s(percentile(values, 99)),
        "max_s": s(max(values, default=None)),
        "never": never,
    }


def _within(summary: dict[str, Any], limit: float) -> bool:
    """Every orphan came back and the p99 is within the limit (no orphan: nothing to fail)."""
    return summary["n"] == 0 or (summary["never"] == 0 and summary["p99_s"] <= limit)


@dataclass
class RoundResult:
    plan: RoundPlan
    started_at: float = 0.0  # epoch seconds of the injection
    was_leader: bool = False
    applied: bool = False
    healed: bool = False
    settled: bool = False
    interrupted: bool = False
    detect_s: float | None = None  # injection -> membership showed it
    heal_s: float | None = None  # injection -> the heal began
    settle_s: float | None = None  # injection -> settled (and stayed so)
    reconnect_times: tuple[float, ...] = ()
    never_back: tuple[int, ...] = ()  # agent indexes
    accepted_during: int = 0  # jobs accepted between injection and heal
    errors: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    not_settled: list[str] = field(default_factory=list)  # what was still wrong at the deadline

    def reconnect(self) -> dict[str, Any]:
        return spread(self.reconnect_times, len(self.never_back))

    def ok(self, slo: Slo) -> bool:
        return (
            self.applied
            and self.healed
            and self.settled
            and not self.problems
            and (self.detect_s is not None or self.plan.fault not in DETECTION_REQUIRED)
            and not self.never_back
            and (self.plan.fault not in RECONNECT_JUDGED or _within(self.reconnect(), slo.reconnect_p99))
        )

    def to_json(self, slo: Slo) -> dict[str, Any]:
        return {
            "round": self.plan.number,
            "fault": str(self.plan.fault),
            "target": self.plan.target,
            "leader": self.was_leader,
            "hold_s": self.plan.hold,
            "started_at": round(self.started_at, 3),
            "applied": self.applied,
            "healed": self.healed,
            "settled": self.settled,
            "interrupted": self.interrupted,
            "detect_s": self.detect_s,
            "heal_s": self.heal_s,
            "settle_s": self.settle_s,
            "orphans": len(self.reconnect_times) + len(self.never_back),
            "reconnect": self.reconnect(),
            "never_back": [agent_id(a) for a in self.never_back],
            "accepted_during_fault": self.accepted_during,
            "errors": self.errors,
            "problems": self.problems + [f"not settled: {p}" for p in self.not_settled],
            "ok": self.ok(slo),
        }


@dataclass(frozen=True, slots=True)
class JobsOutcome:
    """The exactly-once check after the drain, with the store's word on what did not print."""

    accepted: int
    printed: int
    lost: dict[str, str]  # job id -> its state in the store ("unknown" when it has none)
    duplicated: dict[str, int]  # job id -> times printed
    unexpected: tuple[str, ...]  # printed without a 202 the back office saw
    pending: dict[str, str]  # job id -> queued / dispatched / acked: not finished after the drain
    earlier_runs_printed: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "accepted": self.accepted,
            "printed": self.printed,
            "lost": self.lost,
            "duplicated": self.duplicated,
            "unexpected": list(self.unexpected),
            "still_pending": self.pending,
            "earlier_runs_printed": self.earlier_runs_printed,
        }


def by_fault(rounds: Sequence[RoundResult], slo: Slo) -> dict[str, dict[str, Any]]:
    """Per fault kind: rounds, how many passed, detection (median, max) and reconnects."""
    out: dict[str, dict[str, Any]] = {}
    for fault in dict.fromkeys(r.plan.fault for r in rounds):
        mine = [r for r in rounds if r.plan.fault is fault]
        detected = [r.detect_s for r in mine if r.detect_s is not None]
        out[str(fault)] = {
            "rounds": len(mine),
            "passed": sum(r.ok(slo) for r in mine),
            "detect_s": {"p50": percentile(detected, 50), "max": max(detected, default=None)},
            "reconnect": spread(
                [t for r in mine for t in r.reconnect_times], sum(len(r.never_back) for r in mine)
            ),
        }
    return out


def evaluate(
    rounds: Sequence[RoundResult], planned: int, jobs: JobsOutcome, slo: Slo
) -> list[dict[str, Any]]:
    """The checks that make the exit code: exactly once (lost and duplicated within the SLO,
    nothing unexpected, some job accepted at all), nothing pending after the drain, reconnect p99
    over every orphan of the rounds it judges, and every round injected, healed and settled."""
    judged = [r for r in rounds if r.plan.fault in RECONNECT_JUDGED]
    overall = spread([t for r in judged for t in r.reconnect_times], sum(len(r.never_back) for r in judged))
    failed = [r.plan.number for r in rounds if not r.ok(slo)]
    return [
        {
            "name": "lost",
            "limit": f"<= {slo.lost}",
            "value": f"{len(jobs.lost)} of {jobs.accepted} accepted"
            if jobs.accepted
            else "no job was accepted: the run proved nothing",
            "ok": len(jobs.lost) <= slo.lost and jobs.accepted > 0,
        },
        {
            "name": "duplicated",
            "limit": f"<= {slo.duplicated}, none printed without a 202",
            "value": f"{len(jobs.duplicated)} duplicated, {len(jobs.unexpected)} unexpected",
            "ok": len(jobs.duplicated) <= slo.duplicated and not jobs.unexpected,
        },
        {
            "name": "drained",
            "limit": "every accepted job finished after the drain",
            "value": f"{len(jobs.pending)} still pending",
            "ok": not jobs.pending,
        },
        {
            "name": "reconnect p99",
            "limit": f"<= {slo.reconnect_p99:g} s, every orphaned agent back (agent-cut: not judged)",
            "value": "no agent was orphaned"
            if overall["n"] == 0
            else f"{overall['p99_s']} s over {overall['n']} orphans, {overall['never']} never back",
            "ok": _within(overall, slo.reconnect_p99),
        },
        {
            "name": "rounds",
            "limit": f"{planned} rounds injected, detected, healed and settled",
            "value": f"{len(rounds) - len(failed)} of {len(rounds)} passed"
            + (f" (failed: {', '.join(map(str, failed))})" if failed else "")
            + (f"; {planned - len(rounds)} not run" if len(rounds) < planned else ""),
            "ok": not failed and len(rounds) == planned,
        },
    ]


def summary(rounds: Sequence[RoundResult], slo: Slo) -> dict[str, Any]:
    """Over every round: detection and reconnects, jobs accepted during faults, errors by kind."""
    detected = [r.detect_s for r in rounds if r.detect_s is not None]
    errors: dict[str, int] = {}
    for r in rounds:
        for kind, n in r.errors.items():
            errors[kind] = errors.get(kind, 0) + n
    return {
        "rounds": len(rounds),
        "passed": sum(r.ok(slo) for r in rounds),
        "detect_s": {"p50": percentile(detected, 50), "max": max(detected, default=None)},
        "reconnect": spread(
            [t for r in rounds for t in r.reconnect_times], sum(len(r.never_back) for r in rounds)
        ),
        "accepted_during_faults": sum(r.accepted_during for r in rounds),
        "errors_during_rounds": dict(sorted(errors.items(), key=lambda kv: (-kv[1], kv[0]))),
        "by_fault": by_fault(rounds, slo),
    }
