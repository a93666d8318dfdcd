"""A lean HTTP/1.1 path for Bayeux long-polling, in front of aiohttp on the same port.

Why: a long-poll cycle is one small POST answered with a small JSON array, thousands of times a
second. aiohttp's general request machinery (request and response objects, a task per request,
middleware and router) cost several times the broker's own work per cycle; profiles put it at
three quarters of the CPU. This protocol serves exactly the common case itself:

    POST <a Bayeux mount path> HTTP/1.1 with a Content-Length body of at most max_message_size,
    no Expect, no Upgrade, no Transfer-Encoding

and hands the connection to aiohttp, unchanged and with every byte it has read, at the first
request that is anything else (a websocket upgrade, JSONP, the REST API, a chunked body, a bad
head...). Hand-over happens only between requests, so aiohttp always sees a request from its
first byte. Requests on one connection are answered in order (pipelining is buffered).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import Callable, Iterable
from email.utils import formatdate
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from multidict import CIMultiDict, CIMultiDictProxy

from .. import bayeux
from ..bayeux import BodyError, Message
from ..broker import Broker, HandleResult, PendingConnect, RequestContext
from ..private_port import FORWARDED_BY
from .http import browser_id_of, encode, parse_long_poll_body
from .lean_websocket import LeanWebSocket, upgrade_response

if TYPE_CHECKING:  # routing.py imports this module
    from ..routing import SessionRouter

_FORWARDED_BY_KEY = FORWARDED_BY.lower()
MAX_HEAD = 16 * 1024  # request line and headers; aiohttp's own limits are of the same order
KEEPALIVE_TIMEOUT = 75.0  # seconds an idle keep-alive connection is kept (aiohttp's default)
log = logging.getLogger(__name__)
_REASONS = {200: b"OK", 400: b"Bad Request", 402: b"Payment Required", 408: b"Request Timeout",
            409: b"Conflict", 413: b"Payload Too Large", 500: b"Internal Server Error",
            503: b"Service Unavailable"}


class _Clock:
    """The Date header, formatted once a second."""

    __slots__ = ("_second", "_value")

    def __init__(self) -> None:
        self._second = -1
        self._value = b""

    def date(self) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._value = formatdate(now, usegmt=True).encode()
        return self._value


class LeanHttp:
    """Shared by every connection of one listening socket: the broker, the mounts, the hand-over."""

    def __init__(self, broker: Broker, mounts: Iterable[str], fallback: Callable[[], asyncio.Protocol], *,
                 router: SessionRouter | None = None, forwarded_only: bool = False) -> None:
        self.broker = broker
        self.router = router  # relays long-polls of sessions owned by another cluster process
        # The private port of routing.py: only long-polls another process forwarded (no websocket).
        self.forwarded_only = forwarded_only
        self.fallback = fallback  # aiohttp's protocol factory (web.Server)
        self.prefixes = tuple(m.rstrip("/") for m in mounts)
        self.max_size = broker.config.max_message_size
        self.max_batch = broker.config.max_batch
        self.cookie_name = broker.config.browser_cookie
        self.cookie_prefix = self.cookie_name.encode() + b"="
        self.connections: set[LeanHttpConnection] = set()
        self.clock = _Clock()
        self._known_paths: dict[bytes, bool] = {}
        self._sweeper: asyncio.TimerHandle | None = None
        self.long_polling = "long-polling" in broker.transports
        self.websocket = "websocket" in broker.transports and not forwarded_only
        self.websockets: set[LeanWebSocket] = set()
        # Held connects released during this loop turn, answered together on the next one, so
        # the events published in this turn travel with them; one callback for all of them.
        self._released: list[tuple[LeanHttpConnection, str]] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    def __call__(self) -> asyncio.Protocol:
        if self._sweeper is None:
            self._loop = asyncio.get_running_loop()
            self._schedule_sweep()
        return LeanHttpConnection(self)

    def release(self, conn: LeanHttpConnection, reason: str) -> None:
        """Answer `conn`'s held connect on the next loop turn."""
        released = self._released
        if not released:
            assert self._loop is not None
            self._loop.call_soon(self._answer_released)
        released.append((conn, reason))

    def _answer_released(self) -> None:
        released, self._released = self._released, []
        for conn, reason in released:
            try:
                conn.answer_parked(reason)
            except Exception:  # a bug answering one must not leave the others unanswered
                log.exception("answering a held connect failed")
                conn.close()

    def serves(self, target: bytes) -> bool:
        """Whether a POST to this request target is a Bayeux long-poll (cached: a client uses few paths)."""
        known = self._known_paths.get(target)
        if known is None:
            path = unquote(target.split(b"?", 1)[0].decode("latin-1"))
            known = self.long_polling and any(path == p or path.startswith(p + "/") for p in self.prefixes)
            if len(self._known_paths) < 1024:  # bounded: paths are client-chosen
                self._known_paths[target] = known
        return known

    def _schedule_sweep(self) -> None:
        self._sweeper = asyncio.get_running_loop().call_later(KEEPALIVE_TIMEOUT / 5, self._sweep)

    def _sweep(self) -> None:
        """Close keep-alive connections idle for longer than KEEPALIVE_TIMEOUT (a held connect is not idle)."""
        now = time.monotonic()
        deadline = now - KEEPALIVE_TIMEOUT
        for conn in [c for c in self.connections if c.parked is None and c.last_active < deadline]:
            conn.close()
        for websocket in list(self.websockets):
            websocket.ping_or_close(now)
        self._schedule_sweep()

    def close(self) -> None:
        """Close every connection still here (after the broker answered the held connects)."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for conn in list(self.connections):
            conn.close()
        for websocket in list(self.websockets):
            websocket.shutdown()


class _Head:
    """A request head the lean path serves: a long-poll POST (with its request context) or a
    websocket upgrade (`ctx` None)."""

    __slots__ = ("raw", "body_at", "headers", "length", "keep_alive", "form", "ctx", "target")

    def __init__(self, raw: bytes, headers: list[tuple[str, str]], length: int, keep_alive: bool, form: bool,
                 ctx: RequestContext | None, target: str = "") -> None:
        self.raw = raw
        self.body_at = len(raw) + 4  # after the blank line
        self.headers = headers
        self.length = length
        self.keep_alive = keep_alive
        self.form = form  # application/x-www-form-urlencoded (message=...)
        self.ctx = ctx
        self.target = target  # the request target, relayed when the request is forwarded


class LeanHttpConnection(asyncio.Protocol):
    """One client connection, served by the lean path until it must be handed to aiohttp."""

    __slots__ = ("server", "transport", "buffer", "busy", "parked", "last_active", "remote", "_head",
                 "_close_after", "_paused", "_new_browser_id", "_last_head", "_forwarding")

    def __init__(self, server: LeanHttp) -> None:
        self.server = server
        self.transport: Any = None
        self.buffer = bytearray()
        self.busy = False  # a request is being answered; later ones wait in the buffer
        self.parked: PendingConnect | None = None
        self.last_active = time.monotonic()
        self.remote: str | None = None
        self._head: _Head | None = None  # of the request whose body is still arriving
        self._close_after = False
        self._paused = False
        self._new_browser_id: str | None = None  # the cookie to set when the held connect is answered
        # A client repeats the same head on every long-poll of its connection: the last POST's
        # parse, with its request context, is reused when the bytes are equal.
        self._last_head: _Head | None = None
        self._forwarding: asyncio.Task[None] | None = None  # relaying a request to its session's owner

    # ------------------------------------------------------------------ asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.remote = peer[0] if isinstance(peer, tuple) else None
        self.server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        self.transport = None
        pending, self.parked = self.parked, None
        if pending is not None:  # the client went away during a held connect
            self.server.broker.abandon(pending.session)
        forwarding, self._forwarding = self._forwarding, None
        if forwarding is not None:  # ... or during a forwarded one: the owner sees it abandoned too
            forwarding.cancel()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self.last_active = time.monotonic()
        if self.busy:
            if len(self.buffer) > self.server.max_size + MAX_HEAD and not self._paused:
                self._paused = True  # a client pipelining without reading: stop reading until we answer
                self.transport.pause_reading()
            return
        self._next_request()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    # ------------------------------------------------------------------ requests

    def _next_request(self) -> None:
        """Serve the buffered request if it is whole and ours; hand the connection over if it is not ours."""
        buffer = self.buffer
        if not buffer:
            return
        head = self._head
        if head is None:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(buffer) > MAX_HEAD:
                    self._hand_over()  # aiohttp answers an oversized head with its own 4xx
                return
            raw_head = bytes(buffer[:end])
            head = self._last_head
            if head is None or raw_head != head.raw:
                head = self._parse_head(raw_head)
                if head is None:
                    self._hand_over()
                    return
                self._last_head = head if head.ctx is not None else None
            self._head = head
        if head.ctx is None:
            self._head = None
            self._upgrade(head.body_at, head.headers)
            return
        length = head.length
        if len(buffer) < head.body_at + length:
            return  # the rest of the body is on its way
        self._head = None
        body = bytes(buffer[head.body_at:head.body_at + length])
        del buffer[:head.body_at + length]
        self._close_after = not head.keep_alive
        self.busy = True
        self._serve(head, body)

    def _parse_head(self, raw_head: bytes) -> _Head | None:
        """The request head if it is a plain Bayeux long-poll POST (or, with no context, a websocket
        upgrade we accept); None to leave it to aiohttp."""
        lines = raw_head.split(b"\r\n")
        parts = lines[0].split(b" ")
        if len(parts) != 3 or not self.server.serves(parts[1]):
            return None
        method, version = parts[0], parts[2]
        if method == b"GET" and self.server.websocket and version == b"HTTP/1.1":
            return self._upgrade_head(raw_head, lines)
        if method != b"POST" or not self.server.long_polling:
            return None
        if version == b"HTTP/1.1":
            keep_alive = True
        elif version == b"HTTP/1.0":
            keep_alive = False
        else:
            return None
        length = -1
        content_type = b""
        headers: list[tuple[str, str]] = []
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep or not name or name != name.strip():
                return None  # malformed, or whitespace before the colon: aiohttp rejects it
            value = value.strip()
            lower = name.lower()
            if lower == b"content-length":
                if length >= 0 or not value.isdigit():
                    return None
                length = int(value)
            elif lower in (b"transfer-encoding", b"expect", b"upgrade"):
                return None
            elif lower == b"content-type":
                content_type = value
            elif lower == b"connection":
                tokens = value.lower()
                if b"close" in tokens:
                    keep_alive = False
                elif b"keep-alive" in tokens:
                    keep_alive = True
            headers.append((name.decode("latin-1"), value.decode("latin-1")))
        if length < 0 or length > self.server.max_size:
            return None  # no length, or too large: aiohttp answers (411/413) as everywhere else
        if self.server.forwarded_only and not any(n.lower() == _FORWARDED_BY_KEY for n, _ in headers):
            return None  # the private port refuses what another broker process did not forward
        form = content_type.split(b";", 1)[0].strip().lower() == b"application/x-www-form-urlencoded"
        return _Head(raw_head, headers, length, keep_alive, form, self._context("long-polling", headers),
                     parts[1].decode("latin-1"))

    def _upgrade_head(self, raw_head: bytes, lines: list[bytes]) -> _Head | None:
        """A valid RFC 6455 upgrade with no body; anything doubtful goes to aiohttp, which says what is wrong."""
        headers: list[tuple[str, str]] = []
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep or not name or name != name.strip():
                return None
            headers.append((name.decode("latin-1"), value.strip().decode("latin-1")))
        found = CIMultiDict(headers)
        key = found.get("Sec-WebSocket-Key", "")
        if ("websocket" not in found.get("Upgrade", "").lower() or "upgrade" not in found.get("Connection", "").lower()
                or found.get("Sec-WebSocket-Version") != "13" or "Content-Length" in found
                or "Transfer-Encoding" in found or not _valid_key(key)):
            return None
        return _Head(raw_head, headers, 0, True, False, None)

    def _serve(self, head: _Head, body: bytes) -> None:
        server = self.server
        ctx = head.ctx
        assert ctx is not None  # a POST's head (an upgrade's has none and never gets here)
        try:
            messages = parse_long_poll_body(body, head.form, server.max_batch)
        except BodyError as exc:
            self._respond(exc.http_status, encode(bayeux.body_error_reply(exc.error)), None)
            return
        router = server.router
        if router is not None:
            tag = router.owner_tag(messages)
            if tag is not None:
                self._forwarding = asyncio.get_running_loop().create_task(
                    self._forward(router, tag, head, body, messages, ctx))
                return
        result = server.broker.handle_now(messages, ctx)
        if result is not None:
            self._answer(result)
        else:
            asyncio.get_running_loop().create_task(self._handle(messages, ctx))

    def _context(self, transport: str, header_pairs: list[tuple[str, str]]) -> RequestContext:
        headers = CIMultiDictProxy(CIMultiDict(header_pairs))
        cookies = _cookies(headers.get("Cookie"))
        return RequestContext(transport, headers, cookies, self.remote,
                              browser_id_of(cookies, self.server.cookie_name))

    def _upgrade(self, body_at: int, header_pairs: list[tuple[str, str]]) -> None:
        """Switch this connection to Bayeux over websocket (transports/lean_websocket.py) for good."""
        transport = self.transport
        self.server.connections.discard(self)
        self.transport = None
        ctx = self._context("websocket", header_pairs)
        transport.write(upgrade_response(ctx.headers["Sec-WebSocket-Key"]))
        websocket = LeanWebSocket(self.server, ctx)
        transport.set_protocol(websocket)
        websocket.connection_made(transport)
        rest, self.buffer = bytes(self.buffer[body_at:]), bytearray()
        if self._paused:
            transport.resume_reading()
        if rest:
            websocket.data_received(rest)

    async def _forward(self, router: SessionRouter, tag: str, head: _Head, body: bytes, messages: list[Message],
                       ctx: RequestContext) -> None:
        """Relay the request to the process owning its session; if that one is gone, answer here (402)."""
        try:
            reply = await router.forward(tag, head.target, head.headers, body)
        except Exception:  # a bug forwarding must not leave the connection waiting forever
            log.exception("forwarding a long-polling batch failed")
            reply = None
        self._forwarding = None
        if reply is None:
            await self._handle(messages, ctx)
        else:
            self._write(reply.raw)

    async def _handle(self, messages: list[Message], ctx: RequestContext) -> None:
        try:
            result = await self.server.broker.handle(messages, ctx)
        except Exception:  # a bug must cost this request, not the connection's later ones
            log.exception("handling a long-polling batch failed")
            self._respond(500, encode([bayeux.error_reply({}, bayeux.error(500, "internal server error"))]), None)
            return
        self._answer(result)

    def _answer(self, result: HandleResult) -> None:
        broker = self.server.broker
        if result.park is not None:
            if self.transport is None:  # gone while the batch was handled
                broker.abandon(result.park.session)
                return
            self.parked = result.park
            self._new_browser_id = result.new_browser_id
            broker.park(result.park, self._release)
            return
        events: list[bytes] = []
        session = result.deliver_to
        if session is not None and broker.sessions.get(session.client_id) is session:
            events = broker.take_events(session, result.connect_reply)
        self._respond(200, encode(result.replies, events), result.new_browser_id)

    def _release(self, reason: str) -> None:
        """The broker released the held connect; answered on the next loop turn (LeanHttp.release)."""
        self.server.release(self, reason)

    def answer_parked(self, reason: str) -> None:
        pending, self.parked = self.parked, None
        if pending is None:
            return  # the connection was lost meanwhile (connection_lost abandoned the session)
        transport = self.transport
        deliverable = transport is not None and not transport.is_closing()
        outcome = self.server.broker.complete_connect(pending.session, pending.reply, reason, deliverable)
        self._respond(outcome.status, encode(outcome.replies, outcome.events), self._new_browser_id)

    def _respond(self, status: int, body: bytes, browser_id: str | None) -> None:
        transport = self.transport
        if transport is None:
            return
        cookie = b""
        if browser_id is not None:
            cookie = b"Set-Cookie: " + self.server.cookie_prefix + browser_id.encode() + b"; HttpOnly; Path=/\r\n"
        connection = b"Connection: close\r\n" if self._close_after else b""
        self._write(b"HTTP/1.1 %d %s\r\nContent-Type: application/json; charset=utf-8\r\n"
                    b"Content-Length: %d\r\nDate: %s\r\nServer: cometd-broker\r\n%s%s\r\n%s"
                    % (status, _REASONS.get(status, b"Unknown"), len(body), self.server.clock.date(),
                       cookie, connection, body))

    def _write(self, response: bytes) -> None:
        """Send a whole response, then serve the next buffered request (or close, if asked to)."""
        transport = self.transport
        if transport is None:
            return
        transport.write(response)
        self.last_active = time.monotonic()
        self.busy = False
        if self._close_after:
            transport.close()
            return
        if self._paused:
            self._paused = False
            transport.resume_reading()
        if self.buffer:
            self._next_request()

    def _hand_over(self) -> None:
        """Give this connection, and every byte read so far, to aiohttp for the rest of its life."""
        transport = self.transport
        self.server.connections.discard(self)
        self.transport = None
        protocol = self.server.fallback()
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        data, self.buffer = bytes(self.buffer), bytearray()
        if self._paused:
            transport.resume_reading()
        protocol.data_received(data)


def _cookies(header: str | None) -> dict[str, str]:
    if not header:
        return {}
    cookies: dict[str, str] = {}
    for part in header.split(";"):
        name, sep, value = part.strip().partition("=")
        if sep and name and name not in cookies:
            value = value.strip()
            if len(value) > 1 and value[0] == value[-1] == '"':
                value = value[1:-1]
            cookies[name] = value
    return cookies


def _valid_key(key: str) -> bool:
    try:
        return len(base64.b64decode(key, validate=True)) == 16
    except ValueError:
        return False


