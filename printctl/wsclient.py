"""A trio WebSocket client on the same sans-IO engine as the gateway (websockets' ClientProtocol).

Used by `printctl agent`, the tests and the load tools. It can offer permessage-deflate and
counts bytes on the wire, so load tests measure what the network really carries.
"""

from __future__ import annotations

import contextlib
from collections import deque
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit

import orjson
import trio
from websockets.client import ClientProtocol
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory
from websockets.frames import Close, Opcode
from websockets.http11 import Response
from websockets.protocol import State
from websockets.uri import parse_uri


class HandshakeRejected(Exception):
    """The server answered the upgrade with an HTTP error (401, 403, 503...)."""

    def __init__(self, status: int, body: bytes, content_type: str = "") -> None:
        self.status = status
        self.body = body
        try:
            answer = orjson.loads(body)
        except orjson.JSONDecodeError:
            answer = None
        #: printd refuses with a JSON object; anything else came from something that is not printd
        self.from_printd = isinstance(answer, dict)
        if isinstance(answer, dict):
            self.message = str(answer.get("message", ""))
        else:  # not printd: say what it was, never dump the page
            self.message = f"{content_type.partition(';')[0] or 'no content type'}, {len(body)} bytes"
        super().__init__(f"HTTP {status}: {self.message}")


def _rejected(resp: Response) -> HandshakeRejected:
    return HandshakeRejected(resp.status_code, bytes(resp.body or b""), resp.headers.get("Content-Type", ""))


class ConnectionClosed(Exception):
    def __init__(self, code: int | None, reason: str) -> None:
        self.code = code
        self.reason = reason
        super().__init__(f"connection closed ({code}) {reason}".strip())


@dataclass
class WireCounters:
    sent_wire: int = 0
    received_wire: int = 0
    sent_raw: int = 0
    received_raw: int = 0


def ws_url(base: str, path: str = "/printing-ws", token: str | None = None) -> str:
    """http(s)://host:port -> ws(s)://host:port/printing-ws[?token=...]."""
    parts = urlsplit(base)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    query = f"?{urlencode({'token': token})}" if token else ""
    return f"{scheme}://{parts.netloc}{path}{query}"


class WsClient:
    """One client connection. `recv()` returns decoded JSON messages in order."""

    def __init__(self, stream: trio.SocketStream, proto: ClientProtocol) -> None:
        self.stream = stream
        self.proto = proto
        self.counters = WireCounters()
        self._inbox: deque[Any] = deque()
        self._send_lock = trio.Lock()
        self.close_code: int | None = None
        self.close_reason = ""
        self.response: Response | None = None

    @property
    def compressed(self) -> bool:
        return bool(self.proto.extensions)

    @classmethod
    async def connect(
        cls,
        url: str,
        *,
        token: str | None = None,
        headers: dict[str, str] | None = None,
        deflate: bool = True,
        timeout: float = 10.0,
        max_size: int = 2**20,
    ) -> WsClient:
        uri = parse_uri(url)
        extensions = (
            [
                ClientPerMessageDeflateFactory(
                    server_no_context_takeover=True,
                    client_no_context_takeover=True,
                    server_max_window_bits=10,
                    client_max_window_bits=10,
                    compress_settings={"level": 3, "memLevel": 7},
                )
            ]
            if deflate
            else None
        )
        proto = ClientProtocol(uri, extensions=extensions, max_size=max_size)
        request = proto.connect()
        if token:
            request.headers["Authorization"] = f"Bearer {token}"
        for k, v in (headers or {}).items():
            request.headers[k] = v
        with trio.fail_after(timeout):
            stream = await trio.open_tcp_stream(uri.host, uri.port)
            client = cls(stream, proto)
            try:
                proto.send_request(request)
                await client._flush()
                while True:
                    data = await stream.receive_some(65536)
                    if not data:
                        proto.receive_eof()
                    client.counters.received_wire += len(data)
                    proto.receive_data(data)
                    for ev in proto.events_received():
                        if isinstance(ev, Response):
                            client.response = ev
                            if ev.status_code != 101:
                                raise _rejected(ev)
                        else:
                            client._accept_event(ev)
                    if proto.handshake_exc is not None:
                        resp = client.response
                        if resp is not None and resp.status_code != 101:
                            raise _rejected(resp)
                        raise proto.handshake_exc
                    if proto.state is State.OPEN:
                        return client
                    if not data:
                        raise ConnectionClosed(None, "closed during handshake")
            except BaseException:
                await stream.aclose()
                raise

    def _accept_event(self, ev: Any) -> None:
        if ev.opcode is Opcode.TEXT:
            self.counters.received_raw += len(ev.data)
            self._inbox.append(orjson.loads(ev.data))
        elif ev.opcode is Opcode.CLOSE:
            close = Close.parse(ev.data) if ev.data else None
            self.close_code = close.code if close else 1005
            self.close_reason = close.reason if close else ""

    async def _flush(self) -> None:
        data = b"".join(self.proto.data_to_send())
        if data:
            async with self._send_lock:
                self.counters.sent_wire += len(data)
                await self.stream.send_all(data)

    async def send(self, event: str, data: dict[str, Any] | None = None, *, id: int | None = None) -> None:
        msg: dict[str, Any] = {"event": event, "data": data if data is not None else {}}
        if id is not None:
            msg["id"] = id
        await self.send_raw(orjson.dumps(msg))

    async def send_raw(self, payload: bytes | str, *, binary: bool = False) -> None:
        raw = payload.encode() if isinstance(payload, str) else payload
        self.counters.sent_raw += len(raw)
        if binary:
            self.proto.send_binary(raw)
        else:
            self.proto.send_text(raw)
        await self._flush()

    async def send_bytes_unframed(self, data: bytes) -> None:
        """Raw bytes on the socket, bypassing the framer (tests of malformed input)."""
        await self.stream.send_all(data)

    async def recv(self, timeout: float | None = None) -> Any:
        """The next message; ConnectionClosed (with the server's close code) when it ends."""
        with trio.fail_after(timeout) if timeout is not None else contextlib.nullcontext():
            while not self._inbox:
                if (
                    self.proto.state is State.CLOSED
                    or self.close_code is not None
                    and self.proto.close_expected()
                ):
                    await self._flush()
                    raise ConnectionClosed(self.close_code, self.close_reason)
                try:
                    data = await self.stream.receive_some(65536)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    data = b""
                if not data:
                    self.proto.receive_eof()
                    if not self._inbox:
                        raise ConnectionClosed(self.close_code, self.close_reason or "connection lost")
                self.counters.received_wire += len(data)
                self.proto.receive_data(data)
                for ev in self.proto.events_received():
                    self._accept_event(ev)
                await self._flush()
            return self._inbox.popleft()

    async def recv_event(self, event: str, timeout: float = 10.0) -> Any:
        """Skip messages until one with this event name arrives."""
        with trio.fail_after(timeout):
            while True:
                msg = await self.recv()
                if msg.get("event") == event:
                    return msg

    async def close(self, code: int = 1000, reason: str = "") -> None:
        try:
            if self.proto.state is State.OPEN:
                self.proto.send_close(code, reason)
                await self._flush()
                with trio.move_on_after(2):
                    while self.proto.state is not State.CLOSED:
                        data = await self.stream.receive_some(65536)
                        if not data:
                            break
                        self.proto.receive_data(data)
                        self.proto.events_received()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await self.stream.aclose()

    async def abort(self) -> None:
        """Drop the TCP connection without a closing handshake (the peer is gone)."""
        await self.stream.aclose()

    async def __aenter__(self) -> WsClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


__all__ = ["WsClient", "HandshakeRejected", "ConnectionClosed", "ws_url"]
