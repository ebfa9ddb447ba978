"""`printctl circuits`: inspect printd's circuit breakers; reset, force open or disable one."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from printctl.common import (
    DEFAULT_URL,
    JsonOpt,
    MonitoringTokenOpt,
    TimeoutOpt,
    TokenOpt,
    UrlOpt,
    console,
    emit_json,
    error_message,
    exit_code_for,
    fail,
    get_json,
    path_segment,
    request,
)

app = typer.Typer(
    help="Circuit breakers: list them; reset, force-open or disable one (admin token).",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)

STATE_STYLES = {
    "closed": "green",
    "half_open": "yellow",
    "open": "red",
    "forced_open": "bold red",
    "disabled": "dim",
}

NameArg = Annotated[str, typer.Argument(help="Circuit name, as shown by `printctl circuits list`.")]

ADMIN_HINT = (
    "pass an admin token with --token or PRINTD_TOKEN, e.g. "
    "--token $(printctl token --role admin --company '*' --sub $USER --ttl 15m)"
)


def _state(state: str) -> str:
    style = STATE_STYLES.get(state, "")
    return f"[{style}]{state}[/{style}]" if style else state


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} %"


def circuits_table(snapshot: dict[str, Any]) -> Table:
    """A Rich table of GET /monitoring/circuits."""
    table = Table(title=f"circuits ({snapshot.get('open', 0)} open of {snapshot.get('total', 0)})")
    table.add_column("name", no_wrap=True)
    table.add_column("state", no_wrap=True)
    table.add_column("failures", justify="right")
    table.add_column("successes", justify="right")
    table.add_column("rejected", justify="right")
    table.add_column("fail rate", justify="right", no_wrap=True)
    table.add_column("half-open in", justify="right", no_wrap=True)
    for c in snapshot.get("circuits", []):
        until = c.get("time_until_half_open")
        table.add_row(
            str(c.get("name")),
            _state(str(c.get("state"))),
            str(c.get("failures", 0)),
            str(c.get("successes", 0)),
            str(c.get("rejected", 0)),
            _percent(c.get("failure_rate")),
            "-" if until is None else f"{until:.1f} s",
        )
    return table


@app.command("list")
def list_circuits(
    url: UrlOpt = DEFAULT_URL,
    token: MonitoringTokenOpt = None,
    json_out: JsonOpt = False,
    timeout: TimeoutOpt = 10.0,
) -> None:
    """Every circuit with its state, counts, failure rate and time until it tries again.

    Needs an admin token (a company's admin sees its own branches' circuits) or printd's metrics
    token (PRINTD_METRICS_TOKEN).

    Example: printctl circuits list --url http://printd-1:3001 --token "$ADMIN_TOKEN"
    """
    body = get_json(url, "/monitoring/circuits", token=token, timeout=timeout)
    if json_out:
        emit_json(body)
    else:
        console.print(circuits_table(body))


def _action(action: str, name: str, url: str, token: str | None, json_out: bool, timeout: float) -> None:
    path = f"/monitoring/circuits/{path_segment('NAME', name)}/{action}"
    resp = request("POST", url, path, token=token, timeout=timeout)
    if resp.status_code != 200:
        message = error_message(resp)
        if resp.status_code in (401, 403):
            message += f"; {ADMIN_HINT}"
        elif resp.status_code == 404:
            message += " (list them with `printctl circuits list`)"
        fail(message, exit_code_for(resp))
    body = resp.json()
    if json_out:
        emit_json(body)
        return
    circuit = body.get("circuit", {})
    console.print(f"{action}: circuit [bold]{name}[/bold] is now {_state(str(circuit.get('state')))}")


@app.command("reset")
def reset(
    name: NameArg,
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = None,
    json_out: JsonOpt = False,
    timeout: TimeoutOpt = 10.0,
) -> None:
    """Close a circuit and clear its counters (also ends force-open and disable).

    Example: printctl circuits reset store --token "$ADMIN_TOKEN"
    """
    _action("reset", name, url, token, json_out, timeout)


@app.command("force-open")
def force_open(
    name: NameArg,
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = None,
    json_out: JsonOpt = False,
    timeout: TimeoutOpt = 10.0,
) -> None:
    """Reject every call through a circuit until `reset`, e.g. during a database maintenance.

    Example: printctl circuits force-open store --token "$ADMIN_TOKEN"
    """
    _action("force-open", name, url, token, json_out, timeout)


@app.command("disable")
def disable(
    name: NameArg,
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = None,
    json_out: JsonOpt = False,
    timeout: TimeoutOpt = 10.0,
) -> None:
    """Let every call through a circuit and never open it until `reset` (outcomes still counted).

    Example: printctl circuits disable store --token "$ADMIN_TOKEN"
    """
    _action("disable", name, url, token, json_out, timeout)
