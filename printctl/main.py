"""`printctl`: the operator's tool for printd. One module per command group."""

from __future__ import annotations

import typer

from printctl import agent, circuits, cluster, config_cmd, deploy, health, jobs, printers, token, verify

app = typer.Typer(
    help="printctl: operate printd gateways (tokens, health, circuits, jobs, the reference agent).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
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
app.add_typer(cluster.app, name="cluster")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
