"""The printer registry: the first status of a printer registers it under the agent's company
and branch; later changes of its status word are written through, repeats are not.

A printer belongs to the branch that registered it, and jobs go to its agent, so who may
report a printer is decided here (`decide_claim`, a pure function): its owner; a replacement
agent of the same branch while the owner is offline (a new PC in the same restaurant); nobody
else. Any other move is an operator's (`move`, audited by the API).

Status updates arrive thousands of times a second; the store hears only of new printers and
of real changes, so the database never sits on the fan-out's hot path.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum

import structlog

from printd.agents import AgentLink
from printd.model import Printer
from printd.protocol import ERR_FORBIDDEN, FrameError, StatusUpdate
from printd.store import Store, StoreError

log = structlog.get_logger("printd.printers")

#: printd's own fields of a status item, and the ones that are columns: not kept as details.
_DETAIL_SKIP = frozenset({"printer_id", "status", "ts", "branch", "agent_id", "at"})
MOVE_HINT = "an operator can move it with `printctl printers move`"


class Claim(StrEnum):
    """What an agent's status report for a printer amounts to."""

    REGISTER = "register"  # unknown printer: it becomes the reporting agent's
    OWNER = "owner"  # the reporting agent owns it
    TAKEOVER = "takeover"  # same branch, owner offline: it moves to the reporting agent
    OTHER_BRANCH = "other_branch"  # refused: it belongs to another branch
    OWNER_ONLINE = "owner_online"  # refused: its owner, same branch, is connected

    @property
    def allowed(self) -> bool:
        return self in (Claim.REGISTER, Claim.OWNER, Claim.TAKEOVER)


def decide_claim(
    owner: tuple[str, str] | None, branch: str, agent_id: str, owner_online: Callable[[str], bool]
) -> Claim:
    """May the agent `agent_id` of `branch` report a printer owned by `owner` (branch, agent id;
    None when unknown)? `owner_online(agent_id)` is asked only for a same-branch replacement."""
    if owner is None:
        return Claim.REGISTER
    owner_branch, owner_agent = owner
    if owner_agent == agent_id and owner_branch == branch:
        return Claim.OWNER
    if owner_branch != branch:
        return Claim.OTHER_BRANCH
    return Claim.OWNER_ONLINE if owner_online(owner_agent) else Claim.TAKEOVER


def refusal(claim: Claim, printer_id: str, owner_agent: str) -> FrameError:
    """The `forbidden` error an agent gets for a refused claim (its frame id is added later)."""
    if claim is Claim.OTHER_BRANCH:
        reason = f"printer {printer_id!r} is registered to another branch; {MOVE_HINT}"
    else:
        reason = (
            f"printer {printer_id!r} belongs to agent {owner_agent!r}, which is online; a replacement "
            f"agent of the branch takes a printer over only while its owner is offline, or {MOVE_HINT}"
        )
    return FrameError(ERR_FORBIDDEN, reason)


@dataclass(frozen=True, slots=True)
class Moved:
    """An operator's move: the printer as it is now, where it was, how many queued jobs followed."""

    printer: Printer
    moved_from: tuple[str, str]
    jobs_moved: int


class MoveConflict(Exception):
    """The printer's owner changed between reading and moving it."""


class PrinterRegistry:
    def __init__(self, store: Store, owner_online: Callable[[str, str], Awaitable[bool]]) -> None:
        """`owner_online(company, agent_id)`: whether that agent is connected to any instance of
        the cluster (asked only when a replacement agent of the same branch reports a printer)."""
        self.store = store
        self.owner_online = owner_online
        self._known: dict[tuple[str, str], tuple[str, str | None, str]] = {}
        self.write_errors = 0

    def is_known(self, conn: AgentLink, update: StatusUpdate) -> bool:
        """True when the store already has this printer with this agent, branch and status."""
        return self._known.get((conn.company, update.printer_id)) == (
            conn.agent_id,
            conn.branch,
            update.status,
        )

    def forget(self, company: str, printer_ids: list[str]) -> None:
        """Printers evicted from the live view: their next status is checked with the store."""
        for printer_id in printer_ids:
            self._known.pop((company, printer_id), None)

    async def printer_seen(self, conn: AgentLink, update: StatusUpdate) -> Claim | FrameError:
        """Register or update the printer for this agent, take it over if the rules allow, or
        refuse (`forbidden`). With the store down the claim is judged on what this instance
        knows, the status still reaches dashboards, and the write is retried on the next one."""
        company, printer_id = conn.company, update.printer_id
        branch, agent_id = conn.branch or "", conn.agent_id
        details = {k: v for k, v in update.data.items() if k not in _DETAIL_SKIP}
        if len(str(details)) >= 4096:
            details = {}
        try:
            for _ in range(3):  # a lost race re-reads the owner; three losses in a row are absurd
                now = time.time()
                printer, created = await self.store.upsert_printer(
                    company=company,
                    branch=branch,
                    agent_id=agent_id,
                    printer_id=printer_id,
                    status=update.status,
                    details=details,
                    now=now,
                )
                owner = (printer.branch, printer.agent_id)
                claim = Claim.REGISTER if created else await self._decide(company, owner, branch, agent_id)
                if claim is not Claim.TAKEOVER:
                    break
                moved = await self.store.move_printer(
                    company, printer_id, expected=owner, branch=branch, agent_id=agent_id, now=now
                )
                if moved is not None:
                    log.info(
                        "printer taken over",
                        company=company,
                        printer_id=printer_id,
                        from_branch=owner[0],
                        from_agent=owner[1],
                        to_agent=agent_id,
                        jobs_moved=moved[1],
                    )
                    await self.store.upsert_printer(
                        company=company,
                        branch=branch,
                        agent_id=agent_id,
                        printer_id=printer_id,
                        status=update.status,
                        details=details,
                        now=now,
                    )
                    break
            else:
                claim = Claim.OWNER_ONLINE  # someone keeps moving it: not ours to take
        except StoreError as exc:
            # status fan-out goes on without the store; the write is retried on the next update
            self.write_errors += 1
            log.warning("printer registry write failed", printer_id=printer_id, error=str(exc))
            known = self._known.get((company, printer_id))
            owner_known = None if known is None else (known[1] or "", known[0])
            claim = await self._decide(company, owner_known, branch, agent_id)
            if not claim.allowed:
                return refusal(claim, printer_id, known[0] if known else "")
            return claim
        if not claim.allowed:
            return refusal(claim, printer_id, owner[1])
        self._known[(company, printer_id)] = (agent_id, conn.branch, update.status)
        return claim

    async def _decide(self, company: str, owner: tuple[str, str] | None, branch: str, agent_id: str) -> Claim:
        online = False
        if owner is not None and owner[0] == branch and owner[1] != agent_id:  # a replacement
            online = await self.owner_online(company, owner[1])
        return decide_claim(owner, branch, agent_id, lambda _: online)

    async def move(self, company: str, printer_id: str, branch: str, agent_id: str) -> Moved | None:
        """An operator's move to (branch, agent_id), whoever holds the printer now. None when
        the printer is unknown; raises `MoveConflict` if it changed owner meanwhile."""
        printer = await self.store.get_printer(company, printer_id)
        if printer is None:
            return None
        moved_from = (printer.branch, printer.agent_id)
        if moved_from == (branch, agent_id):
            return Moved(printer, moved_from, 0)
        moved = await self.store.move_printer(
            company, printer_id, expected=moved_from, branch=branch, agent_id=agent_id, now=time.time()
        )
        if moved is None:
            raise MoveConflict(f"printer {printer_id!r} changed owner meanwhile; look again and retry")
        self._known.pop((company, printer_id), None)  # its next status is checked with the store
        return Moved(moved[0], moved_from, moved[1])
