"""What the cluster says about itself during a round, the two questions asked of it, and the one
thing the failover test asks of it: to even its agents out between rounds.

A `Survey` is one look: every instance's /monitoring/health and one /monitoring/cluster view,
asked of the instances directly (never through the front, which would hide which one answers),
plus the number of simulated agents connected. `detected` says whether a fault shows yet;
`unsettled` says what keeps the cluster from being settled. Both are pure.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx

from printctl.faults.plan import INSTANCE_FAULTS, Fault

HTTP_TIMEOUT = 2.0


@dataclass(frozen=True, slots=True)
class Survey:
    healths: dict[str, dict[str, Any] | None]  # instance -> its health answer (None: no answer)
    view: dict[str, Any] | None  # GET /monitoring/cluster from the first instance that answered
    connected: int  # simulated agents with an open connection


def _members(view: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    members = (view or {}).get("members") or []
    return {str(m.get("id")): m for m in members if isinstance(m, dict)}


def _agents(view: dict[str, Any] | None) -> int:
    return sum(int((m.get("connections") or {}).get("agent", 0)) for m in _members(view).values())


def detected(fault: Fault, target: str, before: dict[str, Any] | None, now: Survey) -> bool:
    """Does the cluster show the fault? An instance fault: the target's membership entry (the
    one that existed before) is gone from a current view. Redis: the view is stale (its backend
    is unavailable). The database: an instance reports it unavailable. The agents' network: the
    members count fewer agents than before."""
    view = now.view
    if fault in INSTANCE_FAULTS:
        if view is None or view.get("stale"):
            return False
        was = _members(before).get(target)
        member = _members(view).get(target)
        return member is None or (was is not None and member.get("started_at") != was.get("started_at"))
    if fault is Fault.REDIS:
        return view is not None and (
            bool(view.get("stale")) or not (view.get("backend") or {}).get("available")
        )
    if fault is Fault.DB:
        return any(
            h is not None
            and (
                "store" in (h.get("circuits_open") or [])
                or any("database" in r for r in h.get("reasons") or [])
            )
            for h in now.healths.values()
        )
    return view is not None and _agents(view) < _agents(before)


def rebalance_shares(held: dict[str, int], agents: int) -> dict[str, float]:
    """After a restart an instance holds no agent until some move, and a fault on it would
    orphan nobody. When an instance holds less than half its fair share, each instance above
    its share is asked to shed the excess: instance -> share of its agents to hand over."""
    fair = agents / max(1, len(held))
    if not held or min(held.values()) >= fair / 2:
        return {}
    return {i: round((n - fair) / n, 3) for i, n in sorted(held.items()) if n - fair >= 1}


def unsettled(expected: set[str], agents: int, now: Survey) -> list[str]:
    """What is not right yet (empty: settled): every instance answers ok, the view is current
    with every instance a member (none draining) and a leader, every agent connected."""
    problems = []
    for instance in sorted(expected):
        health = now.healths.get(instance)
        if health is None:
            problems.append(f"{instance} does not answer")
        elif health.get("status") != "ok":
            reasons = "; ".join(health.get("reasons") or [])
            problems.append(f"{instance} {health.get('status')}" + (f" ({reasons})" if reasons else ""))
    view = now.view
    if view is None:
        problems.append("no instance answers /monitoring/cluster")
    else:
        members = _members(view)
        if view.get("stale"):
            problems.append("the cluster view is stale")
        missing = sorted(expected - members.keys())
        if missing:
            problems.append(f"not in membership: {', '.join(missing)}")
        draining = sorted(i for i, m in members.items() if m.get("draining"))
        if draining:
            problems.append(f"draining: {', '.join(draining)}")
        if not view.get("leader"):
            problems.append("no leader")
    if now.connected < agents:
        problems.append(f"{agents - now.connected} of {agents} agents not connected")
    return problems


class Observer:
    """Asks the instances (directly, with a short timeout) for their health and cluster view."""

    def __init__(self, instances: dict[str, str], token: str, front: str) -> None:
        self.instances = dict(sorted(instances.items()))
        self.front = front
        self.http = httpx.Client(timeout=HTTP_TIMEOUT, headers={"Authorization": f"Bearer {token}"})

    def _get(self, url: str) -> dict[str, Any] | None:
        try:
            body = self.http.get(url).json()
        except (httpx.HTTPError, ValueError):
            return None
        return body if isinstance(body, dict) else None

    def view(self, skip: str | None = None) -> dict[str, Any] | None:
        for instance, url in self.instances.items():
            if instance != skip:
                view = self._get(url + "/monitoring/cluster")
                if view is not None and "members" in view:
                    return view
        return None

    def survey(self, connected: int, skip: str | None = None) -> Survey:
        """One look at the cluster; `skip` (a paused instance: it would only time out) is neither
        asked for its health nor for the view."""
        healths = {
            i: None if i == skip else self._get(url + "/monitoring/health")
            for i, url in self.instances.items()
        }
        return Survey(healths, self.view(skip), connected)

    def front_picks(self) -> str | None:
        """The instance the front sends a request to now (least_conn: the one with the fewest
        connections, unless the front still counts it failed)."""
        health = self._get(self.front + "/monitoring/health")
        return None if health is None else str(health.get("instance"))

    def rebalance(self, instance: str, share: float, per_second: int) -> int:
        """Ask an instance to hand this share of its agents over (4012; they reconnect through
        the front, whose least_conn sends them to the emptiest instance): how many it moves."""
        url = self.instances[instance] + "/monitoring/rebalance"
        try:
            answer = self.http.post(url, params={"share": f"{share:.3f}", "per_second": str(per_second)})
            return int(answer.json().get("agents_moved", 0)) if answer.status_code == 200 else 0
        except (httpx.HTTPError, ValueError, AttributeError, TypeError):
            return 0

    def close(self) -> None:
        self.http.close()
