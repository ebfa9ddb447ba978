"""`printctl jobs`: submit print jobs, follow them, list them (/api/v1/jobs, service token)."""

from __future__ import annotations

import time
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any
from urllib.parse import urlencode

import httpx
import orjson
import typer
from rich import box
from rich.table import Table

from printctl.common import (
    DEFAULT_URL,
    EXIT_CHECK_FAILED,
    EXIT_USAGE,
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
from printd.model import TERMINAL_STATES, JobState

app = typer.Typer(
    help="Print jobs: submit one (and wait for it), show one, list them. Needs a service or admin token.",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)

SERVICE_HINT = (
    "pass a service token with --token or PRINTD_TOKEN, e.g. "
    "export PRINTD_TOKEN=$(printctl token --role service --company COMPANY --sub $USER)"
)
STATE_STYLES = {
    "queued": "cyan",
    "dispatched": "yellow",
    "acked": "yellow",
    "printed": "green",
    "failed": "red",
    "expired": "red",
}
TERMINAL = {str(s) for s in TERMINAL_STATES}
POLL_INTERVAL = 0.5


class Kind(StrEnum):
    PRINT = "print"
    TEST = "test"


CompanyOpt = Annotated[
    str | None,
    typer.Option(
        "--company", help="Company, only for an all-companies ('*') admin token.", show_default=False
    ),
]


def styled_state(state: str) -> str:
    style = STATE_STYLES.get(state)
    return f"[{style}]{state}[/{style}]" if style else state


def when(ts: float | None, *, short: bool = False) -> str:
    """A local timestamp; `short` drops the date for today's."""
    if ts is None:
        return "-"
    at = datetime.fromtimestamp(ts)
    if short:
        return at.strftime("%H:%M:%S" if at.date() == datetime.now().date() else "%m-%d %H:%M")
    return at.strftime("%Y-%m-%d %H:%M:%S")


def api(
    method: str,
    url: str,
    path: str,
    token: str | None,
    *,
    json_body: Any = None,
    headers: dict[str, str] | None = None,
    timeout: float = 10.0,
    ok: tuple[int, ...] = (200, 202),
) -> dict[str, Any]:
    """One /api/v1 call; any other status exits 1 with the server's message, the fix, the correlation id."""
    resp = request(method, url, path, token=token, json_body=json_body, headers=headers, timeout=timeout)
    if resp.status_code in ok:
        body: dict[str, Any] = resp.json()
        return body
    fail(describe_error(resp), exit_code_for(resp))


def describe_error(resp: httpx.Response) -> str:
    """The server's message plus what to do about it."""
    message = error_message(resp)
    try:
        body = resp.json()
    except ValueError:
        body = {}
    if isinstance(body, dict):
        for key in ("job_id", "correlation_id"):
            if body.get(key):
                message += f" ({key} {body[key]})"
    if resp.status_code == 401:
        message += f"; {SERVICE_HINT}"
    elif resp.status_code == 403:
        message += "; use a service or admin token for this company"
    elif resp.status_code in (429, 503) and resp.headers.get("retry-after"):
        message += f"; retry in {resp.headers['retry-after']} s"
    return message


def job_table(job: dict[str, Any]) -> Table:
    table = Table(title=f"job {job.get('job_id')}", show_header=False)
    table.add_column("field", style="bold", no_wrap=True)
    table.add_column("value", overflow="fold")
    table.add_row("state", styled_state(str(job.get("state"))))
    for key in ("correlation_id", "company", "branch", "printer_id", "kind", "attempts"):
        table.add_row(key, str(job.get(key, "-")))
    for key in ("created_at", "dispatched_at", "acked_at", "finished_at"):
        table.add_row(key, when(job.get(key)))
    if job.get("result") is not None:
        table.add_row("result", orjson.dumps(job["result"]).decode())
    if job.get("error"):
        table.add_row("error", f"[red]{job['error']}[/red]")
    history = " -> ".join(str(h.get("state")) for h in job.get("history") or [])
    if history:
        table.add_row("history", history)
    return table


def payload_from(payload: str | None, text: str | None) -> dict[str, Any]:
    if payload is not None and text is not None:
        fail("give either --payload or --text, not both", EXIT_USAGE)
    if text is not None:
        return {"text": text}
    if payload is None:
        return {}
    try:
        value = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        fail(f'--payload is not valid JSON ({exc}); e.g. --payload \'{{"text": "hello"}}\'', EXIT_USAGE)
    if not isinstance(value, dict):
        fail('--payload must be a JSON object, e.g. --payload \'{"text": "hello"}\'', EXIT_USAGE)
    return value


def query_string(**params: Any) -> str:
    present = {k: v for k, v in params.items() if v is not None}
    return "?" + urlencode(present) if present else ""


def wait_for(
    job_id: str, url: str, token: str | None, company: str | None, seconds: float, timeout: float
) -> dict[str, Any] | None:
    """Poll the job until it is printed, failed or expired; None when `seconds` ran out."""
    deadline = time.monotonic() + seconds
    path = f"/api/v1/jobs/{path_segment('ID', job_id)}" + query_string(company=company)
    with err_console.status(f"waiting for job {job_id}...") as status:
        while True:
            job = api("GET", url, path, token, timeout=timeout)
            state = str(job.get("state"))
            if state in TERMINAL:
                return job
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            status.update(f"job {job_id} is {state}; waiting up to {left:.0f} s more...")
            time.sleep(min(POLL_INTERVAL, left))


@app.command("submit")
def submit(
    printer: Annotated[str, typer.Option("--printer", help="Printer id.", show_default=False)],
    kind: Annotated[Kind, typer.Option("--kind", help="Job kind.")] = Kind.PRINT,
    payload: Annotated[
        str | None, typer.Option("--payload", help="Payload as a JSON object.", show_default=False)
    ] = None,
    text: Annotated[
        str | None,
        typer.Option("--text", help="Shorthand for --payload '{\"text\": TEXT}'.", show_default=False),
    ] = None,
    idempotency_key: Annotated[
        str | None,
        typer.Option(
            "--idempotency-key",
            help="Resubmitting with the same key returns the same job.",
            show_default=False,
        ),
    ] = None,
    wait: Annotated[
        float | None,
        typer.Option(
            "--wait", help="Wait up to N seconds for printed/failed/expired.", min=0, show_default=False
        ),
    ] = None,
    company: CompanyOpt = None,
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = None,
    json_out: JsonOpt = False,
    timeout: TimeoutOpt = 10.0,
) -> None:
    """Submit a print job; with --wait, follow it and exit 1 unless it printed in time.

    Example: printctl jobs submit --printer kitchen-1 --text "Table 4: soup" --idempotency-key o-981 --wait 30
    """
    if not printer:
        fail("--printer: must not be empty", EXIT_USAGE)
    body: dict[str, Any] = {"printer_id": printer, "kind": str(kind), "payload": payload_from(payload, text)}
    if company is not None:
        body["company"] = company
    headers = {"Idempotency-Key": idempotency_key} if idempotency_key is not None else None
    created = api("POST", url, "/api/v1/jobs", token, json_body=body, headers=headers, timeout=timeout)
    job_id = str(created.get("job_id"))
    if wait is None:
        if json_out:
            emit_json(created)
        else:
            replay = (
                " (idempotent replay: this key was used before)" if created.get("idempotent_replay") else ""
            )
            console.print(
                f"job [bold]{job_id}[/bold] {styled_state(str(created.get('state')))}{replay}; "
                f"correlation id {created.get('correlation_id')}"
            )
        return
    job = wait_for(job_id, url, token, company, wait, timeout)
    if job is None:
        fail(
            f"job {job_id} did not finish within {wait:g} s; follow it with: printctl jobs get {job_id}",
            job=created,
            timed_out=True,
        )
    if json_out:
        emit_json(job)
    else:
        console.print(job_table(job))
    if job.get("state") != JobState.PRINTED:
        raise typer.Exit(EXIT_CHECK_FAILED)


@app.command("get")
def get(
    job_id: Annotated[str, typer.Argument(help="Job id, as returned by `jobs submit`.")],
    company: CompanyOpt = None,
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = None,
    json_out: JsonOpt = False,
    timeout: TimeoutOpt = 10.0,
) -> None:
    """Show one job: state, attempts, timestamps, result or error, history.

    Example: printctl jobs get 01J9Z6X4Q8 --json | jq .state
    """
    path = f"/api/v1/jobs/{path_segment('ID', job_id)}" + query_string(company=company)
    job = api("GET", url, path, token, timeout=timeout)
    if json_out:
        emit_json(job)
    else:
        console.print(job_table(job))


@app.command("list")
def list_jobs(
    printer: Annotated[
        str | None, typer.Option("--printer", help="Only this printer.", show_default=False)
    ] = None,
    state: Annotated[
        JobState | None, typer.Option("--state", help="Only jobs in this state.", show_default=False)
    ] = None,
    limit: Annotated[int, typer.Option("--limit", help="At most this many jobs.", min=1, max=1000)] = 100,
    company: CompanyOpt = None,
    url: UrlOpt = DEFAULT_URL,
    token: TokenOpt = None,
    json_out: JsonOpt = False,
    timeout: TimeoutOpt = 10.0,
) -> None:
    """List recent jobs of the token's company, newest first.

    Example: printctl jobs list --printer kitchen-1 --state failed --limit 20
    """
    query = query_string(
        company=company, printer=printer, state=None if state is None else state.value, limit=limit
    )
    body = api("GET", url, "/api/v1/jobs" + query, token, timeout=timeout)
    if json_out:
        emit_json(body)
        return
    rows = [
        (
            str(job.get("job_id")),
            str(job.get("printer_id")),
            str(job.get("kind")),
            str(job.get("state")),
            when(job.get("created_at"), short=True),
            str(job.get("error") or ""),
        )
        for job in body.get("jobs", [])
    ]
    table = Table(title=f"jobs ({body.get('count', 0)})", box=box.SIMPLE_HEAD)
    for i, column in enumerate(("job id", "printer", "kind", "state", "created")):
        # Ids stay whole (people copy them into `jobs get`); the error column gives way.
        width = max([len(column), *(len(row[i]) for row in rows)])
        table.add_column(column, no_wrap=True, min_width=width)
    table.add_column("error", no_wrap=True, overflow="ellipsis")
    for row in rows:
        table.add_row(*row[:3], styled_state(row[3]), *row[4:])
    console.print(table)
