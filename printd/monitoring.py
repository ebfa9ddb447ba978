"""Health, instance figures, Prometheus metrics: what the load balancer and operators read.

`HealthPolicy` decides from a sample (no I/O); `HealthMonitor` takes the samples with psutil
every `check_interval` so that `/monitoring/health` answers from memory in microseconds.
"""

from __future__ import annotations

import hmac
import math
import os
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import psutil
import structlog
import trio
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from printd.auth import AuthError, Claims, TokenVerifier, bearer_token
from printd.breakers.core import CircuitState
from printd.breakers.shell import CircuitRegistry
from printd.cluster.node import ClusterNode
from printd.config import Config, HealthConfig
from printd.http.router import HttpError, HttpRequest, HttpResponse, Router, json_response
from printd.inputs import dispatch_circuit_name

log = structlog.get_logger("printd.monitoring")
_MONITORING_AUTH = (
    "send 'Authorization: Bearer <token>' with the metrics token (PRINTD_METRICS_TOKEN) or an "
    "admin token: printctl token --role admin --company '*' --sub $USER --ttl 15m"
)


@dataclass(frozen=True, slots=True)
class HealthSample:
    at: float
    memory_percent: float
    rss_bytes: int
    cpu_percent: float
    error_rate: float
    request_rate: float


@dataclass(slots=True)
class CheckResult:
    status: str
    value: float
    threshold: float


@dataclass(frozen=True, slots=True)
class HealthPolicy:
    config: HealthConfig

    def evaluate(self, sample: HealthSample) -> dict[str, CheckResult]:
        c = self.config

        def check(value: float, limit: float) -> CheckResult:
            return CheckResult("ok" if value < limit else "fail", round(value, 2), limit)

        return {
            "memory": check(sample.memory_percent, c.memory_percent),
            "cpu": check(sample.cpu_percent, c.cpu_percent),
            "errors": check(sample.error_rate, c.error_rate),
        }


@dataclass(slots=True)
class LogThrottle:
    """One log line per `interval` for a failure that repeats (an fd shortage repeats every
    accept and every sample); `allow` says how many lines were held back since the last one."""

    interval: float = 30.0
    last: float = -math.inf
    held: int = 0

    def allow(self, now: float) -> int | None:
        if now - self.last < self.interval:
            self.held += 1
            return None
        held, self.held, self.last = self.held, 0, now
        return held


@dataclass(slots=True)
class Counters:
    """Monotonic counts the monitor turns into rates between samples."""

    read: Callable[[], tuple[int, int]]  # (requests, errors)
    last: tuple[int, int] = (0, 0)
    last_at: float = field(default_factory=time.monotonic)


class HealthMonitor:
    def __init__(self, config: HealthConfig, counters: Callable[[], tuple[int, int]]) -> None:
        self.policy = HealthPolicy(config)
        self.config = config
        self._counters = Counters(counters)
        self._proc = psutil.Process(os.getpid())
        self._proc.cpu_percent(None)
        self.started = time.time()
        self.sample = self._take(first=True)

    def _take(self, first: bool = False) -> HealthSample:
        # psutil reads /proc files: with no fd left this raises OSError before any state changes
        memory_percent = psutil.virtual_memory().percent
        rss = self._proc.memory_info().rss
        cpu = 0.0 if first else self._proc.cpu_percent(None)
        now = time.monotonic()
        requests, errors = self._counters.read()
        elapsed = max(now - self._counters.last_at, 1e-3)
        d_req = requests - self._counters.last[0]
        d_err = errors - self._counters.last[1]
        self._counters.last = (requests, errors)
        self._counters.last_at = now
        return HealthSample(
            at=time.time(),
            memory_percent=memory_percent,
            rss_bytes=rss,
            cpu_percent=cpu,
            error_rate=0.0 if first else d_err / elapsed,
            request_rate=0.0 if first else d_req / elapsed,
        )

    def reconfigure(self, config: HealthConfig) -> None:
        """New thresholds (a reload), used from the next check on."""
        self.config = config
        self.policy = HealthPolicy(config)

    def live_rss(self) -> int:
        try:
            return int(self._proc.memory_info().rss)
        except OSError:
            return self.sample.rss_bytes

    def refresh(self) -> HealthSample:
        self.sample = self._take()
        return self.sample

    def checks(self) -> dict[str, CheckResult]:
        return self.policy.evaluate(self.sample)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Sample every `check_interval`. A failed sample (EMFILE when fds run out) keeps the last
        one and is retried next time: it must never end the process."""
        task_status.started()
        throttle = LogThrottle()
        while True:
            await trio.sleep(self.config.check_interval)
            try:
                self.refresh()
            except OSError as exc:
                held = throttle.allow(time.monotonic())
                if held is not None:
                    log.warning("health sample failed; keeping the last one", error=str(exc), repeats=held)


class StatsCollector(Collector):
    """Exposes the gateway's plain counters to Prometheus at scrape time (nothing per message).
    docs/operations.md §11 says what each one means to an operator."""

    COUNTERS = (
        (
            "frame_errors",
            "frame_errors",
            "Rejected WebSocket frames (an error event each); a client sending bad frames",
        ),
        (
            "slow_consumers",
            "slow_consumers",
            "Connections closed for reading too slowly (4008, or a write blocked write_timeout);"
            " a steady rate means dashboards on bad networks or not negotiating deflate",
        ),
        ("handshakes", "handshakes", "Completed WebSocket handshakes; a high rate is a reconnect storm"),
        (
            "rejected_upgrades",
            "rejected_upgrades",
            "Refused WebSocket upgrades (auth, origin, draining); a steady rate is clients with bad"
            " or expired tokens reconnecting in a loop",
        ),
        ("http_requests", "http_requests", "Plain HTTP requests"),
        ("http_errors", "http_errors", "HTTP answers with an error status (4xx and 5xx)"),
        (
            "http_server_errors",
            "http_server_errors",
            "HTTP 5xx answers: printd's own faults (what health counts) and 503s (a dependency down)",
        ),
        (
            "http_write_timeouts",
            "http_write_timeouts",
            "HTTP connections dropped: the client did not read the answer within write_timeout",
        ),
        (
            "printer_write_errors",
            "printer_registry_write_errors",
            "Printer status changes not written to the store (it was unavailable); retried on the"
            " printer's next update, status fan-out goes on meanwhile",
        ),
        ("status_batches", "status_batches", "Status batches published to dashboards"),
    )

    def __init__(self, read: Callable[[], dict[str, Any]]) -> None:
        self._read = read

    def collect(self) -> Iterator[Any]:
        s = self._read()
        conns = GaugeMetricFamily(
            "printd_connections",
            "Open WebSocket connections here by role; sum(role=agent) over instances is the agents online",
            labels=["role"],
        )
        for role, n in s["connections"].items():
            conns.add_metric([role], n)
        yield conns
        yield GaugeMetricFamily(
            "printd_tcp_connections",
            "Open TCP connections on the listener (WebSocket and plain HTTP keep-alive);"
            " near the fd limit, new clients wait",
            value=s["tcp_connections"],
        )
        msgs = CounterMetricFamily("printd_ws_messages", "WebSocket messages", labels=["direction"])
        msgs.add_metric(["in"], s["messages_in"])
        msgs.add_metric(["out"], s["messages_out"])
        yield msgs
        wire = CounterMetricFamily(
            "printd_ws_bytes",
            "WebSocket bytes, raw (application) vs wire (compressed and framed); 1 - wire/raw is"
            " the deflate saving, near 0 or negative when clients do not negotiate it",
            labels=["direction", "kind"],
        )
        for direction in ("in", "out"):
            for kind in ("raw", "wire"):
                wire.add_metric([direction, kind], s[f"bytes_{direction}_{kind}"])
        yield wire
        for key, name, doc in self.COUNTERS:
            yield CounterMetricFamily(f"printd_{name}", doc, value=s[key])
        for name, doc in (
            ("jobs_pending", "Printer tests waiting here for their agent's answer"),
            ("rss_bytes", "Resident memory of this process (from the last health sample)"),
        ):
            if name in s:
                yield GaugeMetricFamily(f"printd_{name}", doc, value=s[name])


def metrics_text(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)


@dataclass(frozen=True, slots=True)
class MonitoredInstance:
    """What the monitoring endpoints read and act on, and nothing else of the app."""

    config: Config
    verifier: TokenVerifier
    health: HealthMonitor
    circuits: CircuitRegistry
    metrics: CollectorRegistry
    node: ClusterNode
    started_at: float
    counters: Callable[[], dict[str, Any]]  # plain counters, also exported to Prometheus
    figures: Callable[[], dict[str, Any]]  # the instance's own figures (jobs, status)
    draining: Callable[[], bool]
    shed_agents: Callable[[float, int], Awaitable[int]]  # (share, per second) -> agents asked to move


HEALTH_CODES = {"ok": 200, "degraded": 200, "unhealthy": 503, "draining": 503}


class MonitoringApi:
    """`/monitoring/*`: health for the load balancer (open), figures, metrics and the cluster view
    for operators, circuits for inspection and (with an admin token) reset / force-open /
    disable, and the rebalance action.

    Everything but health names tenants or the cluster's insides, so it needs the `metrics_token`
    or an all-companies admin token; a company's admin sees its own circuits.
    """

    def __init__(self, instance: MonitoredInstance) -> None:
        self.parts = instance
        token = instance.config.auth.metrics_token
        self._metrics_token = token.encode() if token else None

    def set_metrics_token(self, token: str | None) -> None:
        self._metrics_token = token.encode() if token else None

    def _operator(self, req: HttpRequest) -> str | None:
        """None for the metrics token or an all-companies admin; the company of a company admin."""
        try:
            token = bearer_token(req.headers.get("authorization"), None)
            if self._metrics_token is not None and hmac.compare_digest(token.encode(), self._metrics_token):
                return None
            claims = self.parts.verifier.verify(token, roles=("admin",))
        except AuthError as exc:
            raise HttpError(exc.status, f"{exc.message} ({_MONITORING_AUTH})") from None
        return None if claims.company == "*" else claims.company

    def _all_companies(self, req: HttpRequest) -> None:
        if self._operator(req) is not None:
            raise HttpError(403, f"this endpoint covers every company: {_MONITORING_AUTH}")

    def routes(self, router: Router) -> None:
        router.add("GET", "/monitoring/health", self.health)
        router.add("GET", "/monitoring/instance", self.instance)
        router.add("GET", "/monitoring/metrics", self.metrics)
        router.add("GET", "/monitoring/circuits", self.circuits)
        router.add("GET", "/monitoring/cluster", self.cluster)
        router.add("POST", "/monitoring/rebalance", self.rebalance)
        for action in ("reset", "force-open", "disable"):
            router.add("POST", f"/monitoring/circuits/{{name}}/{action}", self._circuit_action(action))

    def health_status(self) -> tuple[str, list[str]]:
        """ok, degraded (a dependency is down: the instance still serves what it can, so the
        load balancer keeps it: 200), unhealthy (its own resources: 503) or draining (503),
        with the reasons."""
        inst = self.parts
        if inst.draining():
            return "draining", ["draining: leaving the cluster, agents are moving to other instances"]
        failed = [
            f"{name} {c.value:g} >= {c.threshold:g}"
            for name, c in inst.health.checks().items()
            if c.status != "ok"
        ]
        if failed:
            return "unhealthy", failed
        reasons = []
        store = inst.circuits.get("store")
        if store is not None and store.state in (CircuitState.OPEN, CircuitState.FORCED_OPEN):
            reasons.append(
                "database unavailable (store circuit open): new jobs are refused, agents stay served"
            )
        backend = inst.node.backend.state()
        if not backend["available"]:
            reasons.append(
                f"cluster backend unavailable ({backend.get('error') or 'connecting'}): serving the agents"
                " and dashboards held here; jobs for agents elsewhere wait in the store"
            )
        if inst.node.store_takeover:
            reasons.append("another process uses this instance id")
        return ("degraded" if reasons else "ok"), reasons

    async def health(self, req: HttpRequest) -> HttpResponse:
        inst = self.parts
        status, reasons = self.health_status()
        checks = inst.health.checks()
        open_circuits = [
            c["name"]
            for c in inst.circuits.snapshot(trio.current_time())["circuits"]
            if c["state"] in ("open", "forced_open")
        ]
        body = {
            "status": status,
            "reasons": reasons,
            "instance": inst.config.instance_id,
            "uptime": round(time.time() - inst.started_at, 3),
            "timestamp": time.time(),
            "sampled_at": inst.health.sample.at,
            "checks": {
                name: {"status": c.status, "value": c.value, "threshold": c.threshold}
                for name, c in checks.items()
            },
            "circuits_open": open_circuits,
            "cluster": {"available": inst.node.backend.state()["available"], "leader": inst.node.is_leader},
            "connections": sum(inst.counters()["connections"].values()),
        }
        return json_response(HEALTH_CODES[status], body)

    async def instance(self, req: HttpRequest) -> HttpResponse:
        self._all_companies(req)
        inst = self.parts
        sample = inst.health.sample  # read, never refresh: health's rate window stays check_interval
        c = inst.counters()

        def saving(raw: int, wire: int) -> float | None:
            return round(100.0 * (1 - wire / raw), 1) if raw else None

        return json_response(
            200,
            {
                "instance": inst.config.instance_id,
                "mode": inst.config.mode,
                "uptime": round(time.time() - inst.started_at, 3),
                "draining": inst.draining(),
                "connections": c["connections"],
                "messages": {"in": c["messages_in"], "out": c["messages_out"]},
                "bytes": {
                    "in": {
                        "raw": c["bytes_in_raw"],
                        "wire": c["bytes_in_wire"],
                        "saving_pct": saving(c["bytes_in_raw"], c["bytes_in_wire"]),
                    },
                    "out": {
                        "raw": c["bytes_out_raw"],
                        "wire": c["bytes_out_wire"],
                        "saving_pct": saving(c["bytes_out_raw"], c["bytes_out_wire"]),
                    },
                },
                **inst.figures(),
                "memory": {"rss_bytes": inst.health.live_rss(), "system_percent": sample.memory_percent},
                "cpu_percent": sample.cpu_percent,
                "rates": {
                    "requests_per_s": round(sample.request_rate, 3),
                    "errors_per_s": round(sample.error_rate, 3),
                },
                "errors": {
                    "frame_errors": c["frame_errors"],
                    "slow_consumers": c["slow_consumers"],
                    "http_errors": c["http_errors"],
                    "http_server_errors": c["http_server_errors"],
                    "http_write_timeouts": c["http_write_timeouts"],
                },
            },
        )

    async def cluster(self, req: HttpRequest) -> HttpResponse:
        self._all_companies(req)
        return json_response(200, await self.parts.node.snapshot())

    async def rebalance(self, req: HttpRequest) -> HttpResponse:
        """Ask a share of this instance's agents to reconnect now (4012), a few per second, so
        that after an instance rejoined the load evens out without a reconnect storm."""
        who = self._fleet_admin(req)
        try:
            share = float(req.query.get("share", "0.2"))
            rate = int(req.query.get("per_second", "50"))
        except ValueError:
            raise HttpError(400, "'share' must be a number in (0, 1], 'per_second' an integer") from None
        if not 0 < share <= 1 or not 1 <= rate <= 10_000:
            raise HttpError(400, "'share' must be in (0, 1] and 'per_second' in 1-10000")
        moved = await self.parts.shed_agents(share, rate)
        log.warning("rebalance", share=share, per_second=rate, agents=moved, sub=who.sub, client=req.client)
        return json_response(200, {"instance": self.parts.config.instance_id, "agents_moved": moved})

    def _fleet_admin(self, req: HttpRequest) -> Claims:
        """An action on the instance's connections needs an all-companies admin's token; the
        metrics token only reads."""
        try:
            claims = self.parts.verifier.verify(
                bearer_token(req.headers.get("authorization"), None), roles=("admin",)
            )
        except AuthError as exc:
            raise HttpError(
                exc.status, f"{exc.message} (an admin token with company '*'; the metrics token only reads)"
            ) from None
        if claims.company != "*":
            raise HttpError(
                403, "this action covers every company: an admin token with company '*' is needed"
            )
        return claims

    async def metrics(self, req: HttpRequest) -> HttpResponse:
        self._all_companies(req)
        return HttpResponse(200, metrics_text(self.parts.metrics), "text/plain; version=0.0.4; charset=utf-8")

    async def circuits(self, req: HttpRequest) -> HttpResponse:
        company = self._operator(req)
        snapshot = self.parts.circuits.snapshot(trio.current_time())
        if company is not None:  # a company's admin: its own branches' circuits only
            prefix = dispatch_circuit_name(company, "")
            own = [c for c in snapshot["circuits"] if c["name"].startswith(prefix)]
            rejecting = ("open", "forced_open")
            snapshot = {
                "total": len(own),
                "open": sum(1 for c in own if c["state"] in rejecting),
                "circuits": own,
            }
        return json_response(200, snapshot)

    def _circuit_action(self, action: str) -> Any:
        async def handler(req: HttpRequest) -> HttpResponse:
            try:
                claims = self.parts.verifier.verify(
                    bearer_token(req.headers.get("authorization"), None), roles=("admin",)
                )
            except AuthError as exc:
                raise HttpError(exc.status, exc.message) from None
            name = req.params["name"]
            # unambiguous: ids hold no ":", so no other tenant's circuit starts with this prefix
            if claims.company != "*" and not name.startswith(dispatch_circuit_name(claims.company, "")):
                raise HttpError(
                    403,
                    f"circuit {name!r} is shared by every company: it needs an all-companies admin token "
                    "(printctl token --role admin --company '*')",
                )
            registry = self.parts.circuits
            try:
                {"reset": registry.reset, "force-open": registry.force_open, "disable": registry.disable}[
                    action
                ](name)
            except KeyError:
                raise HttpError(404, f"no circuit named {name!r}; see GET /monitoring/circuits") from None
            log.warning(
                "circuit admin action",
                action=action,
                circuit=name,
                sub=claims.sub,
                company=claims.company,
                client=req.client,
            )
            snap = next(c for c in registry.snapshot(trio.current_time())["circuits"] if c["name"] == name)
            return json_response(200, {"action": action, "circuit": snap})

        return handler
