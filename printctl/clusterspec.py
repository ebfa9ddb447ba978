"""The cluster description (`config/cluster.toml`): one file from which `printctl deploy` renders
the systemd unit, env files and nginx site, and `printctl cluster up` starts local processes.

Loading checks everything up front and names the key and the fix, so rendering and planning can
trust a `ClusterSpec` and never fail on a bad value.
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from printd.config import Config, ConfigError, build_config

Mode = Literal["development", "production"]

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
#: systemd instance names, file names and INSTANCE_ID values at once
INSTANCE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$")
#: nginx upstream and variable names are built from it
CLUSTER_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
USER_NAME = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
#: values written unquoted into systemd EnvironmentFile= files
ENV_VALUE = re.compile(r"^[^\s\"'\\$`]*$")

#: settings that come from the cluster file itself, and where each belongs instead
NOT_IN_SETTINGS = {
    ("mode",): "the top-level `mode`",
    ("instance_id",): "each [[instances]] `id`",
    ("data_dir",): "the top-level `data_dir` (each instance gets DATA_DIR/<id>)",
    ("server", "host"): "each [[instances]] `host`",
    ("server", "port"): "each [[instances]] `port`",
    ("store", "database_url"): "[database] `url`",
    ("redis", "url"): "[redis] `url`",
    ("auth", "jwt_secret"): "JWT_SECRET in /etc/printd/secrets.env (never in a rendered file)",
}


class ClusterFileError(ValueError):
    """The cluster description is wrong; the message names the key and the fix."""


@dataclass(frozen=True, slots=True)
class InstanceSpec:
    id: str
    port: int
    host: str = "127.0.0.1"

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    @property
    def unit(self) -> str:
        return f"printd@{self.id}.service"


@dataclass(frozen=True, slots=True)
class NginxSpec:
    port: int
    host: str | None = "127.0.0.1"
    server_name: str = "_"
    tls_certificate: str | None = None
    tls_certificate_key: str | None = None
    monitoring_allow: tuple[str, ...] = ("127.0.0.1", "::1")

    @property
    def tls(self) -> bool:
        return self.tls_certificate is not None

    @property
    def listen(self) -> str:
        """nginx's `listen` address: `HOST:PORT`, or the port alone for every interface."""
        if self.host is None:
            return str(self.port)
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def front_url(self) -> str:
        scheme = "https" if self.tls else "http"
        if self.host is None or self.host in ("0.0.0.0", "::"):
            host = "127.0.0.1" if self.server_name == "_" else self.server_name
            return f"{scheme}://{host}:{self.port}"
        return f"{scheme}://{self.listen}"


@dataclass(frozen=True, slots=True)
class ClusterSpec:
    name: str
    instances: tuple[InstanceSpec, ...]
    nginx: NginxSpec
    mode: Mode = "production"
    redis_url: str = DEFAULT_REDIS_URL
    redis_prefix: str = ""
    database_url: str | None = None
    user: str = "printd"
    data_dir: str = "/var/lib/printd"
    printd: str | None = None
    #: the shared printd.toml, as TOML tables
    settings: Mapping[str, Any] = field(default_factory=dict)
    #: `settings` as printd reads them (for the timeouts the unit and nginx must respect)
    printd_config: Config = field(default_factory=Config)

    @property
    def prefix(self) -> str:
        return self.redis_prefix or self.name


def load_cluster_file(path: Path) -> ClusterSpec:
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ClusterFileError(f"{path}: file not found (start from config/cluster.toml)") from None
    except OSError as exc:
        raise ClusterFileError(f"{path}: cannot read it: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ClusterFileError(f"{path}: not valid TOML: {exc}") from None
    try:
        return parse_cluster(raw)
    except ClusterFileError as exc:
        raise ClusterFileError(f"{path}: {exc}") from None


def _table(raw: Any, where: str, known: tuple[str, ...]) -> Mapping[str, Any]:
    if not isinstance(raw, Mapping):
        raise ClusterFileError(f"{where}: expected a table, got {raw!r}")
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise ClusterFileError(
            f"{where + '.' if where else ''}{unknown[0]}: unknown key (known: {', '.join(known)})"
        )
    return raw


def _str(raw: Mapping[str, Any], key: str, where: str, default: str | None = None) -> str | None:
    value = raw.get(key, default)
    if value is not None and not isinstance(value, str):
        raise ClusterFileError(f"{where}{key}: expected a string, got {value!r}")
    return value


def _port(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1024 <= value <= 65535:
        raise ClusterFileError(f"{where}: {value!r} is not a TCP port from 1024 to 65535")
    return value


def parse_cluster(raw: Mapping[str, Any]) -> ClusterSpec:
    top = _table(
        raw,
        "",
        ("name", "mode", "user", "data_dir", "printd", "database", "redis", "nginx", "settings", "instances"),
    )
    name = _str(top, "name", "", "printd") or ""
    if not CLUSTER_NAME.match(name):
        raise ClusterFileError(f"name: {name!r} must be lower-case letters, digits, - or _ (up to 32)")
    mode_text = _str(top, "mode", "", "production")
    if mode_text not in ("development", "production"):
        raise ClusterFileError(f"mode: {mode_text!r} is not 'development' or 'production'")
    mode: Mode = "production" if mode_text == "production" else "development"
    user = _str(top, "user", "", "printd") or ""
    if not USER_NAME.match(user):
        raise ClusterFileError(f"user: {user!r} is not a valid user name")
    data_dir = _str(top, "data_dir", "", "/var/lib/printd") or ""
    printd = _str(top, "printd", "")
    for key, value in (("data_dir", data_dir), ("printd", printd)):
        if value is not None and (not value.startswith("/") or not ENV_VALUE.match(value)):
            raise ClusterFileError(f"{key}: {value!r} must be an absolute path without spaces or quotes")

    instances = _instances(top.get("instances"))
    database = _table(top.get("database", {}), "database", ("url",))
    database_url = _str(database, "url", "database.")
    if database_url is not None:
        _check_url(database_url, "database.url", ("postgresql", "postgres", "sqlite"), "PGPASSWORD")
    if len(instances) > 1 and not (database_url or "").startswith(("postgresql:", "postgres:")):
        raise ClusterFileError(
            f"database.url: {len(instances)} instances need one shared PostgreSQL database "
            "(postgresql://user@host/db); each on its own SQLite would not see the others' jobs"
        )
    redis = _table(top.get("redis", {}), "redis", ("url", "prefix"))
    redis_url = _str(redis, "url", "redis.", DEFAULT_REDIS_URL) or DEFAULT_REDIS_URL
    _check_url(redis_url, "redis.url", ("redis", "rediss", "unix", "redis+sentinel"), "a REDIS_URL")
    prefix = _str(redis, "prefix", "redis.", "") or ""
    if prefix and not ENV_VALUE.match(prefix):
        raise ClusterFileError(f"redis.prefix: {prefix!r} must not contain spaces or quotes")

    nginx = _nginx(top.get("nginx", {}))
    for inst in instances:
        if inst.port == nginx.port and nginx.host in (None, "0.0.0.0", "::", inst.host):
            raise ClusterFileError(f"nginx.listen: port {nginx.port} is also {inst.id}'s port")

    settings = top.get("settings", {})
    return ClusterSpec(
        name=name,
        instances=instances,
        nginx=nginx,
        mode=mode,
        redis_url=redis_url,
        redis_prefix=prefix,
        database_url=database_url,
        user=user,
        data_dir=data_dir.rstrip("/") or "/",
        printd=printd,
        settings=settings,
        printd_config=check_settings(settings),
    )


def _instances(raw: Any) -> tuple[InstanceSpec, ...]:
    if not isinstance(raw, list) or not raw:
        raise ClusterFileError("instances: add at least one [[instances]] table with an id and a port")
    out: list[InstanceSpec] = []
    for n, item in enumerate(raw):
        where = f"instances[{n}]"
        table = _table(item, where, ("id", "port", "host"))
        ident = _str(table, "id", f"{where}.") or ""
        if not INSTANCE_ID.match(ident):
            raise ClusterFileError(f"{where}.id: {ident!r} must be letters, digits, - or _ (up to 63)")
        host = _str(table, "host", f"{where}.", "127.0.0.1") or ""
        _check_host(host, f"{where}.host")
        inst = InstanceSpec(id=ident, port=_port(table.get("port"), f"{where}.port"), host=host)
        for other in out:
            if other.id == inst.id:
                raise ClusterFileError(f"{where}.id: {ident!r} is used twice")
            if other.address == inst.address:
                raise ClusterFileError(f"{where}.port: {inst.address} is also {other.id}'s address")
        out.append(inst)
    return tuple(out)


def _nginx(raw: Any) -> NginxSpec:
    table = _table(
        raw, "nginx", ("listen", "server_name", "tls_certificate", "tls_certificate_key", "monitoring_allow")
    )
    listen = table.get("listen", "127.0.0.1:8080")
    host, port = parse_listen(listen if isinstance(listen, str | int) else repr(listen))
    server_name = _str(table, "server_name", "nginx.", "_") or "_"
    if not re.fullmatch(r"[A-Za-z0-9_.*-]+( [A-Za-z0-9_.*-]+)*", server_name):
        raise ClusterFileError(f"nginx.server_name: {server_name!r} is not a list of host names")
    cert = _str(table, "tls_certificate", "nginx.")
    key = _str(table, "tls_certificate_key", "nginx.")
    if (cert is None) != (key is None):
        raise ClusterFileError(
            "nginx.tls_certificate_key: give both TLS paths (certificate and key) or neither"
        )
    for name, value in (("tls_certificate", cert), ("tls_certificate_key", key)):
        if value is not None and (not value.startswith("/") or not ENV_VALUE.match(value)):
            raise ClusterFileError(f"nginx.{name}: {value!r} must be an absolute path without spaces")
    allow = table.get("monitoring_allow", ["127.0.0.1", "::1"])
    if not isinstance(allow, list) or not all(isinstance(a, str) for a in allow):
        raise ClusterFileError(f"nginx.monitoring_allow: expected a list of addresses, got {allow!r}")
    for entry in allow:
        try:
            ipaddress.ip_network(entry, strict=False)
        except ValueError:
            raise ClusterFileError(
                f"nginx.monitoring_allow: {entry!r} is not an address or CIDR range"
            ) from None
    return NginxSpec(
        port=port,
        host=host,
        server_name=server_name,
        tls_certificate=cert,
        tls_certificate_key=key,
        monitoring_allow=tuple(allow),
    )


def parse_listen(listen: str | int) -> tuple[str | None, int]:
    """`"127.0.0.1:8080"`, `"[::1]:8443"` or `8080` (every interface) -> (host, port)."""
    text = str(listen)
    host: str | None
    if text.isdigit():
        host, port_text = None, text
    elif text.startswith("["):
        host, _, port_text = text[1:].partition("]:")
    else:
        host, _, port_text = text.rpartition(":")
    if host is not None:
        _check_host(host, "nginx.listen")
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ClusterFileError(f"nginx.listen: {listen!r} is not HOST:PORT or PORT")
    return host, int(port_text)


def _check_host(host: str, where: str) -> None:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if not re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?", host):
            raise ClusterFileError(f"{where}: {host!r} is not an IP address or host name") from None


def _check_url(url: str, where: str, schemes: tuple[str, ...], secret_hint: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in schemes:
        raise ClusterFileError(
            f"{where}: {url!r} must start with one of {', '.join(s + '://' for s in schemes)}"
        )
    if parts.password:
        raise ClusterFileError(
            f"{where}: has a password, and rendered files are readable: put {secret_hint} in "
            "/etc/printd/secrets.env instead (systemd reads it after the instance's env file)"
        )
    if not ENV_VALUE.match(url):
        raise ClusterFileError(f"{where}: must not contain spaces, quotes, $ or backslashes")


def check_settings(settings: Any) -> Config:
    """The shared printd settings, checked by printd's own loader; keys the cluster file owns
    are refused with where they belong."""
    if not isinstance(settings, Mapping):
        raise ClusterFileError(f"settings: expected a table, got {settings!r}")
    for path, instead in NOT_IN_SETTINGS.items():
        node: Any = settings
        for part in path:
            node = node.get(part) if isinstance(node, Mapping) else None
        if node is not None:
            raise ClusterFileError(f"settings.{'.'.join(path)}: not here; use {instead}")
    try:
        return build_config(settings)
    except ConfigError as exc:
        raise ClusterFileError(f"settings.{exc}") from None
