"""A fault-injecting TCP proxy for loopback tests: client <-> proxy <-> broker.

Each accepted client connection gets its own upstream connection to the broker and two pump
tasks copying bytes, one per direction. Faults (all can be switched at runtime):

- `reset_all()`: reset every open connection now (both sides), and `reset_every(seconds)`: do so
  periodically from an owned task.
- `reset_after_bytes`: reset a connection once it has carried that many bytes (both directions).
- `websocket_only`: the faults above spare plain HTTP connections and hit only those that asked for
  a websocket upgrade (so, seen from the client, the server "closes websockets").
- `blackhole`: a reset cuts only the client side; the broker side stays open and whatever the
  broker sends there is swallowed, so the broker does not learn that its client is gone (a NAT or
  load balancer between them). Such half-links are closed by `stop()` or when the broker closes.
- `kill_connect_responses = k`: every k-th server->client chunk that carries a /meta/connect reply
  is cut: only `cut_fraction` of it is forwarded, then the connection is reset - a long-poll dropped
  mid-response. (Websocket frames are usually permessage-deflate compressed, so this one is meant
  for long-polling.)
- `refuse()` / `accept_again()`, or `outage(seconds)` for both: a network outage (a laptop lid, a
  Wi-Fi switch). Every connection is reset, both sides, and the listening socket is closed, so
  every new connection meets a real ECONNREFUSED; `accept_again()` listens on the same port again.

A reset is a real TCP RST where possible: SO_LINGER(on, 0) then close. Everything the proxy started
(the server, every connection's tasks and sockets) is closed by `stop()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from dataclasses import dataclass, field

CONNECT_MARKER = b'"/meta/connect"'
CHUNK = 65536


def _rst(writer: asyncio.StreamWriter) -> None:
    """Close abruptly: with SO_LINGER(on, 0) the kernel sends RST instead of FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


@dataclass(eq=False)
class _Link:
    """One proxied connection: the client side, the broker side and their two pumps."""

    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter
    websocket: bool = False
    carried: int = 0  # bytes forwarded, both directions
    client_dead: bool = False  # the client side was reset
    closed: bool = False  # both sides are gone
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


class ChaosProxy:
    def __init__(self, upstream_port: int, *, upstream_host: str = "127.0.0.1") -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port = 0
        # Fault knobs, read on every chunk: a test may change them while traffic flows.
        self.reset_after_bytes: int | None = None
        self.websocket_only = False
        self.blackhole = False
        self.kill_connect_responses = 0  # 0: off; k: cut every k-th connect reply
        self.cut_fraction = 0.5
        # Counters, for assertions that the chaos really happened.
        self.accepted = 0
        self.resets = 0
        self.connect_replies_seen = 0
        self.connect_replies_cut = 0
        self._server: asyncio.Server | None = None
        self._links: set[_Link] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        self._ticker: asyncio.Task[None] | None = None
        self._refusing = False  # an outage: connections accepted just before it are reset too

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    def url(self, mount: str = "/cometd") -> str:
        return f"http://127.0.0.1:{self.port}{mount}"

    async def __aenter__(self) -> ChaosProxy:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ------------------------------------------------------------------ faults

    def _targets(self) -> list[_Link]:
        return [link for link in self._links
                if not link.client_dead and (link.websocket or not self.websocket_only)]

    def reset_all(self) -> int:
        """Reset every open (targeted) connection now; returns how many."""
        targets = self._targets()
        for link in targets:
            self._reset(link)
        return len(targets)

    def reset_every(self, seconds: float | None) -> None:
        """Reset all (targeted) connections every `seconds`; None stops it."""
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None
        if seconds is not None:
            self._ticker = asyncio.get_running_loop().create_task(self._tick(seconds), name="chaos-ticker")

    async def _tick(self, seconds: float) -> None:
        while True:  # ends when cancelled by reset_every(None) or stop()
            await asyncio.sleep(seconds)
            self.reset_all()

    async def refuse(self) -> int:
        """Start an outage: stop listening (new connections are refused) and reset every open
        connection, both sides; returns how many were reset."""
        self._refusing = True
        server, self._server = self._server, None
        if server is not None:
            server.close()  # the port stays ours in name only: accept_again() binds it again
        links = [link for link in self._links if not link.closed]
        for link in links:
            self._reset(link, everything=True)
        if server is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(server.wait_closed(), 5)
        return len(links)

    async def accept_again(self) -> None:
        """End an outage: listen on the same port again (SO_REUSEADDR, as asyncio sets by default)."""
        self._refusing = False
        if self._server is None:
            await self.start()

    async def outage(self, seconds: float) -> int:
        """`refuse()`, wait `seconds`, `accept_again()`; returns how many connections were reset."""
        cut = await self.refuse()
        await asyncio.sleep(seconds)
        await self.accept_again()
        return cut

    def _reset(self, link: _Link, *, everything: bool = False) -> None:
        if not link.client_dead:
            link.client_dead = True
            self.resets += 1
            _rst(link.client)
        if (everything or not self.blackhole) and not link.closed:
            link.closed = True
            _rst(link.upstream)

    # ------------------------------------------------------------------ plumbing

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Runs as the server's own task per connection; registered so stop() can cancel it.
        self._handlers.add(task := asyncio.current_task())  # type: ignore[arg-type]
        self.accepted += 1
        try:
            up_reader, up_writer = await asyncio.wait_for(asyncio.open_connection(*self.upstream), 5)
        except (OSError, TimeoutError):
            _rst(writer)
            self._handlers.discard(task)  # type: ignore[arg-type]
            return
        if self._refusing:  # accepted just before the outage began, linked up during it
            _rst(writer)
            _rst(up_writer)
            self._handlers.discard(task)  # type: ignore[arg-type]
            return
        link = _Link(writer, up_writer)
        self._links.add(link)
        link.tasks = [
            asyncio.create_task(self._pump(link, reader, up_writer, to_client=False), name="chaos-c2s"),
            asyncio.create_task(self._pump(link, up_reader, writer, to_client=True), name="chaos-s2c"),
        ]
        try:
            await asyncio.gather(*link.tasks, return_exceptions=True)
        finally:
            for task_ in link.tasks:
                task_.cancel()
            if not link.closed:
                link.closed = True
                writer.transport.abort()
                up_writer.transport.abort()
            self._links.discard(link)
            self._handlers.discard(task)  # type: ignore[arg-type]

    async def _pump(self, link: _Link, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    *, to_client: bool) -> None:
        """Copy one direction until its side closes; apply the faults on the way."""
        while not link.closed:
            try:
                data = await reader.read(CHUNK)
            except (ConnectionError, OSError):
                data = b""
            if not data:  # this side closed (or failed)
                if to_client and link.client_dead:
                    self._reset(link, everything=True)  # a black-holed broker side closed at last
                elif not link.client_dead and writer.can_write_eof():
                    with contextlib.suppress(ConnectionError, OSError):
                        writer.write_eof()  # pass the orderly half-close on
                return
            if link.client_dead:
                if to_client:
                    continue  # black hole: the broker writes, nobody reads
                return
            if not to_client and link.carried == 0 and b"upgrade: websocket" in data.lower():
                link.websocket = True
            cut = to_client and CONNECT_MARKER in data and self._cut_this_reply()
            if cut:  # a long-poll dropped mid-response: part of the reply, then RST
                data = data[:int(len(data) * self.cut_fraction)]
            try:
                writer.write(data)
                await writer.drain()
            except (ConnectionError, OSError):
                self._reset(link)  # the peer went: cut the rest too (a black-holed broker side stays)
                continue
            link.carried += len(data)
            limit = self.reset_after_bytes
            over = limit is not None and link.carried >= limit and (link.websocket or not self.websocket_only)
            if cut or over:
                self._reset(link)

    def _cut_this_reply(self) -> bool:
        self.connect_replies_seen += 1
        every = self.kill_connect_responses
        if every and self.connect_replies_seen % every == 1 % every:
            self.connect_replies_cut += 1
            return True
        return False

    async def stop(self) -> None:
        """Stop accepting, reset every connection, and wait (bounded) for every task to end."""
        self.reset_every(None)
        if self._server is not None:
            self._server.close()
        for link in list(self._links):
            self._reset(link, everything=True)
        tasks = [*self._handlers, *(t for link in self._links for t in link.tasks)]
        if tasks:  # reset links end their tasks by themselves; a handler cancelled would be logged
            await asyncio.wait(tasks, timeout=1)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=5)
        if self._server is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 5)
            self._server = None
