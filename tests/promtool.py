"""Prometheus' promtool for the tests that check alert rules and the metrics exposition.

CI installs it (Debian: `apt-get install prometheus` ships /usr/bin/promtool). Missing, those
tests fail rather than skip: a skipped check would let broken alerts ship silently.
"""

from __future__ import annotations

import subprocess

from tests.tools import tool


def promtool(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    cmd = [tool("promtool"), *args]
    return subprocess.run(cmd, input=stdin, capture_output=True, timeout=60, check=False)
