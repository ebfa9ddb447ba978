#!/usr/bin/env python3
"""Peer gateway: asyncio + websockets 17 (new asyncio API), printd's protocol.

The token is checked in `process_request` (HTTP 401 before the upgrade). Keepalive pings are
off (the load client never needs them); permessage-deflate is websockets' default
("deflate", 12-bit windows, used only when the client offers it) unless `--compression none`.
Dashboards get their company's batches through `broadcast()` (non-blocking).

    JWT_SECRET=... python asyncio_peer.py --port 9001 [--batch-ms 100] [--compression deflate|none]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import signal
from http import HTTPStatus

import websockets
from peercommon import HOST, StatusHub, hello, jwt_secret, path_ok, token_from, verify_token
from websockets.asyncio.server import ServerConnection, broadcast, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response


def raise_nofile() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class Peer:
    def __init__(self, secret: str, batch_ms: float) -> None:
        self.secret = secret
        self.batch_s = batch_ms / 1000.0
        self.hub = StatusHub(batch_ms)

    def process_request(self, conn: ServerConnection, request: Request) -> Response | None:
        claims = None
        if path_ok(request.path):
            token = token_from(request.path, request.headers.get("Authorization"))
            claims = verify_token(token, self.secret)
        if claims is None:
            return conn.respond(HTTPStatus.UNAUTHORIZED, "unauthorized\n")
        conn.claims = claims  # type: ignore[attr-defined]  # read by handler()
        return None

    async def handler(self, ws: ServerConnection) -> None:
        claims = ws.claims  # type: ignore[attr-defined]
        hub = self.hub
        company = claims.get("company")
        is_dashboard = claims["role"] == "dashboard"
        try:
            await ws.send(hello(claims), text=True)
            if is_dashboard:
                await ws.send(hub.snapshot(company), text=True)
                hub.dashboards[company].add(ws)
            while True:
                raw = await ws.recv(decode=False)
                reply = hub.on_message(claims, raw)
                if reply is not None:
                    await ws.send(reply, text=True)
                if hub.outbox:
                    for dashboards, payload in hub.take_outbox():
                        broadcast(dashboards, payload, text=True)
        except ConnectionClosed:
            pass
        finally:
            if is_dashboard:
                hub.dashboards[company].discard(ws)

    async def batcher(self) -> None:
        loop = asyncio.get_running_loop()
        next_t = loop.time()
        while True:
            next_t += self.batch_s
            await asyncio.sleep(max(0.0, next_t - loop.time()))
            for dashboards, payload in self.hub.flush():
                broadcast(dashboards, payload, text=True)


async def main(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
    peer = Peer(jwt_secret(), args.batch_ms)
    compression = None if args.compression == "none" else "deflate"
    async with serve(
        peer.handler,
        HOST,
        args.port,
        process_request=peer.process_request,
        compression=compression,
        ping_interval=None,
        max_size=2**20,
        backlog=4096,
    ):
        batcher = asyncio.create_task(peer.batcher()) if args.batch_ms > 0 else None
        print(
            json.dumps(
                {
                    "ready": True,
                    "impl": "asyncio",
                    "port": args.port,
                    "batch_ms": args.batch_ms,
                    "compression": args.compression,
                    "websockets": websockets.__version__,
                }
            ),
            flush=True,
        )
        await stop
        if batcher:
            batcher.cancel()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument(
        "--batch-ms", type=float, default=100.0, help="batch period; 0: forward each update at once"
    )
    ap.add_argument("--compression", choices=["deflate", "none"], default="deflate")
    raise_nofile()
    asyncio.run(main(ap.parse_args()))
