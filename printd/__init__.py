"""printd: the print gateway (HTTP API + WebSocket gateway + monitoring on one port)."""

from importlib.metadata import PackageNotFoundError, version


def package_version() -> str:
    """The installed distribution's version: pyproject.toml is the one place it is written."""
    try:
        return version("printd")
    except PackageNotFoundError:  # a source tree that was never installed
        return "0+unknown"
