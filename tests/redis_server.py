"""Private Redis servers (and Sentinels) for tests that stop, pause or fail over Redis.

Each is a real `redis-server` process on a free loopback port with no persistence, so a restart
comes back empty, as a production Redis without persistence does.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
                s.sendall(b"PING\r\n")
                if s.recv(64).startswith((b"+PONG", b"-")):
                    return
        except OSError:
            pass
        time.sleep(0.02)
    raise RuntimeError(f"redis on port {port} did not start")


class RedisServer:
    def __init__(self, workdir: Path, *, port: int | None = None, extra: tuple[str, ...] = ()) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None
        workdir.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        args = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        args += ["--appendonly", "no", "--dir", str(self.workdir), *self.extra]
        log = open(self.workdir / f"redis-{self.port}.log", "ab")
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        _wait_port(self.port)
        return self

    def stop(self) -> None:
        """A hard stop (SIGKILL): the data is gone, as after a crash without persistence."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def restart(self) -> None:
        self.stop()
        self.start()

    def pause(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def cli(self, *args: str) -> str:
        out = subprocess.run(
            ["redis-cli", "-p", str(self.port), *args], capture_output=True, timeout=5, check=False
        )
        return out.stdout.decode().strip()


class Sentinels:
    """A primary, a replica and three sentinels watching them (quorum 2)."""

    def __init__(self, workdir: Path, master_name: str = "printd") -> None:
        self.workdir = workdir
        self.master_name = master_name
        self.primary = RedisServer(workdir / "primary")
        self.replica = RedisServer(workdir / "replica")
        self.sentinel_ports = [free_port() for _ in range(3)]
        self.procs: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports)
        return f"redis+sentinel://{hosts}/{self.master_name}/0"

    def start(self) -> Sentinels:
        self.primary.start()
        self.replica.extra = ("--replicaof", "127.0.0.1", str(self.primary.port))
        self.replica.start()
        for port in self.sentinel_ports:
            conf = self.workdir / f"sentinel-{port}.conf"
            conf.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {self.workdir}\n"
                f"sentinel monitor {self.master_name} 127.0.0.1 {self.primary.port} 2\n"
                f"sentinel down-after-milliseconds {self.master_name} 1000\n"
                f"sentinel failover-timeout {self.master_name} 5000\n"
                f"sentinel parallel-syncs {self.master_name} 1\n"
            )
            log = open(self.workdir / f"sentinel-{port}.log", "ab")
            self.procs.append(
                subprocess.Popen(
                    ["redis-server", str(conf), "--sentinel"], stdout=log, stderr=subprocess.STDOUT
                )
            )
            _wait_port(port)
        return self

    def master_port(self) -> int | None:
        for port in self.sentinel_ports:
            out = (
                subprocess.run(
                    ["redis-cli", "-p", str(port), "SENTINEL", "get-master-addr-by-name", self.master_name],
                    capture_output=True,
                    timeout=5,
                    check=False,
                )
                .stdout.decode()
                .split()
            )
            if len(out) == 2:
                return int(out[1])
        return None

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        self.primary.stop()
        self.replica.stop()
