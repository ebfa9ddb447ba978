"""The WebSocket gateway: upgrade checks, one read loop per connection, event routing.

One trio task per connection feeds bytes to the sans-IO engine and handles every frame of a
`recv` inline before one flush (the shape that measured fastest under trio). Jobs and printers
sit behind `JobEvents` and `PrinterEvents`, so this module knows the wire, not the jobs.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import parse_qs

import orjson
import structlog
import trio
from websockets.http11 import Request

from printd import protocol as P
from printd.agents import AgentLink
from printd.auth import AuthError, Claims, TokenVerifier, bearer_token
from printd.config import Config
from printd.gateway.connection import GatewayStats, WsConnection, make_protocol, make_session
from printd.gateway.frames import Session
from printd.gateway.hub import Hub
from printd.gateway.limits import ErrorBudget, MessageRate
from printd.printers import Claim
from printd.status import StatusFanout

log = structlog.get_logger("printd.gateway")

_READ_SIZE = 65536

WS_PATH = "/printing-ws"
WS_ROLES = ("agent", "dashboard", "admin")


class PrinterEvents(Protocol):
    """What the printer registry does with an agent's status."""

    def is_known(self, conn: WsConnection, update: P.StatusUpdate) -> bool: ...

    async def printer_seen(self, conn: WsConnection, update: P.StatusUpdate) -> Claim | P.FrameError:
        """Register or update the printer for this agent, or refuse (another owner)."""
        ...

    def forget(self, company: str, printer_ids: list[str]) -> None: ...


class JobEvents(Protocol):
    """What the job pipeline does with agents coming, going and reporting."""

    def agent_connected(self, conn: AgentLink) -> None: ...

    async def agent_disconnected(self, conn: AgentLink) -> None: ...

    async def job_report(self, conn: AgentLink, event: str, report: P.JobReport) -> P.FrameError | None: ...


@dataclass(slots=True)
class AcceptedUpgrade:
    """An upgrade that passed the checks: its raw request bytes (consumed by `serve`) and claims."""

    raw: bytes
    claims: Claims


class UpgradeRejected(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def origin_allowed(origin: str | None, allowed: tuple[str, ...], production: bool) -> bool:
    """Non-browser clients send no Origin. Browsers must match CORS_ORIGINS ("*" allows all);
    in development with no list configured every origin is accepted (a warning says so)."""
    if origin is None:
        return True
    if not allowed:
        return not production
    return "*" in allowed or origin.rstrip("/") in allowed


class Gateway:
    def __init__(
        self,
        config: Config,
        verifier: TokenVerifier,
        hub: Hub,
        status: StatusFanout,
        printers: PrinterEvents,
        jobs: JobEvents,
        stats: GatewayStats,
    ) -> None:
        self.config = config
        self.verifier = verifier
        self.hub = hub
        self.status = status
        self.printers = printers
        self.jobs = jobs
        self.stats = stats
        self.accepting = True
        self._nursery: trio.Nursery | None = None
        self._hello_common = {"protocol": P.PROTOCOL_VERSION, "instance": config.instance_id}
        self._max_item = config.status.max_item_bytes
        status.on_evict.append(printers.forget)  # an evicted printer is looked up again

    def bind(self, nursery: trio.Nursery) -> None:
        """The nursery that runs flush tasks started from other tasks (fan-out, dispatch)."""
        self._nursery = nursery

    def _handshake(self, raw: bytes) -> tuple[Session, bytes] | None:
        """Run the opening handshake on websockets' engine, then start the session on ours.

        The session engine (`make_session`) keeps only what the connection needs, built from
        the negotiated extensions. Bytes the client sent after its request head go to it.
        """
        handshake = make_protocol(self.config.server.max_message_bytes, self.config.compression)
        head_end = raw.find(b"\r\n\r\n") + 4
        handshake.receive_data(raw[:head_end])
        request = next((e for e in handshake.events_received() if isinstance(e, Request)), None)
        if request is None:
            return None  # h11 accepted the head; the engine should too
        response = handshake.accept(request)
        handshake.send_response(response)
        if response.status_code != 101:
            return None
        session = make_session(
            self.config.server.max_message_bytes, self.config.compression, handshake.extensions
        )
        if head_end < len(raw):
            session.keep(raw[head_end:])
        return session, b"".join(handshake.data_to_send())

    def _spawn(self, fn: Callable[[], Any]) -> None:
        assert self._nursery is not None
        self._nursery.start_soon(fn)

    def authorize(self, target: str, headers: dict[str, str]) -> Claims:
        """Token and Origin checks made on the h11-parsed request, before any upgrade."""
        if not self.accepting:
            raise UpgradeRejected(503, "server is draining; reconnect to another instance")
        origin = headers.get("origin")
        if not origin_allowed(origin, self.config.auth.cors_origins, self.config.production):
            raise UpgradeRejected(403, f"origin {origin!r} is not allowed")
        query = parse_qs(target.partition("?")[2])
        try:
            token = bearer_token(
                headers.get("authorization"),
                query["token"][0] if "token" in query else None,
                query_allowed=True,
            )
            claims = self.verifier.verify(token, roles=WS_ROLES)
        except AuthError as exc:
            raise UpgradeRejected(exc.status, exc.message) from None
        if claims.company == "*":
            raise UpgradeRejected(403, "a WebSocket connection needs a token for one company")
        return claims

    async def serve(self, stream: trio.SocketStream, upgrade: AcceptedUpgrade) -> None:
        """Complete the handshake on the raw request bytes, then run the read loop."""
        raw, upgrade.raw = upgrade.raw, b""
        accepted = self._handshake(raw)
        del raw
        if accepted is None:
            self.stats.rejected_upgrades += 1
            await stream.send_all(
                b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
            )
            return
        claims = upgrade.claims
        proto, response = accepted
        self.stats.handshakes += 1
        conn = WsConnection(
            stream,
            proto,
            claims,
            stats=self.stats,
            max_queue_bytes=self.config.server.send_queue_max_bytes,
            write_timeout=self.config.server.write_timeout,
            spawn=self._spawn,
        )
        conn.queue_raw(response)  # the 101, sent with the hello in one write
        del accepted, response
        self.hub.add(conn)
        if conn.role == "agent":
            self.status.agent_arrived(conn.company, conn.agent_id)
        try:
            await self._session(conn)
        finally:
            current = self.hub.remove(conn)
            if conn.role == "agent" and current:
                self.status.agent_left(conn.company, conn.agent_id)
                with trio.CancelScope(shield=True):
                    await self.jobs.agent_disconnected(conn)

    async def _session(self, conn: WsConnection) -> None:
        hello = {**self._hello_common, "role": conn.role, "company": conn.company, "id": conn.id}
        hello["heartbeat"] = self.config.server.ping_interval
        conn.queue(P.encode_event("hello", hello))
        if conn.role != "agent":
            # in parts of at most status.chunk_bytes, each written before the next is built; the
            # printers reported to other instances of the cluster included
            others = await self.status.cluster_snapshot(conn.company)
            for part in self.status.snapshot_parts(conn.company, others):
                if not conn.queue(part):
                    break
                await conn.drain()
        await conn.flush()
        if conn.role == "agent":
            self.jobs.agent_connected(conn)
        await self._read_loop(conn)

    async def _read_loop(self, conn: WsConnection) -> None:
        sess = conn.proto
        stream = conn.stream
        stats = self.stats
        cfg = self.config.server
        budget = ErrorBudget(cfg.error_budget)
        rate = MessageRate(cfg.message_rate, cfg.message_burst, cfg.rate_limit_close_after, conn.last_seen)
        sock = stream.socket
        streak = 0
        # Bytes sent along with the handshake are parsed before the first read.
        drained = early = sess.buffered
        try:
            while True:
                # Read with a plain non-blocking syscall. After a short read the socket is most
                # likely empty: wait for it in trio at once instead of paying a failed read first.
                # A checkpoint every few full reads keeps a fast sender from starving the rest.
                if early:
                    early = False
                    data = b""
                else:
                    if drained:
                        streak = 0
                        await trio.lowlevel.wait_readable(sock)
                    fd = sock.fileno()
                    if fd < 0:
                        return
                    try:
                        data = os.read(fd, _READ_SIZE)
                    except BlockingIOError:
                        drained = True
                        continue
                    except OSError:
                        return
                    if not data:
                        return
                    drained = len(data) < _READ_SIZE
                    if not drained:
                        streak += 1
                        if streak >= 8:
                            streak = 0
                            await trio.lowlevel.checkpoint()
                    conn.last_seen = trio.current_time()
                    stats.bytes_in_wire += len(data)
                messages = sess.feed(data)
                stats.messages_in += len(messages)
                for message in messages:
                    stats.bytes_in_raw += len(message)
                    if conn.closing:
                        continue
                    err = self._on_text(conn, message)
                    if err is not None and err.__class__ is not P.FrameError:
                        err = await err  # type: ignore[misc]
                    if err is not None:
                        conn.queue(P.encode_error(err))
                        # our outage is not the client's abuse: it does not spend the budget
                        if err.code not in P.BUDGET_FREE:
                            stats.frame_errors += 1
                            if budget.spend(conn.last_seen):
                                conn.close(P.CLOSE_POLICY, "too many invalid frames")
                if not conn.closing:
                    if sess.failure:  # the engine queued its close frame (1002, 1007, 1009)
                        conn.close(sess.failure, "")
                    elif sess.binary:
                        conn.close(P.CLOSE_UNSUPPORTED, "binary frames are not supported; send JSON text")
                conn.send_pending()
                if conn.eof:
                    return  # closing handshake done: the server closes TCP first (RFC 6455)
                if messages and not conn.closing:
                    pause = rate.spend(conn.last_seen, len(messages))
                    if pause:
                        await self._over_rate(conn, pause)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return
        finally:
            conn.closing = True
            stream.socket.close()

    async def _over_rate(self, conn: WsConnection, pause: float) -> None:
        """Over its message rate, a client is read no further until the bucket refills (the
        excess waits in its socket buffer); over it for `rate_limit_close_after`, it is closed.
        One pause lasts at most that long, and at most `ping_interval` (a huge burst is judged
        again at the next read), so a paused client is never taken for a silent one."""
        cfg = self.config.server
        if pause == math.inf:
            log.warning(
                "connection closed: message flood",
                role=conn.role,
                company=conn.company,
                sub=conn.agent_id,
                message_rate=cfg.message_rate,
            )
            conn.close(
                P.CLOSE_POLICY,
                f"message rate over {cfg.message_rate:g}/s for {cfg.rate_limit_close_after:g} s",
            )
        else:
            await trio.sleep(min(pause, cfg.rate_limit_close_after, cfg.ping_interval))

    def _on_text(
        self, conn: WsConnection, message: bytes
    ) -> P.FrameError | None | Awaitable[P.FrameError | None]:
        """Handle one message. Pings and status updates of known printers are handled right
        here, without a coroutine; work that needs the store comes back as an awaitable."""
        env = P.parse_frame(message)
        if isinstance(env, P.FrameError):
            if env.code == P.ERR_BAD_JSON and not P.is_utf8(message):
                conn.close(P.CLOSE_INVALID_DATA, "text message is not valid UTF-8")
                return None
            return env
        event = env.event
        if event == "ping":
            if env.id is not None:
                conn.queue(P.encode_ack(env.id))
            return None
        if conn.role != "agent":
            return P.FrameError(P.ERR_UNKNOWN_EVENT, f"unknown event {event!r} for a {conn.role}", env.id)
        if event == "printer.status":
            update = P.parse_status(env)
            if isinstance(update, P.FrameError):
                return update
            item = self._status_item(conn, update)
            if len(item) > self._max_item:
                return P.FrameError(
                    P.ERR_INVALID_DATA,
                    f"printer.status item is {len(item)} bytes as kept (data plus branch, agent_id, at);"
                    f" at most {self._max_item} (status.max_item_bytes)",
                    env.id,
                )
            if not self.printers.is_known(conn, update):
                # caps first: a printer refused by them is not registered either
                refused = self.status.admit(conn.company, conn.agent_id, update.printer_id)
                if refused is not None:
                    return P.FrameError(P.ERR_LIMIT_EXCEEDED, refused, env.id)
                return self._register_then_publish(conn, env, update, item)
            return self._publish_status(conn, env, update.printer_id, item)
        if event in ("job.ack", "job.result"):
            report = P.parse_job_report(env)
            if isinstance(report, P.FrameError):
                return report
            return self._job_report(conn, env, report)
        return P.FrameError(P.ERR_UNKNOWN_EVENT, f"unknown event {event!r}", env.id)

    async def _job_report(
        self, conn: WsConnection, env: P.Envelope, report: P.JobReport
    ) -> P.FrameError | None:
        err = await self.jobs.job_report(conn, env.event, report)
        if err is None:
            if env.id is not None:
                conn.queue(P.encode_ack(env.id))
            return None
        return P.FrameError(err.code, err.message, env.id)  # answer the frame the client sent

    async def _register_then_publish(
        self, conn: WsConnection, env: P.Envelope, update: P.StatusUpdate, item: bytes
    ) -> P.FrameError | None:
        claim = await self.printers.printer_seen(conn, update)
        if isinstance(claim, P.FrameError):
            return P.FrameError(claim.code, claim.message, env.id)
        if claim is Claim.TAKEOVER:
            self.jobs.agent_connected(conn)  # the printer's queued jobs came along: send them
        return self._publish_status(conn, env, update.printer_id, item)

    @staticmethod
    def _status_item(conn: WsConnection, update: P.StatusUpdate) -> bytes:
        """Decorate and encode the item once, here; batches and snapshots splice these bytes."""
        item = update.data
        item["branch"] = conn.claims.branch
        item["agent_id"] = conn.agent_id
        item["at"] = time.time()
        return orjson.dumps(item)

    def _publish_status(
        self, conn: WsConnection, env: P.Envelope, printer_id: str, item: bytes
    ) -> P.FrameError | None:
        refused = self.status.update(conn.company, conn.agent_id, printer_id, item)
        if refused is not None:
            return P.FrameError(P.ERR_LIMIT_EXCEEDED, refused, env.id)
        if env.id is not None:
            conn.queue(P.encode_ack(env.id))
        return None
