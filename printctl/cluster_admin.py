"""`printctl cluster status` and `printctl cluster rebalance`: the cluster seen and steered as a
whole.

`status`: the cluster's members, leader and health in one table.

Like `patronictl list` reads the DCS, `--redis URL` reads the cluster's Redis directly, so the
view works when no instance answers; otherwise any instance (or the front) answers
GET /monitoring/cluster.
"""

from __future__ import annotations

import time
from typing import Annotated, Any

import typer
from rich.live import Live
from rich.table import Table

from printctl.common import (
    DEFAULT_URL,
    EXIT_CHECK_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    JsonOpt,
    MonitoringTokenOpt,
    TimeoutOpt,
    UrlOpt,
    console,
    default_url,
    emit_json,
    error_message,
    exit_code_for,
    fail,
    get_json,
    request,
)
from printctl.health import STATUS_COLOURS, _duration

RedisOpt = Annotated[
    str | None,
    typer.Option(
        "--redis",
        envvar="PRINTCTL_REDIS_URL",
        help="Read the cluster's Redis directly (works when no instance answers). Env PRINTCTL_REDIS_URL.",
        show_default=False,
    ),
]
PrefixOpt = Annotated[
    str,
    typer.Option("--prefix", envvar="REDIS_PREFIX", help="The cluster's Redis key prefix (with --redis)."),
]
WatchOpt = Annotated[
    float | None,
    typer.Option("--watch", "-w", min=0.5, help="Refresh every SECONDS until Ctrl-C.", show_default=False),
]


def verdict(view: dict[str, Any], expect: int | None = None) -> tuple[bool, list[str]]:
    """Healthy when the view is current, a leader exists, every member says ok (and, with
    `expect`, that many members are there: a dead instance is no member at all); why not."""
    problems = []
    members = view.get("members") or []
    if not members:
        problems.append("no members")
    elif expect is not None and len(members) < expect:
        problems.append(f"{len(members)} of {expect} expected members")
    if view.get("stale"):
        problems.append("the view is stale (the cluster backend is unreachable from the instance asked)")
    if not view.get("leader"):
        problems.append("no leader")
    for m in members:
        if m.get("health") != "ok":
            problems.append(f"{m.get('id')} is {m.get('health')}")
    return not problems, problems


def status_table(view: dict[str, Any], source: str, expect: int | None = None) -> Table:
    ok, problems = verdict(view, expect)
    colour = "green" if ok else "red"
    summary = "healthy" if ok else "; ".join(problems)
    table = Table(title=f"cluster via {source}: [{colour}]{summary}[/{colour}]", title_justify="left")
    for column in ("member", "url", "health", "agents", "dashboards", "heartbeat", "uptime", "version"):
        table.add_column(column, justify="right" if column in ("agents", "dashboards") else "left")
    for m in view.get("members") or []:
        health = str(m.get("health"))
        if m.get("draining"):
            health = "draining"
        connections = m.get("connections") or {}
        age = m.get("heartbeat_age_s")
        table.add_row(
            f"{m.get('id')}{' (leader)' if m.get('leader') else ''}",
            str(m.get("url") or "-"),
            f"[{STATUS_COLOURS.get(health, 'red')}]{health}[/]",
            str(connections.get("agent", 0)),
            str(connections.get("dashboard", 0) + connections.get("admin", 0)),
            "-" if age is None else f"{age:.1f} s ago",
            _duration(m.get("uptime_s")),
            str(m.get("version") or "-"),
        )
    return table


def redis_described(redis_url: str) -> str:
    """The URL as shown to people: without its password."""
    from printd.cluster.target import parse_redis_url

    try:
        return parse_redis_url(redis_url).describe()
    except ValueError:
        return "(invalid URL)"


def read_from_redis(redis_url: str, prefix: str, timeout: float) -> dict[str, Any]:
    """The cluster view straight from Redis (members with their heartbeats, the leader)."""
    import trio

    from printd.cluster.base import ClusterUnavailable
    from printd.cluster.redis import RedisCluster, new_incarnation
    from printd.cluster.redis_client import LinkSettings
    from printd.cluster.target import parse_redis_url
    from printd.logs import setup_logging

    setup_logging("error")  # the Redis client's own lines stay off stdout (and --json)
    try:
        target = parse_redis_url(redis_url)
    except ValueError as exc:
        fail(f"--redis: {exc}", EXIT_USAGE)

    async def read() -> dict[str, Any]:
        settings = LinkSettings(connect_timeout=timeout, command_timeout=timeout, client_name="printctl")
        backend = RedisCluster(new_incarnation(), lambda t, p: None, target, prefix=prefix, settings=settings)
        async with trio.open_nursery() as nursery:
            await nursery.start(backend.run)
            with trio.move_on_after(timeout):
                await backend.link.wait_up()
            try:
                view = await backend.get_cluster()
            except ClusterUnavailable as exc:  # here, not around trio.run: the nursery wraps it
                return {"error": str(exc)}
            finally:
                nursery.cancel_scope.cancel()
        now = time.time()
        return {
            "stale": False,
            "leader": view.leader,
            "members": [
                {
                    "id": m.instance_id,
                    "url": m.url,
                    "version": m.info.version,
                    "uptime_s": round(now - m.started_at, 1) if m.started_at else None,
                    "health": m.info.health,
                    "draining": m.info.draining,
                    "connections": dict(m.info.connections),
                    "heartbeat_age_s": round(m.heartbeat_age, 3),
                    "leader": view.leader == m.instance_id,
                }
                for m in view.members
            ],
        }

    view = trio.run(read)
    if "error" in view:
        fail(f"cannot read the cluster from Redis at {target.describe()}: {view['error']}")
    return view


def status(
    url: UrlOpt = DEFAULT_URL,
    token: MonitoringTokenOpt = None,
    redis: RedisOpt = None,
    prefix: PrefixOpt = "printd",
    watch: WatchOpt = None,
    expect: Annotated[
        int | None,
        typer.Option(
            "--expect",
            min=1,
            help="Members there should be: fewer fails the check (an instance that died is no member).",
            show_default=False,
        ),
    ] = None,
    timeout: TimeoutOpt = 5.0,
    json_out: JsonOpt = False,
) -> None:
    """Members, leader and health of the cluster. Exit 0 when a leader exists and every member
    is ok, 1 otherwise (a member degraded, unhealthy or draining, no leader, a stale view, fewer
    members than --expect).

    Example: printctl cluster status --url http://127.0.0.1:8080 --token "$ADMIN" --expect 3
    Example: printctl cluster status --redis redis://10.0.0.5:6379/0 --watch 2
    """
    source = f"redis {redis_described(redis)}" if redis else default_url(url)

    def read() -> dict[str, Any]:
        if redis:
            return read_from_redis(redis, prefix, timeout)
        view: dict[str, Any] = get_json(url, "/monitoring/cluster", token=token, timeout=timeout)
        return view

    if watch is not None and json_out:
        fail("--watch is for people; scripts poll with --json", EXIT_USAGE)
    if watch is None:
        view = read()
        ok, problems = verdict(view, expect)
        if json_out:
            emit_json({"ok": ok, "problems": problems, "source": source, **view})
        else:
            console.print(status_table(view, source, expect))
        raise typer.Exit(EXIT_OK if ok else EXIT_CHECK_FAILED)
    view = read()
    ok, _ = verdict(view, expect)
    try:
        with Live(status_table(view, source, expect), console=console, auto_refresh=False) as live:
            while True:
                time.sleep(watch)
                view = read()
                ok, _ = verdict(view, expect)
                live.update(status_table(view, source, expect), refresh=True)
    except KeyboardInterrupt:
        pass
    raise typer.Exit(EXIT_OK if ok else EXIT_CHECK_FAILED)


def rebalance_plan(members: list[dict[str, Any]], *, tolerance: float = 0.1) -> list[dict[str, Any]]:
    """Which instances hold more agents than their share, and what share of theirs to move so
    that each ends near the average (pure: unit-tested). Draining members take no new agents
    and are left alone (their agents are moving already)."""
    live = [m for m in members if not m.get("draining") and m.get("health") in ("ok", "degraded")]
    if len(live) < 2:
        return []
    agents = {str(m["id"]): int((m.get("connections") or {}).get("agent", 0)) for m in live}
    target = sum(agents.values()) / len(agents)
    plan = []
    for m in live:
        held = agents[str(m["id"])]
        excess = held - target
        moving = round(excess)
        if held and moving >= 1 and excess > tolerance * target:
            plan.append(
                {
                    "id": m["id"],
                    "url": m.get("url"),
                    "agents": held,
                    "target": round(target, 1),
                    "share": round(moving / held, 4),
                    "moving": moving,
                }
            )
    return plan


#: Shedding rounds before the result counts as the load balancer's (see `rebalance`).
REBALANCE_ROUNDS = 3


def _agents_held(members: list[dict[str, Any]]) -> int:
    """Agents connected across the members of a cluster view."""
    return sum(int((m.get("connections") or {}).get("agent", 0)) for m in members)


def _settled_view(url: str, token: str | None, since: float, timeout: float) -> dict[str, Any]:
    """The cluster view once every live member has published a heartbeat after `since` (the
    agent counts in member records are as old as their last heartbeat, 2 s by default)."""
    deadline = time.monotonic() + timeout
    while True:
        view: dict[str, Any] = get_json(url, "/monitoring/cluster", token=token, timeout=timeout)
        now = time.monotonic()
        ages = [m.get("heartbeat_age_s") for m in view.get("members") or []]
        if all(age is not None and now - age > since for age in ages) or now >= deadline:
            return view
        time.sleep(0.5)


def rebalance(
    url: UrlOpt = DEFAULT_URL,
    token: MonitoringTokenOpt = None,
    per_second: Annotated[
        int, typer.Option("--per-second", min=1, max=10_000, help="Agents each instance closes per second.")
    ] = 20,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show the plan, move nobody.")] = False,
    settle: Annotated[
        float,
        typer.Option(
            "--settle",
            min=0,
            max=600,
            help="Seconds to wait for the moved agents to show up elsewhere before checking the result.",
        ),
    ] = 10.0,
    timeout: TimeoutOpt = 30.0,
    json_out: JsonOpt = False,
) -> None:
    """Even out agents after an instance rejoined: instances above the average close a share of
    their agents with 4012 (reconnect now), a few per second, and the load balancer sends them
    to the least loaded instances. Connections never move back by themselves.

    The result is checked: exit 1 when the agents reconnected where they were (the load balancer
    is not sending to the rejoined instance yet; nginx skips a server for fail_timeout after
    it failed, 10 s by default: try again after that).

    Example: printctl cluster rebalance --url http://127.0.0.1:8080 --token "$ADMIN" --dry-run
    """
    view: dict[str, Any] = get_json(url, "/monitoring/cluster", token=token, timeout=timeout)
    plan = rebalance_plan(view.get("members") or [])
    held = _agents_held(view.get("members") or [])
    moved: dict[str, Any] = {}
    after: dict[str, int] = {}
    still: list[dict[str, Any]] = []
    if plan and not dry_run:
        steps, rounds = plan, 0
        deadline = time.monotonic() + settle
        while True:
            rounds += 1
            for step in steps:
                path = f"/monitoring/rebalance?share={step['share']}&per_second={per_second}"
                resp = request(
                    "POST", step["url"], path, token=token, timeout=timeout + step["moving"] / per_second
                )
                if resp.status_code != 200:
                    fail(f"{step['id']}: {error_message(resp)}", exit_code_for(resp), plan=plan)
                sid = str(step["id"])
                moved[sid] = moved.get(sid, 0) + int(resp.json().get("agents_moved") or 0)
            while True:  # reconnecting agents back off up to a few seconds: give them `settle`
                done = time.monotonic()
                members = _settled_view(url, token, done, timeout).get("members") or []
                still = rebalance_plan(members)
                # judged once the moved agents are back somewhere: one still reconnecting is
                # missing from every count, and the rest can look even without it
                back = _agents_held(members) >= held
                if (back and not still) or time.monotonic() >= deadline:
                    break
            # least_conn breaks ties (an HTTP request in flight on the emptier instance) by round
            # robin, so a moved agent can land where it was: shed what is still over, twice more
            # at most, before calling it the load balancer's doing
            if not still or rounds >= REBALANCE_ROUNDS:
                break
            steps, deadline = still, time.monotonic() + settle
        after = {str(m["id"]): _agents_held([m]) for m in members}
    hint = None
    if still:
        behind = sorted(k for k, v in after.items() if v < still[0]["target"])
        hint = (
            "agents reconnected to the instances they left: the load balancer does not send to "
            f"{', '.join(behind) or 'the others'} yet (nginx skips a failed server for fail_timeout); "
            "run again in a few seconds"
        )
    if json_out:
        if hint:
            fail(hint, EXIT_CHECK_FAILED, plan=plan, moved=moved, after=after)
        emit_json({"ok": True, "dry_run": dry_run, "plan": plan, "moved": moved, "after": after})
        return
    if not plan:
        console.print("[green]balanced[/green]: no instance holds more than its share of agents")
        return
    table = Table(title="rebalance" + (" (dry run)" if dry_run else ""), title_justify="left")
    for column in ("member", "agents", "target", "asked to move", "moved", "agents now"):
        table.add_column(column, justify="left" if column == "member" else "right")
    targets = {str(step["id"]): step for step in plan}
    for mid in sorted(set(targets) | set(after)):
        step = targets.get(mid, {})
        table.add_row(
            mid,
            str(step.get("agents", "-")),
            f"{step['target']:g}" if step else "-",
            str(step.get("moving", "-")),
            str(moved.get(mid, "-")),
            str(after.get(mid, "-")),
        )
    console.print(table)
    if hint:
        fail(hint, EXIT_CHECK_FAILED)
