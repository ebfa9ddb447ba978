"""`printctl agent`: the reference print agent, a stand-in for the program next to the printers.

It connects to printd's `/printing-ws`, announces its printers, prints what it is sent and
reports back. The "printer" is a directory: each physical print appends one JSON line to
`DIR/prints.jsonl` (what `printctl verify-prints` reads) and writes a readable ticket to
`DIR/<printer_id>/<NNNNNN>-<job_id>.txt`. Third-party agents can copy its behaviour.

Exactly once, seen from the agent
---------------------------------
printd sends a job again whenever it has no result for it (after a reconnect, its own restart,
a missing ack), so a job may arrive many times. The agent makes the print happen at most once
and lets the result reach printd as often as it is asked for:

- `DIR/agent-journal.jsonl` gets `{"job_id", "state": "printing"}` (fsync) before the device
  write and `{"job_id", "state": "done", "result"}` (fsync) after it; it is reloaded on start,
  so de-duplication survives the agent's own restart;
- a job already `done` is answered with an ack and its stored result, never printed again;
- a job queued or printing in this process gets only an ack (its result follows);
- a job with `printing` but no `done` from an earlier run is the one case the agent cannot
  settle: the process died between handing the ticket to the printer and recording that it
  had. On a real device the ticket may or may not have come out. Printing again could print
  it twice; reporting success could hide a lost ticket. So the agent does neither: it answers
  `success: false` with "outcome unknown: agent restarted while printing; check the printer",
  records that as done, and leaves the call to a person who can look at the printer.

The window for that unknown outcome is kept as small as the device allows: the simulated
printing time (`--print-delay`) is spent before the `printing` record, and the three writes
(journal, device, journal) run shielded from cancellation, so Ctrl-C never leaves one half done.

Jobs print one at a time in arrival order (one worker task fed by a bounded memory channel),
so tickets of one printer come out in the order printd sent them. The reader task never waits
for a print: it keeps reading (the WebSocket engine answers printd's pings while it reads) and
answers duplicates itself.
"""

from __future__ import annotations

import base64
import fcntl
import os
import random
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import IO, Annotated, Any

import orjson
import trio
import typer
from rich.markup import escape
from websockets.exceptions import WebSocketException
from websockets.uri import parse_uri

from printctl.checker import PRINT_LOG
from printctl.common import (
    DEFAULT_URL,
    EXIT_OK,
    EXIT_USAGE,
    JsonOpt,
    TokenOpt,
    UrlOpt,
    console,
    default_url,
    fail,
)
from printctl.keepalive import (
    BACKOFF_CAP,
    BACKOFF_INITIAL,
    CLOSE_RECONNECT_NOW,
    Check,
    Liveness,
    Reconnect,
)
from printctl.wsclient import ConnectionClosed, HandshakeRejected, WsClient, ws_url
from printd.protocol import CLOSE_GOING_AWAY, CLOSE_REPLACED, CLOSE_TOKEN_EXPIRED

JOURNAL = "agent-journal.jsonl"
LOCK_FILE = "agent.lock"
UNKNOWN_MESSAGE = "outcome unknown: agent restarted while printing; check the printer"
QUEUE_SIZE = 1000  # jobs waiting for the worker; beyond it a dispatch is left unacked for a re-send
HELLO_TIMEOUT = 10.0
PING_INTERVAL = 5.0  # seconds without a message from printd before the agent pings it
PING_TIMEOUT = 10.0  # more than printd's statement timeout: an ack may wait behind a store write
RESULT_SEND_TIMEOUT = 5.0
AUTH_STATUSES = (401, 403)
_SAFE_ID = re.compile(r"^[A-Za-z0-9_.:@-]{1,128}$")
_UNSAFE_CHARS = re.compile(r"[^A-Za-z0-9_.-]")

# What a broken connection raises while sending or receiving: end the session, reconnect.
_NET_ERRORS: tuple[type[BaseException], ...] = (
    ConnectionClosed,
    OSError,
    trio.BrokenResourceError,
    trio.ClosedResourceError,
    trio.TooSlowError,
    WebSocketException,
    orjson.JSONDecodeError,
)


# ---------------------------------------------------------------- jobs and results


@dataclass(frozen=True, slots=True)
class DispatchedJob:
    """One `job.dispatch` as printd sent it."""

    job_id: str
    correlation_id: str
    printer_id: str
    kind: str
    payload: dict[str, Any]
    attempt: int


def parse_dispatch(data: Any) -> DispatchedJob | str:
    """A `job.dispatch` data object -> the job, or why it cannot be handled (never raises)."""
    if not isinstance(data, dict):
        return "'data' is not an object"
    job_id = data.get("job_id")
    printer_id = data.get("printer_id")
    if not isinstance(job_id, str) or not job_id:
        return "'job_id' is missing"
    if not isinstance(printer_id, str) or not printer_id:
        return f"job {job_id}: 'printer_id' is missing"
    cid = data.get("correlation_id")
    kind = data.get("kind", "print")
    payload = data.get("payload", {})
    attempt = data.get("attempt", 1)
    return DispatchedJob(
        job_id=job_id,
        correlation_id=cid if isinstance(cid, str) else "",
        printer_id=printer_id,
        kind=kind if isinstance(kind, str) else "print",
        payload=payload if isinstance(payload, dict) else {"value": payload},
        attempt=attempt if isinstance(attempt, int) and not isinstance(attempt, bool) else 1,
    )


def ack_data(job: DispatchedJob) -> dict[str, Any]:
    return {"job_id": job.job_id, "correlation_id": job.correlation_id}


def make_result(job: DispatchedJob, success: bool, message: str, **extra: Any) -> dict[str, Any]:
    """The `job.result` data; also what the journal stores and replays verbatim."""
    return {
        "job_id": job.job_id,
        "correlation_id": job.correlation_id,
        "success": success,
        "message": message,
        "printer_id": job.printer_id,
        **extra,
    }


# ---------------------------------------------------------------- the de-duplication journal


class JournalState(StrEnum):
    """What the agent's journal says of a job (not printd's job state: see printd.model)."""

    PRINTING = "printing"
    DONE = "done"


@dataclass(frozen=True, slots=True)
class Entry:
    state: JournalState
    result: dict[str, Any] | None = None


class Action(StrEnum):
    """What to do with a dispatch, from what the journal and this process know of the job."""

    PRINT = "print"  # new: ack, queue, print, send the result
    ACK_ONLY = "ack_only"  # queued or printing in this process: the result will follow
    REPLAY = "replay"  # done before: ack and send the stored result, never print again
    UNKNOWN = "unknown"  # printing when an earlier run died: do not print, report unknown


def decide(entry: Entry | None, *, in_flight: bool) -> Action:
    """The whole de-duplication rule. `in_flight`: queued or printing in this process."""
    if entry is not None and entry.state is JournalState.DONE:
        return Action.REPLAY
    if in_flight:
        return Action.ACK_ONLY
    if entry is not None and entry.state is JournalState.PRINTING:
        return Action.UNKNOWN
    return Action.PRINT


def printing_record(job: DispatchedJob, at: float) -> dict[str, Any]:
    return {
        "job_id": job.job_id,
        "state": JournalState.PRINTING.value,
        "at": at,
        "printer_id": job.printer_id,
        "correlation_id": job.correlation_id,
    }


def done_record(job_id: str, result: dict[str, Any], at: float) -> dict[str, Any]:
    return {"job_id": job_id, "state": JournalState.DONE.value, "at": at, "result": result}


class Journal:
    """Per job, the last thing this agent knew about it; in memory, appended to a file.

    `apply` and `decide` are pure; `write` is the only I/O (append + fsync, thread-safe, so it
    can run in a worker thread while the event loop goes on reading the socket).
    """

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self.entries: dict[str, Entry] = {}
        self.skipped = 0  # unreadable lines: a write torn by a crash, or hand edits
        self._lock = threading.Lock()
        self._file: IO[bytes] | None = None

    @classmethod
    def from_lines(cls, lines: Iterable[str | bytes], path: Path | None = None) -> Journal:
        journal = cls(path)
        for line in lines:
            if not line.strip():
                continue
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError:
                journal.skipped += 1
                continue
            if not journal.apply(record):
                journal.skipped += 1
        return journal

    @classmethod
    def open(cls, path: Path) -> Journal:
        """Load the journal at `path` (created if missing) and keep it open for appends."""
        existed = path.exists()
        raw = path.read_bytes() if existed else b""
        journal = cls.from_lines(raw.splitlines(), path)
        journal._file = _open_append(path, raw, existed)
        return journal

    def apply(self, record: Any) -> bool:
        """Fold one record in; False if it is not a journal record. `done` is final."""
        if not isinstance(record, dict):
            return False
        job_id = record.get("job_id")
        state = record.get("state")
        if not isinstance(job_id, str) or not job_id:
            return False
        if state == JournalState.PRINTING:
            current = self.entries.get(job_id)
            if current is None or current.state is not JournalState.DONE:
                self.entries[job_id] = Entry(JournalState.PRINTING)
            return True
        if state == JournalState.DONE:
            result = record.get("result")
            self.entries[job_id] = Entry(JournalState.DONE, result if isinstance(result, dict) else {})
            return True
        return False

    def get(self, job_id: str) -> Entry | None:
        return self.entries.get(job_id)

    def decide(self, job_id: str, *, in_flight: bool = False) -> Action:
        return decide(self.entries.get(job_id), in_flight=in_flight)

    def unresolved(self) -> list[str]:
        """Jobs that were printing when the process stopped (no `done` record)."""
        return [job_id for job_id, e in self.entries.items() if e.state is JournalState.PRINTING]

    def write(self, record: dict[str, Any]) -> None:
        """Append one record durably (flush + fsync). Does not touch the in-memory view."""
        if self._file is None:
            return
        line = orjson.dumps(record) + b"\n"
        with self._lock:
            self._file.write(line)
            self._file.flush()
            os.fsync(self._file.fileno())

    def record(self, record: dict[str, Any]) -> None:
        """Write, then apply (for synchronous callers and tests)."""
        self.write(record)
        self.apply(record)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def replay_result(job: DispatchedJob, entry: Entry) -> dict[str, Any]:
    """The stored result, as stored; a hand-damaged one still names the job and a success flag."""
    stored = dict(entry.result or {})
    stored.setdefault("job_id", job.job_id)
    stored.setdefault("correlation_id", job.correlation_id)
    if not isinstance(stored.get("success"), bool):
        stored["success"] = False
        stored.setdefault("message", "stored result unreadable; check the printer")
    return stored


def _open_append(path: Path, existing: bytes, existed: bool) -> IO[bytes]:
    """Open for appends; end a line torn by a crash so the next record starts on its own line."""
    f = open(path, "ab")  # noqa: SIM115 - kept open for the agent's lifetime
    if existing and not existing.endswith(b"\n"):
        f.write(b"\n")
        f.flush()
        os.fsync(f.fileno())
    if not existed:
        _fsync_dir(path.parent)  # the new file's name must survive a crash too
    return f


def _last_byte(path: Path) -> bytes:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            if f.tell() == 0:
                return b""
            f.seek(-1, os.SEEK_END)
            return f.read(1)
    except FileNotFoundError:
        return b""


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ---------------------------------------------------------------- the stand-in printer


def print_record(job: DispatchedJob, agent_id: str, printed_at: float) -> dict[str, Any]:
    """One line of prints.jsonl: one physical print."""
    return {
        "job_id": job.job_id,
        "correlation_id": job.correlation_id,
        "printer_id": job.printer_id,
        "kind": job.kind,
        "agent_id": agent_id,
        "printed_at": printed_at,
        "payload": job.payload,
    }


def ticket_name(number: int, job_id: str) -> str:
    return f"{number:06d}-{_UNSAFE_CHARS.sub('_', job_id)[:100]}.txt"


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def ticket_text(job: DispatchedJob, number: int, printed_at: float) -> str:
    """What the paper would say: a header, then the payload's `text`/`lines`, else its JSON."""
    rule = "=" * 40
    lines = [
        rule,
        f"ticket   #{number:06d}",
        f"printer  {job.printer_id}",
        f"job      {job.job_id}",
        f"corr.    {job.correlation_id}",
        f"kind     {job.kind}  (attempt {job.attempt})",
        f"printed  {_iso(printed_at)}",
        "-" * 40,
    ]
    text = job.payload.get("text")
    body_lines = job.payload.get("lines")
    if isinstance(text, str):
        lines.extend(text.splitlines() or [""])
    elif isinstance(body_lines, list) and all(isinstance(x, str) for x in body_lines):
        lines.extend(body_lines)
    else:
        lines.append(orjson.dumps(job.payload, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode())
    lines.append(rule)
    return "\n".join(lines) + "\n"


class PrintDevice:
    """The printer: `print` is the physical act (runs in a worker thread, one at a time)."""

    def __init__(self, output: Path, agent_id: str) -> None:
        self.output = output
        self.agent_id = agent_id
        log = output / PRINT_LOG
        self._log = _open_append(log, _last_byte(log), log.exists())
        self._next: dict[str, int] = {}

    def _number(self, printer_id: str) -> int:
        """Ticket numbers continue across restarts: one more than the highest on disk."""
        if printer_id not in self._next:
            highest = 0
            directory = self.output / printer_id
            if directory.is_dir():
                for p in directory.iterdir():
                    head = p.name.partition("-")[0]
                    if head.isdigit():
                        highest = max(highest, int(head))
            self._next[printer_id] = highest + 1
        n = self._next[printer_id]
        self._next[printer_id] = n + 1
        return n

    def print(self, job: DispatchedJob, printed_at: float) -> Path:
        """Append the print line (flush + fsync), then write the readable ticket."""
        self._log.write(orjson.dumps(print_record(job, self.agent_id, printed_at)) + b"\n")
        self._log.flush()
        os.fsync(self._log.fileno())
        directory = self.output / job.printer_id
        directory.mkdir(exist_ok=True)
        path = directory / ticket_name(self._number(job.printer_id), job.job_id)
        path.write_text(ticket_text(job, int(path.name[:6]), printed_at))
        return path

    def close(self) -> None:
        self._log.close()


# ---------------------------------------------------------------- reconnecting


def token_claims(token: str) -> dict[str, Any]:
    """The token's claims read without verifying them: labels and early hints, never a check."""
    try:
        part = token.split(".")[1]
        claims = orjson.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    except (IndexError, ValueError):
        return {}
    return claims if isinstance(claims, dict) else {}


def token_subject(token: str) -> str:
    """The `sub` claim (the agent id printd will see), or "" when the token is not a readable JWT."""
    sub = token_claims(token).get("sub")
    return sub if isinstance(sub, str) else ""


# ---------------------------------------------------------------- output


class Reporter:
    """Rich log lines for people, or one JSON object per line (`--json`) for scripts."""

    STYLES = {"info": "", "ok": "green", "warning": "yellow", "error": "red"}

    def __init__(self, json_mode: bool) -> None:
        self.json_mode = json_mode

    def __call__(self, event: str, message: str, *, level: str = "info", **fields: Any) -> None:
        now = time.time()
        if self.json_mode:
            line = {"ts": now, "event": event, "level": level, "message": message, **fields}
            sys.stdout.write(orjson.dumps(line, default=str).decode() + "\n")
            sys.stdout.flush()
            return
        stamp = datetime.fromtimestamp(now).strftime("%H:%M:%S")
        style = self.STYLES.get(level, "")
        text = f"[{style}]{escape(message)}[/]" if style else escape(message)
        console.print(f"[dim]{stamp}[/] {text}", highlight=False, soft_wrap=True)


# ---------------------------------------------------------------- the agent


@dataclass(frozen=True, slots=True)
class AgentSettings:
    url: str
    token: str
    printers: tuple[str, ...]
    output: Path
    status_interval: float = 30.0
    print_delay: float = 0.0
    fail_printers: frozenset[str] = frozenset()
    crash_after_print: bool = False
    max_backoff: float = BACKOFF_CAP
    ping_interval: float = PING_INTERVAL
    ping_timeout: float = PING_TIMEOUT


class Agent:
    """One reader task per connection, one worker task for the whole process."""

    def __init__(
        self,
        settings: AgentSettings,
        journal: Journal,
        device: PrintDevice,
        report: Reporter,
        *,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.settings = settings
        self.journal = journal
        self.device = device
        self.report = report
        self.rng = rng
        self.ws_url = ws_url(settings.url)
        self.agent_id = device.agent_id
        self.client: WsClient | None = None  # the live connection, if any (results go there)
        self.in_flight: set[str] = set()
        self.stopping = False
        self.fatal: str | None = None
        self.printed = 0
        self.connected_once = False  # has printd ever accepted this agent's upgrade?
        self._liveness: Liveness | None = None  # the live connection's, while there is one
        self._heard = trio.Event()  # set by the reader on every message from printd
        self._ended: tuple[int | None, str] = (None, "")
        self._send_jobs, self._recv_jobs = trio.open_memory_channel[DispatchedJob](QUEUE_SIZE)

    async def run(self) -> int:
        """Until a signal (exit 0) or a refused token (exit 2)."""
        code = EXIT_OK
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._watch_signals, signals, nursery.cancel_scope)
                nursery.start_soon(self._worker)
                code = await self._connect_loop()
                nursery.cancel_scope.cancel()
        return code

    async def _watch_signals(self, signals: Any, scope: trio.CancelScope) -> None:
        async for signum in signals:
            self.stopping = True
            self.report(
                "stopping", f"{signal.Signals(signum).name}: closing the connection (1000) and exiting"
            )
            scope.cancel()
            return

    # ------------------------------------------------------------ connection

    async def _connect_loop(self) -> int:
        """Connect, serve the session, wait what the reconnect policy says; again, until a signal."""
        policy = Reconnect(BACKOFF_INITIAL, self.settings.max_backoff, rng=self.rng)
        attempt = 0
        while True:
            attempt += 1
            self.report("connecting", f"connecting to {self.ws_url} (attempt {attempt})", attempt=attempt)
            try:
                client = await WsClient.connect(self.ws_url, token=self.settings.token, deflate=True)
            except HandshakeRejected as exc:
                self.fatal = self._fatal_refusal(exc)
                if self.fatal:  # reported once, by the command (stderr; the JSON error with --json)
                    return EXIT_USAGE
                delay = policy.failed()
                self.report(
                    "retrying",
                    f"printd answered HTTP {exc.status}: {exc.message}; retrying in {delay:.1f} s",
                    level="warning",
                    status=exc.status,
                    delay=round(delay, 3),
                )
            except _NET_ERRORS as exc:
                delay = policy.failed()
                self.report(
                    "retrying",
                    f"cannot reach printd: {_describe(exc)}; retrying in {delay:.1f} s",
                    level="warning",
                    error=_describe(exc),
                    delay=round(delay, 3),
                )
            else:
                attempt = 0
                self.connected_once = True
                started = trio.current_time()
                code, reason = await self._session(client, policy)
                delay = policy.closed(code)
                self.report(
                    "disconnected",
                    f"connection closed ({code}) {_close_hint(code, reason)}; reconnecting in {delay:.2f} s",
                    level="warning",
                    code=code,
                    reason=reason,
                    lasted=round(trio.current_time() - started, 3),
                    delay=round(delay, 3),
                )
            await trio.sleep(delay)

    def _fatal_refusal(self, exc: HandshakeRejected) -> str | None:
        """Why this refusal ends the agent (exit 2), or None to retry it like an outage."""
        if exc.status in AUTH_STATUSES:
            return f"printd refused the token (HTTP {exc.status}): {exc.message}"
        if not exc.from_printd and exc.status < 500 and not self.connected_once:
            # a wrong --url; a proxy's error page (5xx), or an oddity once printd has answered
            # before, is retried like an outage
            return f"{self.settings.url} answered HTTP {exc.status} ({exc.message}): is --url a printd?"
        return None

    async def _session(self, client: WsClient, policy: Reconnect) -> tuple[int | None, str]:
        """One connection, until it closes or stops answering: (close code, reason). Ends with our
        close (1000) when the peer is there to answer it, else by dropping the socket."""
        self.client = client
        self._ended = (None, "connection ended")
        dead = False
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._reader, client, policy, nursery)
                if self.settings.ping_interval > 0:
                    live = Liveness(
                        self.settings.ping_interval, self.settings.ping_timeout, trio.current_time()
                    )
                    self._liveness = live
                    dead = await self._keepalive(client, live)
                    nursery.cancel_scope.cancel()
            return self._ended
        finally:
            self.client = None
            self._liveness = None
            with trio.CancelScope(shield=True):
                if dead:
                    await client.abort()  # no closing handshake with a peer that is gone
                else:
                    await client.close(1000, "agent stopping" if self.stopping else "")

    async def _reader(self, client: WsClient, policy: Reconnect, nursery: trio.Nursery) -> None:
        try:
            await self._read_loop(client, policy, nursery)
        except ConnectionClosed as exc:
            self._ended = (exc.code, exc.reason)
        except _NET_ERRORS as exc:
            self._ended = (None, _describe(exc))
        nursery.cancel_scope.cancel()

    async def _keepalive(self, client: WsClient, live: Liveness) -> bool:
        """Ping printd after `ping_interval` s of silence; True when no answer came within
        `ping_timeout` s (the connection is dead). Runs until cancelled with the session."""
        while True:
            now = trio.current_time()
            check, wake = live.check(now)
            if check is Check.DEAD:
                quiet = now - live.last_heard
                self._ended = (None, f"no answer from printd for {quiet:.1f} s (ping unanswered)")
                return True
            if check is Check.PING:
                ping_id = live.pinged(now)
                with trio.move_on_at(now + live.timeout):  # a send stuck on a dead socket counts too
                    await _send(client, "ping", {}, id=ping_id)  # a failure: the reader sees it
            else:
                self._heard = trio.Event()  # a message re-arms the check (an ack ends the wait)
                with trio.move_on_at(wake):
                    await self._heard.wait()

    async def _read_loop(self, client: WsClient, policy: Reconnect, nursery: trio.Nursery) -> None:
        first = await self._recv(client, timeout=HELLO_TIMEOUT)
        if isinstance(first, dict) and first.get("event") == "hello":
            policy.hello()
            hello = first.get("data") or {}
            self.report(
                "connected",
                f"connected to {self.ws_url} (printd instance {hello.get('instance', '?')}, "
                f"company {hello.get('company', '?')}, agent {self.agent_id or '?'})",
                level="ok",
                instance=hello.get("instance"),
                company=hello.get("company"),
                agent_id=self.agent_id,
                printers=list(self.settings.printers),
            )
        else:
            self.report("connected", f"connected to {self.ws_url} (no hello first)", level="warning")
            await self._handle(client, first)
        await self._announce(client)  # a failure shows up in recv() below
        nursery.start_soon(self._status_loop, client)
        while True:
            await self._handle(client, await self._recv(client))

    async def _recv(self, client: WsClient, timeout: float | None = None) -> Any:
        msg = await client.recv(timeout=timeout)
        if self._liveness is not None:
            self._liveness.heard(trio.current_time())  # any message shows printd is there
            self._heard.set()
        return msg

    async def _announce(self, client: WsClient) -> bool:
        for printer_id in self.settings.printers:
            data: dict[str, Any] = {
                "printer_id": printer_id,
                "status": "online",
                "paper": "out" if printer_id in self.settings.fail_printers else "ok",
                "agent": "printctl-agent",
                "ts": time.time(),
            }
            if not await _send(client, "printer.status", data):
                return False
        return True

    async def _status_loop(self, client: WsClient) -> None:
        while True:
            await trio.sleep(self.settings.status_interval)
            if not await self._announce(client):
                return  # the reader sees the broken connection and ends the session

    # ------------------------------------------------------------ messages

    async def _handle(self, client: WsClient, msg: Any) -> None:
        if not isinstance(msg, dict):
            return
        event = msg.get("event")
        data = msg.get("data")
        if event == "job.dispatch":
            await self.on_dispatch(client, data)
        elif event == "error" and isinstance(data, dict):
            self.report(
                "server_error",
                f"printd: {data.get('code')}: {data.get('message')}",
                level="warning",
                code=data.get("code"),
                detail=data.get("message"),
            )

    async def on_dispatch(self, client: WsClient, data: Any) -> None:
        """Answer one dispatch without ever waiting for a print."""
        job = parse_dispatch(data)
        if isinstance(job, str):
            self.report("bad_dispatch", f"ignoring a malformed job.dispatch: {job}", level="warning")
            return
        action = self.journal.decide(job.job_id, in_flight=job.job_id in self.in_flight)
        fields: dict[str, Any] = {"job_id": job.job_id, "printer_id": job.printer_id, "attempt": job.attempt}
        if action is Action.PRINT and job.printer_id not in self.settings.printers:
            result = make_result(job, False, f"printer {job.printer_id} is not attached to this agent")
            await self._settle(job, result)
            self.report("refused", f"job {job.job_id}: {result['message']}", level="warning", **fields)
            await _send(client, "job.ack", ack_data(job))
            await _send(client, "job.result", result)
        elif action is Action.PRINT:
            try:
                self._send_jobs.send_nowait(job)
            except trio.WouldBlock:
                # Unacked, printd sends it again after its ack timeout; the socket keeps flowing.
                self.report(
                    "queue_full", f"job {job.job_id}: queue full, left for a re-send", level="warning"
                )
                return
            self.in_flight.add(job.job_id)
            self.report("received", f"job {job.job_id} for {job.printer_id} queued", **fields)
            await _send(client, "job.ack", ack_data(job))
        elif action is Action.ACK_ONLY:
            self.report(
                "duplicate", f"job {job.job_id} arrived again while queued/printing: ack only", **fields
            )
            await _send(client, "job.ack", ack_data(job))
        elif action is Action.REPLAY:
            entry = self.journal.get(job.job_id)
            assert entry is not None
            result = replay_result(job, entry)
            self.report("replayed", f"job {job.job_id} was already done: sent its stored result", **fields)
            await _send(client, "job.ack", ack_data(job))
            await _send(client, "job.result", result)
        else:
            result = make_result(job, False, UNKNOWN_MESSAGE)
            await self._settle(job, result)
            self.report("unknown", f"job {job.job_id}: {UNKNOWN_MESSAGE}", level="error", **fields)
            await _send(client, "job.ack", ack_data(job))
            await _send(client, "job.result", result)

    async def _settle(self, job: DispatchedJob, result: dict[str, Any]) -> None:
        """Record a result decided without printing; memory first, so it holds even if disk fails."""
        record = done_record(job.job_id, result, time.time())
        self.journal.apply(record)
        await self._write_journal(record)

    async def _write_journal(self, record: dict[str, Any]) -> bool:
        try:
            await trio.to_thread.run_sync(self.journal.write, record)
        except OSError as exc:
            self.report(
                "journal_error",
                f"cannot write the journal ({exc}); after a restart job {record['job_id']} "
                "may be reported as outcome unknown",
                level="error",
                job_id=record["job_id"],
            )
            return False
        return True

    # ------------------------------------------------------------ printing

    async def _worker(self) -> None:
        async for job in self._recv_jobs:
            if self.settings.print_delay > 0:
                await trio.sleep(self.settings.print_delay)
            with trio.CancelScope(shield=True):
                result = await self.print_job(job)
            self.in_flight.discard(job.job_id)
            fields: dict[str, Any] = {
                "job_id": job.job_id,
                "printer_id": job.printer_id,
                "success": result["success"],
            }
            if result["success"]:
                self.printed += 1
                self.report(
                    "printed", f"printed job {job.job_id} on printer {job.printer_id}", level="ok", **fields
                )
            else:
                self.report("failed", f"job {job.job_id}: {result['message']}", level="warning", **fields)
            if self.settings.crash_after_print and result["success"]:
                self.report(
                    "crash", "--crash-after-print: exiting (3) before sending the result", level="error"
                )
                sys.stdout.flush()
                os._exit(3)
            client = self.client
            sent = False
            if client is not None:
                with trio.CancelScope(shield=True), trio.move_on_after(RESULT_SEND_TIMEOUT):
                    sent = await _send(client, "job.result", result)
            if not sent:
                self.report(
                    "result_pending", f"job {job.job_id}: result kept for printd's redelivery", **fields
                )

    async def print_job(self, job: DispatchedJob) -> dict[str, Any]:
        """Journal `printing`, device write, journal `done`. Run shielded: no half-done state."""
        now = time.time()
        printing = printing_record(job, now)
        if not await self._write_journal(printing):
            result = make_result(job, False, "not printed: the agent journal is not writable")
            self.journal.apply(done_record(job.job_id, result, now))
            return result
        self.journal.apply(printing)
        if job.printer_id in self.settings.fail_printers:
            result = make_result(job, False, f"printer {job.printer_id} is out of paper")
        else:
            try:
                await trio.to_thread.run_sync(self.device.print, job, now)
                result = make_result(job, True, f"printed on {job.printer_id}", printed_at=now)
            except OSError as exc:
                result = make_result(job, False, f"printer {job.printer_id} failed: {exc}")
        done = done_record(job.job_id, result, time.time())
        self.journal.apply(done)
        await self._write_journal(done)
        return result


async def _send(client: WsClient, event: str, data: dict[str, Any], *, id: int | None = None) -> bool:
    """Send, or False if the connection is gone (the reader notices and reconnects)."""
    try:
        await client.send(event, data, id=id)
    except _NET_ERRORS:
        return False
    return True


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _close_hint(code: int | None, reason: str) -> str:
    if code == CLOSE_GOING_AWAY:
        return "printd is draining or restarting"
    if code == CLOSE_RECONNECT_NOW:
        return "printd hands this agent over: reconnecting now, to any instance"
    if code == CLOSE_REPLACED:
        return "another connection with this agent's token took over (two agents on one token?)"
    if code == CLOSE_TOKEN_EXPIRED:
        return "token expired"
    return reason


def _lock_output(output: Path) -> int:
    """One agent per output directory: two would share (and corrupt) one journal."""
    fd = os.open(output / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        fail(f"another agent is running with --output {output}", EXIT_USAGE)
    return fd


# ---------------------------------------------------------------- the command


def agent(
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = None,
    printer: Annotated[
        list[str] | None,
        typer.Option(
            "--printer",
            metavar="ID",
            help="A printer this agent drives (repeat for several).",
            show_default=False,
        ),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            metavar="DIR",
            help="Directory for prints.jsonl, tickets and the journal.",
            show_default=False,
        ),
    ] = None,
    status_interval: Annotated[
        float, typer.Option("--status-interval", help="Seconds between printer.status reports.")
    ] = 30.0,
    print_delay: Annotated[float, typer.Option("--print-delay", help="Simulated seconds per print.")] = 0.0,
    fail_printer: Annotated[
        list[str] | None,
        typer.Option(
            "--fail-printer",
            metavar="ID",
            help="This printer is out of paper: its jobs fail.",
            show_default=False,
        ),
    ] = None,
    crash_after_print: Annotated[
        bool,
        typer.Option(
            "--crash-after-print",
            help="Fault drill: exit (3) right after a print is journaled, before the result is sent.",
        ),
    ] = False,
    max_backoff: Annotated[
        float, typer.Option("--max-backoff", help="Upper bound of the reconnect delay, seconds.")
    ] = BACKOFF_CAP,
    ping_interval: Annotated[
        float,
        typer.Option(
            "--ping-interval", help="Seconds without a message from printd before pinging it (0: never)."
        ),
    ] = PING_INTERVAL,
    ping_timeout: Annotated[
        float,
        typer.Option("--ping-timeout", help="Seconds to wait for printd's answer before reconnecting."),
    ] = PING_TIMEOUT,
    json_out: JsonOpt = False,
) -> None:
    """Run the reference print agent: receive jobs over /printing-ws and "print" them to files.

    Each print appends one line to DIR/prints.jsonl and writes a ticket DIR/<printer>/<NNNNNN>-<job>.txt.
    A redelivered job is never printed twice: DIR/agent-journal.jsonl remembers every job across restarts.
    Exits 0 on SIGINT/SIGTERM, 2 when printd refuses the token; otherwise it reconnects forever.

    Example: printctl agent --url http://127.0.0.1:3001 --token $AGENT_TOKEN --printer kitchen-1 --output ./prints
    """  # noqa: E501
    settings = agent_settings(
        url=url,
        token=token,
        printers=tuple(dict.fromkeys(printer or [])),
        output=output,
        status_interval=status_interval,
        print_delay=print_delay,
        fail_printers=frozenset(fail_printer or []),
        crash_after_print=crash_after_print,
        max_backoff=max_backoff,
        ping_interval=ping_interval,
        ping_timeout=ping_timeout,
    )
    lock_fd = _lock_output(settings.output)
    report = Reporter(json_out)
    journal = Journal.open(settings.output / JOURNAL)
    device = PrintDevice(settings.output, token_subject(settings.token))
    runner = Agent(settings, journal, device, report)
    _report_start(report, settings, journal, device.agent_id)
    try:
        code = trio.run(runner.run)
    except KeyboardInterrupt:  # Ctrl-C before the signal handler was installed
        code = EXIT_OK
    finally:
        journal.close()
        device.close()
        os.close(lock_fd)
    if runner.fatal:
        fail(runner.fatal, EXIT_USAGE)
    raise typer.Exit(code)


def agent_settings(
    *,
    url: str,
    token: str | None,
    printers: tuple[str, ...],
    output: Path | None,
    status_interval: float,
    print_delay: float,
    fail_printers: frozenset[str],
    crash_after_print: bool,
    max_backoff: float,
    ping_interval: float,
    ping_timeout: float,
) -> AgentSettings:
    """The command line checked (exit 2 naming the option) and turned into settings; the output
    directory exists afterwards."""
    if not token:
        fail("--token (or PRINTD_TOKEN) is required: an agent token from `printctl token`", EXIT_USAGE)
    if not printers:
        fail("give at least one --printer", EXIT_USAGE)
    if output is None:
        fail("--output DIR is required", EXIT_USAGE)
    for p in printers:
        if not _SAFE_ID.match(p) or p in (".", ".."):
            fail(f"bad --printer {p!r}: 1-128 letters, digits and _ . : @ -", EXIT_USAGE)
    if not fail_printers <= set(printers):
        unknown = ", ".join(sorted(fail_printers - set(printers)))
        fail(f"--fail-printer {unknown} is not one of --printer", EXIT_USAGE)
    if min(status_interval, ping_timeout) <= 0 or min(print_delay, ping_interval) < 0:
        fail(
            "--status-interval and --ping-timeout must be > 0, --print-delay and --ping-interval >= 0",
            EXIT_USAGE,
        )
    if max_backoff < BACKOFF_INITIAL:
        fail(f"--max-backoff must be >= {BACKOFF_INITIAL}", EXIT_USAGE)
    role = token_claims(token).get("role")
    if isinstance(role, str) and role != "agent":
        fail(f"this is a {role!r} token; an agent needs a token with role 'agent'", EXIT_USAGE)
    base = default_url(url)
    try:
        parse_uri(ws_url(base))
    except WebSocketException as exc:
        fail(f"bad --url {base!r}: {exc}", EXIT_USAGE)
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        fail(f"cannot create {output}: {exc}", EXIT_USAGE)
    return AgentSettings(
        url=base,
        token=token,
        printers=printers,
        output=output,
        status_interval=status_interval,
        print_delay=print_delay,
        fail_printers=fail_printers,
        crash_after_print=crash_after_print,
        max_backoff=max_backoff,
        ping_interval=ping_interval,
        ping_timeout=ping_timeout,
    )


def _report_start(report: Reporter, settings: AgentSettings, journal: Journal, agent_id: str) -> None:
    """Who this agent is, and what an earlier run left for people to look at."""
    printers = settings.printers
    report(
        "started",
        f"agent {agent_id or '?'}: printers {', '.join(printers)}, output {settings.output}, "
        f"{len(journal.entries)} job(s) in the journal",
        agent_id=agent_id,
        printers=list(printers),
        output=str(settings.output),
        journal_jobs=len(journal.entries),
    )
    unresolved = journal.unresolved()
    if unresolved:
        report(
            "unresolved",
            f"{len(unresolved)} job(s) were printing when the agent last stopped; if printd sends them "
            "again they are reported as outcome unknown, not printed",
            level="warning",
            job_ids=unresolved[:50],
        )
    if journal.skipped:
        report("journal_skipped", f"{journal.skipped} unreadable journal line(s) ignored", level="warning")
