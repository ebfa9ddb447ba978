"""The WebSocket session after the opening handshake, free of I/O (RFC 6455, RFC 7692).

websockets' engine parses every frame through generator coroutines and builds a `Frame` object
per frame each way; on the round-trip path that was about a sixth of printd's CPU. This engine
does only what a printd session needs, on the bytes of one `recv` at a time: masked client
frames, text messages (whole or fragmented, control frames between the fragments),
permessage-deflate without context takeover, ping -> pong and the closing handshake. The opening
handshake is h11's parse and `printd.gateway.handshake`; `connection.make_session` builds this
from what it negotiated.

Bad input never raises: the session queues the close frame (1002 protocol error, 1007 invalid
data, 1009 too big), records the code in `failure` and stops reading. What it buffers is bounded
by `max_size` plus one header: a frame's declared length is checked before its payload is kept.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

from websockets.protocol import State
from websockets.speedups import apply_mask

__all__ = ["Deflate", "Session", "State"]

_CONT, _TEXT, _BINARY, _CLOSE, _PING, _PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
_EMPTY_BLOCK = b"\x00\x00\xff\xff"  # what RFC 7692 strips from each compressed message
#: Close codes a peer may send (RFC 6455 7.4; 1004-1006 and 1015 are reserved), plus 3000-4999.
_PEER_CLOSE_CODES = frozenset({1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014})
#: Headers of unmasked, unfragmented server text frames by payload length (acks are ~30 bytes).
_PLAIN_HEADS = tuple(bytes((0x81, n)) for n in range(126))
_NO_MESSAGES: list[bytes] = []


@dataclass(frozen=True, slots=True)
class Deflate:
    """permessage-deflate as negotiated: window bits each way (no context takeover either way),
    the compression settings, and the size under which a message goes out uncompressed
    (RFC 7692 allows it: deflating a 30-byte ack costs CPU and saves nothing)."""

    inbound_wbits: int
    outbound_wbits: int
    level: int
    mem_level: int
    min_size: int


class Session:
    """One connection's frames in and out. `feed` returns the complete text messages of a
    `recv`; control frames to send pile up in `outgoing`; `eof` says the server should close TCP
    once it has written them (the closing handshake is done, or the connection failed)."""

    __slots__ = (
        "state",
        "deflate",
        "max_size",
        "outgoing",
        "eof",
        "failure",
        "binary",
        "_buf",
        "_opcode",
        "_parts",
        "_size",
        "_inflate",
    )

    def __init__(self, max_size: int, deflate: Deflate | None = None) -> None:
        self.state = State.OPEN
        self.deflate = deflate
        self.max_size = max_size
        #: Control frames (pong, close) waiting to be written, in order.
        self.outgoing: list[bytes] = []
        self.eof = False
        #: The close code the session failed with (1002, 1007, 1009), else 0.
        self.failure = 0
        #: A binary message arrived (printd speaks JSON text): text after it is not delivered.
        self.binary = False
        self._buf = b""  # the start of a frame whose rest has not arrived
        self._opcode = 0  # of the message being received in fragments, else 0
        self._parts: list[bytes] | None = None  # its text so far
        self._size = 0  # its size so far (inflated)
        self._inflate: zlib._Decompress | None = None

    def keep(self, data: bytes) -> None:
        """Bytes that came before the session started (after the request head): read first."""
        self._buf += data

    @property
    def buffered(self) -> bool:
        return bool(self._buf)

    # ------------------------------------------------------------------------------ inbound

    def feed(self, data: bytes) -> list[bytes]:
        """Parse the bytes of one read; return the text messages completed in them."""
        if self._buf:
            data = self._buf + data
            self._buf = b""
        if self.eof:
            return _NO_MESSAGES  # after a close or a failure nothing more is read (RFC 6455 7.1.7)
        messages = _NO_MESSAGES
        end = len(data)
        pos = 0
        while end - pos >= 2:
            b0 = data[pos]
            b1 = data[pos + 1]
            opcode = b0 & 0x0F
            if b0 & 0x30:
                return self._fail(1002, "reserved bits must be 0", messages)
            if not b1 & 0x80:
                return self._fail(1002, "client frames must be masked", messages)
            length = b1 & 0x7F
            if opcode >= _CLOSE:
                if opcode > _PONG:
                    return self._fail(1002, "invalid opcode", messages)
                if not b0 & 0x80:
                    return self._fail(1002, "fragmented control frame", messages)
                if b0 & 0x40:
                    return self._fail(1002, "reserved bits must be 0", messages)
                if length > 125:
                    return self._fail(1002, "control frame too long", messages)
                head = 6
            else:
                if opcode == _CONT:
                    if not self._opcode:
                        return self._fail(1002, "unexpected continuation frame", messages)
                    if b0 & 0x40:
                        return self._fail(1002, "reserved bits must be 0", messages)
                elif opcode <= _BINARY:
                    if self._opcode:
                        return self._fail(1002, "expected a continuation frame", messages)
                    if b0 & 0x40 and self.deflate is None:
                        return self._fail(1002, "reserved bits must be 0", messages)
                else:
                    return self._fail(1002, "invalid opcode", messages)
                if length < 126:
                    head = 6
                elif length == 126:
                    if end - pos < 4:
                        break
                    length = int.from_bytes(data[pos + 2 : pos + 4], "big")
                    head = 8
                else:
                    if end - pos < 10:
                        break
                    length = int.from_bytes(data[pos + 2 : pos + 10], "big")
                    head = 14
                if length > self.max_size - self._size:
                    return self._fail(1009, f"message over {self.max_size} bytes", messages)
            stop = pos + head + length
            if stop > end:
                break
            mask = data[pos + head - 4 : pos + head]
            payload = apply_mask(data[pos + head : stop], mask) if length else b""
            fin = b0 & 0x80
            if opcode >= _CLOSE:
                if opcode == _CLOSE:
                    return self._closed_by_peer(payload, messages)
                if opcode == _PING and self.state is State.OPEN:
                    self.outgoing.append(bytes((0x8A, length)) + payload)
            else:
                if opcode != _CONT:
                    self._opcode = opcode
                    if b0 & 0x40:
                        self._inflate = zlib.decompressobj(-self.deflate.inbound_wbits)  # type: ignore[union-attr]
                if self._inflate is not None:
                    payload = self._inflated(payload, fin)
                    if self.failure:
                        return messages
                if self._opcode == _BINARY:
                    self.binary = True  # its bytes are dropped; the shell closes with 1003
                elif fin:
                    if self._parts is not None:
                        self._parts.append(payload)
                        payload = b"".join(self._parts)
                    if self.state is State.OPEN and not self.binary:
                        if messages is _NO_MESSAGES:
                            messages = [payload]
                        else:
                            messages.append(payload)
                elif self._parts is None:
                    self._parts = [payload]
                else:
                    self._parts.append(payload)
                if fin:
                    self._opcode = 0
                    self._parts = None
                    self._size = 0
                    self._inflate = None
                else:
                    self._size += len(payload)
            pos = stop
        if pos < end:
            self._buf = data[pos:]
        return messages

    def _inflated(self, payload: bytes, fin: int) -> bytes:
        """One frame of a compressed message, inflated; at most what is left of `max_size`
        (one byte more tells a deflate bomb from a message that fits exactly)."""
        left = self.max_size - self._size
        assert self._inflate is not None
        try:
            out = self._inflate.decompress(payload + _EMPTY_BLOCK if fin else payload, left + 1)
        except zlib.error:
            self._fail(1002, "decompression failed", _NO_MESSAGES)
            return b""
        if len(out) > left:
            self._fail(1009, f"message over {self.max_size} bytes once inflated", _NO_MESSAGES)
            return b""
        return out

    def _closed_by_peer(self, payload: bytes, messages: list[bytes]) -> list[bytes]:
        """The peer's close frame: answer it (echoing its code) unless we started the closing
        handshake; either way the handshake is done and the server closes TCP first."""
        if len(payload) == 1:
            return self._fail(1002, "close frame too short", messages)
        if payload:
            code = int.from_bytes(payload[:2], "big")
            if code not in _PEER_CLOSE_CODES and not 3000 <= code < 5000:
                return self._fail(1002, f"invalid close code {code}", messages)
            try:
                payload[2:].decode()
            except UnicodeDecodeError:
                return self._fail(1007, "close reason is not valid UTF-8", messages)
        if self._opcode:
            return self._fail(1002, "close frame inside a fragmented message", messages)
        if self.state is State.OPEN:
            self.outgoing.append(bytes((0x88, len(payload))) + payload)
        self._finish()
        return messages

    def _fail(self, code: int, reason: str, messages: list[bytes]) -> list[bytes]:
        """Fail the connection (RFC 6455 7.1.7): send a close frame if none was, then stop
        reading; a server does not wait for the peer's close frame."""
        self.failure = code
        self.send_close(code, reason)
        self._finish()
        return messages

    def _finish(self) -> None:
        self.state = State.CLOSED
        self.eof = True
        self._buf = b""
        self._parts = None
        self._inflate = None

    # ----------------------------------------------------------------------------- outbound

    def send_text(self, payload: bytes) -> bytes:
        """One text message as one unmasked frame, deflated when negotiated and big enough."""
        n = len(payload)
        deflate = self.deflate
        if deflate is None or n < deflate.min_size:
            if n < 126:
                return _PLAIN_HEADS[n] + payload
            head = 0x81
        else:
            enc = zlib.compressobj(deflate.level, zlib.DEFLATED, -deflate.outbound_wbits, deflate.mem_level)
            payload = enc.compress(payload) + enc.flush(zlib.Z_SYNC_FLUSH)
            if payload.endswith(_EMPTY_BLOCK):
                payload = payload[:-4]
            n = len(payload)
            head = 0xC1
        if n < 126:
            return bytes((head, n)) + payload
        if n < 65536:
            return bytes((head, 126)) + n.to_bytes(2, "big") + payload
        return bytes((head, 127)) + n.to_bytes(8, "big") + payload

    def send_ping(self, payload: bytes = b"") -> None:
        if self.state is State.OPEN:
            payload = payload[:125]
            self.outgoing.append(bytes((0x89, len(payload))) + payload)

    def send_close(self, code: int, reason: str = "") -> None:
        """Start the closing handshake (the reason is cut to fit a control frame)."""
        if self.state is not State.OPEN:
            return
        body = code.to_bytes(2, "big") + reason.encode()[:123].decode(errors="ignore").encode()
        self.outgoing.append(bytes((0x88, len(body))) + body)
        self.state = State.CLOSING
