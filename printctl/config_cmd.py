"""`printctl config`: write a commented default config, check one."""

from __future__ import annotations

import dataclasses
import inspect
import os
from pathlib import Path
from typing import Annotated, Any

import tomli_w
import typer
from rich.table import Table

from printctl.common import EXIT_USAGE, JsonOpt, console, emit_json, fail
from printd.breakers.core import BreakerConfig
from printd.config import (
    CONFIG_SEARCH_PATH,
    SECTIONS,
    Config,
    ConfigError,
    describe_config_file,
    find_config,
    load_config,
    redact_url,
)

app = typer.Typer(
    help="Write and check printd config files.",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)

DEFAULT_PATH = CONFIG_SEARCH_PATH[0]  # where printd looks first

#: One comment per key; the env var that overrides the key is named where one exists.
COMMENTS: dict[str, str] = {
    "mode": "'development' or 'production' (refuses default secrets, needs cors_origins). Env PRINTD_MODE.",
    "instance_id": "Name of this instance in logs and /monitoring (default: the host name). Env INSTANCE_ID.",
    "data_dir": "SQLite database and the generated development secret live here. Env PRINTD_DATA_DIR.",
    "log_level": "debug, info, warning or error. Env PRINTD_LOG_LEVEL.",
    "log_format": "'console' for people, 'json' for log shippers. Env PRINTD_LOG_FORMAT.",
    "server.host": "Address to listen on (0.0.0.0 for every interface). Env HOST.",
    "server.port": "TCP port. Env PORT.",
    "server.backlog": "Listen backlog: connections the kernel queues before printd accepts them.",
    "server.handshake_timeout": (
        "Seconds a client has to send each HTTP request head (every request of a keep-alive\n"
        "connection) / finish the WebSocket upgrade (then 408)."
    ),
    "server.keepalive_timeout": "Seconds an idle keep-alive connection waits for the next request.",
    "server.max_message_bytes": "Largest WebSocket message accepted, in bytes (at least 1024).",
    "server.max_http_body_bytes": "Largest HTTP request body accepted, in bytes.",
    "server.ping_interval": "Seconds between WebSocket pings to each client.",
    "server.ping_timeout": "Seconds without a pong before a client is dropped (must exceed ping_interval).",
    "server.send_queue_max_bytes": "Bytes queued for one slow client before it is disconnected.",
    "server.write_timeout": (
        "Seconds one socket write (a WebSocket write or an HTTP response) may take before the\n"
        "client is dropped."
    ),
    "server.shutdown_grace": "Seconds to let clients go on SIGTERM before closing the remaining ones.",
    "server.trusted_proxies": (
        "Addresses of the proxies in front (nginx) whose X-Forwarded-For printd believes when it\n"
        "logs who a client is; nobody else's. Env TRUSTED_PROXIES (comma-separated)."
    ),
    "server.error_budget": "Rejected WebSocket frames per minute from one connection before it is closed.",
    "server.message_rate": (
        "WebSocket messages per second one connection may send; beyond, printd pauses reading it."
        " An agent's ack and result of a job sent to it are not counted."
    ),
    "server.message_burst": "WebSocket messages one connection may send at once above message_rate.",
    "server.rate_limit_close_after": (
        "Seconds a connection may stay over message_rate before it is closed (1008)."
    ),
    "compression.enabled": "Offer permessage-deflate to clients that ask for it.",
    "compression.level": "zlib compression level, 1 (fast) to 9 (small).",
    "compression.mem_level": "zlib memory level, 1-9 (memory per connection vs ratio).",
    "compression.server_max_window_bits": "Server's LZ77 window, 9-15 bits (memory per connection vs ratio).",
    "compression.client_max_window_bits": "Client's LZ77 window, 9-15 bits.",
    "compression.min_size": "Messages smaller than this many bytes are sent uncompressed.",
    "auth.jwt_secret": (
        "HS256 secret shared with `printctl token`. Prefer env JWT_SECRET to writing it here.\n"
        "Unset in development: printd generates one in data_dir. Generate one with `openssl rand -hex 32`."
    ),
    "auth.cors_origins": (
        "Browser origins allowed to call printd (dashboards); required in production. "
        "Env CORS_ORIGINS (comma-separated)."
    ),
    "auth.leeway": "Seconds of clock skew tolerated when checking token expiry.",
    "auth.metrics_token": (
        "Bearer token for /monitoring/instance, /metrics and /circuits (e.g. Prometheus' bearer_token);\n"
        "unset = an all-companies admin token only. Production refuses a weak one. "
        "Env PRINTD_METRICS_TOKEN."
    ),
    "status.batch_delay": (
        "Seconds to batch printer status updates before fanning them out (0 = at once). "
        "Env STATUS_BATCH_DELAY (milliseconds)."
    ),
    "status.max_item_bytes": (
        "Largest printer.status item printd keeps and fans out, in bytes of JSON (then invalid_data)."
    ),
    "status.max_printers_per_agent": "Printers one agent may have in the live view (then limit_exceeded).",
    "status.max_printers_per_company": "Printers a company may have in the live view (then limit_exceeded).",
    "status.evict_after": (
        "Seconds after an agent disconnects before its printers leave the live view (shown offline)."
    ),
    "status.chunk_bytes": (
        "Largest snapshot or batch message sent to dashboards, in bytes; bigger ones go in parts."
    ),
    "jobs.ack_timeout": "Seconds an agent has to acknowledge a dispatched job before it is redelivered.",
    "jobs.retry_initial": "First redelivery delay in seconds (doubles with each attempt, up to retry_max).",
    "jobs.retry_max": "Longest redelivery delay in seconds (>= retry_initial).",
    "jobs.max_attempts": "Unacknowledged deliveries before a job is marked expired.",
    "jobs.job_ttl": "Seconds after which a job still queued (never delivered) expires.",
    "jobs.test_timeout": "Seconds a printer test waits for the agent's answer (then 504).",
    "jobs.pending_capacity": "Requests that may wait for an agent's answer at once (then 503).",
    "jobs.pending_sweep_interval": "Seconds between sweeps of abandoned waiting requests.",
    "jobs.pending_stale_after": "Seconds after which a waiting request is considered abandoned.",
    "jobs.max_payload_bytes": "Largest job payload accepted, in bytes of JSON (then 413).",
    "jobs.max_backlog_per_printer": (
        "Unfinished jobs one printer may have; a new one beyond is refused with 429 (its agent\n"
        "is likely offline). Bounds what one client can make the database hold."
    ),
    "ratelimit.branch_tests": "Printer tests allowed per branch per window.",
    "ratelimit.printer_tests": "Printer tests allowed per printer per window.",
    "ratelimit.window": "Rate-limit window in seconds.",
    "health.memory_percent": "System memory use (%) at or above which the instance is unhealthy (503).",
    "health.cpu_percent": "printd CPU use (%) at or above which the instance is unhealthy (503).",
    "health.error_rate": (
        "HTTP 5xx answers but 503 (printd's own faults) per second at or above which it is unhealthy;\n"
        "refused requests, upgrades and frames, and 503s (a dependency down) do not count."
    ),
    "health.check_interval": "Seconds between health samples.",
    "health.fleet_cache_ttl": "Seconds GET /api/v1/fleet/health answers from cache.",
    "store.database_url": (
        "sqlite:///path or postgresql://user:password@host/db; unset = SQLite in data_dir. Env DATABASE_URL."
    ),
    "store.pool_size": "PostgreSQL connections per instance.",
    "store.statement_timeout_ms": (
        "PostgreSQL statement timeout in milliseconds; a call with no answer at all is given up 3 s after it."
    ),
    "redis.url": (
        "redis[s]://[[user]:password@]host[:port][/db], unix:///path.sock[?db=N] or\n"
        "redis+sentinel://[:password@]host1:26379,host2:26379/mastername[/db]; unset = single instance.\n"
        "Env REDIS_URL (or REDIS_HOST, REDIS_PORT, REDIS_PASSWORD, REDIS_DB)."
    ),
    "redis.sentinels": (
        "Redis Sentinel addresses (host:port) instead of one server: printd asks them for the master\n"
        "and follows a failover. Env REDIS_SENTINELS (comma-separated)."
    ),
    "redis.master_name": "The Sentinel master's name (with sentinels). Env REDIS_MASTER_NAME.",
    "redis.prefix": (
        "Prefix of every Redis key and channel: clusters sharing one Redis need different ones.\n"
        "Env REDIS_PREFIX."
    ),
    "redis.connect_timeout": "Seconds to connect to Redis (or a sentinel) before trying again.",
    "redis.command_timeout": (
        "Seconds a Redis reply may take; beyond it the connection is dropped and rebuilt\n"
        "(a paused or partitioned Redis costs a call at most this)."
    ),
    "redis.backoff_initial": "First reconnect delay in seconds while Redis is down (doubles each attempt).",
    "redis.backoff_max": "Longest reconnect delay in seconds while Redis is down.",
    "cluster.advertise_url": (
        "URL other instances and operators use for this one (default http://host:port).\n"
        "Env PRINTD_ADVERTISE_URL."
    ),
    "cluster.heartbeat_interval": "Seconds between membership heartbeats (in Redis and in the store).",
    "cluster.member_ttl": (
        "Seconds without a heartbeat after which an instance leaves membership and a leader's\n"
        "lease ends (at least twice heartbeat_interval)."
    ),
    "cluster.chore_interval": "Seconds between the leader's chores (job expiry, agents of dead instances).",
    "cluster.orphan_after": (
        "Seconds without a store heartbeat after which an instance's agents count as disconnected\n"
        "(their dispatched jobs are queued again for their next connection)."
    ),
    "cluster.status_snapshot_ttl": (
        "Seconds a company's latest printer states stay in Redis after its last update (snapshots\n"
        "for new dashboards on any instance)."
    ),
    "jobs.result_timeout": (
        "Seconds after an ack without a result before the job is sent again (the agent answers\n"
        "from its journal; doubles up to 300 s; acked jobs never expire)."
    ),
    "jobs.sweep_interval": (
        "Seconds between sweeps for queued jobs of the agents held here (what a lost routing\n"
        "message would have delivered)."
    ),
    "circuits.failure_threshold": "Failures within monitoring_window that open the circuit.",
    "circuits.success_threshold": "Successful trial calls that close a half-open circuit.",
    "circuits.open_timeout": "Seconds an open circuit rejects calls before admitting trial calls.",
    "circuits.monitoring_window": "Seconds over which failure_threshold failures are counted.",
    "circuits.failure_rate_threshold": "Optional: open at this failure percentage over the sliding window.",
    "circuits.window_type": (
        "Sliding window: 'count' (last window_size calls) or 'time' (last window_size seconds)."
    ),
    "circuits.window_size": "Calls (count window) or seconds (time window) in the sliding window.",
    "circuits.minimum_calls": "Calls needed in the window before a rate can open the circuit.",
    "circuits.slow_call_duration": "Optional: seconds above which a call counts as slow.",
    "circuits.slow_call_rate_threshold": (
        "Optional: open at this slow-call percentage (set slow_call_duration too)."
    ),
    "circuits.half_open_max_calls": "Trial calls admitted at once while half-open.",
}

#: Commented examples for keys whose default is "unset" (TOML has no null).
EXAMPLES: dict[str, Any] = {
    "instance_id": "printd-1",
    "auth.jwt_secret": "<output of: openssl rand -hex 32>",
    "auth.metrics_token": "<output of: openssl rand -hex 32>",
    "store.database_url": "postgresql://printd:PASSWORD@db.example.com:5432/printd",
    "redis.url": "redis://localhost:6379/0",
    "redis.sentinels": ["sentinel-1:26379", "sentinel-2:26379", "sentinel-3:26379"],
    "redis.master_name": "printd",
    "cluster.advertise_url": "http://10.0.0.11:3001",
    "circuits.failure_rate_threshold": 50.0,
    "circuits.slow_call_duration": 2.0,
    "circuits.slow_call_rate_threshold": 80.0,
}

#: Keys written commented out even though they have a default (machine-specific defaults).
COMMENTED_OUT = frozenset({"instance_id", "redis.sentinels"})

HEADER = """\
# printd configuration, written by `printctl config init`.
#
# Every key shows its default. Environment variables named in the comments override the
# file (handy for containers). Check a file with `printctl config check FILE` (or
# `printd check-config FILE`), then run `printd run --config FILE`. Without --config, printd
# reads $PRINTD_CONFIG, else ./config/printd.toml, else /etc/printd/printd.toml.
"""


def _toml_value(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return list(value)
    return value


def _comment_lines(text: str) -> list[str]:
    return [f"# {line}" for line in text.splitlines()]


def _key_lines(qualified: str, key: str, value: Any) -> list[str]:
    """A key's comment lines then `key = value` (commented out when unset or machine-specific)."""
    lines = _comment_lines(COMMENTS.get(qualified, f"{key}: see printd/config.py"))
    if value is None or qualified in COMMENTED_OUT:
        example = EXAMPLES.get(qualified, value)
        lines += [
            f"# {line}" for line in tomli_w.dumps({key: _toml_value(example)}).rstrip("\n").splitlines()
        ]
    else:
        lines.append(tomli_w.dumps({key: _toml_value(value)}).rstrip("\n"))
    return lines


def _defaults_of(cls: type) -> dict[str, Any]:
    """Field defaults of a dataclass, from the class itself so they cannot drift."""
    instance = cls()
    return {f.name: getattr(instance, f.name) for f in dataclasses.fields(cls)}


def render_default_config() -> str:
    """The commented default config, covering every key of `Config`."""
    out: list[str] = [HEADER]
    defaults = Config()
    for f in dataclasses.fields(Config):
        if f.name in SECTIONS or f.name == "circuits":
            continue
        out.extend(_key_lines(f.name, f.name, getattr(defaults, f.name)))
        out.append("")
    for section, cls in SECTIONS.items():
        out.extend(_comment_lines(inspect.getdoc(cls) or section))
        out.append(f"[{section}]")
        for key, value in _defaults_of(cls).items():
            out.extend(_key_lines(f"{section}.{key}", key, value))
        out.append("")
    out.extend(
        _comment_lines(
            "Circuit breakers keep printd from hammering a failing dependency (e.g. the 'store').\n"
            "See them with `printctl circuits list`; reset with `printctl circuits reset NAME`."
        )
    )
    out.append("[circuits.defaults]")
    for key, value in _defaults_of(BreakerConfig).items():
        out.extend(_key_lines(f"circuits.{key}", key, value))
    out.append("")
    out.extend(
        _comment_lines(
            "Per-circuit overrides: a [circuits.NAME] table starts from [circuits.defaults] and changes\n"
            "some keys. Names are hierarchical with ':' ([circuits.dispatch] also covers\n"
            "'dispatch:branch-7').\n"
            "Example, uncomment to let the store recover faster:"
        )
    )
    out.append("# [circuits.store]")
    out.append("# " + tomli_w.dumps({"open_timeout": 30.0}).rstrip("\n"))
    out.append("# " + tomli_w.dumps({"failure_threshold": 3}).rstrip("\n"))
    return "\n".join(out) + "\n"


@app.command("init")
def init(
    path: Annotated[Path, typer.Argument(help="Where to write the config.")] = DEFAULT_PATH,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Write a commented default config (every key, its default, the env var overriding it).

    Example: printctl config init /etc/printd/printd.toml
    """
    if path.is_dir():
        fail(f"{path} is a directory: give a file name, e.g. {path / 'printd.toml'}", EXIT_USAGE)
    if path.exists() and not force:
        fail(f"{path} already exists: pass --force to overwrite it, or choose another PATH", EXIT_USAGE)
    text = render_default_config()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    except OSError as exc:
        fail(f"cannot write {path}: {exc.strerror or exc}", EXIT_USAGE)
    if json_out:
        emit_json({"path": str(path), "written": True})
    else:
        console.print(f"[green]wrote[/green] {path}; check it with: printctl config check {path}")


@app.command("check")
def check(
    path: Annotated[
        Path | None,
        typer.Argument(
            help="Config file (default: $PRINTD_CONFIG, else ./config/printd.toml, else "
            "/etc/printd/printd.toml, else none: defaults + environment).",
            show_default=False,
        ),
    ] = None,
    production: Annotated[bool, typer.Option("--production", help="Check with production rules.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Validate a config file plus the environment like `printd check-config`; exit 2 naming the bad key.

    Example: JWT_SECRET=$(openssl rand -hex 32) printctl config check --production config/printd.toml
    """
    path = find_config(path, os.environ)
    try:
        cfg = load_config(path, overrides={"mode": "production"} if production else None)
    except ConfigError as exc:
        fail(f"config error: {exc}", EXIT_USAGE, path=describe_config_file(path))
    summary = {
        "ok": True,
        "path": describe_config_file(path),
        "mode": cfg.mode,
        "listen": f"{cfg.server.host}:{cfg.server.port}",
        "store": redact_url(cfg.database_url),
        "redis": redact_url(cfg.redis.url) if cfg.redis.url else None,
        "instance": cfg.instance_id,
        "jwt_secret": "set"
        if cfg.auth.jwt_secret
        else f"unset (development: kept in {cfg.data_dir}/jwt_secret)",
        "circuit_overrides": sorted(cfg.circuits.overrides),
    }
    if json_out:
        emit_json(summary)
        return
    table = Table(title=f"[green]ok[/green]: {describe_config_file(path)}", show_header=False)
    table.add_column("key", style="bold")
    table.add_column("value")
    for key, value in summary.items():
        if key not in ("ok", "path"):
            table.add_row(key, "-" if value in (None, []) else str(value))
    console.print(table)
