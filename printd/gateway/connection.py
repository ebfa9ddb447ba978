"""One WebSocket connection: the sans-IO engine plus a bounded outbound queue.

Any task may queue a message (`send`); exactly one task at a time writes to the socket
(`flush`), and the queue is bounded in bytes. A client that reads too slowly overflows it and
is closed with 4008 instead of letting the server's memory grow: one slow dashboard never
holds up the others, which are written by their own flush tasks.
"""

from __future__ import annotations

import itertools
import os
import time
from dataclasses import dataclass, field
from typing import Any

import trio

from printd.auth import Claims
from printd.config import CompressionConfig
from printd.gateway import frames
from printd.gateway.frames import Session, State
from printd.gateway.handshake import Deflate

_ids = itertools.count(1)
_MAX_WRITE = 256 * 1024
#: Seconds a peer has to answer our close frame before the socket is dropped.
CLOSE_TIMEOUT = 3.0


@dataclass(slots=True)
class GatewayStats:
    """Plain counters (cheaper than Prometheus objects on the per-message path)."""

    messages_in: int = 0
    messages_out: int = 0
    bytes_in_raw: int = 0
    bytes_in_wire: int = 0
    bytes_out_raw: int = 0
    bytes_out_wire: int = 0
    frame_errors: int = 0
    slow_consumers: int = 0
    handshakes: int = 0
    rejected_upgrades: int = 0
    closes: dict[int, int] = field(default_factory=dict)


def make_session(
    max_message_bytes: int, compression: CompressionConfig, deflate: Deflate | None = None
) -> Session:
    """The session engine of an accepted upgrade, with the permessage-deflate the handshake
    negotiated (`printd.gateway.handshake`; window bits the client left unbounded are 15)."""
    if deflate is None:
        return Session(max_message_bytes, None)
    if not (deflate.server_no_context_takeover and deflate.client_no_context_takeover):
        raise ValueError("permessage-deflate must be negotiated without context takeover")
    return Session(
        max_message_bytes,
        frames.Deflate(
            inbound_wbits=deflate.client_max_window_bits or 15,
            outbound_wbits=deflate.server_max_window_bits or 15,
            level=compression.level,
            mem_level=compression.mem_level,
            min_size=compression.min_size,
        ),
    )


class WsConnection:
    __slots__ = (
        "id",
        "stream",
        "proto",
        "claims",
        "role",
        "company",
        "agent_id",
        "branch",
        "session",
        "last_seen",
        "connected_at",
        "last_ping",
        "closing",
        "eof",
        "compressed",
        "_out",
        "_out_bytes",
        "_head_left",
        "_flushing",
        "_drained",
        "write_since",
        "_max_queue",
        "_write_timeout",
        "_stats",
        "_spawn",
    )

    def __init__(
        self,
        stream: trio.SocketStream,
        proto: Session,
        claims: Claims,
        *,
        stats: GatewayStats,
        max_queue_bytes: int,
        write_timeout: float,
        spawn: Any,
    ) -> None:
        self.id = next(_ids)
        self.stream = stream
        self.proto = proto
        self.claims = claims
        self.role = claims.role
        self.company = claims.company
        self.agent_id = claims.sub
        self.branch = claims.branch or ""
        self.session = 0  # the store's session number, once the connect is recorded (agents)
        now = trio.current_time()
        self.last_seen = now
        self.connected_at = time.time()  # wall clock, comparable with the store's timestamps
        self.last_ping = now
        self.closing = False
        self.eof = False
        self.compressed = proto.deflate is not None
        self._out: list[bytes] = []  # an empty deque costs ~600 bytes per connection
        self._out_bytes = 0
        self._head_left = 0  # bytes of the handshake response at the front of _out, unsent
        self._flushing = False
        self._drained: trio.Event | None = None
        self.write_since = 0.0
        self._max_queue = max_queue_bytes
        self._write_timeout = write_timeout
        self._stats = stats
        self._spawn = spawn

    @property
    def queued_bytes(self) -> int:
        return self._out_bytes

    def _collect(self) -> None:
        """Move the engine's control frames (pong, close) to the queue."""
        proto = self.proto
        if proto.outgoing:
            for chunk in proto.outgoing:
                self._out.append(chunk)
                self._out_bytes += len(chunk)
            proto.outgoing.clear()
        if proto.eof:  # the closing handshake is done (or failed): close TCP once written
            self.eof = True

    def queue_raw(self, data: bytes) -> None:
        """The handshake's 101 response: queued first, and kept even if the queue overflows
        before it is written (the client must see the 101 before our close frame)."""
        self._out.append(data)
        self._out_bytes += len(data)
        self._head_left = self._out_bytes

    def queue(self, payload: bytes) -> bool:
        """Queue one text message; False (and the connection closes) when the queue overflows."""
        if self.closing or self.proto.state is not State.OPEN:
            return False
        frame = self.proto.send_text(payload)
        self._out.append(frame)
        self._out_bytes += len(frame)
        self._stats.messages_out += 1
        self._stats.bytes_out_raw += len(payload)
        if self._out_bytes > self._max_queue:
            self._overflow()
            return False
        return True

    def send(self, payload: bytes) -> bool:
        """Queue a message and make sure a flush runs (from any task, without blocking it)."""
        ok = self.queue(payload)
        self.send_pending()
        return ok

    def send_pending(self) -> None:
        """Write whatever is queued now, from the calling task, with one non-blocking syscall;
        only what the socket buffer does not take is left to a flush task. A batch or a dispatch
        thus leaves in the same scheduler round, not one behind thousands of busy readers."""
        self._collect()
        if self._flushing or not self._out:
            return
        data = self._out[0] if len(self._out) == 1 else b"".join(self._out)
        fd = self.stream.socket.fileno()
        if fd < 0:
            return
        try:
            sent = os.write(fd, data)
        except BlockingIOError:
            sent = 0
        except OSError:
            self.abort()
            return
        self._stats.bytes_out_wire += sent
        if self._head_left:
            self._head_left = max(0, self._head_left - sent)
        if sent == len(data):
            self._out.clear()
            self._out_bytes = 0
            return
        self._out[:] = [data[sent:]]
        self._out_bytes = len(data) - sent
        self._spawn(self.flush)

    def _overflow(self) -> None:
        self._stats.slow_consumers += 1
        head = b"".join(self._out)[: self._head_left] if self._head_left else b""
        self._out[:] = [head] if head else []
        self._out_bytes = len(head)
        self.close(4008, "send queue overflow: client reads too slowly")

    def close(self, code: int, reason: str) -> None:
        """Start the closing handshake; the reader task ends the TCP connection afterwards."""
        if self.closing:
            return
        self.closing = True
        self._stats.closes[code] = self._stats.closes.get(code, 0) + 1
        if self.proto.state is State.OPEN:
            self.proto.send_close(code, reason)
        self.send_pending()
        self._spawn(self._abort_if_still_open)

    async def _abort_if_still_open(self) -> None:
        """A peer that does not complete the closing handshake in time loses the TCP connection."""
        await trio.sleep(CLOSE_TIMEOUT)
        if self.proto.state is not State.CLOSED:
            self.abort()

    async def drain(self) -> None:
        """Wait until everything queued so far is written (or the connection is closing): a
        producer of many big messages (a chunked snapshot) goes at the client's pace this way,
        instead of overflowing the queue."""
        while self._out_bytes and not self.closing:
            if not self._flushing:
                await self.flush()
                continue
            if self._drained is None:
                self._drained = trio.Event()
            await self._drained.wait()

    async def flush(self) -> None:
        """Write everything queued; only one task writes at a time, others return at once."""
        if self._flushing:
            return
        self._collect()
        if not self._out:
            return
        self._flushing = True
        try:
            while self._out:
                size = 0
                n = 0
                for chunk in self._out:
                    if size >= _MAX_WRITE:
                        break
                    size += len(chunk)
                    n += 1
                parts = self._out[:n]
                del self._out[:n]
                self._out_bytes -= size
                if self._head_left:  # the writer owns these bytes now, the head among them
                    self._head_left = max(0, self._head_left - size)
                data = parts[0] if len(parts) == 1 else b"".join(parts)
                if not await self._write(data):
                    return
                self._stats.bytes_out_wire += size
                self._collect()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.abort()
        finally:
            self._flushing = False
            if self._drained is not None:
                self._drained.set()
                self._drained = None

    async def _write(self, data: bytes) -> bool:
        """Write with one non-blocking syscall; only a full socket buffer waits in trio (and the
        heartbeat sweep drops a peer that keeps it full past `write_timeout`)."""
        fd = self.stream.socket.fileno()
        if fd < 0:
            return False
        try:
            sent = os.write(fd, data)
        except BlockingIOError:
            sent = 0
        except OSError:
            self.abort()
            return False
        if sent < len(data):
            self.write_since = trio.current_time()
            try:
                await self.stream.send_all(memoryview(data)[sent:])
            finally:
                self.write_since = 0.0
        return True

    def abort_if_stalled(self, now: float) -> bool:
        """Drop a peer that has not read for `write_timeout` (a close frame could not reach it)."""
        if self.write_since != 0.0 and now - self.write_since > self._write_timeout:
            self._stats.slow_consumers += 1
            self.abort()
            return True
        return False

    def abort(self) -> None:
        """Drop the TCP connection now (the reader task sees it closed and cleans up)."""
        self.closing = True
        self._out.clear()
        self._out_bytes = 0
        self.stream.socket.close()
