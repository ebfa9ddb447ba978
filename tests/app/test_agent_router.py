"""AgentRouter.register pairs every presence claim with its own connection."""

from __future__ import annotations

from printd.cluster.base import AgentLocation
from printd.cluster.local import LocalCluster
from printd.cluster.routing import AgentRouter
from tests.app.test_job_service import Link


async def test_register_closes_the_stale_connection_not_its_neighbour() -> None:
    """After a Redis outage `App._resync` registers every agent link of the hub, including one
    that connected a moment ago and has no session yet. Those used to be left out of the claims
    but not of the pairing, so every reply after one was matched with the link before it: the
    innocent neighbour was closed with 4009 and the stale connection kept (found by review)."""
    backend = LocalCluster("inc-a", lambda topic, payload: None)
    fresh = Link(agent_id="agent-fresh", session=0)  # connected here a moment ago, claim pending
    stale = Link(agent_id="agent-moved", session=3)  # reconnected on instance b meanwhile
    await backend.claim_agents([(("acme", "agent-moved"), AgentLocation("b", "inc-b", 4))])
    router = AgentRouter(backend, lambda c, a: None, instance_id="a")

    await router.register([fresh, stale])

    assert (fresh.closing, stale.closing) == (False, True)
