"""Found by review: a job already sent to an agent must not move to another agent.

docs/protocol.md §5.3: on a takeover "Jobs already sent to the old agent (`dispatched`, `acked`)
stay with it: only it knows whether they printed". The leader's `release_orphans` puts a
`dispatched` job of an agent whose instance is gone back to `queued`; a takeover (or an
operator's move) then carries every `queued` job to the new agent, this one included. The old
agent may have printed it already (the instance died before its ack was recorded): the new agent
prints it a second time. Real SQLite store, the real takeover decision (`PrinterRegistry`).
"""

from __future__ import annotations

import time
from pathlib import Path

from printd.model import JobState
from printd.printers import Claim, PrinterRegistry
from printd.protocol import StatusUpdate
from printd.store import open_store
from printd.store.base import AgentClaim, AgentFence
from tests.app.test_job_service import Link


async def test_a_job_sent_to_a_departed_agent_does_not_go_to_its_replacement(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'printd.db'}")
    async with store:
        await store.migrate()
        now = time.time()
        await store.upsert_printer(
            company="acme",
            branch="b1",
            agent_id="agent-old",
            printer_id="p1",
            status="online",
            details={},
            now=now,
        )
        job, _ = await store.create_job(
            company="acme",
            printer_id="p1",
            kind="print",
            payload={"text": "2x burger"},
            idempotency_key=None,
            now=now,
        )
        # agent-old connected on instance i-dead, which sent it the job; i-dead then died
        # (SIGKILL) before the agent's ack was recorded, and agent-old did not come back
        (claimed,) = await store.claim_agents([AgentClaim("acme", "agent-old", "i-dead", "inc-dead")], now)
        sent = await store.record_dispatch(job.job_id, now, AgentFence("acme", "agent-old", claimed.session))
        assert sent is not None and sent.state is JobState.DISPATCHED and sent.attempts == 1

        token = await store.take_leadership("i-live", now)
        requeued = await store.release_orphans(now + 11, now + 11, token)  # the leader's chore
        assert [j.job_id for j in requeued] == [job.job_id]

        # the replacement PC of the same branch reports the printer while agent-old is offline
        registry = PrinterRegistry(store, owner_online=lambda company, agent_id: _false())
        claim = await registry.printer_seen(
            Link(agent_id="agent-new", branch="b1"), StatusUpdate("p1", "online", {"printer_id": "p1"})
        )
        assert claim is Claim.TAKEOVER

        for_new = await store.deliverable_jobs("acme", "agent-new")
        stored = await store.get_job(job.job_id)
        assert stored is not None
        assert job.job_id not in {j.job_id for j in for_new}, (
            f"the job agent-old was sent ({stored.attempts} attempt(s), history"
            f" {[s for s, _ in stored.history]}) now goes to agent-new as {stored.state}: printed twice"
            " if agent-old had printed it"
        )


async def _false() -> bool:
    return False
