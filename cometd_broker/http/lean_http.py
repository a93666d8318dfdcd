"""A lean HTTP/1.1 path for Bayeux long-polling, in front of aiohttp on the same port.

Why: a long-poll cycle is one small POST answered with a small JSON array, thousands of times a
second. aiohttp's general request machinery (request and response objects, a task per request,
middleware and router) cost several times the broker's own work per cycle; profiles put it at
three quarters of the CPU. This protocol serves exactly the common case itself:

    POST <a Bayeux mount path> HTTP/1.1 with a Content-Length body of at most max_message_size,
    no Expect, no Upgrade, no Transfer-Encoding

and hands the connection to aiohttp, unchanged and with every byte it has read, at the first
request that is anything else (JSONP, the REST API, a chunked body, a bad head, a request from an
origin --allowed-origins does not allow, which aiohttp's middleware refuses...). Hand-over happens
only between requests, so aiohttp always sees a request from its first byte. Requests on one
connection are answered in order (pipelining is buffered).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import Callable, Iterable
from email.utils import formatdate
from typing import Any

from multidict import CIMultiDict, CIMultiDictProxy

from .. import bayeux
from ..bayeux import BodyError, Message
from ..broker import RequestContext
from ..cluster.forwarding import Relay
from ..cluster.private_port import FORWARDED_BY
from ..exchange import PER_TURN, Answer, Exchange, encode
from .bad_requests import BAD_REQUESTS
from .browser import BrowserPolicy, browser_id_of
from .http import parse_long_poll_body
from .lean_websocket import LeanWebSocket, upgrade_response
from .origins import OriginPolicy, Verdict
from .wire import MAX_HEAD, HeadReader, MalformedHead, RequestHead, UnsupportedHead, parse_head

_FORWARDED_BY_KEY = FORWARDED_BY.lower()
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

    def __init__(self, exchange: Exchange, browser: BrowserPolicy, mounts: Iterable[str],
                 fallback: Callable[[], asyncio.Protocol], *, router: Relay | None = None,
                 forwarded_only: bool = False) -> None:
        broker = exchange.broker
        self.exchange = exchange
        self.browser = browser
        self.request_timeout = broker.config.request_timeout
        self.router = router  # relays long-polls of sessions owned by another cluster process
        # The private port of cluster/routing.py: only long-polls another process forwarded (no websocket).
        self.forwarded_only = forwarded_only
        self.fallback = fallback  # aiohttp's protocol factory (web.Server)
        self.prefixes = tuple(m.rstrip("/") for m in mounts)
        self.max_size = broker.config.max_message_size
        self.max_batch = broker.config.max_batch
        self.cookie_name = browser.cookie_name
        self.cookie_prefix = self.cookie_name.encode() + b"="
        self.cookie_secure = browser.secure  # the port speaks TLS (a connection over TLS sets it too)
        self.connections: set[LeanHttpConnection] = set()
        self.clock = _Clock()
        self._known_paths: dict[bytes, bool] = {}
        self._sweeper: asyncio.TimerHandle | None = None
        self.long_polling = "long-polling" in broker.transports
        self.websocket = "websocket" in broker.transports and not forwarded_only
        self.websockets: set[LeanWebSocket] = set()
        self.origins = OriginPolicy(broker.config.allowed_origins)

    def __call__(self) -> asyncio.Protocol:
        if self._sweeper is None:
            self._schedule_sweep()
        return LeanHttpConnection(self)

    def serves(self, target: bytes) -> bool:
        """Whether a POST to this request target is a Bayeux long-poll (cached: a client uses few paths)."""
        known = self._known_paths.get(target)
        if known is None:
            path = target.split(b"?", 1)[0].decode("latin-1")
            # Percent-encoded paths go to aiohttp's router, which decodes them its own way (not %2F).
            known = (self.long_polling and "%" not in path
                     and any(path == p or path.startswith(p + "/") for p in self.prefixes))
            if len(self._known_paths) < 1024:  # bounded: paths are client-chosen
                self._known_paths[target] = known
        return known

    def cors(self, origin: str | None, host: str | None) -> bytes | None:
        """The CORS header lines of an answer to a request with this Origin and Host (b"" for none);
        None for an origin that is refused: aiohttp's middleware answers it (http/origins.py). The private
        port serves what another process of the cluster checked (it relays Origin and Host unchanged)."""
        if origin is None:
            return b""
        verdict = self.origins.judge(origin, host)
        if verdict is not Verdict.ALLOWED:
            return None if verdict is Verdict.FOREIGN and not self.forwarded_only else b""
        return b"".join(b"%s: %s\r\n" % (name.encode("latin-1"), value.encode("latin-1"))
                        for name, value in self.origins.answer_headers(origin))

    def _schedule_sweep(self) -> None:
        period = min(KEEPALIVE_TIMEOUT, self.request_timeout) / 5
        self._sweeper = asyncio.get_running_loop().call_later(period, self._sweep)

    def _sweep(self) -> None:
        """Close keep-alive connections idle for longer than KEEPALIVE_TIMEOUT (one answering a request,
        a held connect included, is not idle), and answer 408 to those whose request is still
        incomplete after `request_timeout`."""
        now = time.monotonic()
        idle_before = now - KEEPALIVE_TIMEOUT
        started_before = now - self.request_timeout
        for conn in list(self.connections):
            if conn.busy:
                continue
            if conn.started and conn.started < started_before:
                conn.too_slow()
            elif not conn.buffer and conn.last_active < idle_before:
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

    __slots__ = ("raw", "body_at", "headers", "length", "keep_alive", "form", "ctx", "target", "cors")

    def __init__(self, raw: bytes, headers: list[tuple[str, str]], length: int, keep_alive: bool, form: bool,
                 ctx: RequestContext | None, target: str = "", cors: bytes = b"") -> None:
        self.raw = raw  # through the blank line
        self.body_at = len(raw)
        self.headers = headers
        self.length = length
        self.keep_alive = keep_alive
        self.form = form  # application/x-www-form-urlencoded (message=...)
        self.ctx = ctx
        self.target = target  # the request target, relayed when the request is forwarded
        self.cors = cors  # CORS header lines of its answer (an allowed cross origin), else b""


class LeanHttpConnection(asyncio.Protocol):
    """One client connection, served by the lean path until it must be handed to aiohttp."""

    __slots__ = ("server", "transport", "buffer", "busy", "started", "last_active", "remote", "_head",
                 "_close_after", "_reading_paused", "_writing_paused", "_pumping", "_last_head", "_forwarding",
                 "_reader", "_cors", "_secure_cookie", "_pump_scheduled")

    def __init__(self, server: LeanHttp) -> None:
        self.server = server
        self.transport: Any = None
        self.buffer = bytearray()
        self.busy = False  # a request is being answered (or held); later ones wait in the buffer
        self.started = 0.0  # monotonic time the first byte of the request still incomplete arrived
        self.last_active = time.monotonic()
        self.remote: str | None = None
        self._head: _Head | None = None  # of the request whose body is still arriving
        self._close_after = False
        self._reading_paused = False
        self._writing_paused = False  # the peer does not read our answers: serve nothing more
        self._pumping = False  # inside _pump: an answer written now must not serve the next request itself
        self._pump_scheduled = False  # PER_TURN requests served this turn: the rest on the next (see _pump)
        # A client repeats the same head on every long-poll of its connection: the last POST's
        # parse, with its request context, is reused when the bytes are equal.
        self._last_head: _Head | None = None
        self._forwarding: asyncio.Task[None] | None = None  # relaying a request to its session's owner
        self._reader = HeadReader()  # where each head ends; refuses a malformed one before it is whole
        self._cors = b""  # CORS header lines of the answer being made (http/origins.py)
        self._secure_cookie = server.cookie_secure

    # ------------------------------------------------------------------ asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.remote = peer[0] if isinstance(peer, tuple) else None
        if transport.get_extra_info("sslcontext") is not None:  # an SSL transport: we read decrypted bytes
            self._secure_cookie = True
        self.server.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        self.transport = None
        self.server.exchange.hang_up(self)  # the client went away during a held connect
        forwarding, self._forwarding = self._forwarding, None
        if forwarding is not None:  # ... or during a forwarded one: the owner sees it abandoned too
            forwarding.cancel()

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        buffer = self.buffer
        if not buffer and not self.busy:
            self.started = now
        buffer += data
        self.last_active = now
        if self.busy or self._writing_paused or self._pump_scheduled:
            self._flow()
        else:
            self._pump()

    def pause_writing(self) -> None:
        """The peer does not read what we write: stop serving and reading until it does."""
        self._writing_paused = True
        self._flow()

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._flow()
        self._pump()

    def _flow(self) -> None:
        """Read only while what was read can be served: not while the peer leaves our answers
        unread, nor while a request is answered and a whole request more is already buffered."""
        transport = self.transport
        if transport is None:
            return
        pause = (self._writing_paused or self._pump_scheduled
                 or (self.busy and len(self.buffer) > self.server.max_size + MAX_HEAD))
        if pause != self._reading_paused:
            self._reading_paused = pause
            (transport.pause_reading if pause else transport.resume_reading)()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def too_slow(self) -> None:
        """The request did not arrive whole within the server's request timeout: 408, then close."""
        log.info("closing a connection from %s: its request was incomplete after %.0f s", self.remote,
                 self.server.request_timeout)
        self._close_after = True
        self.buffer.clear()
        self._cors = b""
        self._respond(408, encode(bayeux.body_error_reply(bayeux.error(
            408, f"request_timeout (the request was not received whole within {self.server.request_timeout:g} s)"))),
            None)

    # ------------------------------------------------------------------ Responder (exchange.py)

    def writable(self) -> bool:
        transport = self.transport
        return transport is not None and not transport.is_closing()

    def respond(self, answer: Answer) -> None:
        self._respond(answer.status, answer.body(), answer.cookie)

    # ------------------------------------------------------------------ requests

    def _pump(self) -> None:
        """Serve buffered requests one after the other, as long as each is answered at once (a loop,
        not a recursion: a thousand pipelined requests are a thousand turns of it)."""
        if self._pumping:
            return
        self._pumping = True
        self._pump_scheduled = False
        buffer = self.buffer
        served = 0
        try:
            while buffer and not self.busy and not self._writing_paused and self.transport is not None:
                if served == PER_TURN:  # the rest next turn, with reading paused: others get the loop
                    self._pump_scheduled = True
                    asyncio.get_running_loop().call_soon(self._pump)
                    break
                served += 1
                before = len(buffer)
                self._next_request()
                buffer = self.buffer  # a hand-over or an upgrade takes the buffer
                if len(buffer) == before:
                    break  # incomplete: the rest is on its way
        finally:
            self._pumping = False
        if not buffer:
            self.started = 0.0
        elif not self.busy and not self.started:
            self.started = time.monotonic()  # a pipelined request, incomplete: its time starts now
        if self._reading_paused or self._writing_paused or self.buffer:
            self._flow()

    def _next_request(self) -> None:
        """Serve the buffered request if it is whole and ours; hand the connection over if it is not ours,
        refuse it if its head is malformed."""
        buffer = self.buffer
        if not buffer:
            return
        head = self._head
        if head is None:
            try:
                size = self._reader.find(buffer)
                if size < 0:
                    return
                raw_head = bytes(buffer[:size])
                head = self._last_head
                if head is None or raw_head != head.raw:  # a long-poll repeats its head: parsed once
                    head = self._parse_head(raw_head)
                    if head is None:
                        self._hand_over()
                        return
                    self._last_head = head if head.ctx is not None else None
            except MalformedHead as exc:
                self._refuse(str(exc))
                return
            except UnsupportedHead:
                self._hand_over()  # aiohttp reads it with its own limits, and answers its own 4xx
                return
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
        self.started = time.monotonic() if buffer else 0.0
        self._close_after = not head.keep_alive
        self.busy = True
        self._serve(head, body)

    def _parse_head(self, raw_head: bytes) -> _Head | None:
        """The request head if it is a plain Bayeux long-poll POST (or, with no context, a websocket
        upgrade we accept); None to leave it to aiohttp. Raises MalformedHead (wire.py)."""
        parsed = parse_head(raw_head)
        server = self.server
        if parsed.version not in ("1.1", "1.0") or not server.serves(parsed.target.encode("latin-1")):
            return None
        cors = server.cors(parsed.get("origin"), parsed.get("host"))
        if cors is None:
            return None  # a foreign origin: refused by aiohttp's middleware, as on the aiohttp path
        if parsed.method == "GET" and server.websocket and parsed.version == "1.1":
            return self._upgrade_head(raw_head, parsed)
        length = parsed.content_length
        if (parsed.method != "POST" or not server.long_polling or parsed.chunked or parsed.upgrade
                or length is None or length > server.max_size):
            return None  # no length, or too large: aiohttp answers (411/413) as everywhere else
        names = parsed.names
        if "expect" in names or "upgrade" in names:
            return None  # 100-continue, or an upgrade offer: aiohttp's to answer
        if server.forwarded_only and _FORWARDED_BY_KEY not in names:
            return None  # the private port refuses what another broker process did not forward
        content_type = parsed.get("content-type") or ""
        form = content_type.split(";", 1)[0].strip().lower() == "application/x-www-form-urlencoded"
        headers = parsed.headers
        return _Head(raw_head, headers, length, parsed.keep_alive, form, self._context("long-polling", headers),
                     parsed.target, cors)

    def _upgrade_head(self, raw_head: bytes, parsed: RequestHead) -> _Head | None:
        """A valid RFC 6455 upgrade with no body; anything doubtful goes to aiohttp, which says what is wrong."""
        if (not parsed.upgrade or parsed.content_length is not None or parsed.chunked
                or (parsed.get("upgrade") or "").lower() != "websocket"
                or parsed.get("sec-websocket-version") != "13"
                or not _valid_key(parsed.get("sec-websocket-key") or "")):
            return None
        return _Head(raw_head, parsed.headers, 0, True, False, None)

    def _refuse(self, reason: str) -> None:
        """Answer a malformed head with 400 and close: where its body would end, and so where a next
        request would start, is not known (RFC 9112 section 11.2)."""
        BAD_REQUESTS.report(self.remote, reason)
        transport, self.transport = self.transport, None
        if transport is None:
            return
        self.server.connections.discard(self)
        self.buffer = bytearray()
        body = b"Bad Request: " + reason.encode("ascii", "replace") + b"\n"
        transport.write(b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\n"
                        b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))
        transport.close()

    def _serve(self, head: _Head, body: bytes) -> None:
        server = self.server
        ctx = head.ctx
        assert ctx is not None  # a POST's head (an upgrade's has none and never gets here)
        self._cors = head.cors
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
        server.exchange.submit(messages, ctx, self)

    def _context(self, transport: str, header_pairs: list[tuple[str, str]]) -> RequestContext:
        headers = CIMultiDictProxy(CIMultiDict(header_pairs))
        cookies = _cookies(headers.get("Cookie"))
        browser = self.server.browser
        return RequestContext(transport, headers, cookies, self.remote,
                              browser_id_of(cookies, browser.cookie_name), browser=browser)

    def _upgrade(self, body_at: int, header_pairs: list[tuple[str, str]]) -> None:
        """Switch this connection to Bayeux over websocket (http/lean_websocket.py) for good."""
        transport = self.transport
        self.server.connections.discard(self)
        self.transport = None
        ctx = self._context("websocket", header_pairs)
        transport.write(upgrade_response(ctx.headers["Sec-WebSocket-Key"]))
        websocket = LeanWebSocket(self.server, ctx)
        transport.set_protocol(websocket)
        websocket.connection_made(transport)
        rest, self.buffer = bytes(self.buffer[body_at:]), bytearray()
        if self._reading_paused:
            transport.resume_reading()
        if rest:
            websocket.data_received(rest)

    async def _forward(self, router: Relay, tag: str, head: _Head, body: bytes, messages: list[Message],
                       ctx: RequestContext) -> None:
        """Relay the request to the process owning its session; if that one is gone, answer here (402)."""
        try:
            reply = await router.forward(tag, head.target, head.headers, body)
        except Exception:  # a bug forwarding must not leave the connection waiting forever
            log.exception("forwarding a long-polling batch failed")
            reply = None
        self._forwarding = None
        if reply is None:
            self.server.exchange.submit(messages, ctx, self)
        else:
            self._write(reply.raw)

    def _respond(self, status: int, body: bytes, browser_id: str | None) -> None:
        transport = self.transport
        if transport is None:
            return
        cookie = b""
        if browser_id is not None:
            cookie = (b"Set-Cookie: " + self.server.cookie_prefix + browser_id.encode()
                      + (b"; HttpOnly; Path=/; SameSite=Lax; Secure\r\n" if self._secure_cookie
                         else b"; HttpOnly; Path=/; SameSite=Lax\r\n"))
        connection = b"Connection: close\r\n" if self._close_after else b""
        self._write(b"HTTP/1.1 %d %s\r\nContent-Type: application/json; charset=utf-8\r\n"
                    b"Content-Length: %d\r\nDate: %s\r\nServer: cometd-broker\r\n"
                    b"X-Content-Type-Options: nosniff\r\n%s%s%s\r\n%s"
                    % (status, _REASONS.get(status, b"Unknown"), len(body), self.server.clock.date(),
                       cookie, self._cors, connection, body))

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
        if self.buffer:
            self._pump()  # the next pipelined request
        elif self._reading_paused:
            self._flow()

    def _hand_over(self) -> None:
        """Give this connection, and every byte read so far, to aiohttp for the rest of its life."""
        transport = self.transport
        self.server.connections.discard(self)
        self.transport = None
        protocol = self.server.fallback()
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        data, self.buffer = bytes(self.buffer), bytearray()
        if self._reading_paused:
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


