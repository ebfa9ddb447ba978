"""WebSocket client framing for the load generator: bytes in, bytes out, no sockets.

Built for a low cost per message rather than for generality: frames are masked with an all-zero
key (RFC 6455 allows any key; this one leaves the payload as is), the upgrade request is written
by hand, and permessage-deflate is the one variant printd negotiates (no context takeover).
"""

from __future__ import annotations

import struct
import zlib

MASK = b"\x00\x00\x00\x00"
WS_KEY = "cHJpbnRkLWJlbmNobWFyaw=="  # any 16 bytes, base64: the server only echoes a hash of it
DEFLATE_OFFER = (
    "permessage-deflate; client_max_window_bits=10; client_no_context_takeover; server_no_context_takeover"
)
DEFLATE_MIN = 1024  # printd's compression.min_size: smaller messages go uncompressed both ways
DEFLATE_TAIL = b"\x00\x00\xff\xff"
OP_CONT, OP_TEXT, OP_BIN, OP_CLOSE, OP_PING, OP_PONG = 0, 1, 2, 8, 9, 10


def encode_frame(payload: bytes, opcode: int = OP_TEXT, rsv1: bool = False) -> bytes:
    """One masked client frame (all-zero mask key: the payload goes out as is)."""
    n = len(payload)
    b0 = 0x80 | (0x40 if rsv1 else 0) | opcode
    if n < 126:
        head = bytes((b0, 0x80 | n))
    elif n < 65536:
        head = struct.pack("!BBH", b0, 0xFE, n)
    else:
        head = struct.pack("!BBQ", b0, 0xFF, n)
    return head + MASK + payload


def parse_frames(buf: bytearray) -> list[tuple[int, bytes]]:
    """Pop every complete frame from buf as (first header byte, payload)."""
    out = []
    i = 0
    end = len(buf)
    while end - i >= 2:
        b1 = buf[i + 1]
        n = b1 & 0x7F
        h = 2
        if n == 126:
            if end - i < 4:
                break
            n = (buf[i + 2] << 8) | buf[i + 3]
            h = 4
        elif n == 127:
            if end - i < 10:
                break
            n = int.from_bytes(buf[i + 2 : i + 10], "big")
            h = 10
        if b1 & 0x80:  # servers do not mask; tolerate it anyway
            if end - i < h + 4 + n:
                break
            key = buf[i + h : i + h + 4]
            data = bytes(b ^ key[j % 4] for j, b in enumerate(buf[i + h + 4 : i + h + 4 + n]))
            out.append((buf[i], data))
            i += h + 4 + n
            continue
        if end - i < h + n:
            break
        out.append((buf[i], bytes(buf[i + h : i + h + n])))
        i += h + n
    if i:
        del buf[:i]
    return out


def close_code(payload: bytes) -> int | None:
    """The status code of a close frame's payload (None when it carries none)."""
    return int(struct.unpack("!H", payload[:2])[0]) if len(payload) >= 2 else None


class Deflate:
    """permessage-deflate as negotiated: raw deflate, optionally without context takeover."""

    def __init__(self, params: dict[str, str | None]) -> None:
        # We offered client_no_context_takeover, so we may always reset our context: every
        # message gets a fresh compressor, whatever the server answered.
        self.bits = max(9, min(10, int(params.get("client_max_window_bits") or 10)))
        self.server_no_context = "server_no_context_takeover" in params
        self.server_bits = int(params.get("server_max_window_bits") or 15)
        self._inflater = None if self.server_no_context else zlib.decompressobj(-self.server_bits)

    def compress(self, payload: bytes) -> bytes:
        c = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -self.bits)
        data = c.compress(payload) + c.flush(zlib.Z_SYNC_FLUSH)
        return data[:-4] if data.endswith(DEFLATE_TAIL) else data

    def inflate(self, payload: bytes) -> bytes:
        d = self._inflater or zlib.decompressobj(-self.server_bits)
        return d.decompress(payload + DEFLATE_TAIL)


def parse_extensions(value: str) -> dict[str, str | None] | None:
    """Parameters of the accepted permessage-deflate extension, or None."""
    for ext in value.split(","):
        parts = [p.strip() for p in ext.split(";")]
        if parts[0].lower() != "permessage-deflate":
            continue
        params: dict[str, str | None] = {}
        for p in parts[1:]:
            if not p:
                continue
            k, _, v = p.partition("=")
            params[k.strip().lower()] = v.strip().strip('"') or None
        return params
    return None


def upgrade_request(host: str, target: str, *, bearer: str | None = None, deflate: bool = False) -> bytes:
    """The HTTP/1.1 upgrade request for `target` (path and query), Host `host`."""
    auth = f"Authorization: Bearer {bearer}\r\n" if bearer else ""
    ext = f"Sec-WebSocket-Extensions: {DEFLATE_OFFER}\r\n" if deflate else ""
    return (
        f"GET {target} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {WS_KEY}\r\nSec-WebSocket-Version: 13\r\n"
        f"{auth}{ext}\r\n"
    ).encode()
