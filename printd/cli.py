"""`printd`: run the gateway, validate a config, apply migrations.

Exit codes: 0 ok, 1 runtime failure (a dependency down at start), 2 usage or config error
(including an address printd cannot listen on).

Every command finds its config file the same way (`printd.config.find_config`): --config, else
$PRINTD_CONFIG, else ./config/printd.toml, else /etc/printd/printd.toml, else none.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, NoReturn

import structlog
import trio
import typer

from printd import package_version
from printd.auth import SECRET_FILE, AuthError
from printd.config import Config, ConfigError, describe_config_file, find_config, load_config, redact_url
from printd.logs import setup_logging

app = typer.Typer(
    help="printd: the print gateway (HTTP API + WebSocket gateway + monitoring on one port).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

EXIT_RUNTIME = 1
EXIT_USAGE = 2
#: Seconds the interpreter lets one thread hold the GIL while another waits (default 0.005).
GIL_SWITCH_INTERVAL = 0.001

ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="TOML config file (default: $PRINTD_CONFIG, else ./config/printd.toml, "
        "else /etc/printd/printd.toml, else none).",
        show_default=False,
    ),
]


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"printd {package_version()}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", help="Print the version and exit.", is_eager=True, callback=_print_version),
    ] = False,
) -> None:
    """printd: the print gateway (HTTP API + WebSocket gateway + monitoring on one port)."""


def _exit(message: str, code: int) -> NoReturn:
    typer.echo(f"printd: {message}", err=True)
    raise typer.Exit(code)


def _load(config: Path | None, overrides: dict[str, Any]) -> tuple[Config, Path | None]:
    """The config and the file it came from (None: defaults + environment)."""
    path = find_config(config, os.environ)
    try:
        return load_config(path, overrides=overrides), path
    except ConfigError as exc:
        _exit(f"config error: {exc}", EXIT_USAGE)


def describe_jwt_secret(config: Config, path: Path | None, env: Mapping[str, str]) -> str:
    """Where the JWT secret comes from, as printd will resolve it (call before the App makes one)."""
    if env.get("JWT_SECRET"):  # the environment wins over the file (config._env_overrides)
        return "env JWT_SECRET"
    if config.auth.jwt_secret:
        return f"auth.jwt_secret in {path}"
    generated = Path(config.data_dir) / SECRET_FILE
    return f"{generated} ({'generated earlier' if generated.exists() else 'generated now'})"


def _leaves(exc: BaseException) -> list[BaseException]:
    """The exceptions inside (nested) exception groups, as raised."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


def os_reason(exc: OSError) -> str:
    """`address already in use`, `name or service not known`: the system's words, in one line."""
    text = os.strerror(exc.errno) if exc.errno and exc.errno > 0 else (exc.strerror or str(exc))
    return text[:1].lower() + text[1:]


@app.command()
def run(
    config: ConfigOpt = None,
    data_dir: Annotated[
        Path | None,
        typer.Option(
            help="Data directory (SQLite db, generated secret). Env PRINTD_DATA_DIR; default ./var."
        ),
    ] = None,
    port: Annotated[int | None, typer.Option(help="TCP port (env PORT; default 3001).")] = None,
    host: Annotated[str | None, typer.Option(help="Address to bind (default 127.0.0.1).")] = None,
    production: Annotated[
        bool, typer.Option("--production", help="Refuse to start without a real JWT_SECRET and CORS_ORIGINS.")
    ] = False,
) -> None:
    """Run the gateway until SIGTERM/SIGINT.

    Example: printd run --data-dir ./var --port 3001
    """
    overrides: dict[str, Any] = {}
    if data_dir is not None:
        overrides["data_dir"] = str(data_dir)
    if production:
        overrides["mode"] = "production"
    server: dict[str, Any] = {}
    if port is not None:
        server["port"] = port
    if host is not None:
        server["host"] = host
    if server:
        overrides["server"] = server
    cfg, path = _load(config, overrides)
    setup_logging(cfg.log_level, cfg.log_format)
    # The start-up line says which file was used and where the JWT secret comes from ("jwt_from":
    # a key named *secret* would be masked by the log pipeline).
    structlog.get_logger("printd").info(
        "config", file=describe_config_file(path), jwt_from=describe_jwt_secret(cfg, path, os.environ)
    )
    from printd.app import App
    from printd.store import StoreError
    from printd.store.base import InstanceConflict

    gateway: list[App] = []

    async def serve() -> None:
        # SIGHUP re-reads the same file with the same command-line overrides
        gateway.append(App(cfg, load_config=lambda: load_config(path, overrides=overrides)))
        await gateway[0].run()

    # Store calls run in worker threads that hold the GIL only to send a statement or read its
    # answer; with the default 5 ms switch interval each such step could wait out a busy event
    # loop's slice, which made every round trip to the database up to 5 ms long under load.
    sys.setswitchinterval(GIL_SWITCH_INTERVAL)
    try:
        trio.run(serve)
    except BaseException as exc:  # start-up failures become one line; anything else re-raises
        listening = bool(gateway) and gateway[0].port is not None
        for leaf in _leaves(exc):
            if isinstance(leaf, AuthError | ConfigError):
                _exit(f"config error: {leaf}", EXIT_USAGE)
            if isinstance(leaf, InstanceConflict):
                _exit(f"refusing to start: {leaf}", EXIT_USAGE)
            if isinstance(leaf, StoreError):
                _exit(f"cannot use the store {redact_url(cfg.database_url)}: {leaf}", EXIT_RUNTIME)
            if isinstance(leaf, OSError) and not listening:
                if leaf.filename is not None:
                    _exit(f"cannot use {leaf.filename}: {os_reason(leaf)}", EXIT_USAGE)
                _exit(f"cannot listen on {cfg.server.host}:{cfg.server.port}: {os_reason(leaf)}", EXIT_USAGE)
        raise


@app.command("check-config")
def check_config(
    file: Annotated[
        Path | None,
        typer.Argument(
            help="Config file to check (default: $PRINTD_CONFIG, else ./config/printd.toml, "
            "else /etc/printd/printd.toml).",
            show_default=False,
        ),
    ] = None,
    production: Annotated[bool, typer.Option("--production", help="Check with production rules.")] = False,
) -> None:
    """Validate a config file and the environment; name the bad key and why (exit 2).

    Example: printd check-config config/printd.toml
    """
    cfg, path = _load(file, {"mode": "production"} if production else {})
    typer.echo(
        f"ok: config={describe_config_file(path)} mode={cfg.mode} listen={cfg.server.host}:{cfg.server.port} "
        f"store={redact_url(cfg.database_url)} instance={cfg.instance_id}"
    )


@app.command()
def migrate(
    config: ConfigOpt = None, data_dir: Annotated[Path | None, typer.Option(help="Data directory.")] = None
) -> None:
    """Apply pending schema migrations, then exit.

    Example: DATABASE_URL=postgresql://printd@db/printd printd migrate
    """
    cfg, _ = _load(config, {"data_dir": str(data_dir)} if data_dir else {})
    from printd.store import StoreError, open_store

    async def go() -> list[int]:
        store = open_store(cfg.database_url, pool_size=1, statement_timeout_ms=60_000)
        await store.open()
        try:
            return await store.migrate()
        finally:
            await store.close()

    try:
        applied = trio.run(go)
    except StoreError as exc:
        _exit(f"migration failed on {redact_url(cfg.database_url)}: {exc}", EXIT_RUNTIME)
    typer.echo(f"applied migrations: {applied}" if applied else "schema is up to date")


def main() -> None:
    sys.exit(app())


if __name__ == "__main__":
    main()
