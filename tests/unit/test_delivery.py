"""The delivery core (printd/jobs/delivery.py): every rule on explicit clock values, no I/O."""

from __future__ import annotations

from printd.breakers.core import BreakerConfig, CircuitBreaker, CircuitState
from printd.jobs.delivery import (
    MAX_INFLIGHT,
    DeliveryCore,
    Expire,
    Go,
    Hold,
    RetryPolicy,
    Send,
    Skip,
    Timing,
    Want,
)
from printd.model import JobState

A = ("acme", "agent-a")
B = ("acme", "agent-b")
TIMING = Timing(ack_timeout=10, result_timeout=60, result_timeout_max=200, store_retry=1, store_retry_max=4)
RETRY = RetryPolicy(initial=1, maximum=30, max_attempts=3)


class Breakers:
    def __init__(self, config: BreakerConfig | None = None) -> None:
        self.config = config or BreakerConfig()
        self.made: dict[tuple[str, str], CircuitBreaker] = {}

    def __call__(self, company: str, branch: str) -> CircuitBreaker:
        key = (company, branch)
        if key not in self.made:
            self.made[key] = CircuitBreaker(f"dispatch:{company}:{branch}", self.config)
        return self.made[key]


def core(breakers: Breakers | None = None) -> DeliveryCore:
    return DeliveryCore(RETRY, TIMING, breakers or Breakers())


def resend(
    c: DeliveryCore,
    action: Send | Expire,
    now: float,
    *,
    attempts: int,
    state: JobState = JobState.DISPATCHED,
) -> None:
    """Execute a timer's Send as JobService would: record, write, then `sent`."""
    assert isinstance(action, Send), action
    c.sent(
        action.agent,
        1,
        job_id=action.job_id,
        kind="print",
        correlation_id="c-" + action.job_id,
        origin=None,
        attempts=attempts,
        acked=state is JobState.ACKED,
        admission=action.admission,
        now=now,
    )


def send(
    c: DeliveryCore,
    key: tuple[str, str],
    job: str,
    now: float,
    *,
    attempts: int = 1,
    state: JobState = JobState.QUEUED,
    session: int = 1,
) -> None:
    decision = c.decide(key, session, job, state, "b1", now)
    assert isinstance(decision, Go), decision
    c.sent(
        key,
        session,
        job_id=job,
        kind="print",
        correlation_id="c-" + job,
        origin=None,
        attempts=attempts,
        acked=state is JobState.ACKED,
        admission=decision.admission,
        now=now,
    )


def test_a_connect_asks_for_a_full_pass_and_one_pump_at_a_time() -> None:
    c = core()
    c.connected(A, "b1", 7, now=0)
    assert c.wake(A, Want.ALL) is True  # start the pump
    assert c.wake(A) is False  # it runs: the wish is recorded
    assert c.next_pass(A, 7) is Want.ALL  # connect's ALL wins over a submit's QUEUED
    assert c.next_pass(A, 7) is Want.NONE  # nothing more: the pump stops
    assert c.wake(A) is True  # and the next wake starts a new one
    assert c.next_pass(A, 7) is Want.QUEUED


def test_an_agent_not_held_here_is_never_pumped() -> None:
    c = core()
    assert c.wake(A) is False
    c.connected(A, "b1", 7, now=0)
    c.disconnected(A, 7, now=1)
    assert c.wake(A) is False
    assert c.next_pass(A, 7) is Want.NONE


def test_a_pass_skips_what_this_connection_already_sent_but_redelivers_older_dispatches() -> None:
    c = core()
    c.connected(A, "b1", 1, now=0)
    send(c, A, "j1", now=0)
    assert isinstance(c.decide(A, 1, "j1", JobState.DISPATCHED, "b1", 1), Skip)
    # dispatched on an earlier connection: not in flight here, so it goes out again
    assert isinstance(c.decide(A, 1, "j0", JobState.DISPATCHED, "b1", 1), Go)
    acked = c.decide(A, 1, "j9", JobState.ACKED, "b1", 1)
    assert isinstance(acked, Go) and acked.admission is None  # not the circuit's business
    assert isinstance(c.decide(A, 1, "j8", JobState.PRINTED, "b1", 1), Skip)


def test_an_unacknowledged_dispatch_is_resent_with_backoff_then_expired() -> None:
    c = core()
    c.connected(A, "b1", 1, now=0)
    send(c, A, "j1", now=0, attempts=1)
    assert c.next_due() == 11  # ack timeout 10 + backoff 1
    assert c.due(10.9) == []
    (action,) = c.due(11)
    assert action == Send("j1", A) and action.admission is not None
    resend(c, action, now=11, attempts=2)
    assert c.next_due() == 11 + 10 + 2
    (action,) = c.due(23)
    resend(c, action, now=23, attempts=3)
    assert c.due(23 + 10 + 4) == [Expire("j1", A, "no acknowledgement after 3 attempts")]
    assert c.next_due() is None


def test_an_acked_job_without_result_is_redelivered_and_never_expired() -> None:
    c = core()
    c.connected(A, "b1", 1, now=0)
    send(c, A, "j1", now=0)
    c.acked(A, 1, "j1", now=2)
    assert c.next_due() == 62
    (action,) = c.due(62)
    assert action == Send("j1", A) and action.admission is None
    resend(c, action, now=62, attempts=2, state=JobState.ACKED)
    assert c.next_due() == 62 + 120  # the result timeout doubles
    for _ in range(5):
        at = c.next_due() or 0
        (action,) = c.due(at)
        resend(c, action, now=at, attempts=9, state=JobState.ACKED)
    assert c.next_due() == at + 200  # capped
    assert c.inflight_count() == 1


def test_a_result_ends_the_job_here() -> None:
    c = core()
    c.connected(A, "b1", 1, now=0)
    send(c, A, "j1", now=0)
    item = c.finished(A, 1, "j1", now=1)
    assert item is not None and item.correlation_id == "c-j1"
    assert c.next_due() is None and c.due(1000) == []


def test_a_report_the_store_could_not_record_is_redelivered_even_though_sent_here() -> None:
    """Issue 7 A: the agent was told 'will be redelivered'; a pass must not skip it."""
    c = core()
    c.connected(A, "b1", 1, now=0)
    send(c, A, "j1", now=0)
    c.report_failed(A, 1, "j1", kind="print", now=5)
    assert isinstance(c.decide(A, 1, "j1", JobState.ACKED, "b1", 5), Go)
    assert c.due(6) == [Send("j1", A)]  # store_retry 1 s
    c.send_failed(A, 1, "j1", now=6)  # the store is still down
    assert c.next_due() == 6 + 2  # backoff: 1, 2, 4, 4...
    (action,) = c.due(8)
    resend(c, action, now=8, attempts=2, state=JobState.ACKED)
    assert isinstance(c.decide(A, 1, "j1", JobState.ACKED, "b1", 11), Skip)  # sent again: timer owns it


def test_a_report_for_a_job_not_in_flight_here_is_still_redelivered() -> None:
    c = core()
    c.connected(A, "b1", 1, now=0)
    c.report_failed(A, 1, "old", kind="print", now=0)  # a result for a job of an earlier connection
    assert c.due(1) == [Send("old", A)]


def test_timers_of_an_older_connection_do_not_fire_on_the_new_one() -> None:
    c = core()
    c.connected(A, "b1", 1, now=0)
    send(c, A, "j1", now=0)
    c.connected(A, "b1", 2, now=1)  # replaced: j1 goes out with the new connection's first pass
    assert c.due(1000) == []
    assert isinstance(c.decide(A, 2, "j1", JobState.DISPATCHED, "b1", 1), Go)
    assert isinstance(c.decide(A, 1, "j1", JobState.DISPATCHED, "b1", 1), Skip)  # stale pump


def test_ack_timeouts_open_the_branch_circuit_which_holds_new_and_repeated_sends() -> None:
    breakers = Breakers(BreakerConfig(failure_threshold=2, open_timeout=30))
    c = core(breakers)
    c.connected(A, "b1", 1, now=0)
    send(c, A, "j1", now=0)
    send(c, A, "j2", now=0)
    # j1's timeout is the first failure (its re-send still goes), j2's the second: open
    assert [a.job_id for a in c.due(11)] == ["j1"]
    assert breakers("acme", "b1").state_at(11) is CircuitState.OPEN
    held = c.decide(A, 1, "j3", JobState.QUEUED, "b1", 12)
    assert isinstance(held, Hold) and held.retry_after > 0
    assert c.next_due() == 11 + 30  # j2 is re-sent when the circuit lets a trial through
    assert [a.job_id for a in c.due(41)] == ["j2"]


def test_an_ack_is_a_success_for_the_circuit() -> None:
    breakers = Breakers(BreakerConfig(failure_threshold=1, open_timeout=1, success_threshold=1))
    c = core(breakers)
    c.connected(A, "b1", 1, now=0)
    send(c, A, "j0", now=0)
    c.due(11)
    send(c, A, "j1", now=12.5)  # the half-open trial
    c.acked(A, 1, "j1", now=12.6)
    assert breakers("acme", "b1").state_at(12.7) is CircuitState.CLOSED


def test_a_disconnect_releases_only_that_agents_admissions() -> None:
    """Issue 8: a disconnect used to release every admission of the branch."""
    breakers = Breakers(BreakerConfig(failure_threshold=1, open_timeout=1, half_open_max_calls=1))
    c = core(breakers)
    breaker = breakers("acme", "b1")
    c.connected(A, "b1", 1, now=0)
    c.connected(B, "b1", 1, now=0)
    send(c, A, "a0", now=0)
    c.due(11)  # one failure: open
    assert breaker.state_at(12.5) is CircuitState.HALF_OPEN
    send(c, A, "a1", now=12.5)  # A holds the only trial slot
    assert not breaker.try_acquire(12.6).allowed
    c.disconnected(B, 1, now=12.7)  # B had nothing in flight
    assert not breaker.try_acquire(12.8).allowed  # A's trial is still in flight
    c.disconnected(A, 1, now=12.9)
    assert breaker.try_acquire(13.0).allowed


def test_a_disconnect_hands_back_what_was_in_flight() -> None:
    c = core()
    c.connected(A, "b1", 1, now=0)
    send(c, A, "j1", now=0)
    gone = c.disconnected(A, 1, now=1)
    assert [g.job_id for g in gone] == ["j1"]
    assert c.disconnected(A, 1, now=2) == []


def test_reports_the_store_could_not_record_are_tracked_up_to_a_cap() -> None:
    """A hostile agent's results for other jobs during an outage must not grow printd's memory
    without bound: beyond MAX_INFLIGHT the core says so, and the service asks for a full pass."""
    c = core()
    c.connected(A, "b1", 1, now=0)
    assert all(c.report_failed(A, 1, f"j{n}", kind="print", now=0) for n in range(MAX_INFLIGHT))
    assert c.inflight_count() == MAX_INFLIGHT
    assert c.report_failed(A, 1, "one-more", kind="print", now=0) is False
    assert c.inflight_count() == MAX_INFLIGHT
    assert c.report_failed(A, 1, "j0", kind="print", now=0) is True  # one already tracked: retried


def test_each_send_earns_two_reports_uncharged_by_the_message_rate() -> None:
    """An ack and a result per job sent are the server's doing: not charged. A third report, a
    report for a job not sent on this connection, or one under an old session, is charged."""
    c = core()
    c.connected(A, "b1", 1, now=0)
    send(c, A, "j1", now=0)
    assert [c.expects(A, 1, "j1") for _ in range(3)] == [True, True, False]
    assert c.expects(A, 1, "never-sent") is False
    send(c, A, "j2", now=1)
    assert c.expects(A, 2, "j2") is False  # not this connection's session
    resend(c, Send("j2", A), now=2, attempts=2)  # a re-send earns its reports again
    assert [c.expects(A, 1, "j2") for _ in range(3)] == [True, True, False]
