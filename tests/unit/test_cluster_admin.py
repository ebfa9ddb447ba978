"""`printctl cluster status` verdicts and the rebalance plan (pure parts)."""

from __future__ import annotations

from typing import Any

from printctl.cluster_admin import rebalance_plan, verdict


def member(ident: str, agents: int, **kw: Any) -> dict[str, Any]:
    return {"id": ident, "url": f"http://{ident}", "health": "ok", "connections": {"agent": agents}, **kw}


def test_a_rejoined_instance_gets_a_share_from_the_loaded_ones() -> None:
    plan = rebalance_plan([member("i1", 150), member("i2", 150), member("i3", 0)])
    assert [(p["id"], p["moving"], p["share"]) for p in plan] == [("i1", 50, 0.3333), ("i2", 50, 0.3333)]
    assert all(p["target"] == 100 for p in plan)


def test_small_clusters_even_out_to_the_agent() -> None:
    """3/3/0 becomes 2/2/2, 4/3/0 becomes 2/2/3: an instance sheds round(excess) agents, and
    the share it is sent gives that count back on its own agents (round(held * share))."""
    plan = rebalance_plan([member("i1", 3), member("i2", 3), member("i3", 0)])
    assert [(p["id"], p["moving"]) for p in plan] == [("i1", 1), ("i2", 1)]
    assert all(round(p["agents"] * p["share"]) == p["moving"] for p in plan)
    plan = rebalance_plan([member("i1", 4), member("i2", 3), member("i3", 0)])
    assert [(p["id"], p["moving"]) for p in plan] == [("i1", 2), ("i2", 1)]
    assert rebalance_plan([member("i1", 2), member("i2", 1)]) == []  # one agent apart: as even as it gets


def test_balanced_or_lone_clusters_move_nobody() -> None:
    assert rebalance_plan([member("i1", 100), member("i2", 98), member("i3", 104)]) == []  # within 10 %
    assert rebalance_plan([member("i1", 300)]) == []
    assert rebalance_plan([]) == []


def test_draining_and_unhealthy_members_neither_give_nor_take() -> None:
    plan = rebalance_plan(
        [
            member("i1", 200),
            member("i2", 0, draining=True),
            member("i3", 0, health="unhealthy"),
            member("i4", 0),
        ]
    )
    assert [(p["id"], p["moving"]) for p in plan] == [("i1", 100)]  # i4 is the only other taker


def test_status_verdicts() -> None:
    ok = {"leader": "i1", "stale": False, "members": [member("i1", 1), member("i2", 1)]}
    assert verdict(ok) == (True, [])
    assert verdict({**ok, "leader": None})[1] == ["no leader"]
    assert verdict({**ok, "stale": True})[0] is False
    assert verdict({**ok, "members": [member("i1", 1, health="degraded")]})[1] == ["i1 is degraded"]
    assert verdict(ok, expect=2) == (True, [])
    assert verdict(ok, expect=3) == (False, ["2 of 3 expected members"])  # one died: no member at all


def test_status_from_an_unreachable_redis_is_an_error_without_its_password() -> None:
    from tests.cli import run

    for args in ((), ("--json",)):
        res = run(
            "cluster", "status", "--redis", "redis://:hunter2secret@127.0.0.1:1/0", "--timeout", "1", *args
        )
        assert res.exit_code == 1, res.output
        assert "cannot read the cluster from Redis at redis://127.0.0.1:1/0" in res.output
        assert "hunter2secret" not in res.output and "Traceback" not in res.output


def test_health_shows_why_an_instance_is_not_ok() -> None:
    from rich.console import Console

    from printctl.health import health_table

    body = {
        "status": "degraded",
        "instance": "i1",
        "reasons": ["database unavailable (store circuit open): new jobs are refused, agents stay served"],
        "checks": {},
    }
    out = Console(width=200, record=True)
    out.print(health_table(body))
    text = out.export_text()
    assert "why" in text and "database unavailable (store circuit open)" in text
