"""`printctl failover-test`: faults injected into a running cluster, round after round, under a
steady load, and a verdict: was any accepted job lost or printed twice, and how fast did the
orphaned agents come back?

The load is the load test's (printctl.loadgen: simulated agents with journals, dashboards, back
offices with Idempotency-Keys), run for as long as the rounds last; the rounds
(printctl.faults.runner) run beside it in a thread. Only the options live at the top of this
module; the rest is imported when the command runs, so `printctl --help` stays fast.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from printctl.common import (
    EXIT_CHECK_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    console,
    default_url,
    err_console,
    fail,
    request,
)
from printctl.loadtest import STDOUT, LiveView, check_writable, emit_report
from printctl.loadtest import LoadtestCommand as LoadtestCommand  # the command class main.py builds it with

if TYPE_CHECKING:
    from printctl.checker import PrintReport
    from printctl.faults.plan import Fault
    from printctl.faults.report import JobsOutcome
    from printctl.loadgen.coordinator import Live
    from printctl.loadgen.plan import LoadPlan

ALL_FAULTS = "kill,drain,pause,redis,db,agent-cut"
MAX_ROUNDS = 1000
MAX_HOLD = 600.0
LOOKUPS = 1000  # jobs that did not print, asked of the store one by one at most


def failover_test(
    url: Annotated[
        str | None,
        typer.Option(
            "--url",
            help="The cluster's front (nginx). Default: the local cluster's, from --state-dir.",
            show_default=False,
        ),
    ] = None,
    state_dir: Annotated[
        Path, typer.Option("--state-dir", help="The local cluster of `printctl cluster up`.")
    ] = Path("var/cluster"),
    agents: Annotated[int, typer.Option("--agents", help="Simulated agents (one connection each).")] = 100,
    dashboards: Annotated[int, typer.Option("--dashboards", help="Simulated dashboards.")] = 5,
    job_rate: Annotated[
        float, typer.Option("--job-rate", help="Jobs submitted per second, all along.")
    ] = 10.0,
    rounds: Annotated[int, typer.Option("--rounds", help=f"Rounds, 1-{MAX_ROUNDS}.")] = 10,
    faults: Annotated[
        str | None,
        typer.Option(
            "--faults",
            help=f"Fault kinds to deal from, comma-separated ({ALL_FAULTS}). Default: every kind the "
            "cluster can take (a deployed cluster's redis and db only when named).",
            show_default=False,
        ),
    ] = None,
    seed: Annotated[
        int | None,
        typer.Option("--seed", help="Seed of the rounds (default: random, printed to reproduce the run)."),
    ] = None,
    hold_min: Annotated[float, typer.Option("--hold-min", help="Shortest hold of a fault, seconds.")] = 2.0,
    hold_max: Annotated[float, typer.Option("--hold-max", help="Longest hold of a fault, seconds.")] = 8.0,
    settle_timeout: Annotated[
        float, typer.Option("--settle-timeout", help="Seconds for the cluster to settle after a heal.")
    ] = 90.0,
    drain: Annotated[
        float,
        typer.Option("--drain", help="At most this long after the last round for accepted jobs to print."),
    ] = 60.0,
    slo_reconnect_p99: Annotated[
        float, typer.Option("--slo-reconnect-p99", help="Orphaned agents back within this (seconds, p99).")
    ] = 10.0,
    slo_lost: Annotated[int, typer.Option("--slo-lost", help="Lost jobs allowed.")] = 0,
    slo_duplicated: Annotated[int, typer.Option("--slo-duplicated", help="Jobs printed twice allowed.")] = 0,
    stop_cmd: Annotated[
        str | None,
        typer.Option(
            "--stop-cmd",
            help="A deployed cluster: the command that injects a fault, with {fault} {target} {host} {url} "
            "{signal} (docs/operations.md, Failover test).",
            show_default=False,
        ),
    ] = None,
    start_cmd: Annotated[
        str | None,
        typer.Option(
            "--start-cmd", help="A deployed cluster: the command that heals it.", show_default=False
        ),
    ] = None,
    workers: Annotated[int, typer.Option("--workers", help="Load generator processes.")] = 1,
    json_out: Annotated[
        str | None,
        typer.Option(
            "--json",
            metavar="[FILE]",
            help="Write the report as JSON to FILE; --json alone prints it on stdout.",
            show_default=False,
        ),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            help="Keep the print logs, accepted jobs and agents' events here (default: a temporary "
            "dir, kept on failure).",
            show_default=False,
        ),
    ] = None,
    secret: Annotated[
        str | None,
        typer.Option(
            "--secret",
            envvar="JWT_SECRET",
            help="printd's JWT secret; prefer env JWT_SECRET. Default: the local cluster's.",
            show_default=False,
        ),
    ] = None,
    data_dir: Annotated[
        Path | None,
        typer.Option("--data-dir", help="printd data directory holding the secret.", show_default=False),
    ] = None,
    production: Annotated[
        bool,
        typer.Option("--i-know-this-is-production", help="Allow a front that is not on this machine."),
    ] = False,
) -> None:
    """Inject faults into a running cluster under load, round after round, and check that no
    accepted job was lost or printed twice and that orphaned agents came back in time.

    Each round deals a fault (kill, drain, pause, redis, db, agent-cut) and a target from --seed,
    holds it, heals it and waits until the cluster settled. Exit 0 when every SLO held, 1 when
    one failed, 2 on a usage error. A local cluster takes every fault when started with
    `printctl cluster up --private-redis --db-proxy`; a deployed one needs --url, --stop-cmd and
    --start-cmd.

    Example: printctl failover-test --rounds 5 --faults kill,drain,pause,redis,db --seed 1 --agents 60
    """
    import secrets as random_source
    import shutil
    import tempfile
    import time
    import uuid

    from printctl.cluster import LocalCluster
    from printctl.clusterspec import ClusterFileError
    from printctl.faults.board import Board, EventFiles
    from printctl.faults.inject import (
        AgentNetwork,
        CommandInjector,
        Injector,
        LocalInjector,
        template_problem,
    )
    from printctl.faults.observe import Observer
    from printctl.faults.plan import Fault, parse_faults, plan_rounds
    from printctl.faults.report import RoundResult, Slo, evaluate, summary
    from printctl.faults.runner import Load, Rounds
    from printctl.loadgen.coordinator import Conductor, RunFailed
    from printctl.loadgen.plan import MAX_DURATION, LoadPlan
    from printctl.loadgen.report import build
    from printctl.loadgen.target import BadTarget, parse_target
    from printctl.token import load_secret
    from printd.auth import mint_token

    # ---- everything a user can get wrong, before anything starts (exit 2)
    problems = []
    try:
        wanted = parse_faults(faults) if faults is not None else None
    except ValueError as exc:
        problems.append(f"--faults: {exc}")
        wanted = None
    if not 1 <= rounds <= MAX_ROUNDS:
        problems.append(f"--rounds must be 1-{MAX_ROUNDS}")
    if not 0 < hold_min <= hold_max <= MAX_HOLD:
        problems.append(f"--hold-min and --hold-max: 0 < min <= max <= {MAX_HOLD:g} s")
    if not 5 <= settle_timeout <= 600:
        problems.append("--settle-timeout must be 5-600 s")
    if slo_reconnect_p99 <= 0 or slo_lost < 0 or slo_duplicated < 0:
        problems.append("--slo-reconnect-p99 must be more than 0, --slo-lost and --slo-duplicated 0 or more")
    if (stop_cmd is None) != (start_cmd is None):
        problems.append("--stop-cmd and --start-cmd go together (one injects, the other heals)")
    for template in (stop_cmd, start_cmd):
        why = template_problem(template) if template is not None else None
        if why:
            problems.append(f"--stop-cmd/--start-cmd: {why}")
    load_plan = LoadPlan(
        agents=agents,
        printers_per_agent=1,
        dashboards=dashboards,
        companies=max(1, min(10, agents)),
        status_rate=agents / 5,  # each printer reports every 5 s
        job_rate=job_rate,
        duration=MAX_DURATION,  # an upper bound: the window ends when the rounds do
        ramp=min(30.0, 2.0 + agents / 500),
        drain=drain,
        workers=workers,
    )
    problems += load_plan.problems()
    if job_rate <= 0:
        problems.append("--job-rate must be more than 0: without jobs there is nothing to check")
    if problems:
        fail("; ".join(problems), EXIT_USAGE)
    if json_out not in (None, STDOUT):
        check_writable(Path(json_out))

    # ---- which cluster
    local = stop_cmd is None
    if local:
        try:
            cluster = LocalCluster.load(state_dir)
        except ClusterFileError as exc:
            fail(str(exc), EXIT_USAGE)
        if cluster is None:
            fail(
                f"no local cluster in {state_dir}: start one with `printctl cluster up --private-redis "
                "--db-proxy`, or give a deployed cluster's front with --url and --stop-cmd/--start-cmd",
                EXIT_USAGE,
            )
        down = [p.name for p in cluster.processes if not p.alive()]
        if down:
            fail(
                f"the local cluster in {state_dir} is not all running ({', '.join(down)}): "
                "see `printctl cluster ls`"
            )
        front = default_url(url or cluster.front_url)
    elif url is None:
        fail("a deployed cluster needs its front: --url http://HOST:PORT", EXIT_USAGE)
    else:
        front = default_url(url)
    try:
        target = parse_target(front)
    except BadTarget as exc:
        fail(f"--url: {exc}", EXIT_USAGE)
    if not target.loopback and not production:
        fail(
            f"{front} is not on this machine: a failover test stops instances, Redis and the database of "
            "what it points at; add --i-know-this-is-production if that is what you mean",
            EXIT_USAGE,
        )
    key = secret or load_secret(None, data_dir or (state_dir if local else None))[0]
    admin = mint_token(key, role="admin", company="*", sub="failover-test", ttl=int(MAX_DURATION + 3600))

    # ---- who injects, what it can do (a local cluster says so before anything is asked of it)
    network = AgentNetwork(target) if wanted is None or Fault.AGENT_CUT in wanted else None
    injector: Injector
    if local:
        injector = LocalInjector(state_dir, network)
    else:
        request("GET", front, "/monitoring/health", timeout=5.0)  # unreachable: exit 1 now
        injector = CommandInjector(stop_cmd or "", start_cmd or "", _members(front, admin), network)
    default = injector.faults - ({Fault.REDIS, Fault.DB} if not local else set())
    chosen = wanted if wanted is not None else tuple(f for f in Fault if f in default)
    refused = [f"{f}: {_why_not(f, len(injector.instances()))}" for f in chosen if f not in injector.faults]
    if refused or not chosen:
        injector.close()
        fail("; ".join(refused) or "this cluster can take none of the faults", EXIT_USAGE)
    if local:
        request("GET", front, "/monitoring/health", timeout=5.0)  # unreachable: exit 1 now
    seed = seed if seed is not None else random_source.randbelow(2**31)
    plans = plan_rounds(seed, rounds, chosen, list(injector.instances()), (hold_min, hold_max))
    slo = Slo(slo_reconnect_p99, slo_lost, slo_duplicated)

    # ---- the run: load in this thread (it owns SIGINT), rounds in another
    out_dir = output or Path(tempfile.mkdtemp(prefix="printctl-failover-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    run_id = uuid.uuid4().hex[:12]
    view = RoundView()
    conductor = Conductor(
        load_plan,
        network.url if network is not None else front,
        key,
        run_id,
        out_dir,
        view,
        worker_module="printctl.faults.worker",
    )
    ended_by_rounds = []

    def end_window() -> None:
        if conductor.interrupts == 0:
            ended_by_rounds.append(time.time())
            conductor.interrupts = 1  # the conductor's "end the window now, then drain"

    load = Load(
        phase=lambda: conductor.live.phase,
        # a copy first: the conductor's thread may add a worker's figures meanwhile
        accepted=lambda: sum(int(w.get("accepted", 0)) for w in list(conductor.live.workers.values())),
        interrupted=lambda: conductor.interrupts > 0 and not ended_by_rounds,
        end_window=end_window,
    )
    observer = Observer(injector.instances(), admin, front)
    runner = Rounds(
        plans, injector, observer, EventFiles(out_dir), Board(agents), load, settle_timeout, view.say
    )
    view.say(
        f"failover-test {front}: {rounds} rounds of {', '.join(chosen)}, seed {seed}, {agents} agents, "
        f"{job_rate:g} jobs/s"
    )
    runner.start()
    try:
        outcome = conductor.run()
    except RunFailed as exc:
        fail(str(exc))
    finally:
        runner.join(timeout=settle_timeout + 120)
        view.stop()
        observer.close()
        injector.close()

    # ---- the verdict
    jobs = _jobs_outcome(outcome.check, out_dir, load_plan, front, admin, outcome.earlier_runs)
    results: list[RoundResult] = runner.results
    load_report = build(
        load_plan, outcome.results, outcome.check, url=front, run_id=run_id, earlier_runs=outcome.earlier_runs
    )
    checks = evaluate(results, len(plans), jobs, slo)
    passed = all(c["ok"] for c in checks) and runner.error is None
    report: dict[str, Any] = {
        "url": front,
        "cluster": f"local ({state_dir})" if local else "deployed (--stop-cmd/--start-cmd)",
        "run_id": run_id,
        "seed": seed,
        "faults": [str(f) for f in chosen],
        "plan": {
            "rounds": rounds,
            "hold_s": [hold_min, hold_max],
            "settle_timeout_s": settle_timeout,
            "drain_s": drain,
            "agents": agents,
            "dashboards": dashboards,
            "job_rate": job_rate,
        },
        "slo": {"reconnect_p99_s": slo.reconnect_p99, "lost": slo.lost, "duplicated": slo.duplicated},
        "rounds": [r.to_json(slo) for r in results],
        "summary": summary(results, slo),
        "jobs": jobs.to_json(),
        "load": {k: load_report[k] for k in ("jobs", "connections", "errors", "errors_total", "latency")},
        "error": runner.error,
        "interrupted": outcome.interrupted and not ended_by_rounds,
        "checks": checks,
        "ok": passed,
        "exit_code": EXIT_OK if passed else EXIT_CHECK_FAILED,
        "reproduce": _reproduce(front, local, state_dir, rounds, chosen, seed, hold_min, hold_max, agents),
    }
    if output is None and passed:
        shutil.rmtree(out_dir, ignore_errors=True)
    else:
        report["output_dir"] = str(out_dir)
    emit_report(report, json_out, _render)
    raise typer.Exit(report["exit_code"])


def _why_not(fault: Fault, instances: int) -> str:
    from printctl.faults.plan import INSTANCE_FAULTS, Fault

    if fault in INSTANCE_FAULTS:
        return f"needs at least 2 instances to fail over between ({instances} here)"
    if fault is Fault.REDIS:
        return (
            "the local cluster has no Redis of its own: start it with `printctl cluster up --private-redis`"
        )
    if fault is Fault.DB:
        return "the local cluster has no database proxy: start it with `printctl cluster up --db-proxy`"
    return "not available"


def _members(front: str, token: str) -> dict[str, str]:
    """A deployed cluster's instances from its membership: id -> advertised URL."""
    from printctl.common import get_json

    view = get_json(front, "/monitoring/cluster", token=token)
    members = {str(m.get("id")): str(m.get("url") or "") for m in view.get("members") or []}
    missing = [i for i, u in members.items() if not u]
    if missing:
        fail(f"members without an advertised URL: {', '.join(missing)} (set cluster.advertise_url)")
    return members


def _reproduce(
    front: str,
    local: bool,
    state_dir: Path,
    rounds: int,
    faults: Any,
    seed: int,
    hold_min: float,
    hold_max: float,
    agents: int,
) -> str:
    where = f"--state-dir {state_dir}" if local else f"--url {front} --stop-cmd ... --start-cmd ..."
    return (
        f"printctl failover-test {where} --rounds {rounds} --faults {','.join(map(str, faults))} "
        f"--seed {seed} --hold-min {hold_min:g} --hold-max {hold_max:g} --agents {agents}"
    )


def _jobs_outcome(
    check: PrintReport, out_dir: Path, plan: LoadPlan, front: str, token: str, earlier: int
) -> JobsOutcome:
    """The checker's answer, with what the store says about each accepted job that did not
    print: still live (queued, dispatched, acked: pending) or finished without printing (lost)."""
    import httpx
    import orjson

    from printctl.faults.report import JobsOutcome
    from printctl.loadgen.plan import agent_company, company_id

    printers: dict[str, str] = {}
    for path in sorted(out_dir.glob("accepted-w*.jsonl")):
        for line in path.read_bytes().splitlines():
            try:
                record = orjson.loads(line)
                printers[str(record["job_id"])] = str(record["printer_id"])
            except (orjson.JSONDecodeError, KeyError, TypeError):
                continue
    lost: dict[str, str] = {}
    pending: dict[str, str] = {}
    with httpx.Client(timeout=5.0, headers={"Authorization": f"Bearer {token}"}) as http:
        for n, job in enumerate(check.lost):
            state = "not looked up"
            found = re.fullmatch(r"lt-(\d+)-p\d+", printers.get(job, ""))
            if n < LOOKUPS and found is not None:
                company = company_id(agent_company(plan, int(found.group(1))))
                try:
                    answer = http.get(f"{front}/api/v1/jobs/{job}", params={"company": company})
                    state = str(answer.json().get("state")) if answer.status_code == 200 else "unknown"
                except (httpx.HTTPError, ValueError, AttributeError):
                    state = "unknown (the store did not answer)"
            (pending if state in ("queued", "dispatched", "acked") else lost)[job] = state
    return JobsOutcome(
        accepted=check.accepted,
        printed=check.printed,
        lost=lost,
        duplicated=dict(check.duplicated),
        unexpected=tuple(check.unexpected),
        pending=pending,
        earlier_runs_printed=earlier,
    )


# ---------------------------------------------------------------- live progress


class RoundView(LiveView):
    """Each round's steps as lines, and on a terminal a live line with the load under them
    (connections, jobs, errors)."""

    EVERY = 10.0

    def say(self, text: str) -> None:
        """A round's step (called from the rounds' thread)."""
        import time

        err_console.print(f"[dim]{time.strftime('%H:%M:%S')}[/] {text}", highlight=False, soft_wrap=True)

    def __call__(self, live: Live) -> None:
        line = (
            f"load {live.phase}: {live.open('agent')} agents, {live.open('dashboard')} dashboards connected; "
            f"jobs {live.total('accepted')} accepted, {live.total('printed')} printed, "
            f"{live.total('pending')} waiting; {live.total('errors')} client errors"
        )
        self.show(line, line)


# ---------------------------------------------------------------- the report


def _s(value: Any) -> str:
    return "-" if value is None else f"{value:.1f}"


def _render(report: dict[str, Any]) -> None:
    from rich.table import Table

    plan = report["plan"]
    verdict = "[green]PASS[/]" if report["ok"] else "[red]FAIL[/]"
    console.print(
        f"{verdict} printctl failover-test {report['url']}: "
        f"{len(report['rounds'])} of {plan['rounds']} rounds "
        f"({', '.join(report['faults'])}), seed {report['seed']}, {plan['agents']} agents, "
        f"{plan['job_rate']:g} jobs/s" + (" [yellow](interrupted)[/]" if report["interrupted"] else ""),
        highlight=False,
    )
    table = Table(title="rounds (seconds from the injection)", title_justify="left")
    for col in (
        "#",
        "fault",
        "target",
        "hold",
        "detect",
        "heal",
        "settled",
        "orphans",
        "reconnect p50/p99/max",
    ):
        table.add_column(col, justify="left" if col in ("fault", "target") else "right")
    table.add_column("jobs during", justify="right")
    table.add_column("client errors", justify="right")
    table.add_column("result")
    for r in report["rounds"]:
        rc = r["reconnect"]
        back = f"{_s(rc['p50_s'])} / {_s(rc['p99_s'])} / {_s(rc['max_s'])}" if rc["n"] else "-"
        if rc["never"]:
            back += f" [red]({rc['never']} never)[/]"
        table.add_row(
            str(r["round"]),
            r["fault"],
            r["target"] + (" *" if r["leader"] else ""),
            _s(r["hold_s"]),
            _s(r["detect_s"]),
            _s(r["heal_s"]),
            _s(r["settle_s"]),
            str(r["orphans"]),
            back,
            str(r["accepted_during_fault"]),
            str(sum(r["errors"].values())),
            "[green]pass[/]" if r["ok"] else "[red]FAIL[/]",
        )
    console.print(table)
    for r in report["rounds"]:
        for problem in r["problems"]:
            console.print(f"  round {r['round']}: [red]{problem}[/]", highlight=False)
        if r["never_back"]:
            console.print(
                f"  round {r['round']}: never back: {', '.join(r['never_back'][:20])}", highlight=False
            )
    console.print("  * the leader when the fault began", style="dim")

    s = report["summary"]
    kinds = Table(title="by fault", title_justify="left")
    for col in ("fault", "rounds", "passed", "detect p50/max", "orphans", "reconnect p50/p99/max"):
        kinds.add_column(col, justify="left" if col == "fault" else "right")
    for fault, k in s["by_fault"].items():
        rc = k["reconnect"]
        kinds.add_row(
            fault,
            str(k["rounds"]),
            str(k["passed"]),
            f"{_s(k['detect_s']['p50'])} / {_s(k['detect_s']['max'])}",
            str(rc["n"]),
            f"{_s(rc['p50_s'])} / {_s(rc['p99_s'])} / {_s(rc['max_s'])}" if rc["n"] else "-",
        )
    console.print(kinds)
    if s["errors_during_rounds"]:
        top = ", ".join(f"{kind} {n}" for kind, n in list(s["errors_during_rounds"].items())[:8])
        console.print(f"client-visible errors during the rounds: {top}", highlight=False, soft_wrap=True)

    jobs = report["jobs"]
    console.print(
        f"jobs: {jobs['accepted']:,} accepted, {jobs['printed']:,} printed, {len(jobs['lost'])} lost, "
        f"{len(jobs['duplicated'])} duplicated, {len(jobs['unexpected'])} unexpected, "
        f"{len(jobs['still_pending'])} still pending; {s['accepted_during_faults']:,} accepted during faults",
        highlight=False,
    )
    for job, state in list(jobs["lost"].items())[:20]:
        console.print(f"  lost (accepted, never printed; the store says {state}): {job}", highlight=False)
    for job, n in list(jobs["duplicated"].items())[:20]:
        console.print(f"  printed {n} times: {job}", highlight=False)
    for job in jobs["unexpected"][:20]:
        console.print(f"  printed without a 202 seen: {job}", highlight=False)
    for job, state in list(jobs["still_pending"].items())[:20]:
        console.print(f"  still {state} after the drain: {job}", highlight=False)
    if report["error"]:
        console.print(f"[red]{report['error']}[/]", highlight=False)

    checks = Table(title="SLOs", title_justify="left")
    for col in ("check", "limit", "value", "result"):
        checks.add_column(col)
    for c in report["checks"]:
        checks.add_row(c["name"], c["limit"], c["value"], "[green]pass[/]" if c["ok"] else "[red]FAIL[/]")
    console.print(checks)
    console.print(f"reproduce: {report['reproduce']}", highlight=False, soft_wrap=True)
    if report.get("output_dir"):
        console.print(
            f"print logs, accepted jobs and agents' events: {report['output_dir']}", highlight=False
        )
