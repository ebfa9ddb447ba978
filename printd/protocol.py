"""The wire protocol, free of I/O: parse and validate frames, encode events, close codes.

`docs/protocol.md` is the contract for third-party agents; this module is its executable form.
Parsing never raises on bad input: it returns a `FrameError` that the shell turns into an
`error` event, so one bad frame costs the sender a message, not the connection.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from printd.inputs import ID_RULE, MAX_JSON_DEPTH, is_id, json_problem

PROTOCOL_VERSION = 1

# Close codes (RFC 6455 where one fits, 4000-4999 for ours).
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001  # printd is shutting down or draining: reconnect elsewhere
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_UNSUPPORTED = 1003  # binary frames
CLOSE_INVALID_DATA = 1007  # a text message that is not UTF-8
CLOSE_POLICY = 1008  # too many rejected frames, or a message flood
CLOSE_TOO_BIG = 1009
CLOSE_INTERNAL = 1011
CLOSE_HEARTBEAT_TIMEOUT = 4000  # nothing heard from the peer within ping_timeout
CLOSE_TOKEN_EXPIRED = 4001
CLOSE_SLOW_CONSUMER = 4008  # the send queue overflowed: the client reads too slowly
CLOSE_REPLACED = 4009  # the same agent connected again; this older connection is closed
CLOSE_RECONNECT_NOW = 4012  # this instance drains or sheds load: reconnect at once, to any instance

# Error codes carried by {"event": "error", "data": {"code": ...}}.
ERR_BAD_JSON = "bad_json"
ERR_BAD_ENVELOPE = "bad_envelope"
ERR_UNKNOWN_EVENT = "unknown_event"
ERR_FORBIDDEN = "forbidden"
ERR_INVALID_DATA = "invalid_data"
ERR_RATE_LIMITED = "rate_limited"
ERR_UNAVAILABLE = "unavailable"
ERR_LIMIT_EXCEEDED = "limit_exceeded"  # a cap of the live view (printers per agent or company)
#: Refusals that do not spend the error budget: printd's outage, and caps a well-behaved agent
#: can hit (one printer too many must not cost it the connection for the printers it has).
BUDGET_FREE = frozenset({ERR_UNAVAILABLE, ERR_LIMIT_EXCEEDED})

AGENT_EVENTS = frozenset({"printer.status", "job.ack", "job.result", "ping"})
DASHBOARD_EVENTS = frozenset({"ping"})
MAX_STATUS_LEN = 64


@dataclass(slots=True)
class Envelope:
    """One parsed message (not frozen: a frozen dataclass's __init__ costs two setattr calls
    per field, and one is built for every message)."""

    event: str
    data: dict[str, Any]
    id: int | None
    #: The message as received: `_text` looks at it before walking `data` (see `_plain`).
    raw: bytes | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class FrameError:
    code: str
    message: str
    id: int | None = None


def parse_frame(payload: bytes | bytearray | memoryview | str) -> Envelope | FrameError:
    """One text frame -> an Envelope, or the error to send back."""
    try:
        obj = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return FrameError(ERR_BAD_JSON, "frame is not valid JSON")
    if not isinstance(obj, dict):
        return FrameError(ERR_BAD_ENVELOPE, "frame must be a JSON object")
    msg_id = obj.get("id")
    if msg_id is not None and (not isinstance(msg_id, int) or isinstance(msg_id, bool)):
        return FrameError(ERR_BAD_ENVELOPE, "'id' must be an integer")
    event = obj.get("event")
    if not isinstance(event, str) or not event:
        return FrameError(ERR_BAD_ENVELOPE, "'event' must be a non-empty string", msg_id)
    data = obj.get("data", {})
    if not isinstance(data, dict):
        return FrameError(ERR_BAD_ENVELOPE, "'data' must be a JSON object", msg_id)
    return Envelope(event, data, msg_id, payload if isinstance(payload, bytes) else None)


def _plain(payload: bytes) -> bool:
    """Whether the raw JSON can hold neither a NUL character nor nesting past MAX_JSON_DEPTH, so
    `json_problem`'s walk (most of a 2 KB status's cost) can be skipped. JSON puts a NUL in a
    parsed string only through the escape \\u0000 (raw control characters are invalid), and no
    value nests deeper than there are brackets. Brackets and backslashes inside strings only
    make this answer False, and then the walk decides."""
    return b"\\u0000" not in payload and payload.count(b"{") + payload.count(b"[") <= MAX_JSON_DEPTH


def is_utf8(payload: bytes | bytearray | memoryview) -> bool:
    """Whether a text message is valid UTF-8. Only asked after a JSON parse failed: the parser
    checks UTF-8 itself, so valid messages never pay for this."""
    try:
        bytes(payload).decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _ident(data: dict[str, Any], key: str, msg_id: int | None) -> str | FrameError:
    """An id field (printer_id, job_id, correlation_id): the charset of `printd.inputs`."""
    value = data.get(key)
    if not is_id(value):
        return FrameError(ERR_INVALID_DATA, f"'{key}' must be {ID_RULE}", msg_id)
    assert isinstance(value, str)
    return value


def _text(env: Envelope) -> FrameError | None:
    """What an agent sends is stored and written back (status details, results): no NUL
    anywhere in it, and no deeper than printd can write it out again."""
    if env.raw is not None and _plain(env.raw):
        return None
    data, msg_id = env.data, env.id
    problem = json_problem(data, "text")
    return None if problem is None else FrameError(ERR_INVALID_DATA, problem, msg_id)


@dataclass(frozen=True, slots=True)
class StatusUpdate:
    printer_id: str
    status: str
    data: dict[str, Any]


def parse_status(env: Envelope) -> StatusUpdate | FrameError:
    printer_id = _ident(env.data, "printer_id", env.id)
    if isinstance(printer_id, FrameError):
        return printer_id
    status = env.data.get("status")
    if not isinstance(status, str) or not status or len(status) > MAX_STATUS_LEN:
        return FrameError(
            ERR_INVALID_DATA, f"'status' must be a string of 1-{MAX_STATUS_LEN} characters", env.id
        )
    if (bad := _text(env)) is not None:
        return bad
    return StatusUpdate(printer_id, status, env.data)


@dataclass(frozen=True, slots=True)
class JobReport:
    """An agent's `job.ack` (success None) or `job.result`."""

    job_id: str
    correlation_id: str | None
    success: bool | None
    message: str | None
    data: dict[str, Any]


def parse_job_report(env: Envelope) -> JobReport | FrameError:
    job_id = _ident(env.data, "job_id", env.id)
    if isinstance(job_id, FrameError):
        return job_id
    cid = env.data.get("correlation_id")
    if cid is not None and not is_id(cid):
        return FrameError(ERR_INVALID_DATA, f"'correlation_id' must be {ID_RULE}", env.id)
    if (bad := _text(env)) is not None:
        return bad
    success: bool | None = None
    message = env.data.get("message")
    if message is not None and not isinstance(message, str):
        return FrameError(ERR_INVALID_DATA, "'message' must be a string", env.id)
    if env.event == "job.result":
        success = env.data.get("success")
        if not isinstance(success, bool):
            return FrameError(ERR_INVALID_DATA, "'success' must be true or false", env.id)
    return JobReport(job_id, cid, success, message, env.data)


_dumps = orjson.dumps


def encode_event(event: str, data: Any, msg_id: int | None = None) -> bytes:
    if msg_id is None:
        return _dumps({"event": event, "data": data})
    return _dumps({"event": event, "id": msg_id, "data": data})


def encode_ack(msg_id: int, data: Any | None = None) -> bytes:
    return _dumps({"event": "ack", "id": msg_id, "data": data if data is not None else {}})


def encode_error(err: FrameError) -> bytes:
    data = {"code": err.code, "message": err.message}
    if err.id is None:
        return _dumps({"event": "error", "data": data})
    return _dumps({"event": "error", "id": err.id, "data": data})


def encode_batch(event: str, items: list[bytes], sent_at: float | None = None) -> bytes:
    """`{"event": ..., "data": {"printers": [...], "sent_at": T}}` spliced from already-encoded
    items. `sent_at` (epoch seconds) is when the batch window closed: a dashboard can tell the
    time printd added from the time an update waited in the window.

    Items are encoded once when they arrive, so a batch costs a join, not a re-encode.
    """
    tail = b"]}}" if sent_at is None else b'],"sent_at":' + repr(round(sent_at, 6)).encode() + b"}}"
    return b'{"event":"' + event.encode() + b'","data":{"printers":[' + b",".join(items) + tail
