"""`printctl printers`: the company's printers and their agents; test-print one; move one."""

from __future__ import annotations

import time
from typing import Annotated, Any

import typer
from rich.table import Table

from printctl.circuits import ADMIN_HINT
from printctl.common import (
    DEFAULT_URL,
    EXIT_CHECK_FAILED,
    JsonOpt,
    TimeoutOpt,
    TokenOpt,
    UrlOpt,
    console,
    emit_json,
    err_console,
    error_message,
    exit_code_for,
    fail,
    path_segment,
    request,
)
from printctl.jobs import (
    POLL_INTERVAL,
    CompanyOpt,
    api,
    describe_error,
    payload_from,
    query_string,
    styled_state,
    when,
)

app = typer.Typer(
    help=(
        "Printers: list them with their agents' state; send a test print (service or admin token); "
        "move one to another branch or agent (admin token)."
    ),
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)

STATUS_STYLES = {"online": "green", "ready": "green", "ok": "green", "offline": "red", "error": "red"}


@app.command("list")
def list_printers(
    branch: Annotated[
        str | None, typer.Option("--branch", help="Only this branch.", show_default=False)
    ] = None,
    company: CompanyOpt = None,
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = None,
    json_out: JsonOpt = False,
    timeout: TimeoutOpt = 10.0,
) -> None:
    """List printers with their last reported status and whether their agent is connected.

    Example: printctl printers list --branch branch-7
    """
    body = api(
        "GET", url, "/api/v1/printers" + query_string(company=company, branch=branch), token, timeout=timeout
    )
    if json_out:
        emit_json(body)
        return
    table = Table(title=f"printers ({body.get('count', 0)})")
    for column in ("printer", "branch", "agent", "agent online", "status", "updated"):
        table.add_column(column)
    for p in body.get("printers", []):
        status = str(p.get("status"))
        style = STATUS_STYLES.get(status.lower())
        table.add_row(
            str(p.get("printer_id")),
            str(p.get("branch")),
            str(p.get("agent_id")),
            "[green]yes[/green]" if p.get("agent_online") else "[red]no[/red]",
            f"[{style}]{status}[/{style}]" if style else status,
            when(p.get("updated_at")),
        )
    console.print(table)


@app.command("test")
def test(
    printer_id: Annotated[str, typer.Argument(help="Printer id, as shown by `printctl printers list`.")],
    text: Annotated[
        str | None,
        typer.Option("--text", help="Text of the test page (default: the server's).", show_default=False),
    ] = None,
    payload: Annotated[
        str | None, typer.Option("--payload", help="Test payload as a JSON object.", show_default=False)
    ] = None,
    company: CompanyOpt = None,
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = None,
    json_out: JsonOpt = False,
    timeout: TimeoutOpt = 30.0,
) -> None:
    """Print a test page and wait for the agent's answer; exit 1 unless the printer reports success.

    Example: printctl printers test kitchen-1 --text "printd test"
    """
    body: dict[str, Any] = {}
    if text is not None or payload is not None:
        body["payload"] = payload_from(payload, text)
    if company is not None:
        body["company"] = company
    path = f"/api/v1/printers/{path_segment('ID', printer_id)}/test"
    resp = request("POST", url, path, token=token, json_body=body, timeout=timeout)
    try:
        answer: Any = resp.json()
    except ValueError:
        answer = None
    if resp.status_code != 200 or not isinstance(answer, dict):
        code = exit_code_for(resp) if resp.status_code != 200 else EXIT_CHECK_FAILED
        fail(
            f"test of {printer_id} failed: {describe_error(resp)}",
            code,
            status=resp.status_code,
            answer=answer,
        )
    if json_out:
        emit_json(answer)
    else:
        ok = bool(answer.get("success"))
        verdict = "[green]printed[/green]" if ok else "[red]failed[/red]"
        table = Table(title=f"test of {printer_id}: {verdict}", show_header=False)
        table.add_column("field", style="bold")
        table.add_column("value")
        table.add_row("success", "yes" if ok else "no")
        table.add_row("message", str(answer.get("message") or "-"))
        table.add_row("state", styled_state(str(answer.get("state"))))
        table.add_row("job_id", str(answer.get("job_id")))
        table.add_row("correlation_id", str(answer.get("correlation_id")))
        console.print(table)
    if not answer.get("success"):
        if not json_out:
            err_console.print(
                f"[red]error:[/red] printer {printer_id} reported a failure "
                f"(correlation id {answer.get('correlation_id')})",
                highlight=False,
            )
        raise typer.Exit(EXIT_CHECK_FAILED)


@app.command("wait")
def wait(
    printer_ids: Annotated[list[str], typer.Argument(metavar="ID...", help="Printer ids to wait for.")],
    company: CompanyOpt = None,
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = None,
    json_out: JsonOpt = False,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds to wait for the printers.")] = 30.0,
) -> None:
    """Wait until these printers are registered and their agents connected; exit 1 if not in time.

    For scripts that start an agent and then print: jobs for a printer its agent has not announced
    yet are refused (unknown printer).

    Example: printctl printers wait kitchen-1 bar-1 --timeout 60
    """
    wanted = set(printer_ids)
    deadline = time.monotonic() + timeout
    path = "/api/v1/printers" + query_string(company=company)
    with err_console.status(f"waiting for {', '.join(sorted(wanted))}...") as status:
        while True:
            left = deadline - time.monotonic()
            body = api("GET", url, path, token, timeout=max(0.1, min(10.0, left)))
            online = {p["printer_id"]: p for p in body.get("printers", []) if p.get("printer_id") in wanted}
            missing = sorted(wanted - {pid for pid, p in online.items() if p.get("agent_online")})
            if not missing:
                break
            if left <= 0:
                fail(
                    f"not online after {timeout:g} s: {', '.join(missing)} (is its agent running, "
                    "with a token of this company?)",
                    missing=missing,
                )
            status.update(f"waiting for {', '.join(missing)} ({left:.0f} s left)...")
            time.sleep(min(POLL_INTERVAL, max(0.0, left)))
    if json_out:
        emit_json({"ok": True, "printers": [online[pid] for pid in sorted(wanted)]})
    else:
        console.print(f"[green]online[/green]: {', '.join(sorted(wanted))}")


@app.command("move")
def move(
    printer_id: Annotated[str, typer.Argument(help="Printer id, as shown by `printctl printers list`.")],
    branch: Annotated[str, typer.Option("--branch", help="Branch the printer moves to.", show_default=False)],
    agent_id: Annotated[
        str, typer.Option("--agent", help="Agent id (token sub) that will print for it.", show_default=False)
    ],
    company: CompanyOpt = None,
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = None,
    json_out: JsonOpt = False,
    timeout: TimeoutOpt = 10.0,
) -> None:
    """Move a printer to another branch or agent; its queued jobs follow. Needs an admin token,
    and printd logs who did it. Exit 1 if printd refuses (unknown printer, not an admin, moved
    meanwhile).

    A replacement agent of the same branch takes a printer over by itself while the old agent is
    offline; moving it to another branch, or away from an agent that is online, is this command.

    Example: printctl printers move kitchen-1 --branch downtown --agent agent-downtown-2 --company acme
    """
    body: dict[str, Any] = {"branch": branch, "agent_id": agent_id}
    if company is not None:
        body["company"] = company
    resp = request(
        "POST",
        url,
        f"/api/v1/printers/{path_segment('PRINTER_ID', printer_id)}/move",
        token=token,
        json_body=body,
        timeout=timeout,
    )
    try:
        answer: Any = resp.json()
    except ValueError:
        answer = None
    if resp.status_code != 200 or not isinstance(answer, dict):
        message = error_message(resp)
        if resp.status_code in (401, 403):
            message += f"; {ADMIN_HINT}"
        fail(f"move of {printer_id} failed: {message}", exit_code_for(resp), status=resp.status_code)
    if json_out:
        emit_json(answer)
        return
    was, now = answer.get("moved_from", {}), answer.get("printer", {})
    table = Table(title=f"printer {printer_id} moved", show_header=True)
    for column in ("", "branch", "agent"):
        table.add_column(column)
    table.add_row("from", str(was.get("branch")), str(was.get("agent_id")))
    table.add_row("to", f"[green]{now.get('branch')}[/green]", f"[green]{now.get('agent_id')}[/green]")
    console.print(table)
    console.print(f"queued jobs moved with it: {answer.get('jobs_moved', 0)}")
