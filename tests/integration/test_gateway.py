"""The one-port gateway against real printd processes and real WebSocket clients."""

from __future__ import annotations

import base64
import os
import signal
import time
from typing import Any

import httpx
import orjson
import pytest
import trio

from printctl.wsclient import ConnectionClosed, HandshakeRejected, WsClient, ws_url
from tests.conftest import Printd, token
from tests.scripted import sentinel


async def raw_upgrade(port: int, tok: str, extra: str = "") -> tuple[trio.SocketStream, bytes]:
    """A hand-made upgrade (no client engine): for clients that misbehave on purpose."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16)).decode()
    await stream.send_all(
        (
            f"GET /printing-ws?token={tok} HTTP/1.1\r\nHost: x\r\n"
            f"Upgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
        ).encode()
    )
    buf = b""
    with trio.fail_after(10):
        while b"\r\n\r\n" not in buf:
            chunk = await stream.receive_some(4096)
            if not chunk:
                break  # closed before a complete answer: the assert below shows what came
            buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101"), head
    return stream, rest


def masked_text(payload: bytes) -> bytes:
    n = len(payload)
    head = bytes([0x81, 0x80 | n]) if n < 126 else bytes([0x81, 0xFE]) + n.to_bytes(2, "big")
    return head + b"\0\0\0\0" + payload


async def read_close_code(stream: trio.SocketStream, rest: bytes = b"", timeout: float = 10) -> int | None:
    """Read server frames until a close frame; its code, or None if TCP closed without one."""
    buf = bytearray(rest)
    with trio.fail_after(timeout):
        while True:
            while len(buf) >= 2:
                n = buf[1] & 0x7F
                h = 2
                if n == 126:
                    n, h = int.from_bytes(buf[2:4], "big"), 4
                elif n == 127:
                    n, h = int.from_bytes(buf[2:10], "big"), 10
                if len(buf) < h + n:
                    break
                opcode, payload = buf[0] & 0x0F, bytes(buf[h : h + n])
                del buf[: h + n]
                if opcode == 8:
                    return int.from_bytes(payload[:2], "big")
            try:
                data = await stream.receive_some(65536)
            except trio.BrokenResourceError:
                return None
            if not data:
                return None
            buf += data


def printer_ids(messages: list[dict[str, Any]]) -> set[str]:
    return {p["printer_id"] for m in messages for p in m["data"]["printers"]}


async def connect(p: Printd, role: str = "agent", company: str = "acme", **kw: Any) -> WsClient:
    sub = kw.pop("sub", None)
    branch = kw.pop("branch", None)
    client = await WsClient.connect(ws_url(p.url), token=token(role, company, sub=sub, branch=branch), **kw)
    hello = await client.recv(5)
    assert hello["event"] == "hello" and hello["data"]["role"] == role
    return client


# ------------------------------------------------------------------ plain HTTP on the same port


def test_health_404_405_and_malformed_request(printd: Printd) -> None:
    r = printd.get("/monitoring/health")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ok" and body["instance"] and body["uptime"] >= 0
    assert set(body["checks"]) == {"memory", "cpu", "errors"}
    assert printd.get("/nope").status_code == 404
    r = httpx.delete(printd.url + "/monitoring/health")
    assert r.status_code == 405 and "GET" in r.headers["allow"]
    with socket_conn(printd.port) as s:
        s.sendall(b"BLAH\x00\x01 nonsense\r\n\r\n")
        assert s.recv(4096).startswith(b"HTTP/1.1 400")
    admin = token("admin", "*", sub="ops-1")
    assert "printd_connections" in printd.get("/monitoring/metrics", admin).text
    inst = printd.get("/monitoring/instance", admin).json()
    assert {"connections", "bytes", "memory", "cpu_percent", "rates"} <= inst.keys()
    assert printd.get("/monitoring/health").status_code == 200  # still up


def socket_conn(port: int) -> Any:
    import socket

    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    return s


# ------------------------------------------------------------------ upgrade checks


async def test_auth_failures_are_refused_before_the_upgrade(printd: Printd) -> None:
    url = ws_url(printd.url)
    cases = [
        (None, 401, "missing token"),
        ("garbage.token.here", 401, "invalid token"),
        (token("agent", ttl=-120), 401, "token expired"),
        (token("service"), 403, "role 'service'"),
    ]
    for tok, status, text in cases:
        with pytest.raises(HandshakeRejected) as exc:
            await WsClient.connect(url, token=tok)
        assert exc.value.status == status and text in exc.value.message
    client = await connect(printd)  # a good token still works
    await client.close()


async def upgrade_answer(port: int, request: bytes) -> bytes:
    """Send a hand-made request and read what comes back until the server closes."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(request)
    answer = b""
    with trio.fail_after(10):
        while chunk := await stream.receive_some(4096):
            answer += chunk
    await stream.aclose()
    return answer


async def test_invalid_upgrades_are_refused_with_the_reason(printd: Printd) -> None:
    """RFC 6455 4.2.2: an unknown version gets a 426 naming the version the server speaks;
    a key that is not 16 bytes in base64, a 400 saying so. The process stays up."""
    tok = token("agent")
    base = (
        f"GET /printing-ws?token={tok} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    )
    key = base64.b64encode(os.urandom(16)).decode()
    old = await upgrade_answer(
        printd.port, f"{base}Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 8\r\n\r\n".encode()
    )
    assert old.startswith(b"HTTP/1.1 426") and b"\r\nsec-websocket-version: 13\r\n" in old.lower(), old
    assert b"this server speaks 13" in old
    short = base64.b64encode(b"x" * 8).decode()
    bad = await upgrade_answer(
        printd.port, f"{base}Sec-WebSocket-Key: {short}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    assert bad.startswith(b"HTTP/1.1 400") and b"base64 encoding of 16 bytes" in bad, bad
    client = await connect(printd)
    await client.close()


async def test_frames_sent_with_the_head_reach_the_session(printd: Printd) -> None:
    """What the client writes right after its request head (here a ping, in the same write and
    after a keep-alive request on the same connection) is the session's first frame."""
    stream = await trio.open_tcp_stream("127.0.0.1", printd.port)
    key = base64.b64encode(os.urandom(16)).decode()
    upgrade = (
        f"GET /printing-ws?token={token('agent')} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()
    ping = masked_text(b'{"event":"ping","id":7}')
    await stream.send_all(b"GET /monitoring/health HTTP/1.1\r\nHost: x\r\n\r\n" + upgrade + ping)
    buf = b""
    with trio.fail_after(10):
        while b'"id":7' not in buf:
            chunk = await stream.receive_some(65536)
            assert chunk, buf
            buf += chunk
    assert buf.startswith(b"HTTP/1.1 200") and b"HTTP/1.1 101 Switching Protocols\r\n" in buf
    assert b'{"event":"ack","id":7,"data":{}}' in buf
    await stream.aclose()


async def test_origin_must_match_cors_origins(printd_factory: Any) -> None:
    p = printd_factory(config={"auth": {"cors_origins": ["https://dash.example.com"]}})
    url = ws_url(p.url)
    with pytest.raises(HandshakeRejected) as exc:
        await WsClient.connect(url, token=token("dashboard"), headers={"Origin": "https://evil.example"})
    assert exc.value.status == 403 and "origin" in exc.value.message
    ok = await WsClient.connect(url, token=token("dashboard"), headers={"Origin": "https://dash.example.com"})
    await ok.close()
    no_origin = await WsClient.connect(url, token=token("agent"))  # agents are not browsers
    await no_origin.close()


async def test_deflate_negotiated_with_design_parameters_and_optional(printd: Printd) -> None:
    dash = await connect(printd, "dashboard", deflate=True)
    assert dash.compressed
    assert dash.response is not None
    ext = dash.response.headers["Sec-WebSocket-Extensions"]
    assert "permessage-deflate" in ext and "server_max_window_bits=10" in ext
    assert "server_no_context_takeover" in ext and "client_no_context_takeover" in ext
    await dash.recv(5)  # snapshot
    plain = await connect(printd, "dashboard", sub="dash-plain", deflate=False)
    assert not plain.compressed
    await plain.recv(5)
    agent = await connect(printd)
    await agent.send("printer.status", {"printer_id": "p1", "status": "online", "blob": "lorem ipsum " * 300})
    b1 = await dash.recv_event("printer.status.batch")
    b2 = await plain.recv_event("printer.status.batch")
    assert b1 == b2 and b1["data"]["printers"][0]["printer_id"] == "p1"
    # the same ~4 KB batch: compressed on the wire for one, not for the other
    assert dash.counters.received_wire < dash.counters.received_raw / 2
    assert plain.counters.received_wire > plain.counters.received_raw
    for c in (dash, plain, agent):
        await c.close()


async def test_oversize_message_closes_1009_and_server_stays_up(printd: Printd) -> None:
    agent = await connect(printd)
    await agent.send_raw(b'{"event":"ping","data":{"x":"' + b"a" * (1_048_576 + 10) + b'"}}')
    with pytest.raises(ConnectionClosed) as exc:
        await agent.recv(10)
    assert exc.value.code == 1009
    other = await connect(printd)
    await other.send("ping", id=1)
    assert (await other.recv(5))["event"] == "ack"
    await other.close()


async def test_garbage_bytes_after_upgrade_close_1002(printd: Printd) -> None:
    stream, rest = await raw_upgrade(printd.port, token("agent"))
    bystander = await connect(printd, sub="agent-2")
    await stream.send_all(b"\xff\xff\xff garbage that is not a frame" * 3)
    assert await read_close_code(stream, rest) == 1002
    await bystander.send("ping", id=5)
    assert (await bystander.recv(5)) == {"event": "ack", "id": 5, "data": {}}
    await bystander.close()


async def test_bad_frames_get_error_events_then_1008(printd: Printd) -> None:
    agent = await connect(printd)
    await agent.send_raw(b"not json")
    assert (await agent.recv(5))["data"]["code"] == "bad_json"
    await agent.send_raw(b'{"event":"printer.status","data":{"status":"online"}}')
    err = await agent.recv(5)
    assert err["data"]["code"] == "invalid_data" and "printer_id" in err["data"]["message"]
    await agent.send("no.such.event", id=3)
    err = await agent.recv(5)
    assert err == {
        "event": "error",
        "id": 3,
        "data": {"code": "unknown_event", "message": "unknown event 'no.such.event'"},
    }
    with pytest.raises(ConnectionClosed) as exc:  # the abuse continues: default budget is 20/min
        for _ in range(30):
            await agent.send_raw(b"[]")
        while True:
            await agent.recv(5)
    assert exc.value.code == 1008


async def test_binary_frames_close_1003(printd: Printd) -> None:
    agent = await connect(printd)
    await agent.send_raw(b"\x00\x01", binary=True)
    with pytest.raises(ConnectionClosed) as exc:
        await agent.recv(5)
    assert exc.value.code == 1003


def send_fragments(client: WsClient, parts: list[bytes]) -> None:
    """One text message as a TEXT frame and CONT frames (RFC 6455 fragmentation)."""
    client.proto.send_text(parts[0], fin=len(parts) == 1)
    for i, part in enumerate(parts[1:], 2):
        client.proto.send_continuation(part, fin=i == len(parts))


@pytest.mark.parametrize("deflate", [False, True])
async def test_fragmented_text_messages_are_parsed_whole(printd: Printd, deflate: bool) -> None:
    dash = await connect(printd, "dashboard", deflate=deflate)
    await dash.recv_event("printer.status.snapshot")
    agent = await connect(printd, deflate=deflate)
    msg = orjson.dumps({"event": "ping", "id": 41, "data": {"pad": "é" * 300}})
    cut = msg.index("é".encode()) + 1  # splits a two-byte character between fragments
    send_fragments(agent, [msg[:cut], msg[cut:300], msg[300:]])
    await agent._flush()
    assert await agent.recv(5) == {"event": "ack", "id": 41, "data": {}}
    # fragments in separate TCP writes, a ping frame between them, then a whole message
    status = orjson.dumps({"event": "printer.status", "id": 42, "data": {"printer_id": "p1", "status": "ok"}})
    agent.proto.send_text(status[:20], fin=False)
    await agent._flush()
    agent.proto.send_ping(b"between")
    agent.proto.send_continuation(status[20:], fin=True)
    await agent._flush()
    await agent.send("ping", id=43)
    assert [await agent.recv(5) for _ in range(2)] == [
        {"event": "ack", "id": 42, "data": {}},
        {"event": "ack", "id": 43, "data": {}},
    ]
    batch = await dash.recv_event("printer.status.batch")
    assert batch["data"]["printers"][0]["status"] == "ok"
    await agent.close()
    await dash.close()


async def test_fragmented_message_over_the_size_limit_closes_1009(printd_factory: Any) -> None:
    p = printd_factory(config={"server": {"max_message_bytes": 4096}})
    agent = await connect(p, deflate=False)
    send_fragments(agent, [b'{"event":"ping","data":{"x":"' + b"a" * 3000, b"a" * 3000 + b'"}}'])
    await agent._flush()
    with pytest.raises(ConnectionClosed) as exc:
        await agent.recv(10)
    assert exc.value.code == 1009


@pytest.mark.parametrize("fragmented", [False, True])
async def test_invalid_utf8_in_a_text_frame_closes_1007(printd: Printd, fragmented: bool) -> None:
    agent = await connect(printd, deflate=False)
    bad = b'{"event":"ping","id":1,"data":{"x":"\xc3\x28"}}'
    send_fragments(agent, [bad[:30], bad[30:]] if fragmented else [bad])
    await agent._flush()
    with pytest.raises(ConnectionClosed) as exc:
        await agent.recv(10)
    assert exc.value.code == 1007
    bystander = await connect(printd, sub="agent-2")
    await bystander.send("ping", id=2)
    assert (await bystander.recv(5))["id"] == 2
    await bystander.close()


async def test_handshake_stall_is_cut_after_the_timeout(printd_factory: Any) -> None:
    p = printd_factory(config={"server": {"handshake_timeout": 1.0}})
    stream = await trio.open_tcp_stream("127.0.0.1", p.port)
    await stream.send_all(b"GET /printing-ws HTTP/1.1\r\nHost: x\r\n")  # never finishes the head
    start = time.monotonic()
    with trio.fail_after(10):
        data = b""
        while True:
            chunk = await stream.receive_some(4096)
            if not chunk:
                break
            data += chunk
    assert 0.8 < time.monotonic() - start < 5
    assert data.startswith(b"HTTP/1.1 408")
    client = await connect(p)  # others are served
    await client.close()


async def test_silent_peer_is_closed_after_ping_timeout(printd_factory: Any) -> None:
    p = printd_factory(config={"server": {"ping_interval": 0.5, "ping_timeout": 1.5}})
    start = time.monotonic()  # before printd hears from it for the last time
    silent, _ = await raw_upgrade(p.port, token("agent"))  # never reads, never answers pings
    alive = await connect(p, sub="agent-2")  # its engine answers pings while it reads
    async with trio.open_nursery() as nursery:

        async def keep_reading() -> None:
            while True:
                await alive.recv()

        nursery.start_soon(keep_reading)
        with trio.fail_after(5):
            while await silent.receive_some(65536):
                pass
        nursery.cancel_scope.cancel()
    assert 1.5 <= time.monotonic() - start < 6
    await alive.send("ping", id=9)
    assert (await alive.recv(5))["id"] == 9
    await alive.close()


# ------------------------------------------------------------------ status fan-out


async def test_tenant_isolation(printd: Printd) -> None:
    dash_a = await connect(printd, "dashboard", "acme", sub="dash-a")
    dash_b = await connect(printd, "dashboard", "globex", sub="dash-b")
    await dash_a.recv_event("printer.status.snapshot")
    await dash_b.recv_event("printer.status.snapshot")
    agent_a = await connect(printd, "agent", "acme", sub="agent-a")
    agent_b = await connect(printd, "agent", "globex", sub="agent-b")
    for i in range(5):
        await agent_a.send("printer.status", {"printer_id": f"a-{i}", "status": "online"})
        await agent_b.send("printer.status", {"printer_id": f"b-{i}", "status": "paper_low"})
    want = {"a": {f"a-{i}" for i in range(5)}, "b": {f"b-{i}" for i in range(5)}}
    seen: dict[str, set[str]] = {"a": set(), "b": set()}
    with trio.fail_after(10):
        for name, dash in (("a", dash_a), ("b", dash_b)):
            while not want[name] <= seen[name]:
                seen[name] |= printer_ids([await dash.recv()])
    # each tick queues every company's batch at once: anything leaked to the other company's
    # dashboards was queued with what they just read, so it would come before the pong
    for name, dash in (("a", dash_a), ("b", dash_b)):
        seen[name] |= printer_ids(await sentinel(dash))
    assert seen == want
    late = await connect(printd, "dashboard", "globex", sub="dash-b2")
    snap = await late.recv_event("printer.status.snapshot")
    assert {p["printer_id"] for p in snap["data"]["printers"]} == {f"b-{i}" for i in range(5)}
    for c in (dash_a, dash_b, agent_a, agent_b, late):
        await c.close()


async def test_updates_within_a_window_arrive_as_one_latest_state(printd: Printd) -> None:
    dash = await connect(printd, "dashboard")
    await dash.recv_event("printer.status.snapshot")
    agent = await connect(printd)
    await agent.send("printer.status", {"printer_id": "p1", "status": "online", "seq": -1})
    first = await dash.recv_event("printer.status.batch")
    assert [p["seq"] for p in first["data"]["printers"]] == [-1]
    # ten updates of one printer in one write: they land in one 100 ms window
    for i in range(10):
        agent.proto.send_text(
            orjson.dumps(
                {"event": "printer.status", "data": {"printer_id": "p1", "status": "busy", "seq": i}}
            )
        )
    await agent._flush()
    batch = await dash.recv_event("printer.status.batch")
    items = batch["data"]["printers"]
    assert len(items) == 1 and items[0]["seq"] == 9 and items[0]["status"] == "busy"
    assert items[0]["agent_id"] == "agent-1" and items[0]["branch"] == "b1"
    # nothing of those ten is left for a later window: the next batch holds only another printer
    await agent.send("printer.status", {"printer_id": "p2", "status": "online", "seq": 100})
    after = await dash.recv()
    assert after["event"] == "printer.status.batch"
    assert [(p["printer_id"], p["seq"]) for p in after["data"]["printers"]] == [("p2", 100)]
    await agent.close()
    await dash.close()


async def test_slow_dashboard_is_disconnected_and_others_unaffected(printd_factory: Any) -> None:
    p = printd_factory(
        config={
            "server": {"send_queue_max_bytes": 256 * 1024, "write_timeout": 30.0},
            "status": {"max_printers_per_agent": 400},
        }
    )
    slow, _ = await raw_upgrade(p.port, token("dashboard", sub="slow"))  # never reads
    slow.socket.setsockopt(__import__("socket").SOL_SOCKET, __import__("socket").SO_RCVBUF, 4096)
    good = await connect(p, "dashboard", sub="good", deflate=False)
    agent = await connect(p, deflate=False)
    blob = "x" * 3500
    received: set[str] = set()
    everything = trio.Event()
    async with trio.open_nursery() as nursery:

        async def reader() -> None:
            while True:
                msg = await good.recv()
                if msg["event"] == "printer.status.batch":
                    received.update(printer_ids([msg]))
                    if len(received) == 400:
                        everything.set()

        nursery.start_soon(reader)
        for i in range(400):  # ~1.4 MB in 4 s: far beyond the slow one's queue
            await agent.send("printer.status", {"printer_id": f"p{i}", "status": "online", "blob": blob})
            await trio.sleep(0.01)
        with trio.fail_after(10):
            await everything.wait()  # the good dashboard got every printer
        nursery.cancel_scope.cancel()
    stats = p.get("/monitoring/instance", token("admin", "*", sub="ops-1")).json()
    assert stats["errors"]["slow_consumers"] >= 1
    assert stats["connections"]["dashboard"] == 1  # the slow one is gone
    await agent.close()
    await good.close()


# ------------------------------------------------------------------ shutdown


async def test_sigterm_flushes_batches_tells_agents_to_reconnect_now_and_exits_0(printd: Printd) -> None:
    dash = await connect(printd, "dashboard")
    await dash.recv_event("printer.status.snapshot")
    agent = await connect(printd)
    await agent.send("printer.status", {"printer_id": "p1", "status": "online"})
    await agent.send("ping", id=1)
    await agent.recv_event("ack")  # the update is in the batcher
    assert printd.proc is not None
    printd.proc.send_signal(signal.SIGTERM)
    batch = await dash.recv_event("printer.status.batch", timeout=5)
    assert batch["data"]["printers"][0]["printer_id"] == "p1"
    with pytest.raises(ConnectionClosed) as exc:
        while True:
            await dash.recv(10)
    assert exc.value.code == 1001
    with pytest.raises(ConnectionClosed) as exc2:
        while True:
            await agent.recv(10)
    assert exc2.value.code == 4012  # reconnect now, to another instance
    start = time.monotonic()
    assert await trio.to_thread.run_sync(printd.proc.wait, 15) == 0
    assert time.monotonic() - start < 10


def test_production_refuses_default_secret_and_missing_origins(tmp_path: Any) -> None:
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("JWT_SECRET", "CORS_ORIGINS")}
    run = [sys.executable, "-m", "printd", "run", "--production", "--data-dir", str(tmp_path), "--port", "0"]
    r = subprocess.run(
        run, env={**env, "JWT_SECRET": "change-me"}, capture_output=True, text=True, timeout=30
    )
    assert r.returncode == 2 and "JWT_SECRET" in r.stderr and "change-me" not in r.stderr
    secret = "f1d2d2f924e986ac86fdf7b36c94bcdf32beec15a38d4e1b7b8a7c0e9d5a1f3c"
    r = subprocess.run(run, env={**env, "JWT_SECRET": secret}, capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "CORS_ORIGINS" in r.stderr and secret not in r.stderr
