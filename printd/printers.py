"""The printer registry: the first status of a printer registers it under the agent's company
and branch; later changes of its status word are written through, repeats are not.

Status updates arrive thousands of times a second; the store hears only of new printers and
of real changes, so the database never sits on the fan-out's hot path.
"""

from __future__ import annotations

import time

import structlog

from printd.gateway.connection import WsConnection
from printd.gateway.protocol import StatusUpdate
from printd.store import Store, StoreError

log = structlog.get_logger("printd.printers")

#: printd's own fields of a status item, and the ones that are columns: not kept as details.
_DETAIL_SKIP = frozenset({"printer_id", "status", "ts", "branch", "agent_id", "at"})


class PrinterRegistry:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._known: dict[tuple[str, str], tuple[str, str | None, str]] = {}
        self.write_errors = 0

    def is_known(self, conn: WsConnection, update: StatusUpdate) -> bool:
        """True when the store already has this printer with this agent, branch and status."""
        return self._known.get((conn.company, update.printer_id)) == (
            conn.agent_id,
            conn.claims.branch,
            update.status,
        )

    def forget(self, company: str, printer_ids: list[str]) -> None:
        """Printers evicted from the live view: their next status is checked with the store."""
        for printer_id in printer_ids:
            self._known.pop((company, printer_id), None)

    async def printer_seen(self, conn: WsConnection, update: StatusUpdate) -> None:
        if self.is_known(conn, update):
            return
        key = (conn.company, update.printer_id)
        fingerprint = (conn.agent_id, conn.claims.branch, update.status)
        details = {k: v for k, v in update.data.items() if k not in _DETAIL_SKIP}
        try:
            await self.store.upsert_printer(
                company=conn.company,
                branch=conn.claims.branch or "",
                agent_id=conn.agent_id,
                printer_id=update.printer_id,
                status=update.status,
                details=details if len(str(details)) < 4096 else {},
                now=time.time(),
            )
        except StoreError as exc:
            # status fan-out goes on without the store; the write is retried on the next update
            self.write_errors += 1
            log.warning("printer registry write failed", printer_id=update.printer_id, error=str(exc))
            return
        self._known[key] = fingerprint
