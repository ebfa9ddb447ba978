"""The reference agent's runtime: its trio tasks (reader, worker, keepalive, reconnect loop) on
printctl's WebSocket client.

`printctl.agent` holds what the agent decides (journal, de-duplication, results, the device) and
the command; it imports this module only when the agent runs, so the other printctl commands and
the load generator's workers, which share those decisions, start without trio or websockets.
"""

from __future__ import annotations

import os
import random
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

import orjson
import trio
from websockets.exceptions import WebSocketException

from printctl.agent import (
    UNKNOWN_MESSAGE,
    Action,
    AgentSettings,
    DispatchedJob,
    Journal,
    PrintDevice,
    Reporter,
    ack_data,
    done_record,
    make_result,
    parse_dispatch,
    printing_record,
    replay_result,
)
from printctl.common import EXIT_OK, EXIT_USAGE
from printctl.keepalive import BACKOFF_INITIAL, CLOSE_RECONNECT_NOW, Check, Liveness, Reconnect
from printctl.wsclient import ConnectionClosed, HandshakeRejected, WsClient, ws_url
from printd.protocol import CLOSE_GOING_AWAY, CLOSE_REPLACED, CLOSE_TOKEN_EXPIRED

QUEUE_SIZE = 1000  # jobs waiting for the worker; beyond it a dispatch is left unacked for a re-send
HELLO_TIMEOUT = 10.0
RESULT_SEND_TIMEOUT = 5.0
AUTH_STATUSES = (401, 403)

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
