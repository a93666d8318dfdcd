"""RedisLink: one RESP3 connection that carries the Redis engine's script calls and its subscription.

Why one connection: in RESP3 a subscribed connection may still send commands, and Redis writes a
client's replies and the pub/sub messages it receives into one stream, in the order it executed
them. So the fan-out message a publish script sends comes back on the connection that called the
script, next to the script's reply, usually in the same read: one wake-up per publish round trip
instead of two (one per connection), one client for Redis to write to instead of two, and the
messages of every process interleaved with this one's replies in Redis's own order.

Why not redis-py here: this is the engine's hot path, and redis-py reads through a stream reader,
a task per subscription loop and a generic push handler (which formats every message for a debug
log line). Here an asyncio protocol feeds hiredis's C reader and hands each message to a callback
from `data_received`, with no task in between. Everything else (reads, trims, the pool) stays
redis-py's.

Failures: a closed or broken connection fails every call in flight with ConnectionError (the
engine reconnects); an error reply (`-ERR ...`) fails its own call only, as `hiredis.ReplyError`.
"""

from __future__ import annotations

import asyncio
import collections
import socket
import ssl
from collections.abc import Callable
from typing import Any

import hiredis
from redis.asyncio.connection import parse_url

from ..eventlog.redis import parse_version

if not hasattr(hiredis, "PushNotification"):  # RESP3 pushes told apart from replies: hiredis 3.0
    raise ImportError(f"hiredis {getattr(hiredis, '__version__', '?')} is too old: 3.0 or newer is needed")

_MORE = object()  # hiredis's "not enough data yet" (False would be RESP3's #f)
_SSL_REQS = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}

OnMessage = Callable[[bytes, bytes], None]  # (channel, data)


class RedisLink(asyncio.Protocol):
    """A RESP3 connection: `call` sends a command and returns its reply; pub/sub messages go to the
    callback given to `deliver_to` (until then they are kept, in order)."""

    def __init__(self) -> None:
        self._reader = hiredis.Reader(notEnoughData=_MORE)
        self._transport: asyncio.Transport | None = None
        self._waiting: collections.deque[asyncio.Future[Any]] = collections.deque()
        self._on_message: OnMessage | None = None
        self._held: list[tuple[bytes, bytes]] = []  # messages before deliver_to
        self._confirmed: dict[bytes, asyncio.Future[None]] = {}  # SUBSCRIBE confirmations awaited
        self._closed: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()
        self.replies = 0  # replies received (a watchdog compares it over time)
        self.server_version: tuple[int, ...] = ()  # Redis's, from its HELLO reply

    # ---- opening -----------------------------------------------------------------------------

    @classmethod
    async def open(cls, url: str, *, client_name: str, timeout: float) -> RedisLink:
        """Connect, say HELLO 3 (with AUTH and the client's name) and select the URL's database.
        Raises ConnectionError (or OSError) when Redis cannot be reached or refuses."""
        params = parse_url(url)
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(timeout):
            if "path" in params:
                _, link = await loop.create_unix_connection(cls, params["path"])
            else:
                _, link = await loop.create_connection(
                    cls, params.get("host", "localhost"), params.get("port", 6379),
                    ssl=_ssl_context(params) if url.startswith("rediss://") else None)
                sock = link._transport.get_extra_info("socket") if link._transport else None
                if sock is not None:  # notice a peer that vanished without closing (hours, not seconds)
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            try:
                hello: list[Any] = ["HELLO", "3"]
                if params.get("password") is not None:
                    hello += ["AUTH", params.get("username") or "default", params["password"]]
                server = await link.call(*hello, "SETNAME", client_name)
                link.server_version = parse_version(server.get(b"version", b"0"))
                if params.get("db"):
                    await link.call("SELECT", params["db"])
            except hiredis.ReplyError as exc:
                link.close()
                if str(exc).startswith(("ERR unknown command", "NOPROTO")):
                    raise ConnectionError(f"redis at {url} does not speak RESP3 (Redis 7.0 or newer is needed): "
                                          f"{exc}") from None
                raise ConnectionError(f"redis at {url} refused the connection: {exc}") from None
            except BaseException:
                link.close()
                raise
        return link

    # ---- commands and the subscription --------------------------------------------------------

    def call(self, *command: Any) -> asyncio.Future[Any]:
        """Send one command; the future gets its reply (or its ReplyError, or ConnectionError)."""
        return self.send(hiredis.pack_command(command))

    def send(self, packed: bytes) -> asyncio.Future[Any]:
        """`call` for a command packed already (hiredis.pack_command)."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if self._closed.done():
            future.set_exception(ConnectionError(self._lost_text()))
            return future
        self._waiting.append(future)
        self._transport.write(packed)  # type: ignore[union-attr]  # set until closed
        return future

    async def subscribe(self, channel: str, timeout: float) -> None:
        """SUBSCRIBE and wait until Redis confirms it: from then on no message on `channel` is missed."""
        if self._closed.done():
            raise ConnectionError(self._lost_text())
        key = channel.encode()
        confirmed = self._confirmed[key] = asyncio.get_running_loop().create_future()
        self._transport.write(hiredis.pack_command(("SUBSCRIBE", channel)))  # type: ignore[union-attr]
        try:
            async with asyncio.timeout(timeout):
                await asyncio.wait({confirmed, self._closed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._confirmed.pop(key, None)
        if not confirmed.done():
            raise ConnectionError(self._lost_text())

    def deliver_to(self, on_message: OnMessage) -> None:
        """From now on messages go to `on_message` (first those that came before, in order)."""
        held, self._held = self._held, []
        self._on_message = on_message
        for channel, data in held:
            self._message(channel, data)

    @property
    def in_flight(self) -> int:
        """Commands sent and not answered yet."""
        return len(self._waiting)

    async def wait_closed(self) -> BaseException | None:
        """Until the connection is closed; what closed it (None: `close()`)."""
        return await asyncio.shield(self._closed)

    def close(self, cause: BaseException | None = None) -> None:
        if self._transport is not None:
            self._transport.close()
        self._lost(cause)

    # ---- asyncio.Protocol --------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        reader.feed(data)
        while not self._closed.done():
            try:
                reply = reader.gets()
            except hiredis.ProtocolError as exc:
                self.close(ConnectionError(f"redis sent something that is not RESP: {exc}"))
                return
            if reply is _MORE:
                return
            if type(reply) is hiredis.PushNotification:
                self._push(reply)
            elif self._waiting:
                self.replies += 1
                future = self._waiting.popleft()
                if not future.done():  # (cancelled by its caller)
                    if isinstance(reply, hiredis.ReplyError):
                        future.set_exception(reply)
                    else:
                        future.set_result(reply)
            else:
                self.close(ConnectionError(f"redis sent a reply nobody asked for: {reply!r:.100}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost(exc if exc is not None else ConnectionError("redis closed the connection"))

    # ---- inside ------------------------------------------------------------------------------

    def _push(self, push: list[Any]) -> None:
        kind = push[0] if push else b""
        if kind == b"message" and len(push) == 3:
            if self._on_message is None:
                self._held.append((push[1], push[2]))
            else:
                self._message(push[1], push[2])
        elif kind == b"subscribe" and len(push) == 3:
            confirmed = self._confirmed.get(push[1])
            if confirmed is not None and not confirmed.done():
                confirmed.set_result(None)
        # Anything else (unsubscribe confirmations, client-tracking pushes) is not ours to act on.

    def _message(self, channel: bytes, data: bytes) -> None:
        try:
            self._on_message(channel, data)  # type: ignore[misc]  # set by deliver_to
        except Exception as exc:  # a bug: the link closes with it, the engine logs it and resubscribes
            self.close(exc)

    def _lost(self, cause: BaseException | None) -> None:
        if self._closed.done():
            return
        self._closed.set_result(cause)
        error = ConnectionError(self._lost_text())
        waiting, self._waiting = self._waiting, collections.deque()
        for future in waiting:
            if not future.done():
                future.set_exception(error)

    def _lost_text(self) -> str:
        cause = self._closed.result() if self._closed.done() else None
        if cause is None:
            return "redis connection closed"
        return f"redis connection lost: {cause or type(cause).__name__}"


def _ssl_context(params: dict[str, Any]) -> ssl.SSLContext:
    """TLS for rediss:// URLs, from the query options redis-py also reads (ssl_cert_reqs, ssl_ca_certs,
    ssl_check_hostname, ssl_certfile, ssl_keyfile)."""
    context = ssl.create_default_context(cafile=params.get("ssl_ca_certs"))
    reqs = _SSL_REQS.get(str(params.get("ssl_cert_reqs", "required")).lower(), ssl.CERT_REQUIRED)
    check = str(params.get("ssl_check_hostname", reqs != ssl.CERT_NONE)).lower() in ("true", "1", "yes")
    context.check_hostname = check and reqs != ssl.CERT_NONE
    context.verify_mode = reqs
    if params.get("ssl_certfile"):
        context.load_cert_chain(params["ssl_certfile"], params.get("ssl_keyfile"))
    return context
