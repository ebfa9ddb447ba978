"""Who is connected here: real `WsConnection`s over socketpairs, read back by a client engine.

Each connection's peer is the other end of a `trio.socket.socketpair()` decoded by websockets'
client protocol, so what a test asserts is what a client would read: the frames, the close code.
"""

from __future__ import annotations

import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from functools import partial
from typing import Any

import orjson
import pytest
import trio
import trio.testing
from websockets.client import ClientProtocol
from websockets.frames import Close, Frame, Opcode
from websockets.protocol import State
from websockets.uri import parse_uri

from printd.auth import Claims
from printd.config import CompressionConfig
from printd.gateway.connection import GatewayStats, WsConnection, make_session
from printd.gateway.hub import Hub
from printd.protocol import CLOSE_GOING_AWAY, CLOSE_HEARTBEAT_TIMEOUT, CLOSE_REPLACED, CLOSE_TOKEN_EXPIRED


@dataclass
class Peer:
    """The client end of one connection: a plain non-blocking socket and websockets' engine."""

    sock: socket.socket
    proto: ClientProtocol

    async def frames(self) -> list[Frame]:
        """Every frame written so far (the server writes synchronously: it is in the buffer)."""
        while True:
            try:
                chunk = self.sock.recv(65536)
            except BlockingIOError:
                break
            if not chunk:
                self.proto.receive_eof()
                break
            self.proto.receive_data(chunk)
        await trio.lowlevel.checkpoint()
        return [ev for ev in self.proto.events_received() if isinstance(ev, Frame)]

    async def messages(self) -> list[Any]:
        return [orjson.loads(f.data) for f in await self.frames() if f.opcode is Opcode.TEXT]

    async def close_code(self) -> int | None:
        closes = [Close.parse(f.data).code for f in await self.frames() if f.opcode is Opcode.CLOSE]
        return closes[0] if closes else None


@dataclass
class Wiring:
    hub: Hub
    stats: GatewayStats
    nursery: trio.Nursery
    companies: list[tuple[str, bool]]

    def connect(
        self, role: str = "agent", company: str = "acme", sub: str = "agent-1", exp: float | None = None
    ) -> tuple[WsConnection, Peer]:
        server, client = socket.socketpair()
        client.setblocking(False)
        claims = Claims(sub, role, company, "b1" if role == "agent" else None, exp or time.time() + 3600)
        conn = WsConnection(
            trio.SocketStream(trio.socket.from_stdlib_socket(server)),
            make_session(1 << 20, CompressionConfig(enabled=False)),
            claims,
            stats=self.stats,
            max_queue_bytes=1 << 20,
            write_timeout=10.0,
            spawn=self.nursery.start_soon,
        )
        self.hub.add(conn)
        return conn, Peer(client, ClientProtocol(parse_uri("ws://printd/printing-ws"), state=State.OPEN))


@pytest.fixture
async def wiring() -> AsyncIterator[Wiring]:
    companies: list[tuple[str, bool]] = []
    hub = Hub(on_company=lambda company, present: companies.append((company, present)))
    async with trio.open_nursery() as nursery:
        yield Wiring(hub, GatewayStats(), nursery, companies)
        nursery.cancel_scope.cancel()


async def test_agents_are_found_by_company_and_id(wiring: Wiring) -> None:
    a1, _ = wiring.connect(sub="agent-1")
    a2, _ = wiring.connect(sub="agent-2")
    other, _ = wiring.connect(company="globex", sub="agent-1")
    hub = wiring.hub
    assert hub.agent("acme", "agent-1") is a1 and hub.agent("acme", "agent-2") is a2
    assert hub.agent("globex", "agent-1") is other
    assert hub.agent("acme", "agent-3") is None
    a2.closing = True  # a connection on its way out is nobody's route any more
    assert hub.agent("acme", "agent-2") is None


async def test_a_newer_connection_of_the_same_agent_replaces_the_older_with_4009(wiring: Wiring) -> None:
    old, old_peer = wiring.connect()
    new, new_peer = wiring.connect()
    hub = wiring.hub
    assert hub.agent("acme", "agent-1") is new
    assert old.closing and await old_peer.close_code() == CLOSE_REPLACED
    assert await new_peer.frames() == []
    assert hub.remove(old) is False  # the old one leaving does not take the agent's route along
    assert hub.agent("acme", "agent-1") is new
    assert hub.remove(new) is True
    assert hub.agent("acme", "agent-1") is None
    assert wiring.stats.closes == {CLOSE_REPLACED: 1}


async def test_company_events_reach_that_company_s_dashboards_only(wiring: Wiring) -> None:
    acme = [wiring.connect("dashboard", "acme", sub=f"d{i}") for i in range(2)]
    globex_conn, globex_peer = wiring.connect("dashboard", "globex", sub="d9")
    agent, agent_peer = wiring.connect("agent", "acme")
    assert wiring.hub.deliver_to_company("acme", b'{"event":"job.completed","data":{"job_id":"j1"}}') == 2
    for _, peer in acme:
        assert await peer.messages() == [{"event": "job.completed", "data": {"job_id": "j1"}}]
    assert await globex_peer.frames() == []  # tenant isolation
    assert await agent_peer.frames() == []  # agents get no dashboard traffic
    assert wiring.hub.deliver_to_company("initech", b"{}") == 0
    acme[0][0].closing = True  # one closing dashboard is skipped, the other still served
    assert wiring.hub.deliver_to_company("acme", b"{}") == 1
    del globex_conn, agent


async def test_first_and_last_dashboard_of_a_company_are_announced(wiring: Wiring) -> None:
    d1, _ = wiring.connect("dashboard", "acme", sub="d1")
    d2, _ = wiring.connect("dashboard", "acme", sub="d2")
    admin, _ = wiring.connect("admin", "globex", sub="ops")
    assert wiring.companies == [("acme", True), ("globex", True)]
    assert wiring.hub.remove(d1) is False
    assert wiring.companies == [("acme", True), ("globex", True)]
    wiring.hub.remove(d2)
    wiring.hub.remove(admin)
    assert wiring.companies[2:] == [("acme", False), ("globex", False)]
    assert dict(wiring.hub.dashboards) == {}
    wiring.hub.remove(d2)  # twice: nothing more is announced
    assert len(wiring.companies) == 4


async def test_counts_by_role(wiring: Wiring) -> None:
    assert wiring.hub.counts_by_role() == {"agent": 0, "dashboard": 0, "service": 0, "admin": 0}
    wiring.connect("agent", sub="a1")
    wiring.connect("agent", sub="a2")
    wiring.connect("dashboard", sub="d1")
    wiring.connect("admin", sub="ops")
    assert wiring.hub.counts_by_role() == {"agent": 2, "dashboard": 1, "service": 0, "admin": 1}


async def test_sweep_pings_the_quiet_closes_the_silent_and_the_expired(wiring: Wiring) -> None:
    now = trio.current_time()
    wall = time.time()
    fresh, fresh_peer = wiring.connect(sub="fresh")
    quiet, quiet_peer = wiring.connect(sub="quiet")
    silent, silent_peer = wiring.connect(sub="silent")
    expired, expired_peer = wiring.connect(sub="expired", exp=wall - 60)
    in_leeway, leeway_peer = wiring.connect(sub="in-leeway", exp=wall - 10)
    for conn in (fresh, expired, in_leeway):
        conn.last_seen = conn.last_ping = now + 100
    quiet.last_seen = quiet.last_ping = now + 70  # 30 s quiet: over ping_interval
    silent.last_seen = now  # 100 s silent: over ping_timeout

    wiring.hub.sweep(now + 100, wall, ping_interval=25.0, ping_timeout=60.0, leeway=30.0)

    assert [f.opcode for f in await quiet_peer.frames()] == [Opcode.PING]
    assert quiet.last_ping == now + 100 and not quiet.closing
    assert await silent_peer.close_code() == CLOSE_HEARTBEAT_TIMEOUT
    assert silent.closing and silent.stream.socket.fileno() == -1  # dropped, not just asked
    assert await expired_peer.close_code() == CLOSE_TOKEN_EXPIRED and expired.closing
    assert await fresh_peer.frames() == [] and await leeway_peer.frames() == []
    assert not fresh.closing and not in_leeway.closing

    # the next sweep a moment later: the quiet one was pinged just now, nobody is pinged again
    wiring.hub.sweep(now + 101, wall, ping_interval=25.0, ping_timeout=60.0, leeway=30.0)
    assert await quiet_peer.frames() == [] and await fresh_peer.frames() == []


async def test_sweep_drops_a_peer_that_stopped_reading(wiring: Wiring) -> None:
    stuck, _ = wiring.connect(sub="stuck")
    now = trio.current_time()
    stuck.write_since = now - 11  # a write has waited for the peer to read for 11 s
    wiring.hub.sweep(now, time.time(), ping_interval=25.0, ping_timeout=60.0)
    assert stuck.closing and wiring.stats.slow_consumers == 1


async def test_heartbeats_ping_the_quiet_then_close_the_silent(
    wiring: Wiring, autojump_clock: trio.testing.MockClock
) -> None:
    silent, peer = wiring.connect(sub="silent")
    await wiring.nursery.start(partial(wiring.hub.run_heartbeats, ping_interval=25.0, ping_timeout=60.0))
    # one sweep every min(5, 25 / 5) s: pings at 25 and 50 s, still open at 60 s (not over)
    await trio.sleep(60.5)
    assert [f.opcode for f in await peer.frames()] == [Opcode.PING, Opcode.PING]
    assert not silent.closing
    await trio.sleep(5.0)  # the sweep at 65 s finds it silent for longer than ping_timeout
    assert silent.closing and await peer.close_code() == CLOSE_HEARTBEAT_TIMEOUT


async def test_close_all_and_wait_empty(wiring: Wiring) -> None:
    peers = [wiring.connect(role, sub=f"c{i}") for i, role in enumerate(("agent", "dashboard", "admin"))]
    wiring.hub.close_all()
    for _, peer in peers:
        assert await peer.close_code() == CLOSE_GOING_AWAY
    async with trio.open_nursery() as nursery:
        nursery.start_soon(wiring.hub.wait_empty)
        for conn, _ in peers:
            wiring.hub.remove(conn)
    assert wiring.hub.connections == set()
    await wiring.hub.wait_empty()  # already empty: returns at once
