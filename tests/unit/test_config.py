"""Configuration: TOML, environment names operators know, validation that names the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from printd.config import Config, ConfigError, load_config, redact_url

GOOD_SECRET = "s" * 40


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
