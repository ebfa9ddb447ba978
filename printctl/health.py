"""`printctl health` and `printctl instance`: what /monitoring says about one printd."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated, Any

import httpx
import orjson
import typer
from rich.console import Group, RenderableType
from rich.live import Live
from rich.table import Table

from printctl.common import (
    DEFAULT_URL,
    EXIT_CHECK_FAILED,
    EXIT_OK,
    JsonOpt,
    MonitoringTokenOpt,
    TimeoutOpt,
    UrlOpt,
    check_printd_answer,
    console,
    default_url,
    emit_json,
    err_console,
    error_message,
    fail,
    get_json,
)

WAIT_POLL = 0.2
STATUS_COLOURS = {"ok": "green", "degraded": "yellow", "draining": "yellow", "unreachable": "red"}


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    days, s = divmod(s, 86400)
    hours, s = divmod(s, 3600)
    minutes, s = divmod(s, 60)
    if days:
        return f"{days}d {hours}h {minutes}m"
    if hours:
        return f"{hours}h {minutes}m {s}s"
    if minutes:
        return f"{minutes}m {s}s"
    return f"{seconds:.1f}s"


def _bytes(n: float | None) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def fetch_health(url: str, timeout: float) -> dict[str, Any]:
    """The /monitoring/health body; status 'unreachable' (with the error) when printd can't answer.
    An answer that is not printd's exits (see check_printd_answer)."""
    base = default_url(url)
    try:
        resp = httpx.get(base + "/monitoring/health", timeout=timeout)
    except httpx.HTTPError as exc:
        return {"status": "unreachable", "url": base, "error": f"cannot reach printd: {exc}"}
    check_printd_answer(resp, base)
    body: dict[str, Any] = resp.json()
    if "status" not in body:
        return {"status": "unreachable", "url": base, "error": error_message(resp)}
    return body


def wait_until_ok(url: str, timeout: float, seconds: float) -> dict[str, Any]:
    """Poll /monitoring/health until it says ok or `seconds` have passed; the last answer."""
    deadline = time.monotonic() + seconds
    with err_console.status(f"waiting up to {seconds:g} s for printd at {default_url(url)}...") as status:
        while True:
            left = deadline - time.monotonic()
            body = fetch_health(url, max(0.1, min(timeout, left)))
            if body.get("status") == "ok" or time.monotonic() >= deadline:
                return body
            status.update(f"printd is {body.get('status')}; waiting up to {left:.0f} s more...")
            time.sleep(min(WAIT_POLL, max(0.0, deadline - time.monotonic())))


def health_table(body: dict[str, Any]) -> RenderableType:
    """A Rich view of one health answer."""
    status = str(body.get("status", "unknown"))
    colour = STATUS_COLOURS.get(status, "red")
    title = f"printd health: [{colour}]{status}[/{colour}]"
    if status == "unreachable":
        table = Table(title=title, show_header=False)
        table.add_row("url", str(body.get("url", "")))
        table.add_row("error", f"[red]{body.get('error', '')}[/red]")
        return table
    summary = Table(title=title, show_header=False)
    summary.add_column("key", style="bold")
    summary.add_column("value")
    summary.add_row("instance", str(body.get("instance", "-")))
    for reason in body.get("reasons") or []:  # why it is not ok, in printd's words
        summary.add_row("why", f"[{colour}]{reason}[/{colour}]")
    summary.add_row("uptime", _duration(body.get("uptime")))
    summary.add_row("connections", str(body.get("connections", "-")))
    open_circuits = body.get("circuits_open") or []
    summary.add_row(
        "open circuits", f"[red]{', '.join(open_circuits)}[/red]" if open_circuits else "[green]none[/green]"
    )
    checks = Table(title="checks")
    checks.add_column("check")
    checks.add_column("status")
    checks.add_column("value", justify="right")
    checks.add_column("threshold", justify="right")
    for name, check in (body.get("checks") or {}).items():
        ok = check.get("status") == "ok"
        checks.add_row(
            name,
            "[green]ok[/green]" if ok else f"[red]{check.get('status')}[/red]",
            str(check.get("value")),
            str(check.get("threshold")),
        )
    return Group(summary, checks)


def _exit_code(body: dict[str, Any]) -> int:
    return EXIT_OK if body.get("status") == "ok" else EXIT_CHECK_FAILED


def health(
    ctx: typer.Context,
    url: UrlOpt = DEFAULT_URL,
    json_out: JsonOpt = False,
    watch: Annotated[
        float | None,
        typer.Option("--watch", help="Refresh every N seconds until Ctrl-C (JSON: one line each).", min=0.1),
    ] = None,
    wait: Annotated[
        float | None,
        typer.Option(
            "--wait",
            help="Wait up to N seconds for status ok (a printd that is starting), then answer as usual.",
            min=0,
            show_default=False,
        ),
    ] = None,
    timeout: TimeoutOpt = 5.0,
    cluster: Annotated[
        bool,
        typer.Option(
            "--cluster",
            help="Every instance in one table: from --config, --state-dir, the local cluster in "
            "./var/cluster, or else the front at --url (GET /monitoring/cluster).",
        ),
    ] = False,
    cluster_file: Annotated[
        Path | None,
        typer.Option("--config", help="With --cluster: the cluster description.", show_default=False),
    ] = None,
    state_dir: Annotated[
        Path | None,
        typer.Option(
            "--state-dir", help="With --cluster: a local cluster's state directory.", show_default=False
        ),
    ] = None,
    token: MonitoringTokenOpt = None,
) -> None:
    """Is printd healthy? Exit 0 when status is ok, 1 when degraded, draining or unreachable.

    Example: printctl health --url http://printd-1:3001 --watch 5
    Example: printctl health --cluster --config config/cluster.toml
    """
    if cluster:
        from printctl.cluster import cluster_health

        source = ctx.get_parameter_source("url")
        raise typer.Exit(
            cluster_health(
                url=default_url(url),
                url_given=source is not None and source.name != "DEFAULT",
                config=cluster_file,
                state_dir=state_dir,
                watch=watch,
                timeout=timeout,
                json_out=json_out,
                token=token,
            )
        )
    if watch is None:
        body = fetch_health(url, timeout) if wait is None else wait_until_ok(url, timeout, wait)
        if body.get("status") == "unreachable":
            hint = "is printd running there? check --url or PRINTD_URL"
            fail(f"{body.get('error')} ({hint})", status="unreachable", url=body.get("url"))
        if json_out:
            emit_json(body)
        else:
            console.print(health_table(body))
        raise typer.Exit(_exit_code(body))
    code = EXIT_OK
    try:
        if json_out:
            while True:
                body = fetch_health(url, timeout)
                code = _exit_code(body)
                sys.stdout.write(orjson.dumps(body).decode() + "\n")
                sys.stdout.flush()
                time.sleep(watch)
        else:
            body = fetch_health(url, timeout)
            with Live(health_table(body), console=console, refresh_per_second=4) as live:
                while True:
                    code = _exit_code(body)
                    time.sleep(watch)
                    body = fetch_health(url, timeout)
                    live.update(health_table(body))
    except KeyboardInterrupt:
        pass
    raise typer.Exit(code)


def instance_tables(body: dict[str, Any]) -> RenderableType:
    """Rich tables for one /monitoring/instance answer."""
    draining = body.get("draining")
    head = Table(title=f"instance {body.get('instance', '-')}", show_header=False)
    head.add_column("key", style="bold")
    head.add_column("value")
    head.add_row("mode", str(body.get("mode", "-")))
    head.add_row("uptime", _duration(body.get("uptime")))
    head.add_row("draining", "[yellow]yes[/yellow]" if draining else "no")
    memory = body.get("memory") or {}
    head.add_row("memory (rss)", _bytes(memory.get("rss_bytes")))
    head.add_row("system memory", f"{memory.get('system_percent', '-')} %")
    head.add_row("cpu", f"{body.get('cpu_percent', '-')} %")
    rates = body.get("rates") or {}
    head.add_row("requests/s", str(rates.get("requests_per_s", "-")))
    head.add_row("errors/s", str(rates.get("errors_per_s", "-")))

    conns = Table(title="connections by role")
    conns.add_column("role")
    conns.add_column("open", justify="right")
    connections = body.get("connections") or {}
    for role, n in sorted(connections.items()):
        conns.add_row(role, str(n))
    conns.add_row("[bold]total[/bold]", f"[bold]{sum(connections.values())}[/bold]")

    traffic = Table(title="WebSocket traffic")
    traffic.add_column("direction")
    traffic.add_column("messages", justify="right")
    traffic.add_column("raw", justify="right")
    traffic.add_column("wire", justify="right")
    traffic.add_column("saving", justify="right")
    messages = body.get("messages") or {}
    for direction in ("in", "out"):
        b = (body.get("bytes") or {}).get(direction) or {}
        saving = b.get("saving_pct")
        traffic.add_row(
            direction,
            str(messages.get(direction, "-")),
            _bytes(b.get("raw")),
            _bytes(b.get("wire")),
            "-" if saving is None else f"{saving} %",
        )

    jobs = Table(title="jobs")
    jobs.add_column("figure")
    jobs.add_column("count", justify="right")
    for key, value in (body.get("jobs") or {}).items():
        jobs.add_row(key.replace("_", " "), str(value))
    status = body.get("status") or {}
    jobs.add_row("status batches", str(status.get("batches", "-")))
    for key, value in (body.get("errors") or {}).items():
        jobs.add_row(key.replace("_", " "), f"[red]{value}[/red]" if value else "0")
    return Group(head, conns, traffic, jobs)


def instance(
    url: UrlOpt = DEFAULT_URL,
    token: MonitoringTokenOpt = None,
    json_out: JsonOpt = False,
    timeout: TimeoutOpt = 10.0,
) -> None:
    """This instance's figures: connections by role, messages, compression saving, jobs, memory, rates.

    Needs an all-companies admin token or printd's metrics token (PRINTD_METRICS_TOKEN).

    Example: PRINTD_METRICS_TOKEN=... printctl instance --url http://printd-1:3001 --json | jq .bytes
    """
    body = get_json(url, "/monitoring/instance", token=token, timeout=timeout)
    if json_out:
        emit_json(body)
    else:
        console.print(instance_tables(body))
