"""A small HTTP/1.1 client that relays a request's bytes to another broker process and returns its reply's bytes.

Why not aiohttp's client: the reply is relayed to the client unchanged, so the raw bytes are what we
need, and a forwarded long-poll (a POST, or a JSONP GET) is one small request answered with one
Content-Length body (the owner's private port is the lean path, or aiohttp for JSONP: both set one).
One connection per in-flight request, because a held /meta/connect occupies its connection for up
to the connect timeout; idle connections are kept for reuse, at most `max_idle` per owner and for at
most `idle_timeout` seconds (below the owner's own keep-alive timeout, so a reused connection is
rarely one the owner is closing).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from .private_port import split_address

MAX_HEAD = 16 * 1024  # bytes of a reply's status line and headers


class ForwardError(Exception):
    """The owner could not be reached, or dropped the request before answering it in full."""

    def __init__(self, message: str, *, refused: bool = False) -> None:
        super().__init__(message)
        self.refused = refused  # nothing listens there: the owner is gone, not merely busy


@dataclass(slots=True)
class ForwardedReply:
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes
    raw: bytes  # the whole reply as the owner sent it: head and body


class Relay(Protocol):
    """What an HTTP transport asks of the cluster (routing.SessionRouter): which other process owns a
    batch's session, and that process's reply to the request relayed there (None: it is gone)."""

    def owner_tag(self, messages: list[dict[str, Any]]) -> str | None: ...

    async def forward(self, tag: str, target: str, headers: Iterable[tuple[str, str]], body: bytes, *,
                      method: str = "POST") -> ForwardedReply | None: ...


@dataclass(slots=True)
class _Connection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    idle_since: float = 0.0

    def close(self) -> None:
        self.writer.close()


class _Stale(Exception):
    """A reused connection was closed by the owner before any byte of the reply: nothing was handled."""


class Forwarder:
    def __init__(self, *, connect_timeout: float = 1.0, read_timeout: float = 60.0, max_idle: int = 64,
                 idle_timeout: float = 30.0) -> None:
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout  # above the longest held connect the owner may answer late
        self.max_idle = max_idle
        self.idle_timeout = idle_timeout
        self._idle: dict[str, list[_Connection]] = {}

    async def send(self, address: str, request: bytes) -> ForwardedReply:
        """Send `request` (a whole HTTP/1.1 request) to `address` ("host:port"); raise ForwardError."""
        reused = self._take(address)
        if reused is not None:
            try:
                return await self._exchange(address, reused, request, reused=True)
            except _Stale:
                pass  # the owner closed it while idle: retry once on a new connection
        return await self._exchange(address, await self._open(address), request, reused=False)

    def close(self) -> None:
        for connections in self._idle.values():
            for connection in connections:
                connection.close()
        self._idle.clear()

    def _take(self, address: str) -> _Connection | None:
        idle = self._idle.get(address)
        deadline = time.monotonic() - self.idle_timeout
        while idle:
            connection = idle.pop()
            if connection.idle_since >= deadline and not connection.reader.at_eof():
                return connection
            connection.close()
        return None

    def _put(self, address: str, connection: _Connection) -> None:
        idle = self._idle.setdefault(address, [])
        if len(idle) >= self.max_idle:
            connection.close()
            return
        connection.idle_since = time.monotonic()
        idle.append(connection)

    async def _open(self, address: str) -> _Connection:
        try:
            host, port = split_address(address)
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port, limit=MAX_HEAD),
                                                    self.connect_timeout)
        except (OSError, ValueError, TimeoutError) as exc:
            raise ForwardError(f"cannot connect to {address}: {exc!r}",
                               refused=isinstance(exc, ConnectionRefusedError | ValueError)) from None
        return _Connection(reader, writer)

    async def _exchange(self, address: str, connection: _Connection, request: bytes, *,
                        reused: bool) -> ForwardedReply:
        done = False
        try:
            async with asyncio.timeout(self.read_timeout):
                if connection.writer.is_closing():
                    # Closed (or reset: the owner died) since it was opened or pooled: nothing was sent, and
                    # writing would raise (uvloop) or vanish (asyncio) rather than fail as a send.
                    if reused:
                        raise _Stale
                    raise ForwardError(f"{address} closed the connection before the request was sent")
                connection.writer.write(request)
                try:
                    head = await connection.reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError as exc:
                    if reused and not exc.partial:
                        raise _Stale from None
                    raise ForwardError(f"{address} closed the connection before answering") from None
                status, reason, headers, length, keep_alive = _parse_head(head)
                body = await connection.reader.readexactly(length)
            done = True
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError) as exc:
            raise ForwardError(f"{address} failed while answering: {exc!r}") from None
        except TimeoutError:
            raise ForwardError(f"{address} did not answer within {self.read_timeout:.0f} s") from None
        finally:
            if not done:  # also when cancelled (the client went away): the owner sees its request abandoned
                connection.close()
        if keep_alive:
            self._put(address, connection)
        else:
            connection.close()
        return ForwardedReply(status, reason, headers, body, head + body)


def _parse_head(head: bytes) -> tuple[int, str, list[tuple[str, str]], int, bool]:
    """Status, reason, headers, Content-Length and keep-alive of a reply head; ForwardError if unusable."""
    lines = head[:-4].decode("latin-1").split("\r\n")
    version, _, rest = lines[0].partition(" ")
    code, _, reason = rest.partition(" ")
    if version != "HTTP/1.1" or not code.isdigit():
        raise ForwardError(f"not an HTTP/1.1 reply: {lines[0]!r}")
    headers: list[tuple[str, str]] = []
    length = -1
    keep_alive = True
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep:
            raise ForwardError(f"malformed reply header {line!r}")
        name, value = name.strip(), value.strip()
        lower = name.lower()
        if lower == "content-length" and value.isdigit():
            length = int(value)
        elif lower == "transfer-encoding":
            raise ForwardError("a chunked reply cannot be relayed")  # our servers always send a length
        elif lower == "connection" and "close" in value.lower():
            keep_alive = False
        headers.append((name, value))
    if length < 0:
        raise ForwardError("the reply has no Content-Length")
    return int(code), reason, headers, length, keep_alive

