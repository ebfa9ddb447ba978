"""Prometheus' promtool for the tests that check alert rules and the metrics exposition.

CI installs it (Debian: `apt-get install prometheus` ships /usr/bin/promtool). Missing, those
tests fail rather than skip: a skipped check would let broken alerts ship silently.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest


def promtool(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool is not installed: apt-get install prometheus (it ships /usr/bin/promtool)")
    return subprocess.run([path, *args], input=stdin, capture_output=True, timeout=60, check=False)
