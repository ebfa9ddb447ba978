"""RESP2, the Redis wire protocol, free of I/O (as h11 is for HTTP).

`encode_command` turns arguments into request bytes; `RespParser` is fed whatever the socket
delivered and hands back complete replies. An error reply (``-ERR ...``) is returned as a
`ReplyError` value, not raised: in a pipeline one failed command must not hide the replies of
the others, and the caller decides what an error means.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeAlias, Union


class ReplyError(Exception):
    """An error reply from the server, e.g. ``WRONGTYPE ...`` or ``READONLY ...``."""

    @property
    def kind(self) -> str:
        """The error's first word (``ERR``, ``READONLY``, ``NOSCRIPT``...)."""
        return str(self).split(" ", 1)[0]


Reply: TypeAlias = Union[bytes, int, None, list["Reply"], ReplyError]  # noqa: UP007 (recursive alias)
Arg: TypeAlias = bytes | str | int | float


class ProtocolError(Exception):
    """The server sent bytes that are not RESP: the connection cannot be trusted any more."""


class _NeedData:
    __slots__ = ()

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA = _NeedData()


def _arg(value: Arg) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, bool):
        raise TypeError("booleans are not Redis arguments; send 0/1")
    if isinstance(value, int | float):
        return repr(value).encode()
    raise TypeError(f"cannot send {type(value).__name__} to Redis")


def encode_command(*args: Arg) -> bytes:
    """One command as a RESP array of bulk strings."""
    parts = [b"*%d\r\n" % len(args)]
    for a in args:
        data = _arg(a)
        parts.append(b"$%d\r\n" % len(data))
        parts.append(data)
        parts.append(b"\r\n")
    return b"".join(parts)


def encode_commands(commands: Iterable[tuple[Arg, ...]]) -> bytes:
    """Several commands in one write (a pipeline)."""
    return b"".join(encode_command(*c) for c in commands)


class RespParser:
    """Incremental RESP2 reply parser. `feed` bytes, then call `next_reply` until NEED_DATA."""

    __slots__ = ("_buf", "_pos", "max_bulk")

    def __init__(self, max_bulk: int = 512 * 1024 * 1024) -> None:
        self._buf = bytearray()
        self._pos = 0
        self.max_bulk = max_bulk

    def feed(self, data: bytes | bytearray) -> None:
        if self._pos:
            del self._buf[: self._pos]
            self._pos = 0
        self._buf += data

    def next_reply(self) -> Reply | _NeedData:
        """The next complete reply, or NEED_DATA (nothing is consumed until a reply is whole)."""
        try:
            value, end = self._parse(self._pos)
        except _Incomplete:
            return NEED_DATA
        self._pos = end
        return value

    def _line(self, pos: int) -> tuple[bytes, int]:
        end = self._buf.find(b"\r\n", pos)
        if end < 0:
            raise _Incomplete
        return bytes(self._buf[pos:end]), end + 2

    def _parse(self, pos: int) -> tuple[Reply, int]:
        if pos >= len(self._buf):
            raise _Incomplete
        kind = self._buf[pos]
        line, pos = self._line(pos + 1)
        if kind == 0x2B:  # '+' simple string
            return line, pos
        if kind == 0x2D:  # '-' error
            return ReplyError(line.decode("utf-8", "replace")), pos
        if kind == 0x3A:  # ':' integer
            return _int(line), pos
        if kind == 0x24:  # '$' bulk string
            size = _int(line)
            if size < 0:
                return None, pos
            if size > self.max_bulk:
                raise ProtocolError(f"bulk string of {size} bytes exceeds the limit")
            end = pos + size
            if end + 2 > len(self._buf):
                raise _Incomplete
            if self._buf[end : end + 2] != b"\r\n":
                raise ProtocolError("bulk string not terminated by CRLF")
            return bytes(self._buf[pos:end]), end + 2
        if kind == 0x2A:  # '*' array
            count = _int(line)
            if count < 0:
                return None, pos
            items: list[Reply] = []
            for _ in range(count):
                item, pos = self._parse(pos)
                items.append(item)
            return items, pos
        raise ProtocolError(f"unexpected RESP type byte {bytes([kind])!r}")


class _Incomplete(Exception):
    pass


def _int(line: bytes) -> int:
    try:
        return int(line)
    except ValueError:
        raise ProtocolError(f"bad integer {line[:32]!r}") from None
