"""The relay client: one HTTP/1.1 request relayed, headers and body as the client sent them, to another
process's private port (private_port.py), and its reply's bytes back.

Used by both kinds of forwarding in a cluster: a Bayeux request to the process owning its session
(routing.py), and a contact-center REST request to the leader (channels). Each caller decides what a
failure means to its clients (a 402 answered here, a 503 envelope); the rules common to both are here:
- Retry only before sending: a connection refused (nothing listens there), a pooled connection the peer
  closed while idle, or a 421 from the private port (not served there now) leaves the request unsent,
  and `relay_to_any` looks the peer up again and retries until its deadline. Once the request was
  written, a failure is final (`ForwardError.sent`): the peer may have applied it.
- Pass-through: the client's headers go unchanged but for hop-by-hop ones and the relay's own, which
  the sender sets; the reply is relayed as it came (`raw`), or as an aiohttp response minus its
  hop-by-hop headers (`relayed_response`).

Why not aiohttp's client: the reply is relayed to the client unchanged, so the raw bytes are what we
need, and a relayed request is one small request answered with one Content-Length body (the private
port is the lean path, or aiohttp: both set one).
One connection per in-flight request, because a held /meta/connect occupies its connection for up
to the connect timeout; idle connections are kept for reuse, at most `max_idle` per peer and for at
most `idle_timeout` seconds (below the peer's own keep-alive timeout, so a reused connection is
rarely one the peer is closing).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from aiohttp import web

from .private_port import FORWARDED_BY, HOP_BY_HOP, MISDIRECTED, RELAY_SERVICE, split_address

MAX_HEAD = 16 * 1024  # bytes of a reply's status line and headers
RETRY_PAUSE = 0.1  # seconds between looking a peer up again and retrying
# Never relayed from the client: the relay's own headers (set by the sender), and Expect (the relaying
# side has the whole body already; an interim 100 would not be a reply).
_NOT_RELAYED = HOP_BY_HOP | {FORWARDED_BY.lower(), RELAY_SERVICE.lower(), "expect"}
_NO_BODY = frozenset({204, 304})


class ForwardError(Exception):
    """The peer could not be reached, did not serve the request, or dropped it before answering in full."""

    def __init__(self, message: str, *, refused: bool = False, sent: bool = True) -> None:
        super().__init__(message)
        self.refused = refused  # nothing listens there: the peer is gone, not merely busy
        self.sent = sent and not refused  # the peer may have received (and applied) the request


@dataclass(slots=True)
class ForwardedReply:
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes
    raw: bytes  # the whole reply as the peer sent it: head and body


def relay_request(method: str, target: str, headers: Iterable[tuple[str, str]], body: bytes, *,
                  forwarded_by: str | None = None, service: str | None = None) -> bytes:
    """The bytes of `method target` with the client's headers and body, for the Bayeux endpoint of the
    peer (`forwarded_by`: this process's id) or for one of its services (`service`)."""
    lines = [f"{method} {target} HTTP/1.1"]
    relayed = [(name, value) for name, value in headers if name.lower() not in _NOT_RELAYED]
    if not any(name.lower() == "host" for name, _ in relayed):
        # An HTTP/1.0 client may send none, but the relay speaks HTTP/1.1, which requires one; the
        # receiving process checked Origin against the missing Host already, so any name does here.
        relayed.append(("Host", "localhost"))
    lines += [f"{name}: {value}" for name, value in relayed]
    lines.append(f"Content-Length: {len(body)}")
    if forwarded_by is not None:
        lines.append(f"{FORWARDED_BY}: {forwarded_by}")
    if service is not None:
        lines.append(f"{RELAY_SERVICE}: {service}")
    lines += ["", ""]
    return "\r\n".join(lines).encode("latin-1", "replace") + body


def relayed_response(reply: ForwardedReply) -> web.Response:
    """The peer's reply as an aiohttp response: status, reason, headers (but hop-by-hop ones) and body."""
    headers = [(k, v) for k, v in reply.headers if k.lower() not in HOP_BY_HOP]
    return web.Response(status=reply.status, reason=reply.reason, headers=headers, body=reply.body)


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
    """A reused connection was closed by the peer before any byte of the reply: nothing was handled."""


class Forwarder:
    def __init__(self, *, connect_timeout: float = 1.0, read_timeout: float = 60.0, max_idle: int = 64,
                 idle_timeout: float = 30.0) -> None:
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout  # above the longest a peer may take to answer (a held connect)
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
                pass  # the peer closed it while idle: retry once on a new connection
        return await self._exchange(address, await self._open(address), request, reused=False)

    async def relay_to_any(self, locate: Callable[[bool], Awaitable[str | None]], request: bytes, *,
                           wait: float) -> ForwardedReply:
        """Send `request` to the peer `locate(again)` names (None: none now), looking again and retrying
        while it was not sent, for at most `wait` seconds; then ForwardError (`sent` False: never sent)."""
        deadline = time.monotonic() + wait
        again = False
        while True:
            address = await locate(again)
            if address is not None:
                try:
                    reply = await self.send(address, request)
                except ForwardError as exc:
                    if exc.sent:
                        raise
                else:
                    if reply.status != MISDIRECTED:
                        return reply
            if time.monotonic() >= deadline:
                raise ForwardError("no peer reachable", sent=False)
            again = True
            await asyncio.sleep(RETRY_PAUSE)

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
            raise ForwardError(f"cannot connect to {address}: {exc!r}", sent=False,
                               refused=isinstance(exc, ConnectionRefusedError | ValueError)) from None
        return _Connection(reader, writer)

    async def _exchange(self, address: str, connection: _Connection, request: bytes, *,
                        reused: bool) -> ForwardedReply:
        done = False
        try:
            async with asyncio.timeout(self.read_timeout):
                if connection.writer.is_closing():
                    # Closed (or reset: the peer died) since it was opened or pooled: nothing was sent, and
                    # writing would raise (uvloop) or vanish (asyncio) rather than fail as a send.
                    if reused:
                        raise _Stale
                    raise ForwardError(f"{address} closed the connection before the request was sent", sent=False)
                connection.writer.write(request)
                try:
                    head = await connection.reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError as exc:
                    if reused and not exc.partial:
                        raise _Stale from None
                    raise ForwardError(f"{address} closed the connection before answering") from None
                status, reason, headers, length, keep_alive = _parse_head(head, request.startswith(b"HEAD "))
                body = await connection.reader.readexactly(length)
            done = True
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError) as exc:
            raise ForwardError(f"{address} failed while answering: {exc!r}") from None
        except TimeoutError:
            raise ForwardError(f"{address} did not answer within {self.read_timeout:.0f} s") from None
        finally:
            if not done:  # also when cancelled (the client went away): the peer sees its request abandoned
                connection.close()
        if keep_alive:
            self._put(address, connection)
        else:
            connection.close()
        return ForwardedReply(status, reason, headers, body, head + body)


def _parse_head(head: bytes, to_head: bool = False) -> tuple[int, str, list[tuple[str, str]], int, bool]:
    """Status, reason, headers, body length and keep-alive of a reply head (to a HEAD request if `to_head`);
    ForwardError if unusable."""
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
    status = int(code)
    if to_head or status in _NO_BODY:
        return status, reason, headers, 0, keep_alive  # no body, whatever Content-Length says (RFC 9112 6.3)
    if length < 0:
        raise ForwardError("the reply has no Content-Length")
    return status, reason, headers, length, keep_alive

