"""One TCP port for everything: h11 parses each request head; an upgrade to the WebSocket
path is checked (RFC 6455, token, Origin) and answered from that parse by the gateway.

A malformed request costs its own connection a 400 and nothing else; the accept loop and every
other connection carry on (the failure mode that rules out hypercorn for this job).
"""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable

import h11
import structlog
import trio

from printd.config import ServerConfig
from printd.gateway.handshake import UpgradeRejected
from printd.gateway.server import WS_PATH, AcceptedUpgrade, Gateway
from printd.http.router import HttpError, HttpRequest, HttpResponse

log = structlog.get_logger("printd.http")

HttpApp = Callable[[HttpRequest], Awaitable[HttpResponse]]
MAX_HEAD = 16 * 1024


def _head_size(raw: bytearray) -> int:
    """Bytes of the request head at the start of `raw` (over MAX_HEAD when its end is not there)."""
    end = raw.find(b"\r\n\r\n", 0, MAX_HEAD + 4)
    return MAX_HEAD + 1 if end < 0 else end + 4


#: After refusing a request, how long and how much of what the client still sends is read and
#: dropped before closing (nginx's lingering close): closing with unread data would make the
#: kernel reset the connection, and the client could lose the error answer it is owed.
LINGER_SECONDS = 1.0
LINGER_BYTES = 256 * 1024


async def lingering_close(stream: trio.SocketStream) -> None:
    """Stop sending, then read and drop the client's rest for a moment, so the answer already
    sent reaches it instead of being destroyed by a reset."""
    try:
        await stream.send_eof()
        drained = 0
        with trio.move_on_after(LINGER_SECONDS):
            while drained < LINGER_BYTES:
                data = await stream.receive_some(65536)
                if not data:
                    return
                drained += len(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass


def _peer(stream: trio.SocketStream) -> str:
    try:
        host, port = stream.socket.getpeername()[:2]
        return f"{host}:{port}"
    except OSError:
        return "?"


def client_address(peer: str, forwarded_for: str | None, trusted: tuple[str, ...]) -> str:
    """Who the client is: the peer, unless the peer is a trusted proxy (nginx in front); then
    the last X-Forwarded-For address that is not a trusted proxy itself. A header from anyone
    else is ignored: a client cannot pick the address printd logs."""
    host = peer.rpartition(":")[0].strip("[]")
    if not forwarded_for or host not in trusted:
        return peer
    for hop in reversed([h.strip() for h in forwarded_for.split(",") if h.strip()]):
        if hop not in trusted:
            return hop
    return peer


class Listener:
    def __init__(self, config: ServerConfig, gateway: Gateway, app: HttpApp, server_name: str) -> None:
        self.config = config
        self.gateway = gateway
        self.app = app
        self.server_header = server_name.encode()
        self.http_requests = 0
        self.http_errors = 0  # every error answer, refusals of bad requests included
        self.http_server_errors = 0  # 5xx
        # 5xx but 503: printd's own faults, what health counts. A 503 says a dependency or the
        # target is unavailable (the database, an agent, a draining instance): every instance
        # would answer the same, so it must not take this one out of the load balancer's pool
        self.http_own_errors = 0
        self.write_timeouts = 0  # connections dropped because the client did not read
        self.open_connections = 0

    async def handle(self, stream: trio.SocketStream) -> None:
        self.open_connections += 1
        try:
            upgrade = await self._handle(stream)
            if upgrade is not None:
                # run the session here, after _handle's frame (h11 state, headers, buffers) is gone:
                # an idle connection then costs only what the WebSocket session needs
                await self.gateway.serve(stream, upgrade)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        except Exception:  # one connection's bug must never end the accept loop
            log.exception("connection handler failed")
        finally:
            self.open_connections -= 1
            with trio.move_on_after(1) as scope:
                scope.shield = True
                await stream.aclose()

    async def _handle(self, stream: trio.SocketStream) -> AcceptedUpgrade | None:
        """Serve plain HTTP requests; return the accepted upgrade, if one comes."""
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        raw = bytearray()  # bytes of the current request, to measure its head
        first = True
        while True:
            if not first and not raw:
                # keep-alive: keepalive_timeout is for the idle wait before the next request's
                # first byte; its head then gets handshake_timeout, as the first one did
                with trio.move_on_after(self.config.keepalive_timeout):
                    data = await stream.receive_some(65536)
                    if not data:
                        return None
                    raw += data
                    conn.receive_data(data)
                if not raw:
                    return None
            event = self._event_now(stream, conn, raw)
            if event is h11.NEED_DATA:
                with trio.move_on_after(self.config.handshake_timeout) as scope:
                    event = await self._next_event(stream, conn, raw)
                if scope.cancelled_caught:
                    if conn.their_state is h11.SEND_BODY or (conn.their_state is h11.IDLE and raw):
                        await self._send_error(stream, conn, HttpError(408, "request not received in time"))
                    return None
            if event is None or isinstance(event, h11.ConnectionClosed):
                return None
            if isinstance(event, h11.Request) and _head_size(raw) > MAX_HEAD:
                # h11 bounds only a head that arrives in pieces; one that arrives whole is
                # measured here, so the limit holds however the bytes were written
                event = HttpError(431, f"request head larger than {MAX_HEAD} bytes")
            if isinstance(event, HttpError):
                await self._send_error(stream, conn, event)
                return None
            assert isinstance(event, h11.Request)
            first = False
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in event.headers}
            target = event.target.decode("latin-1")
            path = target.partition("?")[0]
            if path == WS_PATH and "websocket" in headers.get("upgrade", "").lower():
                return await self._upgrade(stream, conn, event, target, headers)
            body = await self._read_body(stream, conn, headers)
            if isinstance(body, HttpError):
                await self._send_error(stream, conn, body)
                return None
            client = client_address(
                _peer(stream), headers.get("x-forwarded-for"), self.config.trusted_proxies
            )
            request = HttpRequest(event.method.decode(), target, path, headers, body, client)
            response = await self._dispatch(request)
            if not await self._send(stream, conn, response, head_only=request.method == "HEAD"):
                return None
            if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                return None
            try:
                conn.start_next_cycle()
            except h11.LocalProtocolError:
                return None
            raw = bytearray(conn.trailing_data[0])
            if raw:  # the next request is already here (pipelined): let other tasks run first
                await trio.lowlevel.checkpoint()

    @staticmethod
    def _parse(conn: h11.Connection) -> h11.Event | HttpError | type[h11.NEED_DATA] | None:
        """h11's next event from what it holds; None when it pauses (an upgrade or a closed peer)."""
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as exc:
            status = exc.error_status_hint
            msg = "request head too large" if status == 431 else f"malformed request: {exc}"
            return HttpError(status, msg)
        if event is h11.PAUSED:
            return None
        if event is h11.NEED_DATA:
            return h11.NEED_DATA
        assert isinstance(event, h11.Event)
        return event

    @staticmethod
    def _feed(conn: h11.Connection, raw: bytearray, data: bytes) -> None:
        if len(raw) <= MAX_HEAD:
            raw += data
        conn.receive_data(data)

    def _event_now(
        self, stream: trio.SocketStream, conn: h11.Connection, raw: bytearray
    ) -> h11.Event | HttpError | type[h11.NEED_DATA] | None:
        """The next event from bytes already in h11 or the socket, read without waiting (a plain
        non-blocking syscall): a head that is already there needs no timeout scope and no trip
        through trio's scheduler. NEED_DATA when the rest has to be waited for."""
        while True:
            event = self._parse(conn)
            if event is not h11.NEED_DATA:
                return event
            try:
                data = os.read(stream.socket.fileno(), 65536)
            except BlockingIOError:
                return h11.NEED_DATA
            except OSError:
                return None
            self._feed(conn, raw, data)
            if not data:
                return None

    async def _next_event(
        self, stream: trio.SocketStream, conn: h11.Connection, raw: bytearray
    ) -> h11.Event | HttpError | None:
        while True:
            event = self._parse(conn)
            if event is not h11.NEED_DATA:
                return event  # type: ignore[return-value]
            data = await stream.receive_some(65536)
            self._feed(conn, raw, data)
            if not data:
                return None

    async def _read_body(
        self, stream: trio.SocketStream, conn: h11.Connection, headers: dict[str, str]
    ) -> bytes | HttpError:
        limit = self.config.max_http_body_bytes
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            return HttpError(413, f"request body larger than {limit} bytes")
        chunks: list[bytes] = []
        size = 0
        deadline = trio.current_time() + self.config.handshake_timeout
        while True:
            # a body already there is read without a timeout scope (as the head is)
            event = self._event_now(stream, conn, bytearray())
            if event is h11.NEED_DATA:
                with trio.move_on_at(deadline):
                    event = await self._next_event(stream, conn, bytearray())
                if event is h11.NEED_DATA:
                    return HttpError(408, "request body not received in time")
            if isinstance(event, HttpError):
                return event
            if event is None or isinstance(event, h11.ConnectionClosed):
                return HttpError(400, "connection closed before the body was complete")
            if isinstance(event, h11.Data):
                size += len(event.data)
                if size > limit:
                    return HttpError(413, f"request body larger than {limit} bytes")
                chunks.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                return b"".join(chunks)

    async def _dispatch(self, request: HttpRequest) -> HttpResponse:
        self.http_requests += 1
        try:
            response = await self.app(request)
        except HttpError as exc:
            response = exc.response()
        except Exception:
            log.exception("request failed", method=request.method, path=request.path)
            response = HttpError(500, "internal error; see the server log").response()
        if response.status >= 400:
            self._count_error(response.status)
        return response

    def _count_error(self, status: int) -> None:
        self.http_errors += 1
        if status >= 500:
            self.http_server_errors += 1
            if status != 503:
                self.http_own_errors += 1

    async def _upgrade(
        self,
        stream: trio.SocketStream,
        conn: h11.Connection,
        request: h11.Request,
        target: str,
        headers: dict[str, str],
    ) -> AcceptedUpgrade | None:
        """The handshake, token, role, Origin and draining checks; a refusal is a plain HTTP answer."""
        try:
            # h11 has consumed the head only: what follows it is the client's first frames
            return self.gateway.upgrade(request, target, headers, conn.trailing_data[0])
        except UpgradeRejected as exc:
            self.gateway.stats.rejected_upgrades += 1
            await self._send_error(stream, conn, HttpError(exc.status, exc.message, headers=exc.headers))
            return None

    async def _send(
        self,
        stream: trio.SocketStream,
        conn: h11.Connection,
        response: HttpResponse,
        *,
        head_only: bool = False,
    ) -> bool:
        """Write one response within `write_timeout`; False when the client did not read it in
        time (a client that pipelines requests and never reads must not keep its fd forever)."""
        headers = [
            (b"content-type", response.content_type.encode()),
            (b"content-length", str(len(response.body)).encode()),
            (b"server", self.server_header),
            (b"date", time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime()).encode()),
        ]
        headers += [(k.encode(), v.encode()) for k, v in response.headers]
        if response.status in (400, 408, 413, 431) and not any(
            k == "Connection" for k, _ in response.headers
        ):
            headers.append((b"connection", b"close"))
        data = conn.send(h11.Response(status_code=response.status, headers=headers))
        if not head_only:
            data += conn.send(h11.Data(data=response.body)) if response.body else b""
        data += conn.send(h11.EndOfMessage())
        # One plain non-blocking write first: a response the socket buffer takes whole (nearly
        # all of them) needs no timeout scope and no trip through trio's scheduler.
        try:
            sent = os.write(stream.socket.fileno(), data)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            raise trio.BrokenResourceError(str(exc)) from exc
        if sent == len(data):
            return True
        with trio.move_on_after(self.config.write_timeout):
            await stream.send_all(data[sent:])
            return True
        self.write_timeouts += 1
        log.warning("client did not read the response in time; closing", peer=_peer(stream))
        return False

    async def _send_error(self, stream: trio.SocketStream, conn: h11.Connection, error: HttpError) -> None:
        """Answer a refused request and close. Refusals (4xx) are the client's fault: counted in
        `http_errors`, never in the server errors that health watches."""
        self._count_error(error.status)
        if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        try:
            response = error.response()
            response.headers.append(("Connection", "close"))
            await self._send(stream, conn, response)
        except h11.LocalProtocolError:
            return
        await lingering_close(stream)
