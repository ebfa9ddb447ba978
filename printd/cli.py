"""`printd`: run the gateway, validate a config, apply migrations.

Exit codes: 0 ok, 1 runtime failure (a dependency down at start), 2 usage or config error.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any

import trio
import typer

from printd.auth import AuthError
from printd.config import Config, ConfigError, load_config, redact_url
from printd.logs import setup_logging

app = typer.Typer(
    help="printd: the print gateway (HTTP API + WebSocket gateway + monitoring on one port).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

DEFAULT_CONFIG_ENV = "PRINTD_CONFIG"
ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="TOML config file (default: $PRINTD_CONFIG).", show_default=False),
]


def _load(config: Path | None, overrides: dict[str, Any]) -> Config:
    path = config or (Path(os.environ[DEFAULT_CONFIG_ENV]) if os.environ.get(DEFAULT_CONFIG_ENV) else None)
    try:
        return load_config(path, overrides=overrides)
    except ConfigError as exc:
        typer.echo(f"printd: config error: {exc}", err=True)
        raise typer.Exit(2) from None


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
    cfg = _load(config, overrides)
    setup_logging(cfg.log_level, cfg.log_format)
    from printd.app import App
    from printd.store import StoreError

    async def serve() -> None:
        await App(cfg).run()

    try:
        trio.run(serve)
    except (AuthError, ConfigError) as exc:
        typer.echo(f"printd: config error: {exc}", err=True)
        raise typer.Exit(2) from None
    except StoreError as exc:
        typer.echo(f"printd: cannot use the store {redact_url(cfg.database_url)}: {exc}", err=True)
        raise typer.Exit(1) from None
    except OSError as exc:
        typer.echo(f"printd: cannot listen on {cfg.server.host}:{cfg.server.port}: {exc}", err=True)
        raise typer.Exit(1) from None


@app.command("check-config")
def check_config(
    file: Annotated[
        Path | None, typer.Argument(help="Config file to check (default: $PRINTD_CONFIG).")
    ] = None,
    production: Annotated[bool, typer.Option("--production", help="Check with production rules.")] = False,
) -> None:
    """Validate a config file and the environment; name the bad key and why (exit 2).

    Example: printd check-config config/printd.toml
    """
    cfg = _load(file, {"mode": "production"} if production else {})
    typer.echo(
        f"ok: mode={cfg.mode} listen={cfg.server.host}:{cfg.server.port} "
        f"store={redact_url(cfg.database_url)} instance={cfg.instance_id}"
    )


@app.command()
def migrate(
    config: ConfigOpt = None, data_dir: Annotated[Path | None, typer.Option(help="Data directory.")] = None
) -> None:
    """Apply pending schema migrations, then exit.

    Example: DATABASE_URL=postgresql://printd@db/printd printd migrate
    """
    cfg = _load(config, {"data_dir": str(data_dir)} if data_dir else {})
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
        typer.echo(f"printd: migration failed on {redact_url(cfg.database_url)}: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"applied migrations: {applied}" if applied else "schema is up to date")


def main() -> None:
    sys.exit(app())


if __name__ == "__main__":
    main()
