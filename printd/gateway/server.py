"""The WebSocket gateway: upgrade checks, one read loop per connection, event routing.

One trio task per connection feeds bytes to the sans-IO engine and handles every frame of a
`recv` inline before one flush (the shape that measured fastest under trio). Jobs and printers
sit behind `JobEvents` and `PrinterEvents`, so this module knows the wire, not the jobs.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import parse_qs

import h11
import orjson
import structlog
import trio

from printd import protocol as P
from printd.agents import AgentLink
from printd.auth import AuthError, Claims, TokenVerifier, bearer_token
from printd.config import Config
from printd.gateway.connection import GatewayStats, WsConnection, make_session
from printd.gateway.frames import Session
from printd.gateway.handshake import Handshake, UpgradeRejected, check_upgrade
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

    def expects(self, conn: AgentLink, job_id: str) -> bool: ...

    async def job_reports(
        self, conn: AgentLink, reports: Sequence[tuple[str, P.JobReport]]
    ) -> list[P.FrameError | None]: ...


@dataclass(slots=True)
class AcceptedUpgrade:
    """An upgrade that passed the checks: its claims, its handshake (the 101 and the negotiated
    deflate) and the bytes the client sent after its request head (`serve` consumes both)."""

    claims: Claims
    handshake: Handshake | None
    rest: bytes


def query_token(query: str) -> str | None:
    """`?token=` as `parse_qs(query)["token"][0]` gives it (the first non-empty value), without
    parsing the whole query when nothing in it is escaped (it runs on every upgrade)."""
    if "%" in query or "+" in query:
        values = parse_qs(query).get("token")
        return values[0] if values else None
    for field in query.split("&"):
        name, _, value = field.partition("=")
        if name == "token" and value:
            return value
    return None


def origin_allowed(origin: str | None, allowed: tuple[str, ...], production: bool) -> bool:
    """Non-browser clients send no Origin. Browsers must match CORS_ORIGINS ("*" allows all);
    in development with no list configured every origin is accepted (a warning says so)."""
    if origin is None:
        return True
    if not allowed:
        return not production
    return "*" in allowed or origin.rstrip("/") in allowed


#: Reports one connection may have waiting for the store; past it the connection is read no
#: further until the store catches up (the rest waits in its socket buffer).
MAX_PENDING_REPORTS = 512


@dataclass(slots=True)
class _Report:
    msg_id: int | None
    event: str
    report: P.JobReport


class _ReadState:
    """What a connection's read loop shares with the tasks that answer for it."""

    __slots__ = ("budget", "earned")

    def __init__(self, budget: ErrorBudget) -> None:
        self.budget = budget
        self.earned = 0  # owed reports read since the rate was last charged


class _Reports:
    """An agent's acks and results waiting for the store, and the replies queued behind them:
    while any are pending, every reply of the connection joins this queue, so the client hears
    its answers in the order it sent the frames."""

    __slots__ = ("entries", "room")

    def __init__(self) -> None:
        self.entries: list[_Report | bytes] = []
        self.room = trio.Event()


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
        self._reports: dict[WsConnection, _Reports] = {}
        status.on_evict.append(printers.forget)  # an evicted printer is looked up again

    def bind(self, nursery: trio.Nursery) -> None:
        """The nursery that runs flush tasks started from other tasks (fan-out, dispatch)."""
        self._nursery = nursery

    def _handshake(self, upgrade: AcceptedUpgrade) -> tuple[Session, bytes]:
        """The session engine of an accepted upgrade and the 101 to send. The head was parsed
        once, by h11 (`printd.gateway.handshake`); the session engine (`make_session`, ours)
        starts with the negotiated deflate, holding what the client sent after its head."""
        handshake, upgrade.handshake = upgrade.handshake, None
        assert handshake is not None
        session = make_session(
            self.config.server.max_message_bytes, self.config.compression, handshake.deflate
        )
        rest, upgrade.rest = upgrade.rest, b""
        if rest:
            session.keep(rest)
        return session, handshake.response

    def _spawn(self, fn: Callable[[], Any]) -> None:
        assert self._nursery is not None
        self._nursery.start_soon(fn)

    def upgrade(
        self, request: h11.Request, target: str, headers: dict[str, str], rest: bytes
    ) -> AcceptedUpgrade:
        """Check an upgrade request h11 parsed (RFC 6455, then token and Origin) and build its 101;
        UpgradeRejected says why not. `rest`: what the client sent after the head."""
        compression = self.config.compression
        handshake = check_upgrade(
            request.method,
            request.http_version,
            request.headers,
            compression if compression.enabled else None,
        )
        return AcceptedUpgrade(self.authorize(target, headers), handshake, rest)

    def authorize(self, target: str, headers: dict[str, str]) -> Claims:
        """Token and Origin checks made on the h11-parsed request, before any upgrade."""
        if not self.accepting:
            raise UpgradeRejected(503, "server is draining; reconnect to another instance")
        origin = headers.get("origin")
        if not origin_allowed(origin, self.config.auth.cors_origins, self.config.production):
            raise UpgradeRejected(403, f"origin {origin!r} is not allowed")
        try:
            token = bearer_token(
                headers.get("authorization"), query_token(target.partition("?")[2]), query_allowed=True
            )
            claims = self.verifier.verify(token, roles=WS_ROLES)
        except AuthError as exc:
            raise UpgradeRejected(exc.status, exc.message) from None
        if claims.company == "*":
            raise UpgradeRejected(403, "a WebSocket connection needs a token for one company")
        return claims

    async def serve(self, stream: trio.SocketStream, upgrade: AcceptedUpgrade) -> None:
        """Send the 101 (with the hello, in one write), then run the read loop."""
        proto, response = self._handshake(upgrade)
        claims = upgrade.claims
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
        del response
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
        state = _ReadState(ErrorBudget(cfg.error_budget))
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
                    err = self._on_text(conn, message, state)
                    if err is not None and err.__class__ is not P.FrameError:
                        err = await err  # type: ignore[misc]
                    if err is not None:
                        self._reply(conn, P.encode_error(err))
                        self._spend(conn, state, err)
                if not conn.closing:
                    if sess.failure:  # the engine queued its close frame (1002, 1007, 1009)
                        conn.close(sess.failure, "")
                    elif sess.binary:
                        conn.close(P.CLOSE_UNSUPPORTED, "binary frames are not supported; send JSON text")
                conn.send_pending()
                if conn.eof:
                    return  # closing handshake done: the server closes TCP first (RFC 6455)
                charged = len(messages) - state.earned
                state.earned = 0
                if charged > 0 and not conn.closing:
                    pause = rate.spend(conn.last_seen, charged)
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

    def _reply(self, conn: WsConnection, frame: bytes) -> None:
        """Queue an answer; behind the connection's pending reports if it has any (in order)."""
        pending = self._reports.get(conn)
        if pending is None:
            conn.queue(frame)
        else:
            pending.entries.append(frame)

    def _spend(self, conn: WsConnection, state: _ReadState, err: P.FrameError) -> None:
        """An error answered: the client's errors spend its budget (1008 when spent)."""
        # our outage is not the client's abuse: it does not spend the budget
        if err.code not in P.BUDGET_FREE:
            self.stats.frame_errors += 1
            if state.budget.spend(trio.current_time()):
                conn.close(P.CLOSE_POLICY, "too many invalid frames")

    def _on_text(
        self, conn: WsConnection, message: bytes, state: _ReadState
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
                self._reply(conn, P.encode_ack(env.id))
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
            return self._queue_report(conn, state, _Report(env.id, event, report))
        return P.FrameError(P.ERR_UNKNOWN_EVENT, f"unknown event {event!r}", env.id)

    def _queue_report(self, conn: WsConnection, state: _ReadState, report: _Report) -> Awaitable[None] | None:
        """Reports are applied by the connection's reporter task a group at a time (one store
        transaction each), so the read loop goes on reading while the store works: one agent's
        acks and results no longer wait for each other's commit. Returns an awaitable (wait for
        room) when the connection has MAX_PENDING_REPORTS waiting."""
        if self.jobs.expects(conn, report.report.job_id):
            state.earned += 1
        pending = self._reports.get(conn)
        if pending is None:
            pending = self._reports[conn] = _Reports()
            self._spawn(lambda: self._reporter(conn, state, pending))
        pending.entries.append(report)
        if len(pending.entries) >= MAX_PENDING_REPORTS:
            return pending.room.wait()
        return None

    async def _reporter(self, conn: WsConnection, state: _ReadState, pending: _Reports) -> None:
        """Apply the connection's pending reports in order, a group per transaction, and send
        their answers (and the replies queued behind them) in the order the frames came."""
        try:
            while pending.entries:
                entries, pending.entries = pending.entries, []
                room, pending.room = pending.room, trio.Event()
                room.set()
                reports = [e for e in entries if isinstance(e, _Report)]
                answers = iter(await self.jobs.job_reports(conn, [(r.event, r.report) for r in reports]))
                for entry in entries:
                    if isinstance(entry, bytes):
                        conn.queue(entry)
                        continue
                    err = next(answers)
                    if err is not None:  # answer the frame the client sent
                        conn.queue(P.encode_error(P.FrameError(err.code, err.message, entry.msg_id)))
                        self._spend(conn, state, err)
                    elif entry.msg_id is not None:
                        conn.queue(P.encode_ack(entry.msg_id))
                conn.send_pending()
        except Exception:  # one connection's bug must not end the gateway's nursery
            log.exception("job reports failed; closing the connection", sub=conn.agent_id)
            conn.close(P.CLOSE_INTERNAL, "internal error; reconnect")
        finally:
            del self._reports[conn]
            pending.room.set()

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
            self._reply(conn, P.encode_ack(env.id))
        return None
