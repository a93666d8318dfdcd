"""Bayeux over websocket on the lean path: RFC 6455 framing on a plain asyncio.Protocol.

Why: an idle websocket session is what a contact center has thousands of. Through aiohttp each
one kept a request handler task, a reader and writer with their queues, a heartbeat timer and our
own writer task; here it is one protocol object with a small receive buffer, and liveness is
checked by one sweep for all connections (LeanHttp._sweep) instead of a timer each.

Semantics are those of transports/websocket.py: replies and events leave in the order they were
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
import struct
import time
from collections import deque
from typing import TYPE_CHECKING, Any

import orjson

from .. import bayeux
from ..bayeux import BodyError, Message
from ..broker import HandleResult, PendingConnect, RequestContext
from ..session import ServerSession
from .http import parse_json
from .websocket import outgoing

if TYPE_CHECKING:
    from .lean_http import LeanHttp

log = logging.getLogger("cometd_broker.websocket")

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
TEXT, BINARY, CONTINUATION, CLOSE, PING, PONG = 0x1, 0x2, 0x0, 0x8, 0x9, 0xA
# Close codes (RFC 6455 7.4.1)
GOING_AWAY, PROTOCOL_ERROR, INVALID_DATA, TOO_BIG = 1001, 1002, 1007, 1009
CLOSE_TIMEOUT = 2.0  # seconds a peer gets to close after our protocol-error close frame
PING_AFTER = 30.0  # seconds of silence before the sweep pings a connection (aiohttp's heartbeat was 30 s)


def accept_key(key: str) -> str:
    """Sec-WebSocket-Accept for a client's Sec-WebSocket-Key."""
    return base64.b64encode(hashlib.sha1(key.encode("ascii") + _GUID).digest()).decode("ascii")


def upgrade_response(key: str) -> bytes:
    return (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + accept_key(key).encode("ascii") + b"\r\n\r\n")


def frame(opcode: int, payload: bytes) -> bytes:
    """One unmasked, unfragmented server frame."""
    size = len(payload)
    if size < 126:
        head = struct.pack("!BB", 0x80 | opcode, size)
    elif size < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 126, size)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 127, size)
    return head + payload


def unmask(payload: bytes, mask: bytes) -> bytes:
    """XOR with the 4-byte mask, a whole machine word at a time."""
    if not payload:
        return payload
    repeated = (mask * (len(payload) // 4 + 1))[:len(payload)]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(repeated, "little")).to_bytes(len(payload), "little")


class LeanWebSocket(asyncio.Protocol):
    """One upgraded connection: a session's sink while its client is connected here."""

    __slots__ = ("server", "transport", "ctx", "session", "buffer", "fragments", "fragment_opcode", "batches",
                 "busy", "released", "pending", "flush_scheduled", "paused", "closing", "last_seen", "pinged")

    def __init__(self, server: LeanHttp, ctx: RequestContext) -> None:
        self.server = server
        self.transport: Any = None
        self.ctx = ctx
        ctx.sink = self
        self.session: ServerSession | None = None
        self.buffer = bytearray()
        self.fragments: list[bytes] = []
        self.fragment_opcode = 0
        self.batches: deque[list[Message]] = deque()  # received while a batch is being handled
        self.busy = False
        self.released: list[tuple[PendingConnect, str]] = []
        self.pending: list[bytes] = []  # replies not yet written (only while the transport is paused)
        self.flush_scheduled = False
        self.paused = False  # the transport's buffer is full: the peer does not read
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
        if self.session is not None:
            # The session stays until expiry so the client can reconnect; queued events wait for it.
            self.server.broker.detach(self.session, self)

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self.wake()

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return  # after our close frame: the peer's remaining bytes are read and dropped
        self.buffer += data
        self.last_seen = time.monotonic()
        self.pinged = False
        self._read_frames()

    # ------------------------------------------------------------------ frames in

    def _read_frames(self) -> None:
        buffer = self.buffer
        limit = self.server.max_size
        while not self.closing:
            if len(buffer) < 2:
                return
            first, second = buffer[0], buffer[1]
            fin, opcode = first & 0x80, first & 0x0F
            if first & 0x70 or not second & 0x80:
                self.fail(PROTOCOL_ERROR, "reserved bits set or client frame not masked")
                return
            size = second & 0x7F
            at = 2
            if size == 126:
                if len(buffer) < 4:
                    return
                size = int.from_bytes(buffer[2:4], "big")
                at = 4
            elif size == 127:
                if len(buffer) < 10:
                    return
                size = int.from_bytes(buffer[2:10], "big")
                at = 10
            if opcode >= 0x8 and (size > 125 or not fin):
                self.fail(PROTOCOL_ERROR, "control frames are short and not fragmented")
                return
            if size + sum(map(len, self.fragments)) > limit:
                self.fail(TOO_BIG, f"message larger than max_message_size ({limit} bytes)")
                return
            if len(buffer) < at + 4 + size:
                return
            payload = unmask(bytes(buffer[at + 4:at + 4 + size]), bytes(buffer[at:at + 4]))
            del buffer[:at + 4 + size]
            self._frame(fin, opcode, payload)

    def _frame(self, fin: int, opcode: int, payload: bytes) -> None:
        if opcode in (TEXT, BINARY):
            if self.fragments:
                self.fail(PROTOCOL_ERROR, "a new message started inside a fragmented one")
                return
            if fin:
                self._message(payload)
            else:
                self.fragments, self.fragment_opcode = [payload], opcode
        elif opcode == CONTINUATION:
            if not self.fragments:
                self.fail(PROTOCOL_ERROR, "continuation frame without a message")
                return
            self.fragments.append(payload)
            if fin:
                whole, self.fragments = b"".join(self.fragments), []
                self._message(whole)
        elif opcode == PING:
            self._write(frame(PONG, payload))
        elif opcode == PONG:
            pass  # liveness is noted for every frame in data_received
        elif opcode == CLOSE:
            code = payload[:2] if len(payload) >= 2 else b""
            self._write(frame(CLOSE, code))
            self._close_transport()
        else:
            self.fail(PROTOCOL_ERROR, f"unknown opcode {opcode}")

    def _message(self, data: bytes) -> None:
        try:
            messages = parse_json(data, self.server.max_batch)
        except BodyError as exc:
            self._send([orjson.dumps(m) for m in bayeux.body_error_reply(exc.error)])
            return
        if not messages:
            return
        if self.busy:
            self.batches.append(messages)  # answered in order, after the batch being handled
            return
        self._handle(messages)

    # ------------------------------------------------------------------ batches

    def _handle(self, messages: list[Message]) -> None:
        result = self.server.broker.handle_now(messages, self.ctx)
        if result is not None:
            self._accept(result)
            return
        self.busy = True
        asyncio.get_running_loop().create_task(self._handle_async(messages))

    async def _handle_async(self, messages: list[Message]) -> None:
        try:
            result = await self.server.broker.handle(messages, self.ctx)
        except Exception:  # a bug costs this batch, not the connection
            log.exception("handling a websocket batch failed")
            result = HandleResult(bayeux.body_error_reply(bayeux.error(500, "internal server error")))
        self.busy = False
        if self.transport is None:
            return
        self._accept(result)
        while self.batches and not self.busy:
            self._handle(self.batches.popleft())

    def _accept(self, result: HandleResult) -> None:
        broker = self.server.broker
        if result.park is not None:
            self.session = result.park.session
            broker.park(result.park, self._release(result.park))
            return
        session = result.deliver_to
        events: list[bytes] = []
        if session is not None and session.sink is self:
            self.session = session
            if broker.sessions.get(session.client_id) is session:
                events = broker.take_events(session, result.connect_reply)
        self._send([*map(orjson.dumps, result.replies), *events])

    def _release(self, pending: PendingConnect) -> Any:
        def release(reason: str) -> None:
            # Answered at the flush, so events queued in the same tick travel with the reply.
            self.released.append((pending, reason))
            self.wake()
        return release

    # ------------------------------------------------------------------ frames out

    def wake(self) -> None:
        """Events are queued for the session (Sink): flush them on the next loop turn, once."""
        if not self.flush_scheduled and self.transport is not None:
            self.flush_scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def _send(self, parts: list[bytes]) -> None:
        if parts:
            self.pending.extend(parts)
            self.flush()

    def flush(self) -> None:
        """Write pending replies, released connects and queued events as one frame."""
        self.flush_scheduled = False
        if self.transport is None or self.closing:
            return
        parts, self.pending = self.pending, []
        released, self.released = self.released, []
        # While the peer does not read (paused), events wait in the bounded session queue.
        outgoing(self.server.broker, self, self.session, parts, released, push_events=not self.paused)
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
        self._write(frame(CLOSE, struct.pack("!H", code) + reason.encode()[:100]))
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
        self._write(frame(CLOSE, struct.pack("!H", GOING_AWAY) + b"server shutdown"))
        self._close_transport()

    def _close_transport(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.close()
