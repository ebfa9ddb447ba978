"""The composition root: builds every part of one printd from its Config and runs them in one
nursery tree. Nothing is global; tests build as many apps as they like.
"""

from __future__ import annotations

import errno
import gc
import math
import resource
import signal
import time
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from typing import Any

import structlog
import trio
from prometheus_client import CollectorRegistry

from printd import package_version, systemd
from printd.auth import TokenVerifier, resolve_secret
from printd.breakers.core import CircuitState
from printd.breakers.metrics import BreakerMetrics
from printd.breakers.shell import CircuitRegistry
from printd.cache import TTLCache
from printd.cluster.base import ClusterBackend, ClusterUnavailable, MemberInfo
from printd.cluster.local import LocalCluster
from printd.cluster.node import ClusterNode, NodeSettings
from printd.cluster.redis import RedisCluster, new_incarnation
from printd.cluster.redis_client import LinkSettings
from printd.cluster.routing import AgentRouter
from printd.config import Config, ConfigError, config_changes, redact_url, reloaded
from printd.gateway.connection import GatewayStats
from printd.gateway.hub import Hub
from printd.gateway.server import Gateway, origin_allowed
from printd.http.listener import Listener
from printd.http.router import HttpError, HttpRequest, HttpResponse, Router
from printd.jobs.api import JobsApi
from printd.jobs.pending import PendingWaiters
from printd.jobs.service import JobService
from printd.logs import set_log_level
from printd.metrics import ClusterCollector, JobMetrics, JobsCollector, QueueSampler, StoreCollector
from printd.monitoring import HealthMonitor, LogThrottle, MonitoredInstance, MonitoringApi, StatsCollector
from printd.printers import PrinterRegistry
from printd.protocol import CLOSE_GOING_AWAY, CLOSE_RECONNECT_NOW, CLOSE_REPLACED
from printd.ratelimit import PrinterTestLimits, PrinterTestQuota
from printd.status import EVENT_FRAME, STATUS_FRAME, StatusFanout, company_topic
from printd.store import StoreCircuitOpen, StoreError, StoreUnavailable, open_store

log = structlog.get_logger("printd")
VERSION = package_version()
ACCEPT_CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
CORS_PREFLIGHT = (
    ("Access-Control-Allow-Methods", "GET, POST, OPTIONS"),
    ("Access-Control-Allow-Headers", "Authorization, Content-Type, Idempotency-Key"),
    ("Access-Control-Max-Age", "600"),
)


class App:
    def __init__(self, config: Config, *, load_config: Callable[[], Config] | None = None) -> None:
        self.config = config
        self._load_config = load_config  # re-reads the file and environment on SIGHUP
        self.started_at = time.time()
        self.draining = False
        secret, self.secret_source = resolve_secret(config)
        self.verifier = TokenVerifier(secret, leeway=config.auth.leeway)
        self.stats = GatewayStats()
        self.metrics = CollectorRegistry(auto_describe=True)
        self.circuits = CircuitRegistry(
            config.circuits.defaults,
            config.circuits.overrides,
            metrics=BreakerMetrics(self.metrics),
            failure_exceptions=(StoreUnavailable, OSError, trio.TooSlowError),
            listeners=[log_transition],
        )
        self.store = open_store(
            config.database_url,
            pool_size=config.store.pool_size,
            statement_timeout_ms=config.store.statement_timeout_ms,
        )
        self.store.guard_with(self.circuits.get_or_create("store"))
        self.incarnation = new_incarnation()
        self.backend = make_backend(config, self.incarnation, self._on_cluster_message)
        self.hub = Hub(on_company=self._dashboards_of)
        self.status = StatusFanout(
            config.status,
            self.hub.deliver_to_company,
            self.backend,
            snapshot_ttl=config.cluster.status_snapshot_ttl,
        )
        self.pending: PendingWaiters[dict[str, Any]] = PendingWaiters(
            capacity=config.jobs.pending_capacity,
            stale_after=config.jobs.pending_stale_after,
            sweep_interval=config.jobs.pending_sweep_interval,
        )
        self.agents = AgentRouter(self.backend, self.hub.agent, instance_id=config.instance_id)
        self.jobs = JobService(
            self.store,
            self.agents,
            config.jobs,
            self.pending,
            self._publish_company,
            self.circuits,
            incarnation=self.incarnation,
        )
        self.node = ClusterNode(
            self.backend,
            self.store,
            NodeSettings(
                heartbeat_interval=config.cluster.heartbeat_interval,
                member_ttl=config.cluster.member_ttl,
                chore_interval=config.cluster.chore_interval,
                orphan_after=config.cluster.orphan_after,
            ),
            instance_id=config.instance_id,
            clustered=config.redis.clustered,
            describe=self._member_info,
        )
        self.node.chores = partial(self.jobs.leader_chores, orphan_after=config.cluster.orphan_after)
        self.node.resync = self._resync
        self.node.cut_off = self.jobs.revalidate
        self.node.handle("wake", lambda m: self.jobs.wake_local((str(m["c"]), str(m["a"]))))
        self.node.handle(
            "test", lambda m: self.jobs.test_outcome(str(m["cid"]), m.get("result"), bool(m.get("gone")))
        )
        self.node.handle("replaced", self._replaced_elsewhere)
        self.node.handle_topic("company:", self._from_other_instance)
        self.printers = PrinterRegistry(self.store, owner_online=self.jobs.agent_online)
        self.gateway = Gateway(
            config, self.verifier, self.hub, self.status, self.printers, self.jobs, self.stats
        )
        rl = config.ratelimit
        self.limits = PrinterTestLimits(
            self.backend, PrinterTestQuota(rl.branch_tests, rl.printer_tests, rl.window)
        )
        self.fleet_cache: TTLCache[str, dict[str, Any]] = TTLCache(
            ttl=config.health.fleet_cache_ttl, stale_on=(StoreUnavailable,)
        )
        self.router = Router()
        self.jobs_api = JobsApi(
            self.jobs, self.store, self.verifier, self.limits, self.fleet_cache, config.jobs, self.printers
        )
        self.jobs_api.routes(self.router)
        self.listener = Listener(config.server, self.gateway, self.handle_http, f"printd/{VERSION}")
        self.health = HealthMonitor(config.health, self._request_counts)
        self.monitoring = MonitoringApi(
            MonitoredInstance(
                config=config,
                verifier=self.verifier,
                health=self.health,
                circuits=self.circuits,
                metrics=self.metrics,
                node=self.node,
                started_at=self.started_at,
                counters=self._counters,
                figures=self._figures,
                draining=lambda: self.draining,
                shed_agents=self._shed_agents,
            )
        )
        self.monitoring.routes(self.router)
        self.metrics.register(StatsCollector(self._counters))
        self.jobs.on_finished = JobMetrics(self.metrics).observe
        self.queue = QueueSampler(self.store)
        for collector in (
            JobsCollector(self.jobs),
            StoreCollector(self.store),
            ClusterCollector(self.node, self.agents),
            self.queue,
        ):
            self.metrics.register(collector)
        self.port: int | None = None

    # ---------------------------------------------------------------- wiring

    async def _publish_company(self, company: str, payload: bytes) -> None:
        """A company event (job.completed) to its dashboards here and on every other instance."""
        self.hub.deliver_to_company(company, payload)
        try:
            await self.backend.publish([(company_topic(company), EVENT_FRAME + payload)])
        except ClusterUnavailable:
            pass  # dashboards elsewhere miss it; the job's state is in the store

    def _from_other_instance(self, topic: str, payload: bytes) -> None:
        company = topic.removeprefix("company:")
        kind = payload[:1]
        if kind == EVENT_FRAME:
            self.hub.deliver_to_company(company, payload[1:])
        elif kind == STATUS_FRAME:
            self.status.from_other_instance(company, payload)

    def _dashboards_of(self, company: str, present: bool) -> None:
        """Receive a company's traffic from other instances only while dashboards of it are here."""
        (self.backend.subscribe if present else self.backend.unsubscribe)(company_topic(company))

    def _on_cluster_message(self, topic: str, payload: bytes) -> None:
        self.node.on_message(topic, payload)

    def _test_outcome(self, message: dict[str, Any]) -> None:
        result = message.get("result")
        self.jobs.test_outcome(
            str(message["cid"]), result if isinstance(result, dict) else None, bool(message.get("gone"))
        )

    def _replaced_elsewhere(self, message: dict[str, Any]) -> None:
        """The agent connected again on another instance: close our older connection (4009)."""
        link = self.hub.agent(str(message["c"]), str(message["a"]))
        if link is not None and link.session == message.get("s"):
            link.close(CLOSE_REPLACED, "replaced by a newer connection of the same agent")

    async def _resync(self) -> None:
        """The cluster backend is back, perhaps empty: register the agents held here again, and
        deliver what waited (jobs accepted elsewhere for our agents while routing was down)."""
        await self.agents.register([link for link in self.hub.agents.values() if not link.closing])
        try:
            await self.jobs.sweep()
        except StoreError:
            pass

    def _status_line(self) -> str:
        """systemd's STATUS: what `systemctl status printd@ID` shows at a glance."""
        c = self.hub.counts_by_role()
        cluster = "leader" if self.node.is_leader else "member"
        if not self.backend.available:
            cluster += ", Redis unavailable"
        return f"{c['agent']} agents, {c['dashboard'] + c['admin']} dashboards; {cluster}"

    def reload(self) -> None:
        """SIGHUP: read the config again and apply what can change while running (log level,
        limits, breaker thresholds, CORS origins, rate limits); name what needs a restart. A file
        that does not load is refused with the reason and the running config is kept."""
        if self._load_config is None:
            log.warning("reload ignored: this printd was not started from a config it can re-read")
            return
        systemd.reloading()
        try:
            new = self._load_config()
        except ConfigError as exc:
            log.error("reload refused: the new config is invalid; the running config is kept", error=str(exc))
            systemd.notify("READY=1")
            return
        changes = config_changes(self.config, new)
        applied = [c.describe() for c in changes if c.reloadable]
        pending = [c.describe() for c in changes if not c.reloadable]
        self.apply_config(reloaded(self.config, new))
        log.info("config reloaded", applied=applied or "nothing changed")
        if pending:
            log.warning("these settings need a restart to take effect", settings=pending)
        systemd.notify(f"READY=1\nSTATUS={self._status_line()}")

    def apply_config(self, new: Config) -> None:
        """Hand the reloadable settings to the parts that use them."""
        self.config = new
        self.gateway.config = new
        self.listener.config = new.server
        self.jobs.reconfigure(new.jobs)
        self.jobs_api.config = new.jobs
        rl = new.ratelimit
        self.limits.quota = PrinterTestQuota(rl.branch_tests, rl.printer_tests, rl.window)
        self.circuits.reconfigure(new.circuits.defaults, new.circuits.overrides)
        self.health.reconfigure(new.health)
        self.verifier.leeway = new.auth.leeway
        self.monitoring.set_metrics_token(new.auth.metrics_token)
        set_log_level(new.log_level)

    def _counters(self) -> dict[str, Any]:
        s = self.stats
        return {
            "connections": self.hub.counts_by_role(),
            "messages_in": s.messages_in,
            "messages_out": s.messages_out,
            "bytes_in_raw": s.bytes_in_raw,
            "bytes_in_wire": s.bytes_in_wire,
            "bytes_out_raw": s.bytes_out_raw,
            "bytes_out_wire": s.bytes_out_wire,
            "frame_errors": s.frame_errors,
            "slow_consumers": s.slow_consumers,
            "handshakes": s.handshakes,
            "rejected_upgrades": s.rejected_upgrades,
            "http_requests": self.listener.http_requests,
            "http_errors": self.listener.http_errors,
            "http_server_errors": self.listener.http_server_errors,
            "http_write_timeouts": self.listener.write_timeouts,
            "tcp_connections": self.listener.open_connections,
            "printer_write_errors": self.printers.write_errors,
            "status_batches": self.status.batches_sent,
            "jobs_pending": len(self.pending),
            "rss_bytes": self.health.sample.rss_bytes,
        }

    def _figures(self) -> dict[str, Any]:
        return {
            "status": {"batches": self.status.batches_sent, "printers": self.status.batcher.printers()},
            "jobs": {
                "pending_requests": len(self.pending),
                "awaiting_ack": self.jobs.core.awaiting_ack(),
                "in_flight": self.jobs.core.inflight_count(),
                "dispatched": self.jobs.dispatched,
                "redelivered": self.jobs.redelivered,
                "completed": self.jobs.completed,
                "stale_refused": self.jobs.stale_refused,
            },
            "cluster": {
                "backend": self.backend.kind,
                "leader": self.node.is_leader,
                "agents_replaced_elsewhere": self.agents.replaced_remote,
            },
        }

    async def _shed_agents(self, share: float, per_second: int) -> int:
        """Close a share of this instance's agents with 4012 (reconnect now), `per_second` at a
        time; the load balancer sends them to the least loaded instances."""
        links = [link for link in self.hub.agents.values() if not link.closing]
        chosen = links[: round(len(links) * share)]
        for i, link in enumerate(chosen):
            if i and i % per_second == 0:
                await trio.sleep(1.0)
            link.close(CLOSE_RECONNECT_NOW, "rebalancing: reconnect now")
        return len(chosen)

    def _member_info(self) -> MemberInfo:
        cfg = self.config
        url = cfg.cluster.advertise_url or f"http://{cfg.server.host}:{self.port or cfg.server.port}"
        return MemberInfo(
            instance_id=cfg.instance_id,
            incarnation=self.incarnation,
            url=url,
            version=VERSION,
            started_at=self.started_at,
            draining=self.draining,
            health=self.monitoring.health_status()[0],
            connections=self.hub.counts_by_role(),
        )

    def _request_counts(self) -> tuple[int, int]:
        """(requests, errors) for health: only printd's own faults count (5xx but 503). Refused
        requests, upgrades and frames are the clients' doing; counting them let a few hundred
        unauthenticated upgrades flip health to 503 and take the instance out of the pool. A 503
        is a dependency down (the database: every instance answers the same, health says
        degraded with the reason) or a target unavailable."""
        return self.listener.http_requests, self.listener.http_own_errors

    async def handle_http(self, request: HttpRequest) -> HttpResponse:
        """Route a request, answer CORS for allowed browser origins, and turn a dependency that
        is down into 503 + Retry-After (never a hang)."""
        origin = request.headers.get("origin")
        cors = origin is not None and origin_allowed(
            origin, self.config.auth.cors_origins, self.config.production
        )
        try:
            if request.method == "OPTIONS" and origin is not None:
                if not cors:
                    raise HttpError(403, f"origin {origin!r} is not allowed")
                response = HttpResponse(204, headers=list(CORS_PREFLIGHT))
            else:
                response = await self._route(request)
        except HttpError as exc:
            response = exc.response()
        if cors and origin is not None:
            response.headers += [("Access-Control-Allow-Origin", origin), ("Vary", "Origin")]
        return response

    async def _route(self, request: HttpRequest) -> HttpResponse:
        handler, params = self.router.resolve(request.method, request.path)
        try:
            return await handler(replace(request, params=params))
        except StoreCircuitOpen as exc:
            retry = str(max(1, math.ceil(exc.retry_after)))
            raise HttpError(
                503,
                f"the database is unavailable ({exc})",
                headers=[("Retry-After", retry)],
                extra={"circuit": exc.circuit},
            ) from None
        except StoreUnavailable:
            raise HttpError(
                503, "the database is unavailable; try again shortly", headers=[("Retry-After", "5")]
            ) from None

    # ---------------------------------------------------------------- lifecycle

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until SIGTERM/SIGINT (or cancellation), then drain and stop."""
        raise_fd_limit()
        cfg = self.config
        await self.store.open()
        try:
            applied = await self.store.migrate()
            if applied:
                log.info("schema migrated", versions=applied)
            # bound first, so a taken port fails the start before this instance joins anything
            listeners = await trio.open_tcp_listeners(
                cfg.server.port, host=cfg.server.host, backlog=cfg.server.backlog
            )
            self.port = listeners[0].socket.getsockname()[1]
            async with trio.open_nursery() as nursery:
                self.gateway.bind(nursery)
                await nursery.start(partial(self.node.run, connect_timeout=cfg.redis.connect_timeout))
                nursery.start_soon(self.circuits.get_or_create("store").probe_while_open, self.store.probe)
                await nursery.start(self.status.run)
                await nursery.start(
                    partial(
                        self.hub.run_heartbeats,
                        ping_interval=cfg.server.ping_interval,
                        ping_timeout=cfg.server.ping_timeout,
                        leeway=cfg.auth.leeway,  # the same grace the upgrade's token check allows
                    )
                )
                await nursery.start(self.pending.run)
                await nursery.start(self.jobs.run)
                await nursery.start(self.health.run)
                await nursery.start(self.queue.run)
                accept_scope = trio.CancelScope()
                nursery.start_soon(self._accept, listeners, accept_scope, nursery)
                tune_gc()
                log.info(
                    "printd ready",
                    instance=cfg.instance_id,
                    listen=f"{cfg.server.host}:{self.port}",
                    store=redact_url(cfg.database_url),
                    cluster=self.backend.state().get("server", "local (no REDIS_URL: this instance alone)"),
                    mode=cfg.mode,
                )
                if self.secret_source not in ("config",):
                    log.info(
                        "mint tokens with: printctl token --role agent --company C --branch B --sub agent-1"
                    )
                if not cfg.auth.cors_origins and not cfg.production:
                    log.warning("CORS_ORIGINS is empty: browser origins are all accepted (development mode)")
                interval = systemd.watchdog_interval()
                if interval is not None:
                    await nursery.start(systemd.watchdog, interval, self._status_line)
                systemd.notify(f"READY=1\nSTATUS={self._status_line()}")
                task_status.started(self.port)
                with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
                    async for signum in signals:
                        if signum == signal.SIGHUP:
                            self.reload()
                            continue
                        log.info("stopping", signal=signal.Signals(signum).name)
                        break
                systemd.notify("STOPPING=1")
                await self.drain(accept_scope)
                nursery.cancel_scope.cancel()
        finally:
            # bounded whatever the database does: a store that holds traffic without answering
            # must not keep printd from stopping (systemd would SIGKILL it at TimeoutStopSec)
            with trio.CancelScope(shield=True), trio.move_on_after(cfg.server.shutdown_grace):
                await self.node.deregister()
                await self.store.close()
            log.info("printd stopped")

    async def _accept(
        self, listeners: list[trio.SocketListener], scope: trio.CancelScope, handler_nursery: trio.Nursery
    ) -> None:
        with scope:
            async with trio.open_nursery() as nursery:
                for listener in listeners:
                    nursery.start_soon(self._accept_loop, listener, handler_nursery)

    async def _accept_loop(self, listener: trio.SocketListener, handler_nursery: trio.Nursery) -> None:
        """Accept connections; when fds (or memory) run out, back off (0.1 s doubling to 2 s) and
        retry, logging once a minute, so printd serves again as soon as fds free up. Clients
        wait in the listen backlog meanwhile. (trio's serve_listeners retries every 0.1 s with a
        traceback each time.)"""
        backoff = 0.0
        throttle = LogThrottle(60.0)
        async with listener:
            while True:
                try:
                    stream = await listener.accept()
                except OSError as exc:
                    if exc.errno not in ACCEPT_CAPACITY_ERRNOS:
                        raise
                    backoff = min(max(0.1, backoff * 2), 2.0)
                    held = throttle.allow(time.monotonic())
                    if held is not None:
                        log.error("cannot accept connections; retrying", error=str(exc), repeats=held)
                    await trio.sleep(backoff)
                    continue
                backoff = 0.0
                handler_nursery.start_soon(self.listener.handle, stream)

    async def drain(self, accept_scope: trio.CancelScope) -> None:
        """Leave the cluster first (nobody routes here any more, the leadership moves on), refuse
        new clients, flush the last batches, tell agents to reconnect now (4012: to another
        instance, at once) and dashboards to go (1001), and give them `shutdown_grace` seconds
        before the rest is cancelled. Jobs in flight stay in the store; the agents' new
        connections get them."""
        self.draining = True
        self.gateway.accepting = False
        with trio.move_on_after(self.config.server.shutdown_grace):
            await self.node.leave()
        with trio.move_on_after(1.0):
            await self.status.flush()  # the last window's updates go out before the close frames
        for link in list(self.hub.connections):
            if link.role == "agent":
                link.close(CLOSE_RECONNECT_NOW, "this instance is draining; reconnect now")
            else:
                link.close(CLOSE_GOING_AWAY, "server shutting down")
        with trio.move_on_after(self.config.server.shutdown_grace):
            await self.hub.wait_empty()
        accept_scope.cancel()
        log.info("drained", remaining=len(self.hub.connections))


def make_backend(config: Config, incarnation: str, on_message: Any) -> ClusterBackend:
    """Redis when REDIS_URL is set (a cluster), otherwise the in-memory backend (alone)."""
    r = config.redis
    target = r.target()
    if target is None:
        return LocalCluster(incarnation, on_message)
    settings = LinkSettings(
        connect_timeout=r.connect_timeout,
        command_timeout=r.command_timeout,
        backoff_initial=r.backoff_initial,
        backoff_max=r.backoff_max,
        client_name=f"printd:{config.instance_id}",
    )
    return RedisCluster(incarnation, on_message, target, prefix=r.prefix, settings=settings)


def log_transition(name: str, old: CircuitState, new: CircuitState, now: float, reason: str) -> None:
    """Every circuit transition is logged (and counted by BreakerMetrics)."""
    level = log.warning if new in (CircuitState.OPEN, CircuitState.FORCED_OPEN) else log.info
    level("circuit transition", circuit=name, old=str(old), new=str(new), reason=reason)


def raise_fd_limit() -> None:
    """One fd per connection: take the hard limit so thousands of agents fit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def tune_gc() -> None:
    """Freeze start-up objects and widen gen-0 so full collections stay rare at thousands of
    connections (the tail-latency risk measured in the spike)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
