"""A Redis client for trio, built for a dependency that may vanish at any moment.

`RedisLink` keeps two connections to one server: a command connection that many tasks share
(each caller's commands are written at once and its replies matched in order, so calls from
different tasks pipeline by themselves) and a pub/sub connection with a desired set of channels.
One supervisor task owns both. Its contract is what printd's cluster layer relies on:

- while Redis is unreachable every call fails at once with `RedisUnavailable` (never a hang);
  a call waits at most `command_timeout` for its reply, after which the connection is considered
  dead (a paused or partitioned server) and rebuilt;
- reconnection uses backoff (100 ms doubling to 3 s by default, with jitter), and the outage is
  logged once when it starts and once when it ends, not per attempt or per call;
- after each (re)connection the channels are subscribed again and the `on_up` callbacks run, so
  whatever printd keeps in Redis is rebuilt even when the server came back empty;
- with Sentinel the master is looked up on every connection, its `ROLE` checked, and a
  ``READONLY`` reply (a demoted master) drops the connection so the next one finds the new master.

Why not coredis or redis-py: see docs/architecture.md ("The Redis client").
"""

from __future__ import annotations

import hashlib
import random
import ssl
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog
import trio

from printd.cluster.resp import (
    NEED_DATA,
    Arg,
    ProtocolError,
    Reply,
    ReplyError,
    RespParser,
    encode_command,
    encode_commands,
)
from printd.cluster.target import RedisTarget

log = structlog.get_logger("printd.redis")

MessageHandler = Callable[[bytes, bytes], None]


class RedisUnavailable(Exception):
    """Redis cannot be reached now (down, paused, failing over); the caller may retry later."""


#: What a socket (or TLS) stream raises when the connection fails or is cut.
STREAM_ERRORS = (OSError, trio.BrokenResourceError, trio.ClosedResourceError)


@dataclass(frozen=True, slots=True)
class LinkSettings:
    connect_timeout: float = 2.0
    command_timeout: float = 2.0
    backoff_initial: float = 0.1
    backoff_max: float = 3.0
    ping_interval: float = 2.0
    client_name: str = "printd"


# ---------------------------------------------------------------------------- one connection


class _Connection:
    """One socket with a RESP parser; `request` is for the handshake, before sharing starts."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.parser = RespParser()

    @classmethod
    async def open(
        cls, target: RedisTarget, host: str, port: int, *, auth: bool, settings: LinkSettings, db: bool
    ) -> _Connection:
        with trio.fail_after(settings.connect_timeout):
            stream: trio.abc.Stream
            if target.unix_path and not target.sentinels:
                stream = await trio.open_unix_socket(target.unix_path)
            else:
                stream = await trio.open_tcp_stream(host, port)
            if target.tls:
                ctx = ssl.create_default_context(cafile=target.ca_file)
                if not target.tls_verify:
                    ctx.check_hostname = False
                    ctx.verify_mode = ssl.CERT_NONE
                stream = trio.SSLStream(stream, ctx, server_hostname=host or None)
                await stream.do_handshake()
            conn = cls(stream)
            commands: list[tuple[Arg, ...]] = []
            password = target.password if auth else target.sentinel_password
            if password is not None:
                user = target.username if auth else None
                commands.append(("AUTH", user, password) if user else ("AUTH", password))
            if db and target.db:
                commands.append(("SELECT", target.db))
            if auth:
                commands.append(("CLIENT", "SETNAME", settings.client_name))
            if commands:
                for reply in await conn.request(commands):
                    if isinstance(reply, ReplyError):
                        await conn.aclose()
                        raise RedisUnavailable(f"{reply.kind} on login: {_safe(reply, target)}")
            return conn

    async def request(self, commands: Sequence[tuple[Arg, ...]]) -> list[Reply]:
        await self.stream.send_all(encode_commands(commands))
        replies: list[Reply] = []
        while len(replies) < len(commands):
            reply = self.parser.next_reply()
            if reply is NEED_DATA:
                data = await self.stream.receive_some(65536)
                if not data:
                    raise RedisUnavailable("connection closed by the server")
                self.parser.feed(data)
                continue
            replies.append(reply)  # type: ignore[arg-type]
        return replies

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True):
            try:
                await trio.aclose_forcefully(self.stream)
            except STREAM_ERRORS:
                pass


def _safe(err: object, target: RedisTarget) -> str:
    text = str(err)
    for secret in (target.password, target.sentinel_password):
        if secret:
            text = text.replace(secret, "***")
    return text


# ---------------------------------------------------------------------------- sharing


class _Slot:
    __slots__ = ("expected", "replies", "done", "error")

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.replies: list[Reply] = []
        self.done = trio.Event()
        self.error: str | None = None


class _Session:
    """The live pair of connections between one successful connect and the next failure."""

    def __init__(self, cmd: _Connection, sub: _Connection, scope: trio.CancelScope) -> None:
        self.cmd = cmd
        self.sub = sub
        self.scope = scope
        self.slots: deque[_Slot] = deque()
        self.write_lock = trio.Lock()
        self.broken: str | None = None
        self.last_pong = trio.current_time()

    def break_(self, reason: str) -> None:
        if self.broken is None:
            self.broken = reason
        for slot in self.slots:
            slot.error = reason
            slot.done.set()
        self.slots.clear()
        self.scope.cancel()


@dataclass(slots=True)
class LinkState:
    """What operators and health checks read: up or down, since when, and why."""

    up: bool = False
    since: float = field(default_factory=time.time)
    error: str | None = None
    outages: int = 0
    server: str = ""


class Script:
    """A Lua script sent by SHA1 (EVALSHA), loaded again when the server has forgotten it
    (a restarted Redis starts with an empty script cache)."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    def call(self, keys: Sequence[Arg], args: Sequence[Arg]) -> tuple[Arg, ...]:
        return ("EVALSHA", self.sha, len(keys), *keys, *args)

    def load(self, keys: Sequence[Arg], args: Sequence[Arg]) -> tuple[Arg, ...]:
        return ("EVAL", self.source, len(keys), *keys, *args)


class RedisLink:
    """Supervised command + pub/sub connections to one Redis (see the module docstring)."""

    def __init__(
        self,
        target: RedisTarget,
        *,
        on_message: MessageHandler,
        settings: LinkSettings | None = None,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.target = target
        self.settings = settings or LinkSettings()
        self._on_message = on_message
        self._on_up: list[Callable[[], Awaitable[None]]] = []
        self._session: _Session | None = None
        self._channels: set[bytes] = set()
        self._rng = rng
        self.state = LinkState(server=target.describe())
        self._up_event = trio.Event()
        self._kick = trio.Event()
        self._sub_out: list[bytes] = []
        self._sub_wake = trio.Event()

    # -------------------------------------------------------------- public API

    @property
    def up(self) -> bool:
        return self._session is not None and self._session.broken is None

    def on_up(self, callback: Callable[[], Awaitable[None]]) -> None:
        """Run `callback` after every (re)connection (re-register what Redis may have lost)."""
        self._on_up.append(callback)

    async def wait_up(self) -> None:
        while not self.up:
            await self._up_event.wait()

    async def execute(self, *args: Arg) -> Reply:
        """One command; an error reply raises ReplyError, an outage RedisUnavailable."""
        (reply,) = await self.pipeline([args])
        if isinstance(reply, ReplyError):
            raise reply
        return reply

    async def pipeline(self, commands: Sequence[tuple[Arg, ...]]) -> list[Reply]:
        """Several commands in one write; replies in order (error replies as ReplyError values)."""
        session = self._session
        if session is None or session.broken is not None:
            raise RedisUnavailable(self.state.error or "not connected")
        if not commands:
            return []
        slot = _Slot(len(commands))
        data = encode_commands(commands)
        timeout = self.settings.command_timeout
        with trio.CancelScope(shield=True):  # a half-written request would corrupt the stream
            async with session.write_lock:
                if session.broken is not None:
                    raise RedisUnavailable(session.broken)
                session.slots.append(slot)
                with trio.move_on_after(timeout) as scope:
                    try:
                        await session.cmd.stream.send_all(data)
                    except STREAM_ERRORS as exc:
                        session.break_(f"write failed: {exc}")
                if scope.cancelled_caught:
                    session.break_(f"write took longer than {timeout:g} s")
        with trio.move_on_after(timeout) as scope:
            await slot.done.wait()
        if scope.cancelled_caught:
            session.break_(f"no reply within {timeout:g} s")
        if slot.error is not None:
            raise RedisUnavailable(slot.error)
        for reply in slot.replies:
            if isinstance(reply, ReplyError) and reply.kind == "READONLY":
                session.break_("the server is a replica now (failover)")
                raise RedisUnavailable("the server is a replica now (failover)")
        return slot.replies

    async def run_script(self, script: Script, keys: Sequence[Arg], args: Sequence[Arg]) -> Reply:
        reply = (await self.pipeline([script.call(keys, args)]))[0]
        if isinstance(reply, ReplyError) and reply.kind == "NOSCRIPT":
            reply = (await self.pipeline([script.load(keys, args)]))[0]
        if isinstance(reply, ReplyError):
            raise reply
        return reply

    def subscribe(self, channel: bytes) -> None:
        """Receive `channel` from now on (and again after every reconnection)."""
        if channel not in self._channels:
            self._channels.add(channel)
            self._send_sub(("SUBSCRIBE", channel))

    def unsubscribe(self, channel: bytes) -> None:
        if channel in self._channels:
            self._channels.discard(channel)
            self._send_sub(("UNSUBSCRIBE", channel))

    @property
    def channels(self) -> frozenset[bytes]:
        return frozenset(self._channels)

    def reconnect_now(self) -> None:
        """Drop the connections (e.g. a failover is suspected); the supervisor reconnects."""
        if self._session is not None:
            self._session.break_("reconnect requested")
        self._kick.set()

    # -------------------------------------------------------------- supervisor

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Connect, serve, and reconnect with backoff, until cancelled."""
        task_status.started()
        delay = self.settings.backoff_initial
        while True:
            try:
                cmd, sub, server = await self._connect()
            except (*STREAM_ERRORS, RedisUnavailable, ProtocolError, trio.TooSlowError, ReplyError) as exc:
                self._went_down(_describe(exc))
                with trio.move_on_after(delay * (0.5 + self._rng() / 2)):
                    await self._kick.wait()
                self._kick = trio.Event()
                delay = min(delay * 2, self.settings.backoff_max)
                continue
            delay = self.settings.backoff_initial
            try:
                reason = await self._serve(cmd, sub, server)
            except Exception as exc:  # a bug of ours must cost a reconnect, never the process
                log.exception("redis session failed unexpectedly; reconnecting")
                reason = _describe(exc)
            self._went_down(reason)

    async def _connect(self) -> tuple[_Connection, _Connection, str]:
        host, port = await self._resolve()
        cmd = await _Connection.open(self.target, host, port, auth=True, settings=self.settings, db=True)
        try:
            if self.target.sentinels:
                (role,) = await cmd.request([("ROLE",)])
                if not (isinstance(role, list) and role and role[0] == b"master"):
                    raise RedisUnavailable(f"{host}:{port} is not the master yet (failover in progress)")
            sub = await _Connection.open(self.target, host, port, auth=True, settings=self.settings, db=True)
        except BaseException:
            await cmd.aclose()
            raise
        server = self.target.unix_path or f"{host}:{port}"
        return cmd, sub, server

    async def _resolve(self) -> tuple[str, int]:
        """The master's address: the URL's, or the one the first answering sentinel names."""
        target = self.target
        if not target.sentinels:
            return target.host, target.port
        errors = []
        for host, port in target.sentinels:
            try:
                conn = await _Connection.open(
                    target, host, port, auth=False, settings=self.settings, db=False
                )
                try:
                    with trio.fail_after(self.settings.command_timeout):
                        (reply,) = await conn.request(
                            [("SENTINEL", "get-master-addr-by-name", target.master_name or "")]
                        )
                finally:
                    await conn.aclose()
            except (*STREAM_ERRORS, RedisUnavailable, ProtocolError, trio.TooSlowError) as exc:
                errors.append(f"{host}:{port}: {_describe(exc)}")
                continue
            if isinstance(reply, list) and len(reply) == 2 and all(isinstance(r, bytes) for r in reply):
                return reply[0].decode(), int(reply[1])  # type: ignore[union-attr, arg-type]
            errors.append(f"{host}:{port}: does not know master {target.master_name!r}")
        raise RedisUnavailable("no sentinel named the master: " + "; ".join(errors))

    async def _serve(self, cmd: _Connection, sub: _Connection, server: str) -> str:
        """Run one session until it breaks; returns why it ended."""
        try:
            async with trio.open_nursery() as nursery:
                session = _Session(cmd, sub, nursery.cancel_scope)
                self._session = session
                self._sub_out = []  # the whole desired set is subscribed below
                if self._channels:
                    self._queue_sub(encode_command("SUBSCRIBE", *sorted(self._channels)))
                nursery.start_soon(self._read_replies, session)
                nursery.start_soon(self._read_messages, session)
                nursery.start_soon(self._write_subscriptions, session)
                nursery.start_soon(self._ping, session)
                self._came_up(server)
                for callback in self._on_up:
                    nursery.start_soon(self._run_callback, callback)
        except STREAM_ERRORS as exc:
            if self._session is not None:
                self._session.break_(_describe(exc))
        finally:
            session_ = self._session
            self._session = None
            if session_ is not None:
                session_.break_(session_.broken or "closed")
            await cmd.aclose()
            await sub.aclose()
        return (session_.broken if session_ is not None else None) or "closed"

    async def _run_callback(self, callback: Callable[[], Awaitable[None]]) -> None:
        try:
            await callback()
        except RedisUnavailable:
            pass  # the session broke meanwhile; the next one runs the callbacks again
        except Exception:
            log.exception("redis resync callback failed")

    async def _read_replies(self, session: _Session) -> None:
        parser = session.cmd.parser
        stream = session.cmd.stream
        try:
            while True:
                data = await stream.receive_some(65536)
                if not data:
                    session.break_("connection closed by the server")
                    return
                parser.feed(data)
                while True:
                    reply = parser.next_reply()
                    if reply is NEED_DATA:
                        break
                    if not session.slots:
                        session.break_("reply without a request (protocol out of step)")
                        return
                    slot = session.slots[0]
                    slot.replies.append(reply)  # type: ignore[arg-type]
                    if len(slot.replies) == slot.expected:
                        session.slots.popleft()
                        slot.done.set()
        except (*STREAM_ERRORS, ProtocolError) as exc:
            session.break_(_describe(exc))

    async def _read_messages(self, session: _Session) -> None:
        parser = session.sub.parser
        stream = session.sub.stream
        handler = self._on_message
        try:
            while True:
                data = await stream.receive_some(65536)
                if not data:
                    session.break_("pub/sub connection closed by the server")
                    return
                parser.feed(data)
                while True:
                    reply = parser.next_reply()
                    if reply is NEED_DATA:
                        break
                    if isinstance(reply, list) and len(reply) == 3 and reply[0] == b"message":
                        try:
                            handler(reply[1], reply[2])  # type: ignore[arg-type]
                        except Exception:
                            log.exception("redis message handler failed", channel=reply[1])
                    elif reply == b"PONG" or (isinstance(reply, list) and reply and reply[0] == b"pong"):
                        # +PONG while nothing is subscribed yet, ["pong", ""] once something is
                        session.last_pong = trio.current_time()
                    elif isinstance(reply, ReplyError):
                        session.break_(f"pub/sub error: {reply}")
                        return
        except (*STREAM_ERRORS, ProtocolError) as exc:
            session.break_(_describe(exc))

    async def _ping(self, session: _Session) -> None:
        """A silent pub/sub connection may be a dead one: ping it, and drop it if no pong."""
        interval = self.settings.ping_interval
        while True:
            await trio.sleep(interval)
            if trio.current_time() - session.last_pong > interval + self.settings.command_timeout:
                session.break_(f"no answer to ping within {self.settings.command_timeout:g} s")
                return
            self._queue_sub(encode_command("PING"))

    def _send_sub(self, command: tuple[Arg, ...]) -> None:
        if self._session is not None and self._session.broken is None:
            self._queue_sub(encode_command(*command))

    def _queue_sub(self, data: bytes) -> None:
        # subscribe() is synchronous (called from message handlers); the session's writer
        # task sends what is queued, in order
        self._sub_out.append(data)
        self._sub_wake.set()

    async def _write_subscriptions(self, session: _Session) -> None:
        stream = session.sub.stream
        while True:
            await self._sub_wake.wait()
            self._sub_wake = trio.Event()
            data, self._sub_out = b"".join(self._sub_out), []
            with trio.move_on_after(self.settings.command_timeout) as scope:
                try:
                    await stream.send_all(data)
                except STREAM_ERRORS as exc:
                    session.break_(f"pub/sub write failed: {exc}")
                    return
            if scope.cancelled_caught:
                session.break_("pub/sub write stalled")
                return

    # -------------------------------------------------------------- state and logs

    def _came_up(self, server: str) -> None:
        state = self.state
        if not state.up:
            if state.error is not None:
                log.info(
                    "redis available again",
                    server=server,
                    down_for_s=round(time.time() - state.since, 3),
                )
            else:
                log.info("redis connected", server=server)
            state.up, state.since, state.error, state.server = True, time.time(), None, server
        self._up_event.set()
        self._up_event = trio.Event()

    def _went_down(self, reason: str) -> None:
        state = self.state
        reason = _safe(reason, self.target)
        if state.up or state.error is None:
            state.outages += 1
            log.warning(
                "redis unavailable; serving from this instance only until it is back",
                server=state.server,
                error=reason,
            )
            state.up, state.since = False, time.time()
        state.error = reason


def _describe(exc: BaseException) -> str:
    if isinstance(exc, trio.TooSlowError):
        return "timed out"
    text = str(exc) or type(exc).__name__
    return text


def decode_map(reply: Any) -> dict[bytes, bytes]:
    """A flat [k1, v1, k2, v2, ...] reply (HGETALL) as a dict."""
    if not isinstance(reply, list):
        return {}
    return {reply[i]: reply[i + 1] for i in range(0, len(reply) - 1, 2)}
