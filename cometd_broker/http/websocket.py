"""The websocket transport over aiohttp: one reader loop and one writer task per connection.

All writes go through the writer, so replies and events leave in the order they were produced,
and events queued within one event-loop tick leave in one frame. A clientId obtained over HTTP
may be used here (aiocometd does that). While the peer does not read, the reader stops reading
(what it would answer is bounded), and events wait in the session's bounded queue.
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import WSMsgType, web

from .. import bayeux
from ..bayeux import BodyError
from ..exchange import PER_TURN, Answer, Exchange
from ..tasks import cancel_and_wait
from .browser import BrowserPolicy
from .http import context_for, parse_json

log = logging.getLogger("cometd_broker.websocket")

HEARTBEAT_SECONDS = 30.0
# Bytes of answers waiting for the writer above which the reader stops reading: a client that
# sends without reading what it is answered costs this much, not the server's memory.
MAX_PENDING = 1 << 20


class WebSocketConnection:
    """A session's sink while its client is connected over this websocket, and its responder."""

    def __init__(self, exchange: Exchange, ws: web.WebSocketResponse) -> None:
        self.exchange = exchange
        self.ws = ws
        self.max_batch = exchange.broker.config.max_batch
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._wake = asyncio.Event()
        self._written = asyncio.Event()  # set by the writer after each frame
        self._writer: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ Sink and Responder

    def wake(self) -> None:
        self._wake.set()

    def writable(self) -> bool:
        return not self.ws.closed

    def respond(self, answer: Answer) -> None:
        parts = answer.parts()
        if parts:
            self._pending.extend(parts)
            self._pending_bytes += sum(map(len, parts))
            self._wake.set()

    # ------------------------------------------------------------------ reading

    async def run(self, request: web.Request, browser: BrowserPolicy) -> None:
        self._writer = asyncio.get_running_loop().create_task(self._write_forever(), name="websocket-writer")
        ctx = context_for(request, "websocket", browser)
        ctx.sink = self
        since_yield = 0
        try:
            async for frame in self.ws:
                # aiohttp hands over frames already read without suspending: a flood of cheap messages
                # would hold the loop for a whole read's worth of them. Let every other connection in.
                since_yield += 1
                if since_yield >= PER_TURN:
                    since_yield = 0
                    await asyncio.sleep(0)
                if frame.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
                    continue
                try:
                    messages = parse_json(frame.data, self.max_batch)
                except BodyError as exc:
                    self.respond(Answer(400, bayeux.body_error_reply(exc.error)))
                    messages = []
                if messages:
                    task = self.exchange.submit(messages, ctx, self)
                    if task is not None:
                        await task  # batches of one connection are handled one after the other
                while self._pending_bytes > MAX_PENDING and not self.ws.closed:
                    self._written.clear()
                    await self._written.wait()  # the peer is not reading: neither do we
        finally:
            self.exchange.detach(self)
            await self._stop_writer()

    # ------------------------------------------------------------------ writing

    async def _write_forever(self) -> None:
        ws = self.ws
        while not ws.closed:
            await self._wake.wait()
            self._wake.clear()
            if ws.closed:
                break  # leave queued events for the client's next connection
            parts, self._pending = self._pending, []
            parts.extend(self.exchange.push(self))
            if parts:
                await ws.send_frame(b"[" + b",".join(parts) + b"]", WSMsgType.TEXT)
            self._pending_bytes = sum(map(len, self._pending))
            self._written.set()

    async def flush_and_close(self) -> None:
        """Let the writer send what is pending (the final connect replies), then close."""
        self._wake.set()
        for _ in range(100):  # bounded: at most ~1 s for a stuck peer
            if not self._pending:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0)  # let the writer finish the frame it took
        await self.ws.close(code=1001, message=b"server shutdown")

    async def _stop_writer(self) -> None:
        writer, self._writer = self._writer, None
        self._written.set()
        try:
            await cancel_and_wait(writer)
        except ConnectionError as exc:  # the peer went away mid-write
            log.debug("websocket write failed: %s", exc)


class WebSocketTransport:
    def __init__(self, exchange: Exchange, browser: BrowserPolicy) -> None:
        self.exchange = exchange
        self.browser = browser
        self.max_size = exchange.broker.config.max_message_size
        self.connections: set[WebSocketConnection] = set()

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        # The heartbeat pings find connections whose network died silently; the session
        # then lives on until expiry so the client can come back.
        ws = web.WebSocketResponse(max_msg_size=self.max_size, autoping=True,
                                   heartbeat=HEARTBEAT_SECONDS)
        await ws.prepare(request)
        connection = WebSocketConnection(self.exchange, ws)
        self.connections.add(connection)
        try:
            await connection.run(request, self.browser)
        finally:
            self.connections.discard(connection)
        return ws

    async def close_all(self) -> None:
        await asyncio.gather(*(c.flush_and_close() for c in list(self.connections)), return_exceptions=True)
