"""What the Python peers share: the token check and the status hub.

The hub holds the protocol's state and rules, independent of the WebSocket library:
per (company, printer_id) the latest status wins; every batch period each company's
changed printers go as ONE `printer.status.batch` message to that company's dashboards
only; with a period of 0 each update is forwarded at once (one item per message).
"""

from __future__ import annotations

import os
import time
from collections import defaultdict
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jwt
import orjson

WS_PATH = "/printing-ws"
ROLES = frozenset({"agent", "dashboard", "service", "admin"})
HOST = "127.0.0.1"


def jwt_secret() -> str:
    secret = os.environ.get("JWT_SECRET")
    if not secret:
        raise SystemExit("JWT_SECRET is not set")
    return secret


def token_from(path: str, authorization: str | None) -> str | None:
    """Token from `?token=` or from `Authorization: Bearer`."""
    query = parse_qs(urlsplit(path).query)
    if query.get("token"):
        return query["token"][0]
    if authorization and authorization[:7].lower() == "bearer ":
        return authorization[7:].strip()
    return None


def path_ok(path: str) -> bool:
    return urlsplit(path).path == WS_PATH


def verify_token(token: str | None, secret: str) -> dict[str, Any] | None:
    """Claims of a valid HS256 token (signature, expiry, role, company), else None."""
    if not token:
        return None
    try:
        claims = jwt.decode(token, secret, algorithms=["HS256"], options={"require": ["sub", "role", "exp"]})
    except jwt.PyJWTError:
        return None
    role = claims.get("role")
    if role not in ROLES:
        return None
    if role in ("agent", "dashboard") and not claims.get("company"):
        return None
    if role == "agent" and not claims.get("branch"):
        return None
    return claims


def envelope(event: str, data: dict[str, Any]) -> bytes:
    return orjson.dumps({"event": event, "data": data})


def ack(msg_id: int) -> bytes:
    return orjson.dumps({"event": "ack", "id": msg_id, "data": {}})


def hello(claims: dict[str, Any]) -> bytes:
    return envelope(
        "hello",
        {
            "sub": claims["sub"],
            "role": claims["role"],
            "company": claims.get("company"),
            "server_time": time.time(),
        },
    )


class StatusHub:
    """Latest printer states per company and the fan-out of changes to dashboards.

    `dashboards` maps company -> set of connection objects (whatever the peer sends with).
    Immediate forwards (batch period 0) are queued in `outbox` as (dashboards, payload);
    the peer drains it with `take_outbox()` after each message.
    """

    def __init__(self, batch_ms: float) -> None:
        self.immediate = batch_ms <= 0
        self.state: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
        self.pending: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
        self.dashboards: dict[str, set[Any]] = defaultdict(set)
        self.outbox: list[tuple[set[Any], bytes]] = []

    def snapshot(self, company: str) -> bytes:
        return envelope("printer.status.snapshot", {"printers": list(self.state[company].values())})

    def on_message(self, claims: dict[str, Any], raw: bytes | str) -> bytes | None:
        """Handle one client message; returns the ack to send back, if one was asked for."""
        try:
            msg = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return None
        if not isinstance(msg, dict):
            return None
        data = msg.get("data")
        if msg.get("event") == "printer.status" and claims["role"] == "agent" and isinstance(data, dict):
            self.update(claims, data)
        msg_id = msg.get("id")
        if isinstance(msg_id, int):
            return ack(msg_id)
        return None

    def update(self, claims: dict[str, Any], data: dict[str, Any]) -> None:
        printer_id = data.get("printer_id")
        if not isinstance(printer_id, str):
            return
        data["branch"] = claims["branch"]
        data["agent_id"] = claims["sub"]
        data["at"] = time.time()
        company = claims["company"]
        self.state[company][printer_id] = data
        if self.immediate:
            dashboards = self.dashboards.get(company)
            if dashboards:
                self.outbox.append((dashboards, envelope("printer.status.batch", {"printers": [data]})))
        else:
            self.pending[company][printer_id] = data

    def take_outbox(self) -> list[tuple[set[Any], bytes]]:
        out, self.outbox = self.outbox, []
        return out

    def flush(self) -> list[tuple[set[Any], bytes]]:
        """One batch per company with changes and dashboards; changes of unwatched companies are dropped."""
        pending, self.pending = self.pending, defaultdict(dict)
        out = []
        for company, items in pending.items():
            dashboards = self.dashboards.get(company)
            if dashboards:
                out.append((dashboards, envelope("printer.status.batch", {"printers": list(items.values())})))
        return out
