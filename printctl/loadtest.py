"""`printctl loadtest`: simulated agents, dashboards and back offices against one printd or a
front of several, with a report that says whether it held, and an exactly-once check at the end.

Only the command's options live at the top of this module; the load generator (printctl.loadgen)
and the report's rendering are imported when the command runs, so `printctl --help` stays fast.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from typer.core import TyperCommand

from printctl.common import (
    DEFAULT_URL,
    EXIT_CHECK_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    UrlOpt,
    console,
    default_url,
    emit_json,
    err_console,
    fail,
    request,
)

if TYPE_CHECKING:
    from printctl.loadgen.coordinator import Live

STDOUT = "-"


def bare_json_to_stdout(args: list[str]) -> list[str]:
    """`--json` takes an optional FILE: given alone (last, or before another option) it means
    stdout ("-"). Click has no optional option values, so the bare flag gets its value here."""
    out: list[str] = []
    for i, arg in enumerate(args):
        out.append(arg)
        following = args[i + 1] if i + 1 < len(args) else None
        if arg == "--json" and (following is None or following.startswith("-") and following != STDOUT):
            out.append(STDOUT)
    return out


class LoadtestCommand(TyperCommand):
    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        return list(super().parse_args(ctx, bare_json_to_stdout(args)))


def loadtest(
    url: UrlOpt = DEFAULT_URL,
    agents: Annotated[int, typer.Option("--agents", help="Simulated agents (one connection each).")] = 100,
    printers_per_agent: Annotated[int, typer.Option("--printers-per-agent", help="Printers per agent.")] = 2,
    dashboards: Annotated[
        int, typer.Option("--dashboards", help="Dashboards; dashboard d watches company d mod --companies.")
    ] = 10,
    companies: Annotated[
        int, typer.Option("--companies", help="Companies (tenants); agent a is in a mod C.")
    ] = 10,
    status_rate: Annotated[
        float, typer.Option("--status-rate", help="printer.status messages per second, whole fleet.")
    ] = 200.0,
    job_rate: Annotated[
        float, typer.Option("--job-rate", help="Jobs submitted per second, whole back office.")
    ] = 10.0,
    duration: Annotated[float, typer.Option("--duration", help="Seconds of the steady window.")] = 30.0,
    ramp: Annotated[float, typer.Option("--ramp", help="Seconds over which the connections open.")] = 5.0,
    drain: Annotated[
        float, typer.Option("--drain", help="At most this long after the window for accepted jobs to print.")
    ] = 30.0,
    no_compression: Annotated[
        bool, typer.Option("--no-compression", help="Do not offer permessage-deflate.")
    ] = False,
    status_bytes: Annotated[int, typer.Option("--status-bytes", help="Size of one status message.")] = 400,
    workers: Annotated[
        int | None,
        typer.Option("--workers", help="Generator processes (default: one per core).", show_default=False),
    ] = None,
    max_p99_job_ms: Annotated[
        float | None,
        typer.Option(
            "--max-p99-job-ms",
            help="Fail (exit 1) if the job round trip's p99 is above this.",
            show_default=False,
        ),
    ] = None,
    max_errors: Annotated[
        int | None,
        typer.Option(
            "--max-errors", help="Fail (exit 1) if more errors than this were seen.", show_default=False
        ),
    ] = None,
    json_out: Annotated[
        str | None,
        typer.Option(
            "--json",
            metavar="[FILE]",
            help="Write the whole report as JSON to FILE; --json alone prints it on stdout.",
            show_default=False,
        ),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            help="Keep the print logs and accepted jobs here (default: a temporary dir, kept on failure).",
            show_default=False,
        ),
    ] = None,
    secret: Annotated[
        str | None,
        typer.Option(
            "--secret",
            envvar="JWT_SECRET",
            help="printd's JWT secret; prefer env JWT_SECRET (ps shows options). "
            "Default: as `printctl token` finds it.",
            show_default=False,
        ),
    ] = None,
    data_dir: Annotated[
        Path | None,
        typer.Option(
            "--data-dir", help="printd data directory holding the generated secret.", show_default=False
        ),
    ] = None,
    secret_from_config: Annotated[
        Path | None,
        typer.Option(
            "--secret-from-config", help="printd config file to take the secret from.", show_default=False
        ),
    ] = None,
    production: Annotated[
        bool,
        typer.Option(
            "--i-know-this-is-production", help="Allow a URL that is not on this machine (loopback)."
        ),
    ] = False,
) -> None:
    """Load printd with simulated agents, dashboards and back offices; report latency, throughput,
    bytes and errors, and check that every accepted job printed exactly once.

    Exit 0 when every check passed, 1 when one failed (a lost or doubled job always fails), 2 on a
    usage error. Against a cluster give the front's URL: the report counts connections per instance.

    Example: printctl loadtest --agents 300 --dashboards 10 --job-rate 50 --duration 20 --max-p99-job-ms 100 --max-errors 0
    """  # noqa: E501
    import shutil
    import tempfile
    import uuid

    from printctl.loadgen.coordinator import Conductor, RunFailed
    from printctl.loadgen.plan import LoadPlan
    from printctl.loadgen.report import Thresholds, build, evaluate
    from printctl.loadgen.target import BadTarget, parse_target
    from printctl.token import load_secret

    plan = LoadPlan(
        agents=agents,
        printers_per_agent=printers_per_agent,
        dashboards=dashboards,
        companies=companies,
        status_rate=status_rate,
        job_rate=job_rate,
        duration=duration,
        ramp=ramp,
        drain=drain,
        compression=not no_compression,
        workers=workers if workers is not None else max(1, os.cpu_count() or 1),
        status_bytes=status_bytes,
    )
    problems = plan.problems()
    if max_p99_job_ms is not None and max_p99_job_ms <= 0:
        problems.append("--max-p99-job-ms must be more than 0")
    if max_errors is not None and max_errors < 0:
        problems.append("--max-errors must be 0 or more")
    if problems:
        fail("; ".join(problems), EXIT_USAGE)
    base = default_url(url)
    try:
        target = parse_target(base)
    except BadTarget as exc:
        fail(f"--url: {exc}", EXIT_USAGE)
    if not target.loopback and not production:
        fail(
            f"{base} is not on this machine: a load test against it could hurt real restaurants; "
            "add --i-know-this-is-production if that is what you mean",
            EXIT_USAGE,
        )
    if json_out not in (None, STDOUT):
        check_writable(Path(json_out))
    if output is not None:
        try:
            output.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            fail(f"--output {output}: {exc}", EXIT_USAGE)
    key = secret or load_secret(secret_from_config, data_dir)[0]
    request("GET", base, "/monitoring/health", timeout=5.0)  # unreachable: exit 1 now, not after the ramp
    out_dir = output or Path(tempfile.mkdtemp(prefix="printctl-loadtest-"))
    run_id = uuid.uuid4().hex[:12]
    view = ProgressView()
    try:
        outcome = Conductor(plan, base, key, run_id, out_dir, view).run()
    except RunFailed as exc:
        fail(str(exc))
    finally:
        view.stop()
    report = build(
        plan,
        outcome.results,
        outcome.check,
        url=base,
        run_id=run_id,
        earlier_runs=outcome.earlier_runs,
        interrupted=outcome.interrupted,
    )
    checks = evaluate(report, Thresholds(max_p99_job_ms=max_p99_job_ms, max_errors=max_errors))
    passed = all(c["ok"] for c in checks)
    report["checks"] = checks
    report["ok"] = passed
    report["exit_code"] = EXIT_OK if passed else EXIT_CHECK_FAILED
    if output is None and passed:
        shutil.rmtree(out_dir, ignore_errors=True)
    else:
        report["output_dir"] = str(out_dir)
    emit_report(report, json_out, _render)
    raise typer.Exit(report["exit_code"])


def check_writable(path: Path) -> None:
    try:
        with open(path, "a"):
            pass
    except OSError as exc:
        fail(f"--json {path}: {exc.strerror or exc}", EXIT_USAGE)


# ---------------------------------------------------------------- live progress


class LiveView:
    """A run as it goes, on stderr (stdout stays for the report): a Rich live display on a
    terminal, a plain line every `EVERY` seconds otherwise (CI logs)."""

    EVERY = 5.0

    def __init__(self) -> None:
        from rich.live import Live as RichLive

        self.rich = (
            RichLive(console=err_console, refresh_per_second=4, transient=True)
            if err_console.is_terminal
            else None
        )
        if self.rich is not None:
            self.rich.start()
        self.last_line = 0.0

    def show(self, renderable: Any, line: str) -> None:
        """`renderable` on a terminal; `line` in a log, at most every EVERY seconds."""
        import time

        if self.rich is not None:
            self.rich.update(renderable)
        elif time.time() - self.last_line >= self.EVERY:
            self.last_line = time.time()
            err_console.print(line, highlight=False, soft_wrap=True)

    def stop(self) -> None:
        if self.rich is not None:
            self.rich.stop()


class ProgressView(LiveView):
    """The load test's figures as they go."""

    def __call__(self, live: Live) -> None:
        import time

        from rich.table import Table

        cpu = ", ".join(f"w{i} {pct:.0f} %" for i, pct in sorted(live.cpu_pct.items())) or "-"
        cells = {
            "phase": f"{live.phase} ({time.time() - live.started:.0f} s)",
            "connections": f"{live.open('agent')} agents, {live.open('dashboard')} dashboards",
            "messages/s": f"{live.rate('msgs'):,.0f}",
            "jobs/s": f"{live.rate('accepted'):,.1f} accepted, {live.rate('completed'):,.1f} done",
            "jobs": f"{live.total('accepted')} accepted, {live.total('printed')} printed, "
            f"{live.total('pending')} waiting for an answer",
            "errors": str(live.total("errors")),
            "generator CPU": cpu,
        }
        table = Table(show_header=False, box=None, title="printctl loadtest", title_justify="left")
        for name, value in cells.items():
            table.add_row(f"[bold]{name}[/]", value)
        self.show(table, " | ".join(f"{k} {v}" for k, v in cells.items()))


# ---------------------------------------------------------------- the report


def emit_report(
    report: dict[str, Any], json_out: str | None, render: Callable[[dict[str, Any]], None]
) -> None:
    """The report for people (`render`), and as JSON on stdout (`--json`) or into a file."""
    if json_out == STDOUT:
        emit_json(report)
        return
    render(report)
    if json_out is not None:
        import orjson

        Path(json_out).write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2) + b"\n")
        console.print(f"report written to {json_out}", highlight=False)


def _ms(summary: dict[str, Any], key: str) -> str:
    value = summary.get(key)
    return "-" if value is None else f"{value:,.2f}"


def _render(report: dict[str, Any]) -> None:
    from rich.table import Table

    plan = report["plan"]
    verdict = "[green]PASS[/]" if report["ok"] else "[red]FAIL[/]"
    console.print(
        f"{verdict} printctl loadtest {report['url']}: {plan['agents']} agents x "
        f"{plan['printers_per_agent']} printers, {plan['dashboards']} dashboards, "
        f"{plan['companies']} companies, "
        f"{plan['status_rate']:g} statuses/s, {plan['job_rate']:g} jobs/s, {report['window_s']:g} s window"
        + (" [yellow](interrupted)[/]" if report["interrupted"] else ""),
        highlight=False,
    )
    lat = Table(title="latency (ms)", title_justify="left")
    for col in ("", "n", "p50", "p90", "p99", "p99.9", "max"):
        lat.add_column(col, justify="left" if not col else "right")
    names = {
        "connect": "connect (upgrade -> hello)",
        "job_round_trip": "job round trip (due -> completed seen)",
        "job_accept": "job accept (due -> 202)",
        "status": "status (agent send -> dashboard)",
    }
    for key, label in names.items():
        s = report["latency"][key]
        lat.add_row(
            label, f"{s['n']:,}", *(_ms(s, k) for k in ("p50_ms", "p90_ms", "p99_ms", "p999_ms", "max_ms"))
        )
    console.print(lat)

    t, jobs = report["throughput"], report["jobs"]
    flow = Table(title="throughput (steady window) and jobs", title_justify="left", show_header=False)
    flow.add_row(
        "statuses sent / items received per s",
        f"{t['statuses_sent_per_s']:,} / {t['status_items_received_per_s']:,}",
    )
    flow.add_row(
        "jobs submitted / accepted / completed per s",
        f"{t['jobs_submitted_per_s']:,} / {t['jobs_accepted_per_s']:,} / {t['jobs_completed_per_s']:,}",
    )
    flow.add_row("messages per s (all connections, both ways)", f"{t['messages_per_s']:,}")
    flow.add_row(
        "jobs submitted, accepted, printed",
        f"{jobs['submitted']:,}, {jobs['accepted']:,}, {jobs['printed']:,}",
    )
    unseen = jobs["accepted"] - jobs["completed"]
    flow.add_row(
        "round trips timed at a dashboard / by polling GET" + (" / not seen" if unseen else ""),
        f"{jobs['completed'] - jobs['polled']:,} / {jobs['polled']:,}" + (f" / {unseen:,}" if unseen else ""),
    )
    flow.add_row(
        "rejected, gave up, replayed from a journal",
        f"{jobs['rejected']:,}, {jobs['gave_up']:,}, {jobs['replayed']:,}",
    )
    if jobs["earlier_runs_printed"]:
        flow.add_row("jobs of earlier runs printed", f"{jobs['earlier_runs_printed']:,}")
    console.print(flow)

    b = report["bytes"]
    saving = b["saving"]
    wire = Table(title="bytes (steady window)", title_justify="left")
    for col in ("", "sent on the wire", "sent (payload)", "received on the wire", "received (payload)"):
        wire.add_column(col, justify="left" if not col else "right")
    for name in ("agents", "dashboards", "http"):
        c = b[name]
        wire.add_row(name, *(f"{c.get(k, 0):,}" for k in ("wire_tx", "app_tx", "wire_rx", "app_rx")))
    console.print(wire)

    def pct(v: float | None) -> str:
        return "-" if v is None else f"{v:g} %"

    console.print(
        f"dashboards received {saving['wire_bytes']:,} bytes for {saving['updates_for_dashboards']:,} "
        f"status updates: batching saved {pct(saving['batching_pct'])}, compression "
        f"{pct(saving['compression_pct'])}, both {pct(saving['total_pct'])} of one uncompressed message "
        f"per update (~{saving['unbatched_bytes']:,} bytes)",
        highlight=False,
    )

    conns = report["connections"]
    inst = Table(title="connections per instance (from hello)", title_justify="left")
    inst.add_column("instance")
    inst.add_column("open at the window's end", justify="right")
    inst.add_column("handshakes", justify="right")
    for name in sorted(set(conns["open_by_instance"]) | set(conns["hellos_by_instance"])):
        inst.add_row(
            name or "?",
            f"{conns['open_by_instance'].get(name, 0):,}",
            f"{conns['hellos_by_instance'].get(name, 0):,}",
        )
    console.print(inst)
    console.print(
        f"{conns['planned']:,} connections planned, {conns['handshakes']:,} handshakes, "
        f"{conns['reconnects']:,} reconnects, {conns['refused']:,} refused for good (401/403)",
        highlight=False,
    )

    if report["errors"]:
        errs = Table(title=f"errors ({report['errors_total']:,})", title_justify="left")
        errs.add_column("kind")
        errs.add_column("count", justify="right")
        for kind, n in report["errors"].items():
            errs.add_row(kind, f"{n:,}")
        console.print(errs)
        if any("http 401" in k or "http 403" in k for k in report["errors"]):
            console.print(
                "[yellow]printd refused the tokens: is the secret the one it uses "
                "(JWT_SECRET, --data-dir)?[/]"
            )
    gen = report["generator"]
    cpu = ", ".join(
        f"w{w['worker']} {w['window_cpu_pct']:g} %" + (" [red](saturated)[/]" if w["saturated"] else "")
        for w in gen["workers"]
    )
    console.print(f"generator CPU over the window, per worker process: {cpu or '-'}", highlight=False)
    if gen["saturated"]:
        console.print(
            "[yellow]a generator process was saturated: the figures may be the client's limit, "
            "not printd's[/]"
        )

    once = report["exactly_once"]
    for job in once["lost"][:20]:
        console.print(f"  lost (accepted, never printed): {job}", highlight=False)
    for job, n in list(once["duplicated"].items())[:20]:
        console.print(f"  printed {n} times: {job}", highlight=False)
    for job in once["unexpected"][:20]:
        console.print(f"  printed without a 202 seen: {job}", highlight=False)

    checks = Table(title="checks", title_justify="left")
    for col in ("check", "limit", "value", "result"):
        checks.add_column(col)
    for c in report["checks"]:
        checks.add_row(c["name"], c["limit"], c["value"], "[green]pass[/]" if c["ok"] else "[red]FAIL[/]")
    console.print(checks)
    if report.get("output_dir"):
        console.print(f"print logs and accepted jobs: {report['output_dir']}", highlight=False)
