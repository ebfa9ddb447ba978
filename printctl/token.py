"""`printctl token`: mint an HS256 token with the secret printd itself uses."""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path
from typing import Annotated, Any

import jwt
import typer
from jwt.warnings import InsecureKeyLengthWarning

from printctl.common import EXIT_USAGE, JsonOpt, emit_json, err_console, fail
from printd.auth import ALGORITHM, ROLES, AuthError, mint_token, parse_ttl, resolve_secret
from printd.config import GENERATE_SECRET, ConfigError, find_config, load_config, secret_weakness


def load_secret(config_file: Path | None, data_dir: Path | None) -> tuple[str, str]:
    """(secret, where it came from), read exactly as printd reads it; never generates one.

    Exits 2 with the fix when the config is invalid or no secret exists anywhere.
    """
    path = find_config(config_file, os.environ)
    overrides: dict[str, Any] = {"data_dir": str(data_dir)} if data_dir is not None else {}
    try:
        config = load_config(path, overrides=overrides)
    except ConfigError as exc:
        fail(f"config error: {exc}", EXIT_USAGE)
    try:
        secret, source = resolve_secret(config, create=False)
    except FileNotFoundError as exc:
        fail(
            f"{exc} (or point printctl at it with --data-dir DIR / --secret-from-config FILE)",
            EXIT_USAGE,
        )
    except AuthError as exc:
        fail(f"{exc.message}: export JWT_SECRET (the same value printd uses)", EXIT_USAGE)
    except ConfigError as exc:
        fail(str(exc), EXIT_USAGE)
    if source == "config":  # the environment is applied over the file, as in printd
        source = "JWT_SECRET" if os.environ.get("JWT_SECRET") else f"auth.jwt_secret in {path}"
    return secret, source


def token(
    role: Annotated[str, typer.Option("--role", help=f"One of: {', '.join(ROLES)}.", show_default=False)],
    company: Annotated[
        str,
        typer.Option("--company", help="Company id ('*' = all companies, admin only).", show_default=False),
    ],
    sub: Annotated[
        str, typer.Option("--sub", help="Subject: the agent, service or person's id.", show_default=False)
    ],
    branch: Annotated[
        str | None,
        typer.Option("--branch", help="Branch id (required for agent tokens).", show_default=False),
    ] = None,
    ttl: Annotated[str, typer.Option("--ttl", help="Lifetime: 90, 15m, 12h, 1d, 2w.")] = "1d",
    secret_from_config: Annotated[
        Path | None,
        typer.Option(
            "--secret-from-config",
            help="printd config file to take the secret from (default: found like printd finds it).",
            show_default=False,
        ),
    ] = None,
    data_dir: Annotated[
        Path | None,
        typer.Option(
            "--data-dir",
            help="printd data directory holding the generated secret (env PRINTD_DATA_DIR; default ./var).",
            show_default=False,
        ),
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Mint a token; only the token is printed on stdout, so `$(printctl token ...)` works.

    The secret is read like printd reads it: config file, JWT_SECRET, else the one printd generated.

    Example: export PRINTD_TOKEN=$(printctl token --role service --company acme --sub backoffice --ttl 12h)
    """
    try:
        seconds = parse_ttl(ttl)
    except ValueError as exc:
        fail(f"--ttl: {exc}", EXIT_USAGE)
    # Check the claims before touching any secret, so usage errors never depend on the machine.
    try:
        mint_token("x" * 32, role=role, company=company, sub=sub, branch=branch, ttl=seconds)
    except ValueError as exc:
        fail(str(exc), EXIT_USAGE)
    secret, source = load_secret(secret_from_config, data_dir)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecureKeyLengthWarning)
        value = mint_token(secret, role=role, company=company, sub=sub, branch=branch, ttl=seconds)
    weakness = secret_weakness(secret)
    if weakness is not None:
        err_console.print(
            f"[yellow]warning:[/yellow] the JWT secret ({source}) {weakness}; production mode "
            f"refuses it ({GENERATE_SECRET})",
            highlight=False,
        )
    if json_out:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", InsecureKeyLengthWarning)
            claims = jwt.decode(value, secret, algorithms=[ALGORITHM])
        emit_json({"token": value, "claims": claims, "secret_source": source})
    else:
        sys.stdout.write(value + "\n")
