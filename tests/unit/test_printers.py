"""Who may report a printer: the pure ownership decision."""

from __future__ import annotations

import pytest

from printd.printers import Claim, decide_claim, refusal


def online(*agents: str) -> object:
    asked: list[str] = []

    def ask(agent_id: str) -> bool:
        asked.append(agent_id)
        return agent_id in agents

    ask.asked = asked  # type: ignore[attr-defined]
    return ask


@pytest.mark.parametrize(
    ("owner", "branch", "agent", "online_agents", "claim"),
    [
        (None, "x", "a1", (), Claim.REGISTER),
        (("x", "a1"), "x", "a1", (), Claim.OWNER),
        (("y", "a2"), "x", "a1", (), Claim.OTHER_BRANCH),  # owner offline changes nothing
        (("y", "a2"), "x", "a1", ("a2",), Claim.OTHER_BRANCH),
        (("y", "a1"), "x", "a1", (), Claim.OTHER_BRANCH),  # same agent id, other branch
        (("x", "a2"), "x", "a1", ("a2",), Claim.OWNER_ONLINE),
        (("x", "a2"), "x", "a1", (), Claim.TAKEOVER),  # the new PC in the same restaurant
    ],
)
def test_decide_claim(
    owner: tuple[str, str] | None, branch: str, agent: str, online_agents: tuple[str, ...], claim: Claim
) -> None:
    ask = online(*online_agents)
    assert decide_claim(owner, branch, agent, ask) is claim  # type: ignore[arg-type]
    # presence is asked only when it decides: a same-branch replacement
    expected = [owner[1]] if owner is not None and owner[0] == branch and owner[1] != agent else []
    assert ask.asked == expected  # type: ignore[attr-defined]


def test_allowed_claims() -> None:
    assert {c for c in Claim if c.allowed} == {Claim.REGISTER, Claim.OWNER, Claim.TAKEOVER}


def test_refusals_say_what_to_do_and_do_not_name_another_branch() -> None:
    other = refusal(Claim.OTHER_BRANCH, "p1", "a2")
    assert other.code == "forbidden" and "another branch" in other.message
    assert "printctl printers move" in other.message and "a2" not in other.message
    busy = refusal(Claim.OWNER_ONLINE, "p1", "a2")
    assert busy.code == "forbidden" and "'a2'" in busy.message and "offline" in busy.message
