"""A process's private port: the one listening socket the other processes of a cluster relay requests to.

The public port cannot be used for that: the workers of `--workers N` share it (SO_REUSEPORT), so a
connection to it reaches whichever worker the kernel picks. Each process instead binds its own socket
on `host` (loopback by default: the workers of one machine) with an ephemeral port, and publishes its
address in Redis: the session router under its tag (routing.py), the contact-center leader in its lease
(channels). Both use the same port when they bind the same host (`private_port`), one per host otherwise.

What a relayed request is for is said by one of two headers that forwarding.py sets (and strips from
the client's request):
- `X-Cometd-Forwarded-By: SENDER`: a Bayeux request relayed to the process owning its session. The
  session router's lean path serves the POSTs in front (`front`), `bayeux` the rest (JSONP GETs).
- `X-Cometd-Relay-Service: NAME`: a request for a service this process offers only for a while (the
  contact-center engine while it leads). When it does not (any more), 421 Misdirected Request
  (RFC 9110 15.5.20): nothing was done, so the sender may look the service up again and retry.
- anything else: 400.
The port needs no trust of its own: a relayed request carries the client's own credentials (cookies,
Authorization, clientId), which the service checks as for a request on the public port.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

# Set by the forwarding process (an id of its own) on every relayed request; required on the private port.
FORWARDED_BY = "X-Cometd-Forwarded-By"
# The service a relayed request is for, when it is not the Bayeux endpoint.
RELAY_SERVICE = "X-Cometd-Relay-Service"
MISDIRECTED = 421  # the service named is not offered here now

# Headers that describe one connection, not the message: never relayed (RFC 9110 7.6.1), plus the
# framing headers the relaying side sets again for the relayed body.
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
                        "trailer", "transfer-encoding", "upgrade", "content-length"})

BACKLOG = 4096  # every held connect relayed here is a connection of its own: a burst is not refused
SHUTDOWN_TIMEOUT = 1.0  # seconds a withdrawn service's requests in flight may take to finish

Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


class _Service:
    """A service offered on the port: an aiohttp server (an AppRunner's), and its requests in flight."""

    def __init__(self, server: web.Server) -> None:
        self.server = server
        self.running: set[asyncio.Task[object]] = set()
        self.withdrawn = False

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        if self.withdrawn:  # between the request's head and its handling
            return _misdirected()
        task = asyncio.current_task()
        assert task is not None
        self.running.add(task)
        try:
            return await self.server.request_handler(request)
        finally:
            self.running.discard(task)

    async def drain(self, timeout: float) -> None:
        """Let the requests in flight finish, for at most `timeout`; then cancel them (as aiohttp's own
        shutdown cancels a connection's handler)."""
        self.withdrawn = True
        if not self.running:
            return
        _, late = await asyncio.wait(set(self.running), timeout=timeout)
        for task in late:
            task.cancel()
        if late:
            await asyncio.wait(late)


_SERVICE = web.RequestKey("relay_service", _Service)


class PrivatePort:
    """One socket on `host` while anything uses it (`open`/`close` are counted), serving relayed requests."""

    def __init__(self, host: str) -> None:
        self.host = host
        self.address = ""  # "host:port", once open
        # Set by the session router (routing.py), which closes what it set: the protocol factory of its
        # lean path, which hands the port's own side (`dispatch`) whatever it does not serve itself, and
        # the handler of the Bayeux requests handed over.
        self.front: Callable[[], asyncio.Protocol] | None = None
        self.bayeux: Handler | None = None
        self._services: dict[str, _Service] = {}
        self._users = 0
        self._server: asyncio.AbstractServer | None = None
        self._dispatch: web.Server | None = None

    async def open(self) -> None:
        """Listen, if nothing else opened the port yet (OSError if it cannot bind)."""
        self._users += 1
        if self._server is not None:
            return
        try:
            sock = bind_private(self.host)
        except OSError:
            self._users -= 1
            raise
        self._dispatch = web.Server(self._handle, request_factory=self._make_request, access_log=None)
        try:
            self._server = await asyncio.get_running_loop().create_server(self._connection, sock=sock,
                                                                          backlog=BACKLOG)
        except OSError:
            sock.close()
            self._users -= 1
            raise
        self.address = address_of(sock)

    async def close(self) -> None:
        """Stop listening once the last user closed it; its connections and services end too."""
        if self._users == 0:
            return  # never opened (a start that failed before it)
        self._users -= 1
        if self._users > 0 or self._server is None:
            return
        server, self._server = self._server, None
        server.close()
        for name in list(self._services):
            await self.withdraw(name)
        if self._dispatch is not None:
            await self._dispatch.shutdown(SHUTDOWN_TIMEOUT)
            self._dispatch = None

    def offer(self, name: str, server: web.Server) -> None:
        """Serve requests for `name` with `server` (an AppRunner's, set up) until withdrawn."""
        self._services[name] = _Service(server)

    async def withdraw(self, name: str) -> None:
        """Answer 421 for `name` from now on, and wait (bounded) for its requests in flight."""
        service = self._services.pop(name, None)
        if service is not None:
            await service.drain(SHUTDOWN_TIMEOUT)

    def dispatch(self) -> asyncio.Protocol:
        """A connection served by the port's own side (aiohttp): what the front hands over."""
        assert self._dispatch is not None, "PrivatePort.open() was not awaited"
        return self._dispatch()

    def _connection(self) -> asyncio.Protocol:
        front = self.front
        return front() if front is not None else self.dispatch()

    def _make_request(self, message: Any, payload: Any, protocol: Any, writer: Any, task: Any) -> web.BaseRequest:
        """A request for an offered service is made by that service's server, as on a site of its own
        (an aiohttp app's request, with its size limit); any other is a plain one."""
        name = message.headers.get(RELAY_SERVICE)
        service = self._services.get(name) if name is not None else None
        if service is None:
            return web.BaseRequest(message, payload, protocol, writer, task, asyncio.get_running_loop())
        request = service.server.request_factory(message, payload, protocol, writer, task)
        request[_SERVICE] = service
        return request

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        service = request.get(_SERVICE)
        if service is not None:
            return await service.handle(request)
        if RELAY_SERVICE in request.headers:
            return _misdirected()
        if FORWARDED_BY in request.headers and self.bayeux is not None:
            return await self.bayeux(request)
        return web.Response(status=400, text="this port serves only requests forwarded by the broker's own "
                                             "processes\n", headers={"Connection": "close"})


def _misdirected() -> web.Response:
    return web.Response(status=MISDIRECTED, text="not served by this process now\n")


PRIVATE_PORTS = web.AppKey("private_ports", dict[str, PrivatePort])


def private_port(app: web.Application, host: str) -> PrivatePort:
    """The app's private port on `host`: the same one for every part of the process that binds there."""
    ports = app.get(PRIVATE_PORTS)
    if ports is None:
        ports = app[PRIVATE_PORTS] = {}
    port = ports.get(host)
    if port is None:
        port = ports[host] = PrivatePort(host)
    return port


def bind_private(host: str) -> socket.socket:
    """A non-blocking socket bound to `host` on an ephemeral port (not listening yet)."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    try:
        sock.bind((host, 0))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def address_of(sock: socket.socket) -> str:
    """"host:port" of a bound socket, IPv6 hosts in brackets (as in a URL's authority)."""
    host, port = sock.getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def split_address(address: str) -> tuple[str, int]:
    """The inverse of `address_of`; ValueError if it is not "host:port"."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"not a host:port address: {address!r}")
    return host.strip("[]"), int(port)
