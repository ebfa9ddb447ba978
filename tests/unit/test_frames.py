"""The session frame engine (printd.gateway.frames): RFC 6455 framing, RFC 7692 deflate, and
what a hostile client can send."""

from __future__ import annotations

import os
import zlib

import pytest
from websockets.client import ClientProtocol
from websockets.extensions.permessage_deflate import PerMessageDeflate
from websockets.frames import Close, Frame, Opcode
from websockets.protocol import State
from websockets.uri import parse_uri

from printd.config import CompressionConfig
from printd.gateway.connection import make_session
from printd.gateway.frames import Deflate, Session
from printd.gateway.handshake import Deflate as Negotiated

MASK = b"\x37\xfa\x21\x3d"
DEFLATE = Deflate(inbound_wbits=10, outbound_wbits=10, level=6, mem_level=5, min_size=256)


def frame(
    opcode: int,
    payload: bytes = b"",
    *,
    fin: bool = True,
    rsv: int = 0,
    masked: bool = True,
    length: int | None = None,
) -> bytes:
    """A client frame as bytes; `length` declares a length other than the payload's."""
    n = len(payload) if length is None else length
    head = bytes(((0x80 if fin else 0) | rsv | opcode,))
    bit = 0x80 if masked else 0
    if n < 126:
        head += bytes((bit | n,))
    elif n < 65536:
        head += bytes((bit | 126,)) + n.to_bytes(2, "big")
    else:
        head += bytes((bit | 127,)) + n.to_bytes(8, "big")
    if not masked:
        return head + payload
    return head + MASK + bytes(b ^ MASK[i % 4] for i, b in enumerate(payload))


def deflated(payload: bytes) -> bytes:
    enc = zlib.compressobj(6, zlib.DEFLATED, -10)
    data = enc.compress(payload) + enc.flush(zlib.Z_SYNC_FLUSH)
    assert data.endswith(b"\x00\x00\xff\xff")
    return data[:-4]


def close_code(out: list[bytes]) -> int:
    """The code of the close frame among server frames."""
    closes = [f for f in out if f[0] == 0x88]
    assert len(closes) == 1, out
    return int.from_bytes(closes[0][2:4], "big")


def test_text_messages_of_every_header_size_are_unmasked() -> None:
    s = Session(1 << 20)
    payloads = [b"", b"x" * 125, b"y" * 126, b"z" * 65535, os.urandom(65536)]
    assert s.feed(b"".join(frame(1, p) for p in payloads)) == payloads
    assert s.outgoing == [] and not s.eof and s.state is State.OPEN


def test_fragments_with_control_frames_between_make_one_message() -> None:
    s = Session(1 << 20)
    data = frame(1, b"ab", fin=False) + frame(9, b"hi") + frame(0, b"cd", fin=False) + frame(10, b"x")
    assert s.feed(data + frame(0, b"ef")) == [b"abcdef"]
    assert s.outgoing == [b"\x8a\x02hi"]  # the pong echoes the ping, unmasked


STREAM = (
    frame(1, b'{"a":1}')
    + frame(1, b"one ", fin=False)
    + frame(9, b"p")
    + frame(0, b"two " * 40, fin=False)
    + frame(0, b"three")
    + frame(1, b"z" * 300)
    + frame(8, (1000).to_bytes(2, "big") + b"bye")
)


def test_split_reads_at_every_byte_boundary_give_the_same_result() -> None:
    whole = Session(1 << 20)
    expected = whole.feed(STREAM)
    assert expected == [b'{"a":1}', b"one " + b"two " * 40 + b"three", b"z" * 300]
    for cut in range(len(STREAM) + 1):
        s = Session(1 << 20)
        got = s.feed(STREAM[:cut]) + s.feed(STREAM[cut:])
        assert got == expected, cut
        assert s.outgoing == whole.outgoing and s.eof


def test_byte_by_byte() -> None:
    s = Session(1 << 20)
    got: list[bytes] = []
    for i in range(len(STREAM)):
        got += s.feed(STREAM[i : i + 1])
    assert len(got) == 3 and s.eof


def test_client_close_is_echoed_and_the_server_closes_tcp() -> None:
    s = Session(1 << 20)
    body = (1001).to_bytes(2, "big") + "adiós".encode()
    assert s.feed(frame(8, body) + frame(1, b"after")) == []
    assert s.outgoing == [bytes((0x88, len(body))) + body]
    assert s.eof and s.state is State.CLOSED and s.failure == 0
    assert s.feed(frame(1, b"later")) == []  # nothing is read after the close


def test_empty_close_is_echoed_empty() -> None:
    s = Session(1 << 20)
    s.feed(frame(8))
    assert s.outgoing == [b"\x88\x00"] and s.eof


def test_server_close_waits_for_the_clients_then_ends() -> None:
    s = Session(1 << 20)
    s.send_close(4008, "slow")
    assert s.state is State.CLOSING and close_code(s.outgoing) == 4008
    s.outgoing.clear()
    assert s.feed(frame(1, b"in flight")) == []  # data after our close is not delivered
    s.feed(frame(8, (4008).to_bytes(2, "big")))
    assert s.outgoing == [] and s.eof and s.state is State.CLOSED


def test_close_reason_is_cut_to_fit_a_control_frame() -> None:
    s = Session(1 << 20)
    s.send_close(1008, "é" * 100)
    (out,) = s.outgoing
    assert out[1] <= 125 and len(out) == 2 + out[1]
    out[4:].decode()  # cut at a character boundary


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (frame(1, b"x", masked=False), 1002),  # client frames must be masked
        (frame(3, b"x"), 1002),  # reserved data opcode
        (frame(0xB, b"x"), 1002),  # reserved control opcode
        (frame(1, b"x", rsv=0x20), 1002),  # RSV2
        (frame(1, b"x", rsv=0x10), 1002),  # RSV3
        (frame(1, b"x", rsv=0x40), 1002),  # RSV1 without deflate negotiated
        (frame(9, b"x", fin=False), 1002),  # fragmented control frame
        (frame(9, b"x" * 126), 1002),  # control frame over 125 bytes
        (frame(9, b"x", rsv=0x40), 1002),
        (frame(0, b"x"), 1002),  # continuation with no message started
        (frame(1, b"x", fin=False) + frame(1, b"y"), 1002),  # a new message inside one
        (frame(8, b"\x03"), 1002),  # close payload of one byte
        (frame(8, (1005).to_bytes(2, "big")), 1002),  # reserved close code
        (frame(8, (999).to_bytes(2, "big")), 1002),
        (frame(8, (2000).to_bytes(2, "big")), 1002),
        (frame(8, (5000).to_bytes(2, "big")), 1002),
        (frame(8, (1000).to_bytes(2, "big") + b"\xff\xfe"), 1007),  # reason not UTF-8
        (frame(1, b"x", fin=False) + frame(8, (1000).to_bytes(2, "big")), 1002),  # mid-message
        (frame(1, b"x" * 1025), 1009),
        (frame(1, b"x" * 600, fin=False) + frame(0, b"x" * 425), 1009),  # too big once joined
    ],
)
def test_bad_frames_fail_the_connection_with_the_right_code(data: bytes, code: int) -> None:
    s = Session(1024)
    messages = s.feed(data + frame(1, b"never"))
    assert messages == []
    assert s.failure == code and close_code(s.outgoing) == code
    assert s.eof and s.state is State.CLOSED


def test_a_huge_declared_length_fails_on_the_header_and_buffers_nothing() -> None:
    s = Session(1 << 20)
    s.feed(frame(1, length=1 << 62)[:10])  # the header alone: the payload never comes
    assert s.failure == 1009 and not s.buffered


def test_a_frame_waits_for_its_rest_and_only_that_is_kept() -> None:
    s = Session(1 << 20)
    data = frame(1, b"x" * 1000)
    assert s.feed(data[:500]) == [] and s.buffered
    assert s.feed(data[500:]) == [b"x" * 1000] and not s.buffered


def test_messages_before_a_failure_are_delivered() -> None:
    s = Session(1024)
    assert s.feed(frame(1, b"ok") + frame(1, b"x", masked=False)) == [b"ok"]
    assert s.failure == 1002


def test_binary_is_flagged_and_text_after_it_is_not_delivered() -> None:
    s = Session(1024)
    assert s.feed(frame(1, b"a") + frame(2, b"\x00\x01", fin=False) + frame(0, b"\x02") + frame(1, b"b")) == [
        b"a"
    ]
    assert s.binary and s.failure == 0


def test_bytes_kept_from_the_handshake_are_read_first() -> None:
    s = Session(1024)
    s.keep(frame(1, b"early")[:4])
    assert s.buffered
    assert s.feed(frame(1, b"early")[4:]) == [b"early"]


def test_outbound_frames_are_unmasked_with_the_right_header() -> None:
    s = Session(1 << 20)
    for n, head in [(0, b"\x81\x00"), (125, b"\x81\x7d"), (126, b"\x81\x7e\x00\x7e"), (65536, b"\x81\x7f")]:
        out = s.send_text(b"a" * n)
        assert out.startswith(head) and out.endswith(b"a" * n)
    assert len(s.send_text(b"a" * 65536)) == 2 + 8 + 65536


def test_ping_goes_out_unmasked_and_only_while_open() -> None:
    s = Session(1024)
    s.send_ping(b"x")
    assert s.outgoing == [b"\x89\x01x"]
    s.send_close(1000)
    s.send_ping()
    assert len(s.outgoing) == 2


# ----------------------------------------------------------------------------------- deflate


def test_compressed_messages_are_inflated_whole_and_fragmented() -> None:
    s = Session(1 << 20, DEFLATE)
    msg = b'{"event":"printer.status","data":{"x":"' + b"abc" * 500 + b'"}}'
    z = deflated(msg)
    fragmented = frame(1, z[:10], fin=False, rsv=0x40) + frame(9) + frame(0, z[10:20], fin=False)
    fragmented += frame(0, z[20:])
    assert s.feed(frame(1, z, rsv=0x40) + fragmented + frame(1, b"plain")) == [msg, msg, b"plain"]


def test_max_size_is_enforced_on_the_inflated_size_deflate_bomb() -> None:
    s = Session(1 << 20, DEFLATE)
    bomb = deflated(b"\x00" * (50 << 20))  # 50 MB of zeros in ~50 KB
    assert len(bomb) < 100_000
    assert s.feed(frame(1, bomb, rsv=0x40)) == []
    assert s.failure == 1009 and close_code(s.outgoing) == 1009


def test_a_compressed_message_of_exactly_max_size_fits() -> None:
    s = Session(4096, DEFLATE)
    assert s.feed(frame(1, deflated(b"q" * 4096), rsv=0x40)) == [b"q" * 4096]
    s = Session(4096, DEFLATE)
    assert s.feed(frame(1, deflated(b"q" * 4097), rsv=0x40)) == [] and s.failure == 1009


def test_rsv1_on_a_continuation_and_corrupt_deflate_are_protocol_errors() -> None:
    s = Session(1 << 20, DEFLATE)
    s.feed(frame(1, deflated(b"abc"), fin=False, rsv=0x40) + frame(0, b"", rsv=0x40))
    assert s.failure == 1002
    s = Session(1 << 20, DEFLATE)
    s.feed(frame(1, b"\xff\xff\xff\xff", rsv=0x40))
    assert s.failure == 1002


def test_outbound_deflate_from_min_size_and_websockets_reads_it() -> None:
    s = Session(1 << 20, DEFLATE)
    client = ClientProtocol(parse_uri("ws://printd/printing-ws"), state=State.OPEN)
    client.extensions = [PerMessageDeflate(True, True, 10, 10)]
    small, big = b'{"event":"ack","id":1}', b'{"event":"x","data":"' + b"status " * 200 + b'"}'
    out_small, out_big = s.send_text(small), s.send_text(big)
    assert out_small[0] == 0x81 and out_big[0] == 0xC1 and len(out_big) < len(big) / 3
    client.receive_data(out_small + out_big)
    events = [e for e in client.events_received() if isinstance(e, Frame)]
    assert [(e.opcode, e.data) for e in events] == [(Opcode.TEXT, small), (Opcode.TEXT, big)]


def test_what_websockets_sends_is_read() -> None:
    """Interop with websockets' client engine, deflate on: whole, fragmented, ping, close."""
    s = Session(1 << 20, DEFLATE)
    client = ClientProtocol(parse_uri("ws://printd/printing-ws"), state=State.OPEN)
    client.extensions = [PerMessageDeflate(True, True, 10, 10)]
    big = b"status " * 300
    client.send_text(b"hello")
    client.send_text(big[:700], fin=False)
    client.send_ping(b"p")
    client.send_continuation(big[700:], fin=True)
    client.send_close(1000, "done")
    assert s.feed(b"".join(client.data_to_send())) == [b"hello", big]
    client.receive_data(b"".join(s.outgoing))
    frames = [e for e in client.events_received() if isinstance(e, Frame)]
    assert frames[0].opcode is Opcode.PONG and Close.parse(frames[1].data).code == 1000
    assert s.eof


def test_make_session_takes_what_the_handshake_negotiated() -> None:
    cfg = CompressionConfig(enabled=True)
    assert make_session(1024, cfg).deflate is None
    sess = make_session(1024, cfg, Negotiated(True, True, 10, 12))
    assert sess.deflate is not None
    assert (sess.deflate.inbound_wbits, sess.deflate.outbound_wbits) == (12, 10)
    assert sess.deflate.min_size == cfg.min_size
    unbounded = make_session(1024, cfg, Negotiated(True, True, None, None)).deflate
    assert unbounded is not None and (unbounded.inbound_wbits, unbounded.outbound_wbits) == (15, 15)
    with pytest.raises(ValueError, match="context takeover"):
        make_session(1024, cfg, Negotiated(True, False, 10, 12))
