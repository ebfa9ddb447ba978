"""printd as a systemd service: sd_notify (READY, STATUS, WATCHDOG, RELOADING, STOPPING) over a
real notify socket, the watchdog stopping when the event loop is blocked, and SIGHUP reloads."""

from __future__ import annotations

import signal
import socket
import time
from pathlib import Path
from typing import Any

import trio

from printctl.wsclient import WsClient, ws_url
from printd import systemd
from tests.conftest import Printd, token


class NotifySocket:
    """What systemd listens on: a datagram socket whose path printd gets as $NOTIFY_SOCKET."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, str]] = []

    def drain(self) -> list[str]:
        while True:
            try:
                self.messages.append((time.monotonic(), self.sock.recv(4096).decode()))
            except TimeoutError:
                return [m for _, m in self.messages]

    def wait_for(self, prefix: str, timeout: float = 15) -> str:
        deadline = time.monotonic() + timeout
        seen = 0
        while time.monotonic() < deadline:
            self.drain()
            for _, message in self.messages[seen:]:
                if message.startswith(prefix):
                    return message
            seen = len(self.messages)
        raise AssertionError(f"no {prefix!r} from printd: {self.drain()}")


def test_sd_notify_ready_status_watchdog_and_stopping(printd_factory: Any, tmp_path: Path) -> None:
    notify = NotifySocket(tmp_path / "notify.sock")
    p: Printd = printd_factory(env={"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "1000000"})
    ready = notify.wait_for("READY=1")
    assert "STATUS=0 agents, 0 dashboards; leader" in ready
    notify.wait_for("WATCHDOG=1")
    notify.messages.clear()
    time.sleep(2.2)
    pings = [m for m in notify.drain() if m.startswith("WATCHDOG=1")]
    assert len(pings) >= 3  # every 0.5 s (half of WatchdogSec=1 s)
    assert p.stop(signal.SIGTERM) == 0
    assert any(m.startswith("STOPPING=1") for m in notify.drain())


async def test_the_watchdog_stops_pinging_while_the_event_loop_is_blocked() -> None:
    """The ping comes from a task of the event loop: a loop blocked by a synchronous call (a
    bug, a stuck library) sends nothing, so systemd's WatchdogSec restarts printd."""
    pings: list[float] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(
            lambda task_status: systemd.watchdog(  # noqa: ARG005
                0.05, lambda: "ok", send=lambda _: pings.append(time.monotonic()), task_status=task_status
            )
        )
        await trio.sleep(0.3)
        blocked_at = time.monotonic()
        time.sleep(0.5)  # noqa: ASYNC251 (the point: block the whole loop)
        await trio.sleep(0.2)
        nursery.cancel_scope.cancel()
    during = [t for t in pings if blocked_at + 0.01 < t < blocked_at + 0.49]
    assert during == [] and len([t for t in pings if t < blocked_at]) >= 4
    assert any(t >= blocked_at + 0.5 for t in pings)  # and again once the loop runs


async def test_sighup_applies_a_changed_config_and_refuses_a_broken_one(
    printd_factory: Any, tmp_path: Path
) -> None:
    notify = NotifySocket(tmp_path / "notify.sock")
    p: Printd = printd_factory(
        config={"ratelimit": {"printer_tests": 5}}, env={"NOTIFY_SOCKET": str(notify.path)}
    )
    notify.wait_for("READY=1")
    dashboard = await WsClient.connect(ws_url(p.url), token=token("dashboard"))
    assert (await dashboard.recv(5))["event"] == "hello"
    assert (await dashboard.recv(5))["event"] == "printer.status.snapshot"
    cfg_path = p.data_dir / "printd.toml"
    original = cfg_path.read_text()
    cfg_path.write_text(
        original.replace("printer_tests = 5", "printer_tests = 7")
        .replace('log_level = "info"', 'log_level = "debug"')
        .replace(f"port = {p.port}", f"port = {p.port + 1}")
    )
    assert p.proc is not None
    notify.messages.clear()
    p.proc.send_signal(signal.SIGHUP)
    notify.wait_for("RELOADING=1")
    notify.wait_for("READY=1")
    log = p.log()
    assert "config reloaded" in log and "ratelimit.printer_tests: 5 -> 7" in log
    assert "log_level: 'info' -> 'debug'" in log
    assert "these settings need a restart" in log and "server.port" in log
    assert p.get("/monitoring/health").status_code == 200  # still on the old port, still serving
    await dashboard.send("ping", id=7)  # and no connection was dropped
    assert (await dashboard.recv(5)) == {"event": "ack", "id": 7, "data": {}}
    cfg_path.write_text("this is = not [valid toml")
    notify.messages.clear()
    p.proc.send_signal(signal.SIGHUP)
    notify.wait_for("READY=1")
    assert "reload refused: the new config is invalid" in p.log()
    assert p.get("/monitoring/health").status_code == 200
    await dashboard.send("ping", id=8)
    assert (await dashboard.recv(5))["id"] == 8
    await dashboard.close()
