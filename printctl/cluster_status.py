"""`printctl cluster status`: the cluster's members, leader and health in one table.

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
    fail,
    get_json,
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


def verdict(view: dict[str, Any]) -> tuple[bool, list[str]]:
    """Healthy when the view is current, a leader exists and every member says ok; why not."""
    problems = []
    members = view.get("members") or []
    if not members:
        problems.append("no members")
    if view.get("stale"):
        problems.append("the view is stale (the cluster backend is unreachable from the instance asked)")
    if not view.get("leader"):
        problems.append("no leader")
    for m in members:
        if m.get("health") != "ok":
            problems.append(f"{m.get('id')} is {m.get('health')}")
    return not problems, problems


def status_table(view: dict[str, Any], source: str) -> Table:
    ok, problems = verdict(view)
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

    try:
        return trio.run(read)
    except ClusterUnavailable as exc:
        fail(f"cannot read the cluster from Redis at {target.describe()}: {exc}")


def status(
    url: UrlOpt = DEFAULT_URL,
    token: MonitoringTokenOpt = None,
    redis: RedisOpt = None,
    prefix: PrefixOpt = "printd",
    watch: WatchOpt = None,
    timeout: TimeoutOpt = 5.0,
    json_out: JsonOpt = False,
) -> None:
    """Members, leader and health of the cluster. Exit 0 when a leader exists and every member
    is ok, 1 otherwise (a member degraded, unhealthy or draining, no leader, a stale view).

    Example: printctl cluster status --url http://127.0.0.1:8080 --token "$ADMIN"
    Example: printctl cluster status --redis redis://10.0.0.5:6379/0 --watch 2
    """
    source = f"redis {redis}" if redis else default_url(url)

    def read() -> dict[str, Any]:
        if redis:
            return read_from_redis(redis, prefix, timeout)
        view: dict[str, Any] = get_json(url, "/monitoring/cluster", token=token, timeout=timeout)
        return view

    if watch is not None and json_out:
        fail("--watch is for people; scripts poll with --json", EXIT_USAGE)
    if watch is None:
        view = read()
        ok, problems = verdict(view)
        if json_out:
            emit_json({"ok": ok, "problems": problems, "source": source, **view})
        else:
            console.print(status_table(view, source))
        raise typer.Exit(EXIT_OK if ok else EXIT_CHECK_FAILED)
    view = read()
    ok, _ = verdict(view)
    try:
        with Live(status_table(view, source), console=console, auto_refresh=False) as live:
            while True:
                time.sleep(watch)
                view = read()
                ok, _ = verdict(view)
                live.update(status_table(view, source), refresh=True)
    except KeyboardInterrupt:
        pass
    raise typer.Exit(EXIT_OK if ok else EXIT_CHECK_FAILED)
