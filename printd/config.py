"""Typed configuration: TOML file, then environment overrides, then validation.

Every error names the offending key and says why, so `printd check-config` can point an
operator at the exact line to fix. Defaults are the figures of the system printd replaces.
"""

from __future__ import annotations

import dataclasses
import os
import re
import socket
import tomllib
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints
from urllib.parse import quote

from printd.breakers.core import BreakerConfig
from printd.cluster.target import RedisTarget, parse_redis_url, with_sentinels

Mode = Literal["development", "production"]
#: Secrets that ship in examples and must never run in production.
KNOWN_DEFAULT_SECRETS = frozenset({"", "secret", "change-me", "changeme", "dev-secret", "your-secret-key"})
MIN_PRODUCTION_SECRET_LEN = 32
#: Random secrets of 32+ characters have far more; hex has only 16 symbols in all, so a higher
#: bar would refuse a fair share of genuine `openssl rand -hex 32` output.
MIN_SECRET_DISTINCT = 10
GENERATE_SECRET = "generate one with `openssl rand -hex 32`"


class ConfigError(ValueError):
    """A configuration value is missing or wrong; the message names the key and the fix."""


#: Names the config file outright (after --config, before the search path).
CONFIG_ENV = "PRINTD_CONFIG"
#: Where printd and printctl look for a config file when none is named: the file
#: `printctl config init` writes (relative to the working directory), then the system one.
CONFIG_SEARCH_PATH = (Path("config/printd.toml"), Path("/etc/printd/printd.toml"))


def find_config(
    explicit: Path | None,
    env: Mapping[str, str],
    search_path: tuple[Path, ...] = CONFIG_SEARCH_PATH,
) -> Path | None:
    """The one rule every command follows: `--config FILE`, else `$PRINTD_CONFIG`, else the first
    file of the search path that exists; None means no file (defaults + environment). A file that
    is named but missing is returned anyway, so that loading it says so."""
    if explicit is not None:
        return explicit
    if env.get(CONFIG_ENV):
        return Path(env[CONFIG_ENV])
    return next((p for p in search_path if p.is_file()), None)


def describe_config_file(path: Path | None) -> str:
    """What start-up lines and checks say about the file in use."""
    return str(path.resolve()) if path is not None else "no config file; defaults + environment"


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """HTTP API, WebSocket gateway and monitoring, all on one port."""

    host: str = "127.0.0.1"
    port: int = 3001
    backlog: int = 4096
    handshake_timeout: float = 10.0
    keepalive_timeout: float = 30.0
    max_message_bytes: int = 1_048_576
    max_http_body_bytes: int = 1_048_576
    ping_interval: float = 25.0
    ping_timeout: float = 60.0
    send_queue_max_bytes: int = 8 * 1_048_576
    write_timeout: float = 10.0
    shutdown_grace: float = 5.0
    error_budget: int = 20
    trusted_proxies: tuple[str, ...] = ()
    message_rate: float = 1000.0
    message_burst: int = 2000
    rate_limit_close_after: float = 10.0


@dataclass(frozen=True, slots=True)
class CompressionConfig:
    """permessage-deflate for WebSocket connections."""

    enabled: bool = True
    level: int = 3
    mem_level: int = 7
    server_max_window_bits: int = 10
    client_max_window_bits: int = 10
    min_size: int = 1024


@dataclass(frozen=True, slots=True)
class AuthConfig:
    """Tokens (HS256 JWTs) and browser origins."""

    jwt_secret: str | None = None
    cors_origins: tuple[str, ...] = ()
    leeway: float = 30.0
    #: Bearer token that reads /monitoring/{instance,metrics,circuits,cluster} (Prometheus'
    #: bearer_token), so a scraper needs no JWT; it changes nothing (circuit actions and the
    #: rebalance need an admin token). An all-companies admin token reads as well.
    metrics_token: str | None = None


@dataclass(frozen=True, slots=True)
class StatusConfig:
    """Printer status fan-out to dashboards."""

    batch_delay: float = 0.1
    max_item_bytes: int = 4096
    max_printers_per_agent: int = 100
    max_printers_per_company: int = 10_000
    evict_after: float = 300.0
    chunk_bytes: int = 262_144


@dataclass(frozen=True, slots=True)
class JobsConfig:
    """Print job delivery to agents."""

    ack_timeout: float = 10.0
    retry_initial: float = 1.0
    retry_max: float = 30.0
    max_attempts: int = 20
    job_ttl: float = 86_400.0
    test_timeout: float = 15.0
    pending_capacity: int = 1000
    pending_sweep_interval: float = 30.0
    pending_stale_after: float = 60.0
    max_payload_bytes: int = 262_144
    max_backlog_per_printer: int = 10_000
    result_timeout: float = 60.0
    sweep_interval: float = 3.0


@dataclass(frozen=True, slots=True)
class RateLimitConfig:
    """Printer test limits (POST /api/v1/printers/{id}/test)."""

    branch_tests: int = 10
    printer_tests: int = 5
    window: float = 60.0


@dataclass(frozen=True, slots=True)
class HealthConfig:
    """/monitoring/health thresholds: above one, the instance reports unhealthy (503)."""

    memory_percent: float = 85.0
    cpu_percent: float = 90.0
    error_rate: float = 10.0
    check_interval: float = 30.0
    fleet_cache_ttl: float = 60.0


@dataclass(frozen=True, slots=True)
class StoreConfig:
    """Where jobs and printers are kept."""

    database_url: str | None = None
    pool_size: int = 10
    statement_timeout_ms: int = 5000


@dataclass(frozen=True, slots=True)
class RedisConfig:
    """Redis: set `url` (REDIS_URL) and several instances form one gateway (a cluster)."""

    url: str | None = None
    sentinels: tuple[str, ...] = ()
    master_name: str | None = None
    prefix: str = "printd"
    connect_timeout: float = 2.0
    command_timeout: float = 2.0
    backoff_initial: float = 0.1
    backoff_max: float = 3.0

    @property
    def clustered(self) -> bool:
        """A Redis server or Sentinels given: this instance is one of a cluster."""
        return self.url is not None or bool(self.sentinels)

    def target(self) -> RedisTarget | None:
        """Where the cluster's Redis is (Sentinels ask for the master), None when alone."""
        if not self.clustered:
            return None
        target = parse_redis_url(self.url or "redis://localhost")
        return with_sentinels(target, self.sentinels, self.master_name or "") if self.sentinels else target


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    """How instances find each other and decide who does the cluster-wide chores."""

    advertise_url: str | None = None
    heartbeat_interval: float = 2.0
    member_ttl: float = 6.0
    chore_interval: float = 5.0
    orphan_after: float = 10.0
    status_snapshot_ttl: float = 3600.0


@dataclass(frozen=True, slots=True)
class CircuitsConfig:
    defaults: BreakerConfig = field(default_factory=BreakerConfig)
    overrides: Mapping[str, BreakerConfig] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Config:
    mode: Mode = "development"
    instance_id: str = field(default_factory=lambda: socket.gethostname())
    data_dir: Path = Path("var")
    log_level: str = "info"
    log_format: Literal["console", "json"] = "console"
    server: ServerConfig = field(default_factory=ServerConfig)
    compression: CompressionConfig = field(default_factory=CompressionConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    status: StatusConfig = field(default_factory=StatusConfig)
    jobs: JobsConfig = field(default_factory=JobsConfig)
    ratelimit: RateLimitConfig = field(default_factory=RateLimitConfig)
    health: HealthConfig = field(default_factory=HealthConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    redis: RedisConfig = field(default_factory=RedisConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    circuits: CircuitsConfig = field(default_factory=CircuitsConfig)

    @property
    def production(self) -> bool:
        return self.mode == "production"

    @property
    def database_url(self) -> str:
        """The store URL; without one, the embedded SQLite file in the data directory."""
        if self.store.database_url:
            return self.store.database_url
        return f"sqlite:///{(self.data_dir / 'printd.db').resolve()}"


#: The `[table]` sections of a config file and the class each one builds, in file order.
#: `printctl config init` writes them in this order, each under its class's docstring.
SECTIONS: dict[str, type] = {
    "server": ServerConfig,
    "compression": CompressionConfig,
    "auth": AuthConfig,
    "status": StatusConfig,
    "jobs": JobsConfig,
    "ratelimit": RateLimitConfig,
    "health": HealthConfig,
    "store": StoreConfig,
    "redis": RedisConfig,
    "cluster": ClusterConfig,
}
_TOP_LEVEL = ("mode", "instance_id", "data_dir", "log_level", "log_format")


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """Check one TOML/env value against its declared type, converting where lossless."""
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        options = [a for a in get_args(hint) if a is not type(None)]
        if value is None:
            return None
        return _coerce(key, value, options[0])
    if origin is Literal:
        if value not in get_args(hint):
            allowed = ", ".join(repr(a) for a in get_args(hint))
            raise ConfigError(f"{key}: {value!r} is not one of {allowed}")
        return value
    if origin is tuple:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{key}: expected a list of strings, got {value!r}")
        return tuple(value)
    if hint is bool:
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            return value.lower() in ("1", "true", "yes", "on")
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                raise ConfigError(f"{key}: expected an integer, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                raise ConfigError(f"{key}: expected a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    if hint is Path:
        if not isinstance(value, str | Path):
            raise ConfigError(f"{key}: expected a path, got {value!r}")
        return Path(value)
    return value


def _build(cls: type, section: str, values: Mapping[str, Any]) -> Any:
    if not isinstance(values, Mapping):
        raise ConfigError(f"[{section}]: expected a table, got {values!r}")
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        if key not in names:
            known = ", ".join(sorted(names))
            raise ConfigError(f"{section}.{key}: unknown key (known keys: {known})")
        kwargs[key] = _coerce(f"{section}.{key}", value, hints[key])
    try:
        return cls(**kwargs)
    except ValueError as exc:
        raise ConfigError(f"{section}: {exc}") from None


def _circuits(raw: Mapping[str, Any]) -> CircuitsConfig:
    """`[circuits.defaults]` and `[circuits.<name>]` tables become breaker configs."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"[circuits]: expected a table, got {raw!r}")
    defaults = _build(BreakerConfig, "circuits.defaults", raw.get("defaults", {}))
    overrides = {}
    base = dataclasses.asdict(defaults)
    for name, table in raw.items():
        if name == "defaults":
            continue
        if not isinstance(table, Mapping):
            raise ConfigError(f"circuits.{name}: expected a table of breaker settings")
        merged = _build(BreakerConfig, f"circuits.{name}", {**base, **table})
        overrides[name] = merged
    return CircuitsConfig(defaults=defaults, overrides=overrides)


def _env_overrides(env: Mapping[str, str]) -> dict[str, dict[str, Any] | Any]:
    """Map the environment names operators already use onto config keys."""
    out: dict[str, Any] = {}

    def put(section: str | None, key: str, value: Any) -> None:
        if section is None:
            out[key] = value
        else:
            out.setdefault(section, {})[key] = value

    simple = {
        "PORT": ("server", "port"),
        "HOST": ("server", "host"),
        "TRUSTED_PROXIES": ("server", "trusted_proxies"),
        "JWT_SECRET": ("auth", "jwt_secret"),
        "CORS_ORIGINS": ("auth", "cors_origins"),
        "PRINTD_METRICS_TOKEN": ("auth", "metrics_token"),
        "DATABASE_URL": ("store", "database_url"),
        "REDIS_URL": ("redis", "url"),
        "REDIS_SENTINELS": ("redis", "sentinels"),
        "REDIS_MASTER_NAME": ("redis", "master_name"),
        "REDIS_PREFIX": ("redis", "prefix"),
        "PRINTD_ADVERTISE_URL": ("cluster", "advertise_url"),
        "INSTANCE_ID": (None, "instance_id"),
        "PRINTD_DATA_DIR": (None, "data_dir"),
        "PRINTD_MODE": (None, "mode"),
        "PRINTD_LOG_LEVEL": (None, "log_level"),
        "PRINTD_LOG_FORMAT": (None, "log_format"),
    }
    for name, (section, key) in simple.items():
        if env.get(name):
            put(section, key, env[name])
    if "STATUS_BATCH_DELAY" in env:  # milliseconds, as in the original system
        try:
            put("status", "batch_delay", float(env["STATUS_BATCH_DELAY"]) / 1000.0)
        except ValueError:
            raise ConfigError(
                f"STATUS_BATCH_DELAY: expected milliseconds, got {env['STATUS_BATCH_DELAY']!r}"
            ) from None
    _check_redis_parts(env)
    if not env.get("REDIS_URL") and (env.get("REDIS_HOST") or env.get("REDIS_SENTINELS")):
        # with Sentinels the host is theirs to say; REDIS_PASSWORD and REDIS_DB are the master's
        put("redis", "url", _redis_url_from_parts(env))
    return out


def _redis_url_from_parts(env: Mapping[str, str]) -> str:
    """REDIS_HOST/PORT/DB/PASSWORD as one URL (the parts were checked by _check_redis_parts)."""
    host = env.get("REDIS_HOST") or "localhost"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # an IPv6 address
    password = env.get("REDIS_PASSWORD")
    auth = f":{quote(password, safe='')}@" if password else ""
    return f"redis://{auth}{host}:{env.get('REDIS_PORT', '6379')}/{env.get('REDIS_DB', '0')}"


def _check_redis_parts(env: Mapping[str, str]) -> None:
    """A REDIS_* variable that is set is checked, used or not: a typo must not pass silently."""
    host = env.get("REDIS_HOST", "")
    if any(ch in host for ch in "/@?#, "):
        raise ConfigError(f"REDIS_HOST: {host!r} is not a host name or address")
    port = env.get("REDIS_PORT")
    if port is not None and (not port.isdigit() or not 1 <= int(port) <= 65535):
        raise ConfigError(f"REDIS_PORT: expected a TCP port (1-65535), got {port!r}")
    db = env.get("REDIS_DB")
    if db is not None and not db.isdigit():
        raise ConfigError(f"REDIS_DB: expected a database number (0, 1, ...), got {db!r}")


def redis_url_problem(url: str) -> str | None:
    """Why `url` is not a usable Redis URL, or None (the forms: printd.cluster.target)."""
    try:
        parse_redis_url(url)
    except ValueError as exc:
        return str(exc)
    return None


def load_config(
    path: str | Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Load TOML (if given), apply environment then explicit overrides, validate."""
    env = os.environ if env is None else env
    raw: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        try:
            raw = tomllib.loads(p.read_text())
        except FileNotFoundError:
            raise ConfigError(f"{p}: file not found (write one with `printctl config init`)") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{p}: not valid TOML: {exc}") from None
    merged = _merge(raw, _env_overrides(env))
    if overrides:
        merged = _merge(merged, dict(overrides))
    return build_config(merged)


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(dict(out[key]), value)
        else:
            out[key] = value
    return out


def build_config(raw: Mapping[str, Any]) -> Config:
    hints = get_type_hints(Config)
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        if key in SECTIONS:
            kwargs[key] = _build(SECTIONS[key], key, value)
        elif key == "circuits":
            kwargs[key] = _circuits(value)
        elif key in _TOP_LEVEL:
            kwargs[key] = _coerce(key, value, hints[key])
        else:
            known = ", ".join([*_TOP_LEVEL, *SECTIONS, "circuits"])
            raise ConfigError(f"{key}: unknown key (known: {known})")
    config = Config(**kwargs)
    validate(config)
    return config


def validate(config: Config) -> None:
    """Cross-field checks and production guards; raise ConfigError naming the key."""
    s = config.server
    if not 0 <= s.port <= 65535:
        raise ConfigError(f"server.port: {s.port} is not a TCP port (0-65535)")
    for name in ("handshake_timeout", "ping_interval", "ping_timeout", "write_timeout", "shutdown_grace"):
        if getattr(s, name) <= 0:
            raise ConfigError(f"server.{name}: must be > 0")
    if s.ping_timeout <= s.ping_interval:
        raise ConfigError("server.ping_timeout: must be greater than server.ping_interval")
    if s.max_message_bytes < 1024:
        raise ConfigError("server.max_message_bytes: must be at least 1024")
    c = config.compression
    if not 1 <= c.level <= 9:
        raise ConfigError("compression.level: must be 1-9")
    if not 1 <= c.mem_level <= 9:
        raise ConfigError("compression.mem_level: must be 1-9")
    for name in ("server_max_window_bits", "client_max_window_bits"):
        if not 9 <= getattr(c, name) <= 15:
            raise ConfigError(f"compression.{name}: must be 9-15")
    if s.message_rate <= 0 or s.message_burst < 1:
        raise ConfigError("server.message_rate and server.message_burst: must be > 0")
    if s.rate_limit_close_after <= 0:
        raise ConfigError("server.rate_limit_close_after: must be > 0")
    st = config.status
    if st.batch_delay < 0:
        raise ConfigError("status.batch_delay: must be >= 0 (0 forwards every update at once)")
    if st.max_item_bytes < 256:
        raise ConfigError("status.max_item_bytes: must be at least 256")
    if st.max_printers_per_agent < 1 or st.max_printers_per_company < st.max_printers_per_agent:
        raise ConfigError("status.max_printers_per_company: must be >= status.max_printers_per_agent >= 1")
    if st.evict_after < 0:
        raise ConfigError("status.evict_after: must be >= 0 (0 evicts as soon as the agent leaves)")
    if st.chunk_bytes < 2 * st.max_item_bytes:
        raise ConfigError("status.chunk_bytes: must be at least 2 x status.max_item_bytes")
    j = config.jobs
    if j.pending_capacity < 1:
        raise ConfigError("jobs.pending_capacity: must be >= 1")
    if j.max_backlog_per_printer < 1:
        raise ConfigError("jobs.max_backlog_per_printer: must be >= 1")
    if j.retry_initial <= 0 or j.retry_max < j.retry_initial:
        raise ConfigError("jobs.retry_max: must be >= jobs.retry_initial > 0")
    if config.store.pool_size < 1:
        raise ConfigError("store.pool_size: must be >= 1")
    url = config.store.database_url
    if url and not url.startswith(("sqlite:", "postgresql://", "postgres://")):
        raise ConfigError("store.database_url (DATABASE_URL): use sqlite:///path or postgresql://...")
    r = config.redis
    if r.sentinels:
        try:
            r.target()
        except ValueError as exc:
            raise ConfigError(f"redis.sentinels (REDIS_SENTINELS): {exc}") from None
    if not r.prefix or any(ch in r.prefix for ch in " {}"):
        raise ConfigError("redis.prefix (REDIS_PREFIX): a non-empty key prefix without spaces or braces")
    k = config.cluster
    if not 0 < k.heartbeat_interval * 2 <= k.member_ttl:
        raise ConfigError("cluster.member_ttl: must be at least twice cluster.heartbeat_interval")
    if k.orphan_after < k.member_ttl:
        raise ConfigError("cluster.orphan_after: must be at least cluster.member_ttl")
    if config.redis.url:
        problem = redis_url_problem(config.redis.url)
        if problem:
            raise ConfigError(f"redis.url (REDIS_URL): {problem}")
    if config.redis.clustered and not (config.store.database_url or "").startswith(
        ("postgresql://", "postgres://")
    ):
        raise ConfigError(
            "a cluster (REDIS_URL or REDIS_SENTINELS set) needs one PostgreSQL database shared by its "
            "instances: set DATABASE_URL=postgresql://... (on SQLite each instance would keep jobs "
            "the others never see)"
        )
    if config.log_level.lower() not in ("debug", "info", "warning", "error"):
        raise ConfigError(f"log_level: {config.log_level!r} is not one of debug, info, warning, error")
    if config.production:
        problem = secret_weakness(config.auth.jwt_secret)
        if problem is not None:
            raise ConfigError(
                f"auth.jwt_secret (JWT_SECRET): production mode needs a random secret, and this one "
                f"{problem}; {GENERATE_SECRET} and set JWT_SECRET"
            )
        metrics_token = config.auth.metrics_token
        if metrics_token is not None and (problem := secret_weakness(metrics_token)) is not None:
            raise ConfigError(
                f"auth.metrics_token (PRINTD_METRICS_TOKEN): production mode needs a random token, "
                f"and this one {problem}; {GENERATE_SECRET}"
            )
        if not config.auth.cors_origins:
            raise ConfigError(
                "auth.cors_origins (CORS_ORIGINS): production mode needs the dashboards' origins, "
                "e.g. CORS_ORIGINS=https://dash.example.com"
            )


def secret_weakness(secret: str | None) -> str | None:
    """Why a secret is too weak to sign production tokens (never quoting it), or None.

    Cheap heuristics against what people actually type: a published example, too short, one
    character or a short pattern repeated, or words (a secret of letters and separators only:
    random hex or base64 of this length contains a digit or a symbol all but always).
    """
    if secret is None or secret.strip().lower() in KNOWN_DEFAULT_SECRETS:
        return "is not set or is a published example"
    if len(secret) < MIN_PRODUCTION_SECRET_LEN:
        return f"is shorter than {MIN_PRODUCTION_SECRET_LEN} characters"
    if len(set(secret)) < MIN_SECRET_DISTINCT or secret in (secret + secret)[1:-1]:
        return f"repeats itself (under {MIN_SECRET_DISTINCT} distinct characters, or one pattern repeated)"
    if all(c.isalpha() or c in " -_.,'" for c in secret):
        return "looks like words (letters and separators only)"
    return None


_SECRET_PARAM = re.compile(r"(?i)(^|[?&])([^=&]*(?:password|passwd|pwd|secret|token)[^=&]*)=[^&#]*")


def redact_url(url: str) -> str:
    """A URL with its passwords replaced, for logs and error messages: the one in the userinfo
    and any query parameter that carries one (libpq's `?password=`, `sentinel_password=`)."""
    if "://" not in url:
        return url
    base, mark, query = url.partition("?")
    if query:
        query = _SECRET_PARAM.sub(lambda m: f"{m.group(1)}{m.group(2)}=***", query)
    scheme, rest = base.split("://", 1)
    if "@" in rest:
        creds, host = rest.rsplit("@", 1)
        user = creds.split(":", 1)[0]
        rest = f"{user}:***@{host}" if ":" in creds else f"{user}@{host}"
    return f"{scheme}://{rest}{mark}{query}"


#: What a reload (SIGHUP) applies to the running instance. Every other change needs a restart
#: (listening address, store, Redis, cluster identity and timing, compression, batching).
RELOADABLE_SECTIONS = frozenset({"ratelimit", "health", "circuits"})
RELOADABLE_KEYS = frozenset(
    {
        "log_level",
        "auth.cors_origins",
        "auth.leeway",
        "auth.metrics_token",
        "server.handshake_timeout",
        "server.keepalive_timeout",
        "server.max_http_body_bytes",
        "server.send_queue_max_bytes",
        "server.write_timeout",
        "server.error_budget",
        "server.trusted_proxies",
        "jobs.ack_timeout",
        "jobs.retry_initial",
        "jobs.retry_max",
        "jobs.max_attempts",
        "jobs.job_ttl",
        "jobs.test_timeout",
        "jobs.result_timeout",
        "jobs.max_payload_bytes",
        "jobs.max_backlog_per_printer",
    }
)
#: Keys whose values never appear in a log line, even when they changed.
SECRET_KEYS = frozenset({"auth.jwt_secret", "auth.metrics_token", "store.database_url", "redis.url"})


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out: dict[str, Any] = {}
        for f in dataclasses.fields(obj):
            out.update(_flatten(getattr(obj, f.name), f"{prefix}{f.name}."))
        return out
    if isinstance(obj, Mapping):
        out = {}
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): obj}


@dataclass(frozen=True, slots=True)
class ConfigChange:
    key: str
    old: Any
    new: Any
    reloadable: bool

    def describe(self) -> str:
        if self.key in SECRET_KEYS:
            return f"{self.key} (changed)"
        return f"{self.key}: {self.old!r} -> {self.new!r}"


def config_changes(old: Config, new: Config) -> list[ConfigChange]:
    """Every setting that differs between two configs, and whether a reload can apply it."""
    a, b = _flatten(old), _flatten(new)
    changes = []
    for key in sorted(a.keys() | b.keys()):
        if a.get(key) != b.get(key):
            reloadable = key in RELOADABLE_KEYS or key.split(".", 1)[0] in RELOADABLE_SECTIONS
            changes.append(ConfigChange(key, a.get(key), b.get(key), reloadable))
    return changes


def reloaded(old: Config, new: Config) -> Config:
    """What the running instance uses after a reload: the new file's reloadable settings, the
    old values of everything that needs a restart (so nothing is half-applied)."""
    parts: dict[str, Any] = {"log_level": new.log_level}
    for section in ("server", "auth", "jobs"):
        keys = {k.split(".", 1)[1] for k in RELOADABLE_KEYS if k.startswith(section + ".")}
        fresh = getattr(new, section)
        parts[section] = dataclasses.replace(getattr(old, section), **{k: getattr(fresh, k) for k in keys})
    for section in RELOADABLE_SECTIONS:
        parts[section] = getattr(new, section)
    return dataclasses.replace(old, **parts)
