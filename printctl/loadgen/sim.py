"""The simulated parties' rules, without sockets: what an agent answers to a dispatch, what a
point of sale does with printd's answer. `fleet.py` executes them on the wire.

The agent follows docs/protocol.md §6.4 with the reference agent's own journal and decision
(`printctl.agent.Journal`, `decide`): a new job is acked, printed (one line in the print log)
and answered; a job already done is acked and answered again with the stored result, never
printed twice. Printing is instantaneous here, so a job is never "in flight" when it arrives
again. The journal stays in memory: a simulated agent lives as long as its worker process, and
writing it to disk would measure the generator's disk, not printd.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import orjson

from printctl.agent import (
    UNKNOWN_MESSAGE,
    Action,
    Journal,
    ack_data,
    done_record,
    make_result,
    parse_dispatch,
    print_record,
    printing_record,
    replay_result,
)
from printctl.loadgen.http import HttpAnswer

#: answers a POS retries with the same Idempotency-Key (the others are final)
RETRYABLE = frozenset({408, 425, 429, 500, 502, 503, 504})
RETRY_DELAY = 0.5
RETRY_MAX_DELAY = 5.0


@dataclass(frozen=True, slots=True)
class Reply:
    """What an agent does with one job.dispatch."""

    action: Action | None  # None: a malformed dispatch, ignored
    frames: tuple[bytes, ...]  # job.ack, then job.result (each with an id printd acks)
    printed: dict[str, Any] | None  # the print-log record when this dispatch printed the job
    ours: bool  # the job was submitted by this run (its payload names the run)


class SimAgent:
    """One simulated agent: who it is, its printers, its journal; the connection is the fleet's."""

    __slots__ = ("index", "company", "agent_id", "printers", "journal", "run_id", "last_id", "reg_ids")

    def __init__(
        self, index: int, company: int, agent_id: str, printers: tuple[str, ...], run_id: str
    ) -> None:
        self.index = index
        self.company = company
        self.agent_id = agent_id
        self.printers = printers
        self.journal = Journal()
        self.run_id = run_id
        self.last_id = 0  # envelope ids on the current connection
        self.reg_ids: set[int] = set()  # first statuses not acked yet (the printer is registered on the ack)

    def next_id(self) -> int:
        self.last_id += 1
        return self.last_id

    def dispatch(self, data: Any, now: float) -> Reply:
        job = parse_dispatch(data)
        if isinstance(job, str):
            return Reply(None, (), None, False)
        lt = job.payload.get("lt")
        ours = isinstance(lt, dict) and lt.get("run") == self.run_id
        action = self.journal.decide(job.job_id)  # printing is instantaneous: never in flight
        printed = None
        if action is Action.PRINT and job.printer_id not in self.printers:
            result = make_result(job, False, f"printer {job.printer_id} is not attached to this agent")
            self.journal.apply(done_record(job.job_id, result, now))
        elif action is Action.PRINT:
            self.journal.apply(printing_record(job, now))
            printed = print_record(job, self.agent_id, now)
            result = make_result(job, True, f"printed on {job.printer_id}", printed_at=now, lt=lt)
            self.journal.apply(done_record(job.job_id, result, now))
        elif action is Action.REPLAY:
            entry = self.journal.get(job.job_id)
            assert entry is not None
            result = replay_result(job, entry)
        elif action is Action.UNKNOWN:  # only after a crash mid-print, which a simulation has not
            result = make_result(job, False, UNKNOWN_MESSAGE)
            self.journal.apply(done_record(job.job_id, result, now))
        else:
            return Reply(action, (self._frame("job.ack", ack_data(job)),), None, ours)
        frames = (self._frame("job.ack", ack_data(job)), self._frame("job.result", result))
        return Reply(action, frames, printed, ours)

    def _frame(self, event: str, data: dict[str, Any]) -> bytes:
        return orjson.dumps({"event": event, "id": self.next_id(), "data": data})


class Verdict(StrEnum):
    ACCEPTED = "accepted"
    RETRY = "retry"  # the same request again, same Idempotency-Key, after a delay
    REJECTED = "rejected"  # a final refusal: the job will not exist


def submit_verdict(answer: HttpAnswer | None, error: str) -> tuple[Verdict, float, str]:
    """What a POS does with printd's answer to POST /api/v1/jobs: (verdict, delay before the
    retry, error kind or ""). A lost answer or a 503 may hide a job that was stored, so it is
    retried with the same key (printd answers the replay with the same job), as
    docs/protocol.md §11.3 asks; Retry-After is honoured up to RETRY_MAX_DELAY."""
    if answer is None:
        return Verdict.RETRY, RETRY_DELAY, f"submit: {error}"
    if answer.status == 202:
        return Verdict.ACCEPTED, 0.0, ""
    kind = f"submit: http {answer.status}"
    if answer.status in RETRYABLE:
        return Verdict.RETRY, min(RETRY_MAX_DELAY, answer.retry_after() or RETRY_DELAY), kind
    return Verdict.REJECTED, 0.0, kind


def status_templates(printer: str, fields: bytes) -> tuple[bytes, bytes, bytes]:
    """(head, head with an id placeholder, tail) of a printer's status message: the message is
    head + b"%.6f" % ts + tail, the agent's send time in `ts` (what status latency is measured
    from), then the padding `fields`."""
    data = b'"data":{"printer_id":"' + printer.encode() + b'","status":"online","ts":'
    return b'{"event":"printer.status",' + data, b'{"event":"printer.status","id":%d,' + data, fields + b"}}"
