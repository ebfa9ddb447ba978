"""sd_notify: tell systemd we are ready, reloading, stopping, or alive (the watchdog).

A no-op outside systemd. The watchdog ping is sent by a trio task of the event loop itself, so
a blocked loop stops the pings and systemd restarts printd (WatchdogSec in the unit).
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable

import trio


def notify(state: str) -> bool:
    """Send e.g. "READY=1" to $NOTIFY_SOCKET; False when not running under systemd."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return False
    if path.startswith("@"):
        path = "\0" + path[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(path)
            sock.sendall(state.encode())
    except OSError:
        return False  # systemd went away (or the socket is gone): nothing to tell
    return True


def reloading() -> None:
    """RELOADING=1 with the monotonic timestamp systemd (>= 253) wants for a notify-reload."""
    notify(f"RELOADING=1\nMONOTONIC_USEC={time.monotonic_ns() // 1000}")


def watchdog_interval(env: dict[str, str] | None = None) -> float | None:
    """Seconds between pings: half of WatchdogSec (from $WATCHDOG_USEC); None when systemd does
    not watch this process."""
    env = dict(os.environ) if env is None else env
    usec = env.get("WATCHDOG_USEC")
    pid = env.get("WATCHDOG_PID")
    if not usec or not usec.isdigit() or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 1_000_000 / 2


async def watchdog(
    interval: float,
    status: Callable[[], str],
    *,
    send: Callable[[str], object] = notify,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Ping the watchdog every `interval` seconds, with a STATUS line, from the event loop."""
    task_status.started()
    while True:
        send(f"WATCHDOG=1\nSTATUS={status()}")
        await trio.sleep(interval)
