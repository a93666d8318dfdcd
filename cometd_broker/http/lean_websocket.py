"""Bayeux over websocket on the lean path: RFC 6455 framing on a plain asyncio.Protocol.

Why: an idle websocket session is what a contact center has thousands of. Through aiohttp each
one kept a request handler task, a reader and writer with their queues, a heartbeat timer and our
own writer task; here it is one protocol object with a small receive buffer, and liveness is
checked by one sweep for all connections (LeanHttp._sweep) instead of a timer each.

Semantics are those of http/websocket.py: replies and events leave in the order they were
produced; events queued within one event-loop tick leave in one frame; batches of one connection
are handled one after the other; with the ack extension events travel only in connect replies.
Writes respect the transport's flow control: while the peer does not read, events stay in the
session queue, whose limits then apply (a slow consumer is cut as on every transport).
Not offered: extensions (permessage-deflate) and subprotocols.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import time
from collections import deque
from typing import Any, Protocol

from .. import bayeux
from ..bayeux import BodyError, Message
from ..broker import RequestContext
from ..exchange import PER_TURN, Answer, Exchange
from .http import parse_json
from .ws_frames import (
    GOING_AWAY,
    NORMAL,
    PING,
    PONG,
    TEXT,
    Close,
    Failure,
    FrameReader,
    Ping,
    close_frame,
    frame,
)
from .ws_frames import Message as WebSocketMessage


class WebSocketServer(Protocol):
    """What a connection needs of the lean server that upgraded it (lean_http.LeanHttp)."""

    exchange: Exchange
    max_size: int  # bytes of a message, fragments assembled
    max_batch: int  # Bayeux messages per websocket message
    websockets: set[Any]  # the open connections, for the liveness sweep and shutdown

log = logging.getLogger("cometd_broker.websocket")

MAX_WAITING = 64  # batches received while one is handled, before the connection stops being read

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
CLOSE_TIMEOUT = 2.0  # seconds a peer gets to close after our protocol-error close frame
PING_AFTER = 30.0  # seconds of silence before the sweep pings a connection (aiohttp's heartbeat was 30 s)


def accept_key(key: str) -> str:
    """Sec-WebSocket-Accept for a client's Sec-WebSocket-Key."""
    return base64.b64encode(hashlib.sha1(key.encode("ascii") + _GUID).digest()).decode("ascii")


def upgrade_response(key: str) -> bytes:
    return (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + accept_key(key).encode("ascii") + b"\r\n\r\n")


class LeanWebSocket(asyncio.Protocol):
    """One upgraded connection: a session's sink while its client is connected here."""

    __slots__ = ("server", "transport", "ctx", "reader", "pong_due", "batches", "busy", "pending",
                 "flush_scheduled", "paused", "reading_paused", "closing", "last_seen", "pinged", "backlog",
                 "drain_scheduled")

    def __init__(self, server: WebSocketServer, ctx: RequestContext) -> None:
        self.server = server
        self.transport: Any = None
        self.ctx = ctx
        ctx.sink = self
        self.reader = FrameReader(server.max_size)
        self.pong_due: bytes | None = None  # the latest ping not answered while the peer did not read
        self.batches: deque[list[Message]] = deque()  # received while a batch is being handled
        self.backlog: deque[Any] = deque()  # frames read and not served yet (see _drain)
        self.drain_scheduled = False
        self.busy = False
        self.pending: list[bytes] = []  # answers to write with the next frame (flush joins them with events)
        self.flush_scheduled = False
        self.paused = False  # the transport's buffer is full: the peer does not read
        self.reading_paused = False
        self.closing = False
        self.last_seen = time.monotonic()
        self.pinged = False

    # ------------------------------------------------------------------ asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.server.websockets.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.websockets.discard(self)
        self.transport = None
        self.closing = True
        # The session stays until expiry so the client can reconnect; queued events wait for it.
        self.server.exchange.detach(self)

    def pause_writing(self) -> None:
        """The peer does not read: stop reading it too, so what it sends cannot pile up answers."""
        self.paused = True
        self._flow()

    def resume_writing(self) -> None:
        self.paused = False
        self._flow()
        if self.pong_due is not None:
            self._write(frame(PONG, self.pong_due))
            self.pong_due = None
        self.wake()

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return  # after our close frame: the peer's remaining bytes are read and dropped
        self.last_seen = time.monotonic()
        self.pinged = False
        self.backlog.extend(self.reader.receive_data(data))
        if not self.drain_scheduled:
            self._drain()

    def _drain(self) -> None:
        """Serve the frames read, PER_TURN of them per loop turn; the rest wait, with reading paused,
        for the next turn, so one connection's flood of cheap frames cannot hold the loop."""
        self.drain_scheduled = False
        backlog = self.backlog
        served = 0
        while backlog:
            if self.closing:
                backlog.clear()
                return
            if served == PER_TURN:
                self.drain_scheduled = True
                asyncio.get_running_loop().call_soon(self._drain)
                break
            served += 1
            event = backlog.popleft()
            kind = type(event)
            if kind is WebSocketMessage:
                self._message(event.payload)
            elif kind is Ping:
                self._pong(event.payload)
            elif kind is Close:
                # Echo the peer's code (RFC 6455 §5.5.1), 1000 when it gave none, and end the connection.
                self._write(close_frame(NORMAL if event.code is None else event.code))
                self._close_transport()
            elif kind is Failure:
                self.fail(event.code, event.reason)
            # a Pong: liveness is noted for every read above
        self._flow()

    # ------------------------------------------------------------------ frames in

    def _pong(self, payload: bytes) -> None:
        """Answer a ping; while the peer does not read, only the latest ping is remembered and answered
        when it reads again (RFC 6455 §5.5.3 allows answering only the most recent), so a peer that
        pings without reading cannot grow the write buffer."""
        if self.paused:
            self.pong_due = payload
        else:
            self._write(frame(PONG, payload))

    def _message(self, data: bytes) -> None:
        try:
            messages = parse_json(data, self.server.max_batch)
        except BodyError as exc:
            self.respond(Answer(400, bayeux.body_error_reply(exc.error)))
            return
        if not messages:
            return
        if self.busy:
            self.batches.append(messages)  # answered in order, after the batch being handled
            self._flow()
            return
        self._handle(messages)

    def _flow(self) -> None:
        """Read only while what is read can be answered: not while the peer leaves our frames unread,
        nor while MAX_WAITING batches already wait for the one being handled, nor while frames already
        read wait for the next turn."""
        transport = self.transport
        if transport is None or self.closing:
            return
        pause = self.paused or len(self.batches) >= MAX_WAITING or bool(self.backlog)
        if pause != self.reading_paused:
            self.reading_paused = pause
            (transport.pause_reading if pause else transport.resume_reading)()

    # ------------------------------------------------------------------ batches

    def _handle(self, messages: list[Message]) -> None:
        task = self.server.exchange.submit(messages, self.ctx, self)
        if task is not None:
            self.busy = True
            task.add_done_callback(self._handled)

    def _handled(self, _: object) -> None:
        self.busy = False
        while self.batches and not self.busy and self.transport is not None:
            self._handle(self.batches.popleft())
        self._flow()

    # ------------------------------------------------------------------ Responder and Sink (exchange.py)

    def writable(self) -> bool:
        return self.transport is not None and not self.closing

    def respond(self, answer: Answer) -> None:
        parts = answer.parts()
        if parts:
            self.pending.extend(parts)
            self.flush()

    def wake(self) -> None:
        """Events are queued for the session: flush them on the next loop turn, once."""
        if not self.flush_scheduled and self.transport is not None:
            self.flush_scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    # ------------------------------------------------------------------ frames out

    def flush(self) -> None:
        """Write pending answers and the session's queued events as one frame. While the peer does
        not read (paused), events wait in the bounded session queue."""
        self.flush_scheduled = False
        if self.transport is None or self.closing:
            return
        parts, self.pending = self.pending, []
        if not self.paused:
            parts.extend(self.server.exchange.push(self))
        if parts:
            self._write(frame(TEXT, b"[" + b",".join(parts) + b"]"))

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.closing:
            self.transport.write(data)

    # ------------------------------------------------------------------ closing

    def ping_or_close(self, now: float) -> None:
        """The sweep: ping a silent connection; close one that did not answer the last ping."""
        if now - self.last_seen < PING_AFTER:
            return
        if self.pinged:
            log.debug("websocket peer silent for %.0f s: closing", now - self.last_seen)
            if self.transport is not None:
                self.transport.abort()
            return
        self.pinged = True
        self._write(frame(PING, b""))

    def fail(self, code: int, reason: str) -> None:
        """Close for a protocol error. The peer may still be sending: closing the socket with unread
        bytes would reset it and lose our close frame, so shut our side and keep reading until the
        peer closes (bounded by a timer)."""
        log.info("closing websocket from %s: %s", self.ctx.remote, reason)
        self._write(close_frame(code, reason))
        self.closing = True
        transport = self.transport
        if transport is None:
            return
        if transport.can_write_eof():
            transport.write_eof()
            asyncio.get_running_loop().call_later(CLOSE_TIMEOUT, transport.abort)
        else:
            transport.close()

    def shutdown(self) -> None:
        """The server stops: send what is pending (held connects were answered by the broker), then close."""
        if self.flush_scheduled:
            self.flush()
        self._write(close_frame(GOING_AWAY, "server shutdown"))
        self._close_transport()

    def _close_transport(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.close()
