"""Where Redis is: `REDIS_URL` (and the Sentinel settings) parsed and checked, without I/O.

Kept free of trio so that config validation (and `printctl token`) can use it cheaply.

Accepted forms:
- ``redis://[[user]:password@]host[:port][/db]``
- ``rediss://...`` (TLS; ``?ssl_cert_reqs=none|required&ssl_ca_certs=/path/ca.pem``)
- ``unix://[[user]:password@]/path/to/redis.sock[?db=N]``
- ``redis+sentinel://[[user]:password@]host1:26379[,host2:26379...]/master_name[/db]``
  (``?sentinel_password=...`` when the sentinels need their own password)
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from urllib.parse import parse_qs, unquote

DEFAULT_PORT = 6379
DEFAULT_SENTINEL_PORT = 26379
SCHEMES = ("redis", "rediss", "unix", "redis+sentinel", "rediss+sentinel")


@dataclass(frozen=True, slots=True)
class RedisTarget:
    """A Redis server (or a Sentinel-managed master) and how to log in to it."""

    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    db: int = 0
    username: str | None = None
    password: str | None = None
    tls: bool = False
    tls_verify: bool = True
    ca_file: str | None = None
    unix_path: str | None = None
    sentinels: tuple[tuple[str, int], ...] = ()
    master_name: str | None = None
    sentinel_password: str | None = None

    def describe(self) -> str:
        """Where it points, for logs and errors (never the password)."""
        if self.sentinels:
            hosts = ",".join(f"{h}:{p}" for h, p in self.sentinels)
            return f"sentinel {hosts} master {self.master_name!r} db {self.db}"
        scheme = "rediss" if self.tls else "redis"
        if self.unix_path:
            return f"unix://{self.unix_path} db {self.db}"
        return f"{scheme}://{self.host}:{self.port}/{self.db}"


def _port(text: str, default: int, what: str) -> int:
    if not text:
        return default
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"{what}: the port must be a number 1-65535, got {text!r}")
    return int(text)


def _db(text: str) -> int:
    if not text:
        return 0
    if not text.isdigit():
        raise ValueError(f"{text!r} is not a database number (0, 1, ...)")
    return int(text)


def _split_hostport(item: str, default_port: int, what: str) -> tuple[str, int]:
    item = item.strip()
    if item.startswith("["):  # [::1]:26379
        host, _, rest = item[1:].partition("]")
        return host, _port(rest.removeprefix(":"), default_port, what)
    host, sep, port = item.rpartition(":")
    if not sep:
        host, port = item, ""
    if not host:
        raise ValueError(f"{what}: a host is missing in {item!r}")
    return host, _port(port, default_port, what)


def parse_redis_url(url: str) -> RedisTarget:
    """Parse a Redis URL; ValueError says what is wrong and shows the accepted forms."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in SCHEMES:
        raise ValueError(
            "use redis://, rediss://, unix:// or redis+sentinel:// (e.g. redis://localhost:6379/0)"
        )
    userinfo, at, hostpart = rest.rpartition("@")
    if not at:
        userinfo, hostpart = "", rest
    username = password = None
    if userinfo:
        user, colon, pw = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(pw) if colon else None
        if not colon:  # redis://password@host is a common mistake for redis://:password@host
            password, username = username, None
    path, _, query_text = hostpart.partition("?")
    query = {k: v[-1] for k, v in parse_qs(query_text).items()}
    tls = scheme.startswith("rediss")
    verify = query.get("ssl_cert_reqs", "required").lower() not in ("none", "optional")
    base = RedisTarget(
        username=username, password=password, tls=tls, tls_verify=verify, ca_file=query.get("ssl_ca_certs")
    )
    if scheme == "unix":
        if not path.startswith("/"):
            raise ValueError("a unix:// URL needs the socket path, e.g. unix:///run/redis/redis.sock")
        return replace(base, unix_path=path, db=_db(query.get("db", "0")))
    if scheme.endswith("+sentinel"):
        hosts, _, tail = path.partition("/")
        name, _, db = tail.partition("/")
        if not hosts or not name:
            raise ValueError(
                "a redis+sentinel:// URL needs the sentinels and the master name: "
                "redis+sentinel://host1:26379,host2:26379/mymaster/0"
            )
        sentinels = tuple(
            _split_hostport(h, DEFAULT_SENTINEL_PORT, "sentinel") for h in hosts.split(",") if h.strip()
        )
        return replace(
            base,
            sentinels=sentinels,
            master_name=unquote(name),
            db=_db(db),
            sentinel_password=query.get("sentinel_password"),
        )
    netloc, _, db = path.partition("/")
    if not netloc:
        raise ValueError("a host is missing, e.g. redis://localhost:6379/0")
    host, port = _split_hostport(netloc, DEFAULT_PORT, "Redis URL")
    return replace(base, host=host, port=port, db=_db(db))


def with_sentinels(target: RedisTarget, sentinels: tuple[str, ...], master_name: str) -> RedisTarget:
    """Apply `redis.sentinels` / `REDIS_SENTINELS` and `redis.master_name` to a parsed URL
    (whose password and db then apply to the master)."""
    if not master_name:
        raise ValueError("redis.master_name (REDIS_MASTER_NAME) is required with sentinels")
    parsed = tuple(_split_hostport(s, DEFAULT_SENTINEL_PORT, "redis.sentinels") for s in sentinels)
    if not parsed:
        raise ValueError("redis.sentinels (REDIS_SENTINELS) is empty")
    return replace(target, host="", port=0, unix_path=None, sentinels=parsed, master_name=master_name)
