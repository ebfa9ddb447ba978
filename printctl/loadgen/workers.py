"""Load spread over processes: a coordinator starts workers and talks to them in JSON lines.

One Python process drives one core at most, and the fd limit is per process, so a load that
must not be the bottleneck runs in several. The coordinator writes commands to each worker's
stdin (one line each; closing stdin means "stop now") and reads JSON objects, one per line,
from its stdout, each with a "phase". A worker that dies shows up as an error object in the
phase the coordinator was waiting for, never as a hang.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from collections import deque
from typing import Any


def emit(obj: dict[str, Any]) -> None:
    """Worker side: one JSON line to the coordinator."""
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


class Workers:
    """The worker processes and their JSON lines."""

    def __init__(self, commands: list[list[str]], env: dict[str, str] | None = None) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        try:
            for cmd in commands:
                self.procs.append(
                    subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
                )
        except BaseException:
            self.stop()
            raise
        self.fds = {p.stdout.fileno(): i for i, p in enumerate(self.procs)}  # type: ignore[union-attr]
        self.lines: list[deque[bytes]] = [deque() for _ in self.procs]
        self.partial = [b"" for _ in self.procs]
        self.eof = [False for _ in self.procs]

    def _read(self, fd: int) -> None:
        i = self.fds[fd]
        data = os.read(fd, 65536)
        if not data:
            self.eof[i] = True
            return
        *complete, self.partial[i] = (self.partial[i] + data).split(b"\n")
        self.lines[i].extend(complete)

    def _wait(self, timeout: float, fds: list[int] | None = None) -> None:
        fds = [fd for fd, i in self.fds.items() if not self.eof[i]] if fds is None else fds
        if not fds:
            return
        ready, _, _ = select.select(fds, [], [], max(0.0, timeout))
        for fd in ready:
            self._read(fd)

    def poll(self, timeout: float) -> list[tuple[int, dict[str, Any]]]:
        """Every (worker, object) that arrived within `timeout` s (returns at the first batch)."""
        if not any(self.lines):
            self._wait(timeout)
        out = []
        for i, lines in enumerate(self.lines):
            while lines:
                obj = _parse(lines.popleft())
                if obj is not None:
                    out.append((i, obj))
        return out

    def collect(self, phase: str, timeout: float) -> list[dict[str, Any]]:
        """The next line with this phase from every worker (an "error" object for those that
        exited or stayed silent). Lines of other phases are dropped."""
        got: dict[int, dict[str, Any]] = {}
        end = time.time() + timeout
        while len(got) < len(self.procs):
            for i, lines in enumerate(self.lines):
                while i not in got and lines:
                    obj = _parse(lines.popleft())
                    if obj is not None and obj.get("phase") == phase:
                        got[i] = obj
                if i not in got and self.eof[i] and not lines:
                    got[i] = {"phase": phase, "error": f"worker {i} exited"}
            fds = [fd for fd, i in self.fds.items() if i not in got and not self.eof[i]]
            if not fds or time.time() >= end:
                break
            self._wait(min(1.0, end - time.time()), fds)
        return [
            got.get(i, {"phase": phase, "error": f"worker {i}: no {phase} line"})
            for i in range(len(self.procs))
        ]

    def send(self, line: str, only: int | None = None) -> None:
        """One command line to every worker (or to worker `only`)."""
        for i, p in enumerate(self.procs):
            if only is not None and i != only:
                continue
            try:
                p.stdin.write(line.encode() + b"\n")  # type: ignore[union-attr]
                p.stdin.flush()  # type: ignore[union-attr]
            except (BrokenPipeError, ValueError):
                pass

    def wait(self, timeout: float) -> None:
        end = time.time() + timeout
        for p in self.procs:
            try:
                p.wait(timeout=max(0.1, end - time.time()))
            except subprocess.TimeoutExpired:
                pass

    def stop(self, timeout: float = 3.0) -> None:
        """Close every worker's stdin (its signal to stop), then kill those still running."""
        for p in self.procs:
            if p.poll() is None and p.stdin is not None:
                try:
                    p.stdin.close()
                except (BrokenPipeError, OSError):
                    pass
        end = time.time() + timeout
        for p in self.procs:
            try:
                p.wait(timeout=max(0.1, end - time.time()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def _parse(line: bytes) -> dict[str, Any] | None:
    try:
        obj = json.loads(line)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None
