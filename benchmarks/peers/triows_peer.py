#!/usr/bin/env python3
"""Peer gateway: trio + trio-websocket 0.12, printd's protocol.

The handler checks the token before accepting and rejects with HTTP 401
(`request.reject(401)`). trio-websocket has no permessage-deflate, so this peer never
compresses. A batcher task sends each company's batch to its dashboards in turn.

    JWT_SECRET=... python triows_peer.py --port 9002 [--batch-ms 100]
"""

from __future__ import annotations

import argparse
import json
import resource
import signal
from typing import Any

import trio
from peercommon import HOST, StatusHub, hello, jwt_secret, path_ok, token_from, verify_token
from trio_websocket import ConnectionClosed, WebSocketConnection, WebSocketRequest, serve_websocket


def raise_nofile() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def authorization(request: WebSocketRequest) -> str | None:
    for name, value in request.headers:
        if name.lower() == b"authorization":
            return value.decode("latin-1")
    return None


async def send_all(targets: list[WebSocketConnection], payload: str) -> None:
    for ws in targets:
        try:
            await ws.send_message(payload)
        except ConnectionClosed:
            pass


class Peer:
    def __init__(self, secret: str, batch_ms: float) -> None:
        self.secret = secret
        self.batch_s = batch_ms / 1000.0
        self.hub = StatusHub(batch_ms)

    async def handler(self, request: WebSocketRequest) -> None:
        claims: dict[str, Any] | None = None
        if path_ok(request.path):
            claims = verify_token(token_from(request.path, authorization(request)), self.secret)
        if claims is None:
            await request.reject(401, body=b"unauthorized\n")
            return
        ws = await request.accept()
        hub = self.hub
        company = claims.get("company")
        is_dashboard = claims["role"] == "dashboard"
        try:
            await ws.send_message(hello(claims).decode())
            if is_dashboard:
                await ws.send_message(hub.snapshot(company).decode())
                hub.dashboards[company].add(ws)
            while True:
                raw = await ws.get_message()
                reply = hub.on_message(claims, raw)
                if reply is not None:
                    await ws.send_message(reply.decode())
                if hub.outbox:
                    for dashboards, payload in hub.take_outbox():
                        await send_all(list(dashboards), payload.decode())
        except ConnectionClosed:
            pass
        finally:
            if is_dashboard:
                hub.dashboards[company].discard(ws)

    async def batcher(self) -> None:
        next_t = trio.current_time()
        while True:
            next_t += self.batch_s
            await trio.sleep_until(next_t)
            for dashboards, payload in self.hub.flush():
                await send_all(list(dashboards), payload.decode())


async def main(args: argparse.Namespace) -> None:
    peer = Peer(jwt_secret(), args.batch_ms)
    async with trio.open_nursery() as nursery:
        if args.batch_ms > 0:
            nursery.start_soon(peer.batcher)
        await nursery.start(serve_websocket, peer.handler, HOST, args.port, None)
        print(
            json.dumps(
                {
                    "ready": True,
                    "impl": "triows",
                    "port": args.port,
                    "batch_ms": args.batch_ms,
                    "compression": "none",
                }
            ),
            flush=True,
        )
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for _ in signals:
                nursery.cancel_scope.cancel()
                break


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument(
        "--batch-ms", type=float, default=100.0, help="batch period; 0: forward each update at once"
    )
    ap.add_argument("--compression", choices=["none"], default="none", help="trio-websocket has no deflate")
    raise_nofile()
    trio.run(main, ap.parse_args())
