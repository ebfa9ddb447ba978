"""Who is connected here: agents by id, dashboards by company, and the heartbeat sweep.

The hub is this instance's view; `cluster.presence` is the cluster's. Fan-out to a company's
dashboards goes through the hub, so tenant isolation is one dictionary lookup that the tests
pin down: company A's dashboards are never in company B's set.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable

import trio

from printd.gateway.connection import WsConnection
from printd.protocol import (
    CLOSE_GOING_AWAY,
    CLOSE_HEARTBEAT_TIMEOUT,
    CLOSE_REPLACED,
    CLOSE_TOKEN_EXPIRED,
)


class Hub:
    def __init__(self, *, on_company: Callable[[str, bool], None] | None = None) -> None:
        self.connections: set[WsConnection] = set()
        self.agents: dict[tuple[str, str], WsConnection] = {}
        self.dashboards: dict[str, set[WsConnection]] = defaultdict(set)
        self._emptied = trio.Event()
        # told when a company gets its first dashboard here (True) or loses its last (False)
        self._on_company = on_company

    def add(self, conn: WsConnection) -> None:
        self.connections.add(conn)
        if conn.role == "agent":
            key = (conn.company, conn.agent_id)
            old = self.agents.get(key)
            self.agents[key] = conn
            if old is not None:
                old.close(CLOSE_REPLACED, "replaced by a newer connection of the same agent")
        else:
            dashboards = self.dashboards[conn.company]
            dashboards.add(conn)
            if len(dashboards) == 1 and self._on_company is not None:
                self._on_company(conn.company, True)

    def remove(self, conn: WsConnection) -> bool:
        """Forget a connection; True if it was the agent's current one."""
        self.connections.discard(conn)
        if not self.connections:
            self._emptied.set()
            self._emptied = trio.Event()
        if conn.role == "agent":
            key = (conn.company, conn.agent_id)
            if self.agents.get(key) is conn:
                del self.agents[key]
                return True
            return False
        dash = self.dashboards.get(conn.company)
        if dash is not None:
            dash.discard(conn)
            if not dash:
                del self.dashboards[conn.company]
                if self._on_company is not None:
                    self._on_company(conn.company, False)
        return False

    def agent(self, company: str, agent_id: str) -> WsConnection | None:
        conn = self.agents.get((company, agent_id))
        return conn if conn is not None and not conn.closing else None

    def deliver_to_company(self, company: str, payload: bytes) -> int:
        """Queue one already-encoded message to every dashboard of `company`."""
        n = 0
        for conn in list(self.dashboards.get(company, ())):
            if conn.send(payload):
                n += 1
        return n

    def counts_by_role(self) -> dict[str, int]:
        counts = {"agent": 0, "dashboard": 0, "service": 0, "admin": 0}
        for conn in self.connections:
            counts[conn.role] = counts.get(conn.role, 0) + 1
        return counts

    def sweep(
        self, now: float, wall_now: float, *, ping_interval: float, ping_timeout: float, leeway: float = 0.0
    ) -> None:
        """Ping the quiet, close the silent and the expired. One pass over all connections."""
        for conn in list(self.connections):
            if conn.abort_if_stalled(now) or conn.closing:
                continue
            if now - conn.last_seen > ping_timeout:
                conn.close(CLOSE_HEARTBEAT_TIMEOUT, f"no traffic for {ping_timeout:g} s")
                conn.abort()
            elif conn.claims.exp + leeway < wall_now:
                conn.close(CLOSE_TOKEN_EXPIRED, "token expired; reconnect with a fresh token")
            elif now - conn.last_ping >= ping_interval and now - conn.last_seen >= ping_interval:
                conn.last_ping = now
                conn.proto.send_ping(b"")
                conn.send_pending()

    async def wait_empty(self) -> None:
        """Return once no connection is left (used while draining)."""
        if self.connections:
            await self._emptied.wait()

    def close_all(self, code: int = CLOSE_GOING_AWAY, reason: str = "server shutting down") -> None:
        for conn in list(self.connections):
            conn.close(code, reason)

    async def run_heartbeats(
        self,
        *,
        ping_interval: float,
        ping_timeout: float,
        leeway: float = 0.0,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        step = min(5.0, ping_interval / 5)
        task_status.started()
        while True:
            await trio.sleep(step)
            self.sweep(
                trio.current_time(),
                time.time(),
                ping_interval=ping_interval,
                ping_timeout=ping_timeout,
                leeway=leeway,
            )
