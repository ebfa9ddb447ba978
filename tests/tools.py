"""The real tools the tests run (nginx, systemd-analyze, promtool, the shells), found or failed.

`scripts/ensure-services` installs each one that is missing, so CI always has them. A test
never skips for a missing tool: a skipped check proves nothing, and would let a broken nginx
site, unit file, alert rule or completion script ship silently.
"""

from __future__ import annotations

import shutil

import pytest

#: Debian package that provides each tool (what ensure-services installs)
PACKAGES = {
    "nginx": "nginx-light",
    "systemd-analyze": "systemd",
    "promtool": "prometheus",
    "bash": "bash",
    "fish": "fish",
    "zsh": "zsh",
}


def tool(name: str) -> str:
    """The path of `name`, or the test fails naming the package that provides it."""
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if path is None:
        package = PACKAGES[name]
        why = f"{name} is not installed: scripts/ensure-services installs it (apt-get install {package})"
        pytest.fail(why, pytrace=False)
    return path
