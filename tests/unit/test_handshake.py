"""The opening handshake built from h11's parse: RFC 6455 checks, permessage-deflate negotiated
as websockets negotiates it, and a 101 that websockets' client engine accepts."""

from __future__ import annotations

import base64
from urllib.parse import parse_qs

import h11
import pytest
from websockets.client import ClientProtocol
from websockets.extensions.permessage_deflate import (
    ClientPerMessageDeflateFactory,
    PerMessageDeflate,
    ServerPerMessageDeflateFactory,
)
from websockets.frames import Frame
from websockets.headers import parse_extension
from websockets.protocol import State
from websockets.uri import parse_uri
from websockets.utils import accept_key as ws_accept_key

from printd.config import CompressionConfig
from printd.gateway.connection import make_session
from printd.gateway.handshake import (
    Deflate,
    UpgradeRejected,
    accept_key,
    check_upgrade,
    negotiate_deflate,
    parse_extensions,
)
from printd.gateway.server import query_token

CFG = CompressionConfig()  # the design: 10-bit windows both ways, no context takeover
KEY = base64.b64encode(b"0123456789abcdef").decode()


def head(
    *extra: tuple[str, str], method: bytes = b"GET", version: bytes = b"1.1"
) -> list[tuple[bytes, bytes]]:
    headers = [
        ("host", "printd"),
        ("upgrade", "websocket"),
        ("connection", "Upgrade"),
        ("sec-websocket-key", KEY),
        ("sec-websocket-version", "13"),
    ]
    names = {n for n, _ in extra}
    return [(n.encode(), v.encode()) for n, v in [*(h for h in headers if h[0] not in names), *extra]]


def parse_request(data: bytes) -> h11.Request:
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(data)
    event = conn.next_event()
    assert isinstance(event, h11.Request)
    return event


def test_accept_key_is_the_rfc_example_and_websockets_value() -> None:
    assert accept_key("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    assert accept_key(KEY) == ws_accept_key(KEY)


@pytest.mark.parametrize("deflate", [False, True])
def test_websockets_client_accepts_the_101_and_messages_pass_both_ways(deflate: bool) -> None:
    """The real client engine's request, parsed by h11, answered by check_upgrade; then a
    message each way between that client and the session engine make_session builds."""
    factories = [ClientPerMessageDeflateFactory(client_max_window_bits=True)] if deflate else None
    client = ClientProtocol(parse_uri("ws://printd/printing-ws"), extensions=factories)
    client.send_request(client.connect())
    request = parse_request(b"".join(client.data_to_send()))
    handshake = check_upgrade(request.method, request.http_version, request.headers, CFG)
    assert (handshake.deflate is not None) is deflate
    client.receive_data(handshake.response)
    assert client.state is State.OPEN, client.handshake_exc
    client.events_received()  # the Response
    assert bool(client.extensions) is deflate
    session = make_session(1 << 20, CFG, handshake.deflate)
    big = b'{"event":"x","data":"' + b"lorem ipsum " * 500 + b'"}'  # over min_size: compressed
    wire = session.send_text(big)
    assert (len(wire) < len(big) / 4) is deflate
    client.receive_data(wire)
    [frame] = client.events_received()
    assert isinstance(frame, Frame) and frame.data == big
    client.send_text(big)
    assert session.feed(b"".join(client.data_to_send())) == [big]


OFFERS = [
    "permessage-deflate",
    "permessage-deflate; client_max_window_bits",
    "permessage-deflate; client_max_window_bits=9",
    "permessage-deflate; client_max_window_bits=15; server_max_window_bits=12",
    "permessage-deflate; server_max_window_bits=9",
    "permessage-deflate; server_max_window_bits=8",
    "permessage-deflate; server_max_window_bits=8, permessage-deflate",
    "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
    "permessage-deflate; client_max_window_bits=16, permessage-deflate; server_max_window_bits=11",
    "permessage-deflate; server_no_context_takeover=1, permessage-deflate",
    "permessage-deflate; client_max_window_bits; client_max_window_bits",
    "permessage-deflate; x-unknown",
    'permessage-deflate; client_max_window_bits="10"',
    "x-webkit-deflate-frame, permessage-deflate ; client_max_window_bits",
    "foo; bar=baz, permessage-deflate; server_max_window_bits=10, permessage-deflate",
    ",, permessage-deflate ,",
]


@pytest.mark.parametrize("offer", OFFERS)
def test_deflate_negotiation_matches_websockets(offer: str) -> None:
    """Same answer as websockets' server factory with the design's parameters (the one printd
    used before), offer by offer: the response header and the session's parameters."""
    factory = ServerPerMessageDeflateFactory(
        server_no_context_takeover=True,
        client_no_context_takeover=True,
        server_max_window_bits=CFG.server_max_window_bits,
        client_max_window_bits=CFG.client_max_window_bits,
        require_client_max_window_bits=False,
    )
    expected: tuple[str, PerMessageDeflate] | None = None
    for name, params in parse_extension(offer):
        if name == factory.name:
            try:
                response, ext = factory.process_request_params(params, [])
            except Exception:
                continue
            expected = ("; ".join([name] + [p if v is None else f"{p}={v}" for p, v in response]), ext)
            break
    got = negotiate_deflate([offer], CFG)
    if expected is None:
        assert got is None
        return
    assert got is not None
    assert got.header() == expected[0]
    ext = expected[1]
    assert (got.client_max_window_bits or 15, got.server_max_window_bits or 15) == (
        ext.remote_max_window_bits,
        ext.local_max_window_bits,
    )
    assert (got.client_no_context_takeover, got.server_no_context_takeover) == (
        ext.remote_no_context_takeover,
        ext.local_no_context_takeover,
    )


def test_deflate_offers_in_several_headers_and_the_header_in_the_101() -> None:
    handshake = check_upgrade(
        b"GET",
        b"1.1",
        head(("sec-websocket-extensions", "x-foo"), ("sec-websocket-extensions", "permessage-deflate")),
        CFG,
    )
    assert handshake.deflate == Deflate(True, True, 10, None)
    assert (
        b"\r\nSec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover;"
        b" client_no_context_takeover; server_max_window_bits=10\r\n"
    ) in handshake.response
    assert handshake.response.endswith(b"\r\n\r\n")


def test_no_deflate_when_compression_is_off_or_nothing_acceptable() -> None:
    offer = ("sec-websocket-extensions", "permessage-deflate")
    off = check_upgrade(b"GET", b"1.1", head(offer), None)
    assert off.deflate is None and b"Sec-WebSocket-Extensions" not in off.response
    odd = check_upgrade(b"GET", b"1.1", head(("sec-websocket-extensions", "permessage-deflate; x=1")), CFG)
    assert odd.deflate is None and b"Sec-WebSocket-Extensions" not in odd.response


def test_quoted_parameter_values_are_unquoted_and_must_be_tokens() -> None:
    assert parse_extensions('permessage-deflate; a="1\\0"; b; c = d') == [
        ("permessage-deflate", [("a", "10"), ("b", None), ("c", "d")])
    ]
    with pytest.raises(UpgradeRejected) as exc:
        parse_extensions('permessage-deflate; a="x y"')
    assert exc.value.status == 400


@pytest.mark.parametrize(
    "value",
    ["", ",", "permessage-deflate;", "permessage-deflate; =1", "permessage-deflate a", 'p; a="unterminated'],
)
def test_malformed_extensions_header_is_a_400(value: str) -> None:
    with pytest.raises(UpgradeRejected) as exc:
        check_upgrade(b"GET", b"1.1", head(("sec-websocket-extensions", value)), CFG)
    assert exc.value.status == 400 and "Sec-WebSocket-Extensions" in exc.value.message


@pytest.mark.parametrize(
    ("method", "version", "extra", "status", "words"),
    [
        (b"POST", b"1.1", [], 400, "GET"),
        (b"GET", b"1.0", [], 400, "HTTP/1.1"),
        (b"GET", b"1.1", [("upgrade", "websocket, h2c")], 400, "Upgrade: websocket"),
        (b"GET", b"1.1", [("connection", "keep-alive")], 400, "Connection"),
        (b"GET", b"1.1", [("sec-websocket-version", "8")], 426, "Sec-WebSocket-Version 8"),
        (b"GET", b"1.1", [("sec-websocket-version", "13"), ("sec-websocket-version", "13")], 426, "13, 13"),
        (b"GET", b"1.1", [("sec-websocket-key", KEY), ("sec-websocket-key", KEY)], 400, "exactly one"),
        (b"GET", b"1.1", [("sec-websocket-key", "not base64!")], 400, "16 bytes"),
        (b"GET", b"1.1", [("sec-websocket-key", base64.b64encode(b"x" * 15).decode())], 400, "16 bytes"),
    ],
)
def test_invalid_upgrades_get_a_clear_refusal(
    method: bytes, version: bytes, extra: list[tuple[str, str]], status: int, words: str
) -> None:
    with pytest.raises(UpgradeRejected) as exc:
        check_upgrade(method, version, head(*extra), CFG)
    assert exc.value.status == status and words in exc.value.message, exc.value.message
    assert exc.value.headers == ([("Sec-WebSocket-Version", "13")] if status == 426 else [])


def test_missing_version_or_key_is_refused() -> None:
    without_version = [h for h in head() if h[0] != b"sec-websocket-version"]
    with pytest.raises(UpgradeRejected) as exc:
        check_upgrade(b"GET", b"1.1", without_version, CFG)
    assert exc.value.status == 426 and "(none)" in exc.value.message
    without_key = [h for h in head() if h[0] != b"sec-websocket-key"]
    with pytest.raises(UpgradeRejected) as exc:
        check_upgrade(b"GET", b"1.1", without_key, CFG)
    assert exc.value.status == 400


def test_connection_and_upgrade_tokens_are_case_insensitive_lists() -> None:
    handshake = check_upgrade(
        b"GET", b"1.1", head(("connection", "keep-alive, Upgrade"), ("upgrade", "WebSocket")), CFG
    )
    assert handshake.response.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    assert f"Sec-WebSocket-Accept: {accept_key(KEY)}\r\n".encode() in handshake.response


@pytest.mark.parametrize(
    "query",
    [
        "",
        "token=abc.def-_.ghi",
        "a=1&token=x.y.z&token=second",
        "token=&token=later",
        "token&token=v",
        "tok%65n=escaped.name",
        "token=a%2Eb",
        "token=a+b&x=1",
        "x=1&&token=t=with=equals",
        "foo=token=no",
    ],
)
def test_query_token_is_what_parse_qs_gives(query: str) -> None:
    values = parse_qs(query).get("token")
    assert query_token(query) == (values[0] if values else None)
