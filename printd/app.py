"""The composition root: builds every part of one printd from its Config and runs them in one
nursery tree. Nothing is global; tests build as many apps as they like.
"""

from __future__ import annotations

import gc
import math
import resource
import signal
import time
from dataclasses import replace
from functools import partial
from typing import Any

import structlog
import trio
from prometheus_client import CollectorRegistry

from printd import systemd
from printd.auth import TokenVerifier, resolve_secret
from printd.breakers import BreakerMetrics, CircuitRegistry, CircuitState
from printd.cache import TTLCache
from printd.cluster.bus import LocalBus
from printd.config import Config, redact_url
from printd.gateway.connection import GatewayStats
from printd.gateway.hub import Hub
from printd.gateway.server import Gateway, origin_allowed
from printd.http.listener import Listener
from printd.http.router import HttpError, HttpRequest, HttpResponse, Router
from printd.jobs.api import JobsApi
from printd.jobs.pending import PendingWaiters
from printd.jobs.service import JobService
from printd.monitoring import HealthMonitor, MonitoringApi, StatsCollector
from printd.printers import PrinterRegistry
from printd.ratelimit import LocalRateLimiter, PrinterTestLimits, PrinterTestQuota
from printd.status import StatusFanout, company_topic
from printd.store import Store, StoreUnavailable, open_store
from printd.store.guarded import GuardedStore, StoreCircuitOpen

log = structlog.get_logger("printd")
VERSION = "0.1.0"
CORS_PREFLIGHT = (
    ("Access-Control-Allow-Methods", "GET, POST, OPTIONS"),
    ("Access-Control-Allow-Headers", "Authorization, Content-Type, Idempotency-Key"),
    ("Access-Control-Max-Age", "600"),
)


class App:
    def __init__(self, config: Config) -> None:
        self.config = config
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
        self.raw_store: Store = open_store(
            config.database_url,
            pool_size=config.store.pool_size,
            statement_timeout_ms=config.store.statement_timeout_ms,
        )
        self.store = GuardedStore(self.raw_store, self.circuits.get_or_create("store"))
        self.bus = LocalBus()
        self.hub = Hub()
        self.status = StatusFanout(self.bus, config.status)
        self.bus.subscribe("company:", self._deliver_to_company)
        self.pending: PendingWaiters[dict[str, Any]] = PendingWaiters(
            capacity=config.jobs.pending_capacity,
            stale_after=config.jobs.pending_stale_after,
            sweep_interval=config.jobs.pending_sweep_interval,
        )
        self.jobs = JobService(
            self.store, self.hub, config.jobs, self.pending, self._publish_company, self.circuits
        )
        self.printers = PrinterRegistry(self.store, owner_online=self.jobs.agent_online)
        self.gateway = Gateway(
            config, self.verifier, self.hub, self.status, self.printers, self.jobs, self.stats
        )
        rl = config.ratelimit
        self.limits = PrinterTestLimits(
            LocalRateLimiter(), PrinterTestQuota(rl.branch_tests, rl.printer_tests, rl.window)
        )
        self.fleet_cache: TTLCache[str, dict[str, Any]] = TTLCache(ttl=config.health.fleet_cache_ttl)
        self.router = Router()
        JobsApi(
            self.jobs, self.store, self.verifier, self.limits, self.fleet_cache, config.jobs, self.printers
        ).routes(self.router)
        self.listener = Listener(config.server, self.gateway, self.handle_http, f"printd/{VERSION}")
        self.health = HealthMonitor(config.health, self._request_counts)
        self.monitoring = MonitoringApi(self)
        self.monitoring.routes(self.router)
        self.metrics.register(StatsCollector(self.monitoring.counters))
        self.port: int | None = None

    # ---------------------------------------------------------------- wiring

    def _deliver_to_company(self, topic: str, payload: bytes) -> None:
        self.hub.deliver_to_company(topic.removeprefix("company:"), payload)

    async def _publish_company(self, company: str, payload: bytes) -> None:
        await self.bus.publish(company_topic(company), payload)

    def _request_counts(self) -> tuple[int, int]:
        return self.listener.http_requests, self.listener.http_errors + self.stats.frame_errors

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
        await self.raw_store.open()
        try:
            applied = await self.raw_store.migrate()
            if applied:
                log.info("schema migrated", versions=applied)
            async with trio.open_nursery() as nursery:
                self.gateway.bind(nursery)
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
                accept_scope = trio.CancelScope()
                listeners = await nursery.start(self._accept, accept_scope, nursery)
                self.port = listeners[0].socket.getsockname()[1]
                tune_gc()
                log.info(
                    "printd ready",
                    instance=cfg.instance_id,
                    listen=f"{cfg.server.host}:{self.port}",
                    store=redact_url(cfg.database_url),
                    mode=cfg.mode,
                    jwt_from=self.secret_source,
                )
                if self.secret_source not in ("config",):
                    log.info(
                        "mint tokens with: printctl token --role agent --company C --branch B --sub agent-1"
                    )
                if not cfg.auth.cors_origins and not cfg.production:
                    log.warning("CORS_ORIGINS is empty: browser origins are all accepted (development mode)")
                systemd.notify("READY=1")
                task_status.started(self.port)
                with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                    async for signum in signals:
                        log.info("stopping", signal=signal.Signals(signum).name)
                        break
                systemd.notify("STOPPING=1")
                await self.drain(accept_scope)
                nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                await self.raw_store.close()
            log.info("printd stopped")

    async def _accept(
        self, scope: trio.CancelScope, handler_nursery: trio.Nursery, *, task_status: trio.TaskStatus[Any]
    ) -> None:
        cfg = self.config.server
        listeners = await trio.open_tcp_listeners(cfg.port, host=cfg.host, backlog=cfg.backlog)
        task_status.started(listeners)
        with scope:
            await trio.serve_listeners(self.listener.handle, listeners, handler_nursery=handler_nursery)

    async def drain(self, accept_scope: trio.CancelScope) -> None:
        """Refuse new clients, flush the last batches, close every WebSocket with 1001, and give
        them `shutdown_grace` seconds to go before the rest is cancelled."""
        self.draining = True
        self.gateway.accepting = False
        await self.status.flush()  # the last window's updates go out before the close frames
        self.hub.close_all()
        with trio.move_on_after(self.config.server.shutdown_grace):
            await self.hub.wait_empty()
        accept_scope.cancel()
        log.info("drained", remaining=len(self.hub.connections))


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
