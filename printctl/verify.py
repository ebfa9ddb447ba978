"""`printctl verify-prints`: was any accepted job lost or printed twice?"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from printctl.checker import BadInput, compare, read_job_ids, read_print_log
from printctl.common import EXIT_CHECK_FAILED, EXIT_USAGE, JsonOpt, console, emit_json, fail


def verify_prints(
    accepted: Annotated[
        Path, typer.Option("--accepted", help="File of accepted jobs (JSON lines with job_id, or ids).")
    ],
    prints: Annotated[list[Path], typer.Argument(help="Agents' output directories or prints.jsonl files.")],
    json_out: JsonOpt = False,
) -> None:
    """Compare accepted jobs with the agents' print logs; exit 1 on any lost, duplicated or unexpected print.

    Lines of a print log torn by an agent crash are skipped and counted ("torn"); a missing path is
    a usage error (exit 2).

    Example: printctl verify-prints --accepted accepted.jsonl ./prints-agent-1 ./prints-agent-2
    """
    try:
        accepted_ids = read_job_ids(accepted)
        log = read_print_log(prints)
    except BadInput as exc:
        fail(str(exc), EXIT_USAGE)
    report = compare(accepted_ids, log.job_ids, torn=log.torn)
    if json_out:
        emit_json(report.to_json())
    else:
        table = Table(title="exactly-once check")
        table.add_column("accepted", justify="right")
        table.add_column("printed", justify="right")
        table.add_column("lost", justify="right")
        table.add_column("duplicated", justify="right")
        table.add_column("unexpected", justify="right")
        colour = "green" if report.ok else "red"
        table.add_row(
            str(report.accepted),
            str(report.printed),
            f"[{colour}]{len(report.lost)}[/]",
            f"[{colour}]{len(report.duplicated)}[/]",
            f"[{colour}]{len(report.unexpected)}[/]",
        )
        console.print(table)
        for job in report.lost[:20]:
            console.print(f"  lost: {job}")
        for job, n in list(report.duplicated.items())[:20]:
            console.print(f"  printed {n} times: {job}")
        if report.torn:
            console.print(
                f"[yellow]{report.torn} torn line(s) skipped[/]: a print record cut short by an agent "
                "crash; that job's outcome is unknown to the agent, which reports it instead of printing "
                "it again (see `printctl jobs get`)"
            )
    if not report.ok:
        raise typer.Exit(EXIT_CHECK_FAILED)
