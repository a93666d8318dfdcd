"""The websocket transport: one reader loop and one writer task per connection.

All writes go through the writer, so replies and events leave in the order
they were produced, and events queued within one event-loop tick leave in one
frame. A clientId obtained over HTTP may be used here (aiocometd does that).
"""

from __future__ import annotations

import asyncio
import logging

import orjson
from aiohttp import WSMsgType, web

from .. import bayeux
from ..bayeux import BodyError
from ..broker import Broker, HandleResult, PendingConnect
from ..logs import session_fields
from ..session import ServerSession
from ..tasks import cancel_and_wait
from .http import context_for, parse_json

log = logging.getLogger("cometd_broker.websocket")

HEARTBEAT_SECONDS = 30.0


def outgoing(broker: Broker, sink: object, session: ServerSession | None, parts: list[bytes],
             released: list[tuple[PendingConnect, str]], *, push_events: bool) -> None:
    """Complete a websocket frame's parts (replies already in `parts`): the answers of released
    connects, then the session's queued events. Events are pushed as they come unless the session
    acknowledges batches (they then wait for a connect reply, see Broker.take_events) or the
    caller cannot write now (`push_events` False: they wait in the bounded session queue)."""
    for pending, reason in released:
        outcome = broker.complete_connect(pending.session, pending.reply, reason)
        parts.extend([*map(orjson.dumps, outcome.replies), *outcome.events])
    if (push_events and session is not None and session.sink is sink and session.ack is None
            and len(session.queue)):
        parts.extend(session.queue.drain())


class WebSocketConnection:
    """A session's sink while its client is connected over this websocket."""

    def __init__(self, broker: Broker, ws: web.WebSocketResponse) -> None:
        self.broker = broker
        self.ws = ws
        self.session: ServerSession | None = None
        self._pending: list[bytes] = []
        self._wake = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._released_connects: list[tuple[PendingConnect, str]] = []

    def wake(self) -> None:
        self._wake.set()

    async def run(self, request: web.Request) -> None:
        self._writer = asyncio.get_running_loop().create_task(self._write_forever(), name="websocket-writer")
        ctx = context_for(request, "websocket", self.broker.config.browser_cookie)
        ctx.sink = self
        try:
            async for frame in self.ws:
                if frame.type not in (WSMsgType.TEXT, WSMsgType.BINARY):
                    continue
                try:
                    messages = parse_json(frame.data, self.broker.config.max_batch)
                except BodyError as exc:
                    self._send([orjson.dumps(m) for m in bayeux.body_error_reply(exc.error)])
                    continue
                if messages:
                    self._accept(await self.broker.handle(messages, ctx))
        finally:
            if self.session is not None:
                self.broker.detach(self.session, self)
            await self._stop_writer()

    def _accept(self, result: HandleResult) -> None:
        if result.park is not None:
            pending = result.park
            self.session = pending.session
            self.broker.park(pending, lambda reason: self._released(pending, reason))
            return
        session = result.deliver_to
        events: list[bytes] = []
        if session is not None and session.sink is self:
            self.session = session
            if self.broker.sessions.get(session.client_id) is session:
                events = self.broker.take_events(session, result.connect_reply)
        self._send([*map(orjson.dumps, result.replies), *events])

    def _released(self, pending: PendingConnect, reason: str) -> None:
        # Answered by the writer, so events queued in the same tick travel with the reply, and
        # a connect released while a batch is handled (by a disconnect) follows that batch's replies.
        self._released_connects.append((pending, reason))
        self._wake.set()

    def _send(self, parts: list[bytes]) -> None:
        if parts:
            self._pending.extend(parts)
            self._wake.set()

    async def _write_forever(self) -> None:
        ws = self.ws
        while not ws.closed:
            await self._wake.wait()
            self._wake.clear()
            if ws.closed:
                break  # leave queued events for the client's next connection
            parts, self._pending = self._pending, []
            released, self._released_connects = self._released_connects, []
            outgoing(self.broker, self, self.session, parts, released, push_events=True)
            if parts:
                await ws.send_frame(b"[" + b",".join(parts) + b"]", WSMsgType.TEXT)

    async def flush_and_close(self) -> None:
        """Let the writer send what is pending (the final connect replies), then close."""
        self._wake.set()
        for _ in range(100):  # bounded: at most ~1 s for a stuck peer
            if not self._pending and not self._released_connects:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0)  # let the writer finish the frame it took
        await self.ws.close(code=1001, message=b"server shutdown")

    async def _stop_writer(self) -> None:
        writer, self._writer = self._writer, None
        try:
            await cancel_and_wait(writer)
        except ConnectionError as exc:  # the peer went away mid-write
            session = self.session
            log.debug("websocket write failed: %s", exc,
                      extra=session_fields(session.client_id, session.user_id) if session is not None else None)


class WebSocketTransport:
    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.connections: set[WebSocketConnection] = set()

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        # The heartbeat pings find connections whose network died silently; the session
        # then lives on until expiry so the client can come back.
        ws = web.WebSocketResponse(max_msg_size=self.broker.config.max_message_size, autoping=True,
                                   heartbeat=HEARTBEAT_SECONDS)
        await ws.prepare(request)
        connection = WebSocketConnection(self.broker, ws)
        self.connections.add(connection)
        try:
            await connection.run(request)
        finally:
            self.connections.discard(connection)
        return ws

    async def close_all(self) -> None:
        await asyncio.gather(*(c.flush_and_close() for c in list(self.connections)), return_exceptions=True)
