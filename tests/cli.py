"""printctl run in-process (typer's CliRunner) with an environment that does not depend on the machine."""

from __future__ import annotations

from typer.testing import CliRunner, Result

from printctl.main import app

#: Variables that would make a test depend on the machine it runs on.
CLEAN_ENV: dict[str, str | None] = {
    name: None
    for name in (
        "JWT_SECRET",
        "PRINTD_CONFIG",
        "PRINTD_DATA_DIR",
        "PRINTD_MODE",
        "PRINTD_URL",
        "PRINTD_TOKEN",
        "PORT",
        "HOST",
        "DATABASE_URL",
        "REDIS_URL",
        "REDIS_HOST",
        "CORS_ORIGINS",
        "INSTANCE_ID",
        "STATUS_BATCH_DELAY",
        "PRINTD_LOG_LEVEL",
        "PRINTD_LOG_FORMAT",
    )
}


def run(*args: str, env: dict[str, str | None] | None = None) -> Result:
    """`printctl ARGS...`; the result has exit_code, stdout and stderr apart."""
    runner = CliRunner(env={**CLEAN_ENV, "COLUMNS": "200", **(env or {})})
    return runner.invoke(app, list(args))
