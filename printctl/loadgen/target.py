"""Where the load goes: one printd or the front (nginx) of several, as given by a URL.

The URL is resolved once; every connection of a run goes to that address, so a front's load
balancing, not DNS, spreads it over the instances (each `hello` names the instance it reached).
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit


class BadTarget(ValueError):
    """A URL the load generator cannot use (a usage error)."""


@dataclass(frozen=True, slots=True)
class Target:
    url: str  # as given, without a trailing slash
    family: int  # socket.AF_INET or AF_INET6
    address: tuple[str, int]  # what connect() takes
    host_header: str  # host[:port] as the client names it (nginx routes by it)
    base_path: str  # "" or a prefix such as "/printd", without a trailing slash

    @property
    def loopback(self) -> bool:
        return ipaddress.ip_address(self.address[0]).is_loopback

    def path(self, path: str) -> str:
        return self.base_path + path


def parse_target(url: str) -> Target:
    """http://host[:port][/prefix] -> Target. https/wss are refused: the generator speaks plain
    HTTP and WebSocket on raw sockets (point it at the front's plain listener, or an instance)."""
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    if scheme in ("https", "wss"):
        raise BadTarget(f"{url}: TLS is not supported by the load generator; use the plain http:// listener")
    if scheme not in ("http", "ws") or not parts.hostname:
        raise BadTarget(f"{url}: expected http://HOST[:PORT]")
    try:
        port = parts.port or 80
    except ValueError as exc:
        raise BadTarget(f"{url}: {exc}") from None
    try:
        infos = socket.getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise BadTarget(f"{url}: cannot resolve {parts.hostname}: {exc.strerror}") from None
    family, _, _, _, sockaddr = infos[0]
    return Target(
        url=url.strip().rstrip("/"),
        family=family,
        address=(str(sockaddr[0]), int(sockaddr[1])),
        host_header=parts.netloc.rpartition("@")[2],
        base_path=parts.path.rstrip("/"),
    )
