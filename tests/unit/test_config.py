"""Configuration: TOML, environment names operators know, validation that names the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from printd.cli import describe_jwt_secret
from printd.config import (
    CONFIG_SEARCH_PATH,
    Config,
    ConfigError,
    find_config,
    load_config,
    redact_url,
)

GOOD_SECRET = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"


def test_defaults_are_the_original_systems_figures() -> None:
    c = load_config(env={})
    assert c.server.port == 3001 and c.server.host == "127.0.0.1"
    assert c.status.batch_delay == 0.1 and c.server.max_message_bytes == 1_048_576
    assert (c.server.ping_interval, c.server.ping_timeout, c.server.handshake_timeout) == (25.0, 60.0, 10.0)
    assert (c.compression.level, c.compression.mem_level, c.compression.server_max_window_bits) == (3, 7, 10)
    assert (c.jobs.pending_capacity, c.jobs.pending_sweep_interval, c.jobs.pending_stale_after) == (
        1000,
        30.0,
        60.0,
    )
    assert (c.ratelimit.branch_tests, c.ratelimit.printer_tests, c.ratelimit.window) == (10, 5, 60.0)
    b = c.circuits.defaults
    assert (b.failure_threshold, b.success_threshold, b.open_timeout, b.monitoring_window) == (
        5,
        2,
        60.0,
        300.0,
    )
    assert c.database_url.startswith("sqlite:///") and c.database_url.endswith("var/printd.db")


def test_environment_overrides() -> None:
    env = {
        "PORT": "4000",
        "JWT_SECRET": GOOD_SECRET,
        "CORS_ORIGINS": "https://a.example, https://b.example",
        "INSTANCE_ID": "printd-7",
        "DATABASE_URL": "postgresql://u:pw@db/printd",
        "REDIS_HOST": "cache",
        "REDIS_PASSWORD": "pw",
        "STATUS_BATCH_DELAY": "250",
    }
    c = load_config(env=env)
    assert c.server.port == 4000 and c.instance_id == "printd-7"
    assert c.auth.cors_origins == ("https://a.example", "https://b.example")
    assert c.database_url == "postgresql://u:pw@db/printd" and c.redis.url == "redis://:pw@cache:6379/0"
    assert c.status.batch_delay == 0.25


def test_file_then_env(tmp_path: Path) -> None:
    f = tmp_path / "printd.toml"
    f.write_text('mode = "development"\n[server]\nport = 5000\n[circuits.store]\nfailure_threshold = 3\n')
    c = load_config(f, env={"PORT": "5001"})
    assert c.server.port == 5001  # the environment wins over the file
    assert c.circuits.overrides["store"].failure_threshold == 3
    assert c.circuits.overrides["store"].open_timeout == 60.0  # the rest from the defaults


@pytest.mark.parametrize(
    ("toml", "names"),
    [
        ("[server]\nprot = 1\n", "server.prot: unknown key"),
        ("[server]\nport = 70000\n", "server.port"),
        ('[server]\nport = "x"\n', "server.port: expected an integer"),
        ("[server]\nping_timeout = 10.0\n", "server.ping_timeout"),
        ("[compression]\nlevel = 12\n", "compression.level"),
        ("[circuits.store]\nfailure_threshold = 0\n", "circuits.store"),
        ('log_level = "loud"\n', "log_level"),
        ("nonsense = 1\n", "nonsense: unknown key"),
        ('[store]\ndatabase_url = "mysql://x"\n', "store.database_url"),
        ("[server\n", "not valid TOML"),
    ],
)
def test_errors_name_the_key(tmp_path: Path, toml: str, names: str) -> None:
    f = tmp_path / "bad.toml"
    f.write_text(toml)
    with pytest.raises(ConfigError) as exc:
        load_config(f, env={})
    assert names in str(exc.value)


def test_production_needs_a_real_secret_and_origins() -> None:
    with pytest.raises(ConfigError, match="JWT_SECRET"):
        load_config(env={"PRINTD_MODE": "production"})
    with pytest.raises(ConfigError, match="JWT_SECRET") as exc:
        load_config(env={"PRINTD_MODE": "production", "JWT_SECRET": "change-me"})
    assert "change-me" not in str(exc.value)  # never echo a secret
    with pytest.raises(ConfigError, match="32"):
        load_config(env={"PRINTD_MODE": "production", "JWT_SECRET": "short-but-not-default"})
    with pytest.raises(ConfigError, match="CORS_ORIGINS"):
        load_config(env={"PRINTD_MODE": "production", "JWT_SECRET": GOOD_SECRET})
    ok = load_config(
        env={"PRINTD_MODE": "production", "JWT_SECRET": GOOD_SECRET, "CORS_ORIGINS": "https://d.example"}
    )
    assert isinstance(ok, Config) and ok.production


def test_missing_file_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="printctl config init"):
        load_config(tmp_path / "nope.toml", env={})


def test_redact_url_hides_passwords() -> None:
    assert redact_url("postgresql://printd:s3cret@db:5432/x") == "postgresql://printd:***@db:5432/x"
    assert redact_url("redis://:s3cret@cache:6379/0") == "redis://:***@cache:6379/0"
    assert redact_url("sqlite:////var/printd.db") == "sqlite:////var/printd.db"
    # libpq and Sentinel take passwords in the query too (found by review: they were logged)
    assert (
        redact_url("postgresql://printd@db/printd?password=s3cret")
        == "postgresql://printd@db/printd?password=***"
    )
    assert (
        redact_url("postgresql:///printd?host=db&password=s3cret&sslmode=require")
        == "postgresql:///printd?host=db&password=***&sslmode=require"
    )
    assert (
        redact_url("redis+sentinel://h1:26379,h2:26379/main/0?sentinel_password=s3cret")
        == "redis+sentinel://h1:26379,h2:26379/main/0?sentinel_password=***"
    )


@pytest.mark.parametrize(
    ("secret", "why"),
    [
        ("s" * 40, "repeats itself"),
        ("0123456789abcdef" * 2, "repeats itself"),
        ("abababababababababababababababab1", "repeats itself"),
        ("correct horse battery staple and then some", "looks like words"),
        ("thisismysupersecretpasswordforjwtokens", "looks like words"),
        ("short-but-not-default", "shorter than 32"),
    ],
)
def test_production_refuses_weak_secrets_and_says_how_to_generate_one(secret: str, why: str) -> None:
    env = {"PRINTD_MODE": "production", "JWT_SECRET": secret, "CORS_ORIGINS": "https://d.example"}
    with pytest.raises(ConfigError) as exc:
        load_config(env=env)
    assert why in str(exc.value) and "openssl rand -hex 32" in str(exc.value)
    assert secret not in str(exc.value)


def test_generated_secrets_pass() -> None:
    import base64
    import os
    import secrets

    for _ in range(200):
        for secret in (secrets.token_hex(32), base64.b64encode(os.urandom(32)).decode()):
            env = {"PRINTD_MODE": "production", "JWT_SECRET": secret, "CORS_ORIGINS": "https://d.example"}
            assert load_config(env=env).production


def test_production_refuses_a_weak_metrics_token() -> None:
    env = {"PRINTD_MODE": "production", "JWT_SECRET": GOOD_SECRET, "CORS_ORIGINS": "https://d.example"}
    with pytest.raises(ConfigError, match="PRINTD_METRICS_TOKEN") as exc:
        load_config(env={**env, "PRINTD_METRICS_TOKEN": "metrics"})
    assert "openssl rand -hex 32" in str(exc.value) and "metrics'" not in str(exc.value)
    token = "5994471abb01112afcc18159f6cc74b4f511b99806da59b3caf5a9c173cacfc5"
    assert load_config(env={**env, "PRINTD_METRICS_TOKEN": token}).auth.metrics_token == token
    assert load_config(env={"PRINTD_METRICS_TOKEN": "dev"}).auth.metrics_token == "dev"  # development


# ------------------------------------------------------------------ which file


def test_config_search_order(tmp_path: Path) -> None:
    local, system = tmp_path / "config" / "printd.toml", tmp_path / "etc" / "printd.toml"
    candidates = (local, system)
    assert find_config(None, {}, candidates) is None  # none: defaults + environment
    system.parent.mkdir()
    system.write_text("")
    assert find_config(None, {}, candidates) == system
    local.parent.mkdir()
    local.write_text("")
    assert find_config(None, {}, candidates) == local
    env = {"PRINTD_CONFIG": str(tmp_path / "from-env.toml")}
    assert find_config(None, env, candidates) == tmp_path / "from-env.toml"  # named: used even if missing
    assert find_config(tmp_path / "flag.toml", env, candidates) == tmp_path / "flag.toml"
    assert find_config(None, {"PRINTD_CONFIG": ""}, candidates) == local  # empty = unset


def test_default_search_paths_are_the_documented_ones() -> None:
    assert CONFIG_SEARCH_PATH == (Path("config/printd.toml"), Path("/etc/printd/printd.toml"))


# ------------------------------------------------------------------ redis

SHARED_DB = {"DATABASE_URL": "postgresql://printd@db.internal/printd"}


@pytest.mark.parametrize(
    "url",
    [
        "redis://localhost",
        "redis://localhost:6379/0",
        "redis://:p%40ss@cache.internal:6380/15",
        "redis://user:pw@[::1]:6379/2",
        "rediss://cache:6380/1",
        "unix:///run/redis/redis.sock",
        "unix://:pw@/run/redis/redis.sock?db=3",
        "redis+sentinel://sentinel-1:26379,sentinel-2:26379/mymaster/0",
        "redis+sentinel://:pw@s1:26379,s2:26380,s3/printd",
    ],
)
def test_redis_urls_accepted(url: str) -> None:
    assert load_config(env={"REDIS_URL": url, **SHARED_DB}).redis.url == url


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("notaurl", "redis://"),
        ("http://cache:6379", "redis://"),
        ("redis://", "host"),
        ("redis://cache:notaport/0", "port"),
        ("redis://cache:70000/0", "port"),
        ("redis://cache:6379/x", "database number"),
        ("redis://cache:6379/-1", "database number"),
        ("redis://cache:6379/0/1", "database number"),
        ("rediss://cache:0", "port"),
        ("unix://", "socket path"),
        ("unix:///run/redis.sock?db=two", "database number"),
        ("redis+sentinel://s1:26379", "master name"),
        ("redis+sentinel://s1:26379,:26379/m", "host"),
        ("redis+sentinel://s1:26379,s2:x/m", "port"),
        ("redis+sentinel://s1:26379/m/db", "database number"),
    ],
)
def test_bad_redis_urls_are_refused_naming_the_setting(url: str, why: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(env={"REDIS_URL": url})
    message = str(exc.value)
    assert message.startswith("redis.url (REDIS_URL): ") and why in message, message
    assert "pw" not in message


@pytest.mark.parametrize(
    ("env", "name"),
    [
        ({"REDIS_HOST": "cache", "REDIS_PORT": "abc"}, "REDIS_PORT"),
        ({"REDIS_HOST": "cache", "REDIS_PORT": "0"}, "REDIS_PORT"),
        ({"REDIS_HOST": "cache", "REDIS_DB": "one"}, "REDIS_DB"),
        ({"REDIS_HOST": "cache/evil", "REDIS_PORT": "6379"}, "REDIS_HOST"),
        ({"REDIS_PORT": "abc"}, "REDIS_PORT"),  # set without REDIS_HOST: still a mistake
        ({"REDIS_URL": "redis://cache:6379/0", "REDIS_DB": "x"}, "REDIS_DB"),
    ],
)
def test_bad_redis_parts_are_refused_naming_the_variable(env: dict[str, str], name: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(env=env)
    assert str(exc.value).startswith(name), str(exc.value)


def test_redis_url_from_parts_encodes_the_password_and_brackets_ipv6() -> None:
    c = load_config(env={"REDIS_HOST": "cache", "REDIS_PASSWORD": "p@ss:w/rd", "REDIS_DB": "2", **SHARED_DB})
    assert c.redis.url == "redis://:p%40ss%3Aw%2Frd@cache:6379/2"
    assert load_config(env={"REDIS_HOST": "::1", **SHARED_DB}).redis.url == "redis://[::1]:6379/0"


def test_sentinels_alone_make_a_cluster_with_the_masters_password() -> None:
    env = {
        "REDIS_SENTINELS": "s1:26379,s2",
        "REDIS_MASTER_NAME": "printd",
        "REDIS_PASSWORD": "pw",
        **SHARED_DB,
    }
    redis = load_config(env=env).redis
    assert redis.clustered
    target = redis.target()
    assert target is not None and target.sentinels == (("s1", 26379), ("s2", 26379))
    assert target.master_name == "printd" and target.password == "pw"
    assert load_config(env=SHARED_DB).redis.target() is None  # alone


@pytest.mark.parametrize(
    "env",
    [
        {"REDIS_URL": "redis://cache:6379/0"},
        {"REDIS_HOST": "cache"},
        {"REDIS_SENTINELS": "s1:26379", "REDIS_MASTER_NAME": "printd"},
        {"REDIS_URL": "redis://cache:6379/0", "DATABASE_URL": "sqlite:///var/printd.db"},
    ],
)
def test_a_cluster_on_sqlite_is_refused(env: dict[str, str]) -> None:
    """Each instance would keep the jobs in a file of its own, which the others never see."""
    with pytest.raises(ConfigError, match="a cluster .* needs one PostgreSQL database"):
        load_config(env=env)


# ------------------------------------------------------------------ where the JWT secret comes from


def test_jwt_secret_source_is_told_truthfully(tmp_path: Path) -> None:
    cfg_file = tmp_path / "printd.toml"
    cfg_file.write_text(f'data_dir = "{tmp_path}"\n[auth]\njwt_secret = "{GOOD_SECRET}"\n')
    env = {"JWT_SECRET": "t" * 40}
    assert describe_jwt_secret(load_config(cfg_file, env=env), cfg_file, env) == "env JWT_SECRET"
    from_file = describe_jwt_secret(load_config(cfg_file, env={}), cfg_file, {})
    assert from_file == f"auth.jwt_secret in {cfg_file}"
    bare = load_config(env={}, overrides={"data_dir": str(tmp_path)})
    assert describe_jwt_secret(bare, None, {}) == f"{tmp_path / 'jwt_secret'} (generated now)"
    (tmp_path / "jwt_secret").write_text("x" * 64 + "\n")
    assert describe_jwt_secret(bare, None, {}) == f"{tmp_path / 'jwt_secret'} (generated earlier)"


# ------------------------------------------------------------------ reload (SIGHUP)


def test_a_reload_applies_what_it_can_and_names_what_needs_a_restart() -> None:
    from printd.config import config_changes, reloaded

    old = load_config(env={})
    new = load_config(
        env={"PORT": "4000", "JWT_SECRET": "x" * 40, "CORS_ORIGINS": "https://dash.example"},
        overrides={"log_level": "debug", "ratelimit": {"printer_tests": 9}, "jobs": {"ack_timeout": 3.0}},
    )
    changes = {c.key: c for c in config_changes(old, new)}
    assert {k for k, c in changes.items() if c.reloadable} == {
        "log_level",
        "auth.cors_origins",
        "ratelimit.printer_tests",
        "jobs.ack_timeout",
    }
    assert {k for k, c in changes.items() if not c.reloadable} == {"server.port", "auth.jwt_secret"}
    assert changes["auth.jwt_secret"].describe() == "auth.jwt_secret (changed)"  # never the value
    running = reloaded(old, new)
    assert running.server.port == old.server.port and running.auth.jwt_secret is None  # restart needed
    assert running.log_level == "debug" and running.ratelimit.printer_tests == 9
    assert running.auth.cors_origins == ("https://dash.example",) and running.jobs.ack_timeout == 3.0
    assert config_changes(old, old) == []


def test_the_client_address_comes_from_x_forwarded_for_only_behind_a_trusted_proxy() -> None:
    from printd.http.listener import client_address

    nginx = ("127.0.0.1", "::1")
    assert client_address("127.0.0.1:5000", "203.0.113.9", nginx) == "203.0.113.9"
    assert client_address("[::1]:5000", "203.0.113.9, 127.0.0.1", nginx) == "203.0.113.9"
    assert client_address("198.51.100.7:5000", "203.0.113.9", nginx) == "198.51.100.7:5000"  # spoofed
    assert client_address("127.0.0.1:5000", None, nginx) == "127.0.0.1:5000"
    assert client_address("127.0.0.1:5000", "203.0.113.9", ()) == "127.0.0.1:5000"  # trusts nobody


def test_gateway_limit_defaults() -> None:
    c = load_config(env={})
    assert (c.server.message_rate, c.server.message_burst, c.server.rate_limit_close_after) == (
        1000.0,
        2000,
        10.0,
    )
    s = c.status
    assert (s.max_item_bytes, s.max_printers_per_agent, s.max_printers_per_company) == (4096, 100, 10_000)
    assert (s.evict_after, s.chunk_bytes) == (300.0, 262_144)


@pytest.mark.parametrize(
    ("toml", "names"),
    [
        ("[server]\nmessage_rate = 0\n", "server.message_rate"),
        ("[server]\nmessage_burst = 0\n", "server.message_burst"),
        ("[server]\nrate_limit_close_after = 0\n", "server.rate_limit_close_after"),
        ("[status]\nmax_item_bytes = 100\n", "status.max_item_bytes"),
        ("[status]\nmax_printers_per_agent = 0\n", "status.max_printers_per_agent"),
        ("[status]\nmax_printers_per_company = 10\n", "status.max_printers_per_company"),
        ("[status]\nevict_after = -1\n", "status.evict_after"),
        ("[status]\nchunk_bytes = 4096\n", "status.chunk_bytes"),
    ],
)
def test_gateway_limits_are_validated(tmp_path: Path, toml: str, names: str) -> None:
    f = tmp_path / "bad.toml"
    f.write_text(toml)
    with pytest.raises(ConfigError) as exc:
        load_config(f, env={})
    assert names in str(exc.value)
