"""The WebSocket opening handshake, sans-IO, on the head h11 already parsed.

h11 parses every request head on the port; the upgrade is checked (RFC 6455 4.2.1), its
permessage-deflate offers negotiated (RFC 7692 7.1) and the 101 built from that one parse, so the
head is not parsed a second time by the WebSocket engine. The rules are websockets' (server.py
`process_request`, permessage_deflate.py `ServerPerMessageDeflateFactory`); the session engine
is built from the result (`Deflate`) by `printd.gateway.connection.make_session`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass

from printd.config import CompressionConfig

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_DEFLATE = "permessage-deflate"
_WINDOW_BITS = {str(bits): bits for bits in range(8, 16)}

# RFC 7230 3.2.6 token and quoted-string; RFC 6455 9.1 extension lists
_TOKEN = r"[-!#$%&'*+.^_`|~0-9a-zA-Z]+"
_QUOTED = r'"(?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t \x21-\x7e\x80-\xff])*"'
_PARAM = rf"(?:{_TOKEN})[\t ]*(?:=[\t ]*(?:{_TOKEN}|{_QUOTED})[\t ]*)?"
_ITEM = rf"(?:{_TOKEN})[\t ]*(?:;[\t ]*{_PARAM})*"
_EXTENSIONS_RE = re.compile(rf"[\t ,]*{_ITEM}(?:,[\t ,]*{_ITEM})*[\t ,]*")
_ITEM_RE = re.compile(rf"({_TOKEN})[\t ]*((?:;[\t ]*{_PARAM})*)")
_PARAM_RE = re.compile(rf"({_TOKEN})[\t ]*(?:=[\t ]*({_TOKEN}|{_QUOTED}))?")
_TOKEN_RE = re.compile(_TOKEN)
_UNQUOTE_RE = re.compile(r"\\(.)")


class UpgradeRejected(Exception):
    """An upgrade refused with a plain HTTP answer: status, message and extra headers."""

    def __init__(self, status: int, message: str, headers: list[tuple[str, str]] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or []


@dataclass(frozen=True, slots=True)
class Deflate:
    """Negotiated permessage-deflate parameters (None window bits: 15, the client did not bound it)."""

    server_no_context_takeover: bool
    client_no_context_takeover: bool
    server_max_window_bits: int | None
    client_max_window_bits: int | None

    def header(self) -> str:
        """The Sec-WebSocket-Extensions value of the 101, in websockets' parameter order."""
        parts = [_DEFLATE]
        if self.server_no_context_takeover:
            parts.append("server_no_context_takeover")
        if self.client_no_context_takeover:
            parts.append("client_no_context_takeover")
        if self.server_max_window_bits:
            parts.append(f"server_max_window_bits={self.server_max_window_bits}")
        if self.client_max_window_bits:
            parts.append(f"client_max_window_bits={self.client_max_window_bits}")
        return "; ".join(parts)


@dataclass(frozen=True, slots=True)
class Handshake:
    """An accepted upgrade: the 101 to send and the deflate parameters of the session, if any."""

    response: bytes
    deflate: Deflate | None


def accept_key(key: str) -> str:
    """Sec-WebSocket-Accept for a Sec-WebSocket-Key (RFC 6455 4.2.2)."""
    return base64.b64encode(hashlib.sha1(key.encode() + _GUID).digest()).decode()


def _tokens(values: list[str]) -> list[str]:
    """The lowercased items of comma-separated header values (Connection, Upgrade)."""
    return [t.strip().lower() for v in values for t in v.split(",") if t.strip()]


def check_upgrade(
    method: bytes,
    http_version: bytes,
    headers: Iterable[tuple[bytes, bytes]],
    compression: CompressionConfig | None,
) -> Handshake:
    """Check an upgrade request (h11's method, version and lowercased header names) and build
    its 101; deflate is negotiated when `compression` is given. UpgradeRejected says why not."""
    connection: list[str] = []
    upgrade: list[str] = []
    keys: list[str] = []
    versions: list[str] = []
    offers: list[str] = []
    for name, value in headers:
        if name == b"connection":
            connection.append(value.decode("latin-1"))
        elif name == b"upgrade":
            upgrade.append(value.decode("latin-1"))
        elif name == b"sec-websocket-key":
            keys.append(value.decode("latin-1"))
        elif name == b"sec-websocket-version":
            versions.append(value.decode("latin-1"))
        elif name == b"sec-websocket-extensions":
            offers.append(value.decode("latin-1"))
    if method != b"GET":
        raise UpgradeRejected(400, f"a WebSocket upgrade must be a GET, not {method.decode('latin-1')}")
    if http_version != b"1.1":
        raise UpgradeRejected(400, "a WebSocket upgrade needs HTTP/1.1")
    if _tokens(upgrade) != ["websocket"]:
        raise UpgradeRejected(400, "a WebSocket upgrade needs the header Upgrade: websocket")
    if "upgrade" not in _tokens(connection):
        raise UpgradeRejected(400, "a WebSocket upgrade needs a Connection header that contains 'upgrade'")
    if versions != ["13"]:
        raise UpgradeRejected(
            426,
            f"unsupported Sec-WebSocket-Version {', '.join(versions) or '(none)'}; this server speaks 13",
            [("Sec-WebSocket-Version", "13")],
        )
    if len(keys) != 1:
        raise UpgradeRejected(400, "a WebSocket upgrade needs exactly one Sec-WebSocket-Key header")
    key = keys[0]
    try:
        raw_key = base64.b64decode(key, validate=True)
    except (binascii.Error, ValueError):
        raw_key = b""
    if len(raw_key) != 16:
        raise UpgradeRejected(400, "Sec-WebSocket-Key must be the base64 encoding of 16 bytes")
    deflate = negotiate_deflate(offers, compression) if offers and compression else None
    head = (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + accept_key(key).encode() + b"\r\n"
    )
    if deflate is not None:
        head += b"Sec-WebSocket-Extensions: " + deflate.header().encode() + b"\r\n"
    return Handshake(head + b"\r\n", deflate)


def parse_extensions(value: str) -> list[tuple[str, list[tuple[str, str | None]]]]:
    """One Sec-WebSocket-Extensions value as (name, [(param, value or None)]) in order;
    UpgradeRejected (400) when it does not follow the grammar of RFC 6455 9.1."""
    if _EXTENSIONS_RE.fullmatch(value) is None:
        raise UpgradeRejected(400, f"malformed Sec-WebSocket-Extensions header: {value!r}")
    items = []
    # the whole value matched, so items are separated by commas and whitespace only
    for item in _ITEM_RE.finditer(value):
        params: list[tuple[str, str | None]] = []
        for param in _PARAM_RE.finditer(item.group(2)):
            raw = param.group(2)
            if raw is not None and raw.startswith('"'):
                raw = _UNQUOTE_RE.sub(r"\1", raw[1:-1])
                if _TOKEN_RE.fullmatch(raw) is None:  # RFC 6455 9.1: a token once unquoted
                    raise UpgradeRejected(400, f"malformed Sec-WebSocket-Extensions header: {value!r}")
            params.append((param.group(1), raw))
        items.append((item.group(1), params))
    return items


def negotiate_deflate(offers: list[str], cfg: CompressionConfig) -> Deflate | None:
    """The first acceptable permessage-deflate offer, with the design's parameters: no context
    takeover either way, the server's window bounded by config, the client's bounded by config
    when the client says it can be (websockets' rules, RFC 7692 7.1)."""
    for value in offers:
        for name, params in parse_extensions(value):
            if name == _DEFLATE:
                deflate = _accept_offer(params, cfg)
                if deflate is not None:
                    return deflate
    return None


def _accept_offer(params: list[tuple[str, str | None]], cfg: CompressionConfig) -> Deflate | None:
    """The answer to one offer, or None to decline it (an unknown, repeated or invalid parameter)."""
    seen: set[str] = set()
    server_bits: int | None = None
    client_bits: int | None = None
    client_bits_offered = False
    for name, value in params:
        if name in seen:
            return None
        seen.add(name)
        if name in ("server_no_context_takeover", "client_no_context_takeover"):
            if value is not None:
                return None
        elif name == "server_max_window_bits":
            if value is None or value not in _WINDOW_BITS:
                return None
            server_bits = _WINDOW_BITS[value]
        elif name == "client_max_window_bits":
            client_bits_offered = True
            if value is not None:
                if value not in _WINDOW_BITS:
                    return None
                client_bits = _WINDOW_BITS[value]
        else:
            return None
    server_bits = (
        cfg.server_max_window_bits if server_bits is None else min(server_bits, cfg.server_max_window_bits)
    )
    if server_bits == 8:  # zlib cannot compress with an 8-bit window
        return None
    if client_bits_offered:
        client_bits = (
            cfg.client_max_window_bits
            if client_bits is None
            else min(client_bits, cfg.client_max_window_bits)
        )
    return Deflate(True, True, server_bits, client_bits)
