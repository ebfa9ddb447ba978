"""`printctl`: the operator's tool for printd. One module per command group."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from printctl import (
    agent,
    circuits,
    cluster,
    cluster_admin,
    config_cmd,
    deploy,
    failover,
    health,
    jobs,
    loadtest,
    printers,
    token,
    verify,
)
from printctl.common import JSON_MODE, emit_json, error_object
from printd import package_version


class PrintctlGroup(TyperGroup):
    """The root command: notes --json for `fail`, and turns what the option parser itself refuses
    (an unknown option, a bad choice) into the JSON error object too, like every other failure."""

    def main(self, args: Sequence[str] | None = None, *rest: Any, **extra: Any) -> Any:
        argv = list(sys.argv[1:] if args is None else args)
        mode = JSON_MODE.set("--json" in argv)
        try:
            return super().main(argv, *rest, **extra)
        finally:
            JSON_MODE.reset(mode)

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except Exception as exc:
            # click's usage errors carry exit_code and format_message(); typer.Exit has no message
            code = getattr(exc, "exit_code", None)
            if JSON_MODE.get() and isinstance(code, int) and hasattr(exc, "format_message"):
                emit_json(error_object(exc.format_message(), code))
            raise


app = typer.Typer(
    cls=PrintctlGroup,
    help="printctl: operate printd gateways (tokens, health, circuits, jobs, the reference agent).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"printctl {package_version()}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", help="Print the version and exit.", is_eager=True, callback=_print_version),
    ] = False,
) -> None:
    """printctl: operate printd gateways (tokens, health, circuits, jobs, the reference agent)."""


app.command("token")(token.token)
app.command("health")(health.health)
app.command("instance")(health.instance)
app.command("agent")(agent.agent)
app.command("verify-prints")(verify.verify_prints)
app.add_typer(config_cmd.app, name="config")
app.add_typer(circuits.app, name="circuits")
app.add_typer(jobs.app, name="jobs")
app.add_typer(printers.app, name="printers")
app.command("deploy")(deploy.deploy)
cluster.app.command("status")(cluster_admin.status)
cluster.app.command("rebalance")(cluster_admin.rebalance)
app.add_typer(cluster.app, name="cluster")
app.command("loadtest", cls=loadtest.LoadtestCommand)(loadtest.loadtest)
app.command("failover-test", cls=loadtest.LoadtestCommand)(failover.failover_test)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
