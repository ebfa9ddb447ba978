"""The agent's connection policies: reconnect delays and dead-connection detection (pure)."""

from __future__ import annotations

from printctl.keepalive import CLOSE_RECONNECT_NOW, Check, Liveness, Reconnect


def TOP() -> float:
    """The jitter's upper end: delays equal their ceilings."""
    return 1.0


def HALF() -> float:
    return 0.5


def test_backoff_doubles_with_an_early_cap_then_the_full_cap() -> None:
    r = Reconnect(0.5, 30.0, rng=TOP)
    assert [r.failed() for _ in range(9)] == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0, 30.0, 30.0, 30.0]


def test_a_hello_resets_the_backoff() -> None:
    """An agent that once reconnected late does not wait long at the next printd restart."""
    r = Reconnect(0.5, 30.0, rng=TOP)
    for _ in range(10):
        r.failed()
    assert r.ceiling() == 30.0
    r.hello()
    assert r.closed(1006) == 0.5  # the connection was lost: the first retry is quick
    assert [r.failed() for _ in range(5)] == [1.0, 2.0, 4.0, 5.0, 5.0]


def test_going_away_and_reconnect_now_are_not_failures() -> None:
    r = Reconnect(0.5, 30.0, rng=TOP)
    for _ in range(10):
        r.failed()
    for code in (1001, CLOSE_RECONNECT_NOW):
        assert r.closed(code) == 0.25  # 0-250 ms, whatever happened before
    assert Reconnect(rng=lambda: 0.0).closed(1001) == 0.0
    assert r.failures == 10  # no hello came: still backing off if the reconnect fails


def test_jitter_is_full() -> None:
    r = Reconnect(0.5, 30.0, rng=HALF)
    assert [r.failed() for _ in range(4)] == [0.25, 0.5, 1.0, 2.0]
    r.failures = 1000  # no overflow after a very long outage
    assert r.failed() == 15.0


def test_replaced_escalates_and_a_hello_does_not_reset_it() -> None:
    """Two agents on one token keep taking over each other's connection: they must slow down."""
    r = Reconnect(0.5, 30.0, rng=TOP)
    delays = []
    for _ in range(8):
        r.hello()
        delays.append(r.closed(4009))
    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    r.hello()
    r.closed(1006)
    assert r.replaced == 0


def test_a_small_max_backoff_caps_the_early_attempts_too() -> None:
    r = Reconnect(0.5, 1.0, rng=TOP)
    assert [r.failed() for _ in range(8)] == [0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]


def test_liveness_pings_after_silence_and_declares_dead_without_an_answer() -> None:
    live = Liveness(interval=5.0, timeout=10.0, now=100.0)
    assert live.check(100.0) == (Check.WAIT, 105.0)
    live.heard(103.0)  # a message from printd: silence starts again
    assert live.check(105.0) == (Check.WAIT, 108.0)
    assert live.check(108.0) == (Check.PING, 108.0)
    assert live.pinged(108.0) == 1
    assert live.check(110.0) == (Check.WAIT, 118.0)
    assert live.check(118.0) == (Check.DEAD, 118.0)  # 15 s after printd last spoke


def test_liveness_any_message_answers_the_ping() -> None:
    live = Liveness(interval=5.0, timeout=10.0, now=0.0)
    live.pinged(5.0)
    live.heard(6.0)  # the ack, or a dispatch that overtook it
    assert live.check(10.0) == (Check.WAIT, 11.0)  # not dead: printd spoke; quiet again from 6.0
    assert live.check(14.0) == (Check.PING, 14.0)
    assert live.pinged(14.0) == 2
