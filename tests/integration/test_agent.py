"""The reference agent against a real printd: it notices a dead connection and comes back."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from printctl.checker import read_print_log
from printctl.faults.proxy import TcpProxy
from tests.conftest import Printd
from tests.integration.test_exactly_once import Agent, submit_until_accepted, wait_all_finished, wait_printers

PING_INTERVAL, PING_TIMEOUT = 1.0, 2.0
#: ping after PING_INTERVAL of silence, give up PING_TIMEOUT later, reconnect within 0.5 s
#: (the first delay after a hello), plus the new connection's handshake and hello
BOUND = PING_INTERVAL + PING_TIMEOUT + 0.5 + 2.0


def wait_for(what: Any, timeout: float, message: str) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := what()):
        assert time.monotonic() < deadline, message
        time.sleep(0.05)
    return value


def test_silently_dropped_connection_is_noticed_and_replaced_within_the_bound(
    printd: Printd, tmp_path: Path
) -> None:
    proxy = TcpProxy(("127.0.0.1", printd.port))
    ping = ("--ping-interval", str(PING_INTERVAL), "--ping-timeout", str(PING_TIMEOUT))
    agent = Agent(printd, tmp_path / "out", *ping, url=f"http://127.0.0.1:{proxy.port}").start()
    try:
        wait_printers(printd, 2)
        wait_for(lambda: agent.events("connected"), 15, "the agent never connected")
        proxy.blackhole()  # the flow is gone: no RST, no FIN, nothing either way
        cut = time.monotonic()
        wait_for(lambda: len(agent.events("connected")) >= 2, 30, "the agent never reconnected")
        took = time.monotonic() - cut
        assert took < BOUND, f"reconnected {took:.1f} s after the cut (bound {BOUND} s)"
        [gone] = agent.events("disconnected")
        assert "ping" in gone["reason"], gone
        # the new connection is a real one: a job goes through it and prints once
        deadline = time.monotonic() + 20
        job = submit_until_accepted(printd, "after-the-cut", "k1", deadline)
        assert job is not None
        assert wait_all_finished(printd, [job], 20) == {job: "printed"}
        assert read_print_log([tmp_path / "out"]).job_ids == [job]
    finally:
        agent.stop()
        proxy.close()
