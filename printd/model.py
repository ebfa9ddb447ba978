"""The domain model: printers, print jobs and the job lifecycle, free of I/O.

It is the bottom floor of printd's layers (docs/architecture.md): the store persists it and the
job pipeline drives it, and it imports neither.

A job moves ``queued -> dispatched -> acked -> printed | failed | expired``. `TRANSITIONS` is
the whole lifecycle in one table: for each event, the states a job may be in and the state it
moves to. Every store backend applies exactly these as guarded compare-and-set updates, so a
late or duplicated message from an agent can never move a finished job again: that is what
keeps a ticket from printing twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class JobState(StrEnum):
    QUEUED = "queued"
    DISPATCHED = "dispatched"
    ACKED = "acked"
    PRINTED = "printed"
    FAILED = "failed"
    EXPIRED = "expired"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATES


TERMINAL_STATES = frozenset({JobState.PRINTED, JobState.FAILED, JobState.EXPIRED})
LIVE_STATES = frozenset(s for s in JobState if s not in TERMINAL_STATES)
JOB_KINDS = frozenset({"print", "test"})


class JobEvent(StrEnum):
    DISPATCH = "dispatch"  # first send to the agent
    REDISPATCH = "redispatch"  # a re-send: counts the attempt, keeps the state
    ACK = "ack"  # the agent has the job
    PRINTED = "printed"  # the agent's result: success
    FAILED = "failed"  # the agent's result: failure
    EXPIRE = "expire"  # given up (unacknowledged, or never delivered within the TTL)
    REQUEUE = "requeue"  # dispatched by an instance that is gone: waits for the agent again


@dataclass(frozen=True, slots=True)
class Transition:
    from_states: frozenset[JobState]
    to: JobState | None  # None: the state does not change


_Q, _D, _A = JobState.QUEUED, JobState.DISPATCHED, JobState.ACKED

#: The lifecycle. Anything not listed here is refused by the store.
TRANSITIONS: dict[JobEvent, Transition] = {
    JobEvent.DISPATCH: Transition(frozenset({_Q}), _D),
    JobEvent.REDISPATCH: Transition(frozenset({_D, _A}), None),
    JobEvent.ACK: Transition(frozenset({_Q, _D}), _A),
    JobEvent.PRINTED: Transition(LIVE_STATES, JobState.PRINTED),
    JobEvent.FAILED: Transition(LIVE_STATES, JobState.FAILED),
    JobEvent.EXPIRE: Transition(LIVE_STATES, JobState.EXPIRED),
    JobEvent.REQUEUE: Transition(frozenset({_D}), _Q),
}


@dataclass(frozen=True, slots=True)
class Printer:
    company: str
    printer_id: str
    branch: str
    agent_id: str
    status: str
    details: dict[str, Any]
    created_at: float
    updated_at: float

    def to_json(self) -> dict[str, Any]:
        return {
            "printer_id": self.printer_id,
            "company": self.company,
            "branch": self.branch,
            "agent_id": self.agent_id,
            "status": self.status,
            "details": self.details,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }


@dataclass(frozen=True, slots=True)
class Job:
    job_id: str
    correlation_id: str
    company: str
    branch: str
    printer_id: str
    agent_id: str
    kind: str
    payload: dict[str, Any]
    state: JobState
    attempts: int
    seq: int
    created_at: float
    updated_at: float
    idempotency_key: str | None = None
    origin: str | None = None  # the instance that accepted it (where a test's caller waits)
    dispatched_at: float | None = None
    acked_at: float | None = None
    finished_at: float | None = None
    result: dict[str, Any] | None = None
    error: str | None = None
    history: tuple[tuple[str, float], ...] = field(default=())

    def to_json(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "correlation_id": self.correlation_id,
            "company": self.company,
            "branch": self.branch,
            "printer_id": self.printer_id,
            "kind": self.kind,
            "state": str(self.state),
            "attempts": self.attempts,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "dispatched_at": self.dispatched_at,
            "acked_at": self.acked_at,
            "finished_at": self.finished_at,
            "result": self.result,
            "error": self.error,
            "history": [{"state": s, "at": t} for s, t in self.history],
        }
