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

This module is what the agent decides and the command; `printctl.agent_runtime` runs it (trio
tasks on a WebSocket), imported only when the agent starts.
"""

from __future__ import annotations

import base64
import fcntl
import os
import re
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import IO, Annotated, Any

import orjson
import typer
from rich.markup import escape

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
from printctl.keepalive import BACKOFF_CAP, BACKOFF_INITIAL

JOURNAL = "agent-journal.jsonl"
LOCK_FILE = "agent.lock"
UNKNOWN_MESSAGE = "outcome unknown: agent restarted while printing; check the printer"
PING_INTERVAL = 5.0  # seconds without a message from printd before the agent pings it
PING_TIMEOUT = 10.0  # more than printd's statement timeout: an ack may wait behind a store write
_SAFE_ID = re.compile(r"^[A-Za-z0-9_.:@-]{1,128}$")
_UNSAFE_CHARS = re.compile(r"[^A-Za-z0-9_.-]")

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


def _lock_output(output: Path) -> int:
    """One agent per output directory: two would share (and corrupt) one journal."""
    fd = os.open(output / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        fail(f"another agent is running with --output {output}", EXIT_USAGE)
    return fd


#: The runtime's names, still importable from here (`printctl.agent.Agent`), loaded on first use.
_RUNTIME = frozenset({"Agent", "QUEUE_SIZE", "HELLO_TIMEOUT", "WsClient", "ConnectionClosed"})


def __getattr__(name: str) -> Any:
    if name in _RUNTIME:
        from printctl import agent_runtime

        return getattr(agent_runtime, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
    import trio

    from printctl.agent_runtime import Agent

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
    from websockets.exceptions import WebSocketException
    from websockets.uri import parse_uri

    from printctl.wsclient import ws_url

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
