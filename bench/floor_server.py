"""The floor: a bare Bayeux-shaped long-polling server, for bench/run.py to measure the broker against.

    python bench/floor_server.py PORT [--host 127.0.0.1] [--timeout 25]

What it is for: the least CPU a Python server on uvloop + httptools + orjson can spend per
long-polling delivery while doing the work Bayeux requires of any server. bench/run.py runs it
beside cometd-broker and the Node.js peers, driven by the same bench/loadgen.py, and reports the
broker's CPU-seconds per 100k deliveries as a ratio to this floor's, measured in the same run.

What it does, and no more: HTTP/1.1 keep-alive with Content-Length bodies (heads parsed by
httptools' llhttp, bodies by orjson), a JSON array of replies to every request on any path, and
  /meta/handshake   a random clientId and the usual advice
  /meta/connect     the first after a handshake answered at once; later ones held until an event
                    is queued for the client or the hold timeout passes; a newer connect releases
                    the held one; the reply carries the client's queued events
  /meta/subscribe   exact channel names only (no wildcards)
  /meta/disconnect  forgets the session and releases its held connect
  a publish         acknowledged; serialized once ({"channel", "data"}) and its bytes appended to
                    every subscriber's queue; the sessions it woke are answered once the whole
                    request has been handled, so a batch of publishes costs one reply per client
  an unknown clientId is answered with 402::session_unknown and handshake advice.

What it deliberately leaves out, being a measuring stick and not a server: message validation
(fields, types, channel syntax), authentication and authorization, extensions (ack, replay),
wildcard subscriptions, /meta/unsubscribe, service channels, session expiry (a session whose
client vanished stays until the process stops), the browser cookie and multiple-clients advice,
message ids, logging, metrics, chunked bodies, and websocket. A request pipelined behind a held
connect on the same connection first releases that connect (replies stay in order).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal

import httptools
import orjson
import uvloop

HOLD_SWEEP_SECONDS = 1.0  # how often held connects are checked against the timeout
MAX_QUEUE = 10_000  # events kept per client; beyond it the oldest are dropped (a bound, not a feature)
MAX_BODY = 1 << 20  # bytes of one request body
HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
ADVICE = {"reconnect": "retry", "interval": 0, "timeout": 25_000}


class Session:
    __slots__ = ("channels", "client_id", "connected", "held", "held_id", "held_since", "queue")

    def __init__(self, client_id: str) -> None:
        self.client_id = client_id
        self.queue: list[bytes] = []  # serialized events, in order
        self.channels: set[str] = set()
        self.connected = False  # a first connect has been answered
        self.held: HttpConnection | None = None  # the connection of the held /meta/connect
        self.held_id: object = None
        self.held_since = 0.0


class Floor:
    """Sessions, subscriptions and held connects; no I/O but the connections it answers."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.sessions: dict[str, Session] = {}
        self.subscribers: dict[str, list[Session]] = {}
        self.held: set[Session] = set()

    def handle(self, conn: HttpConnection, body: bytes) -> None:
        """One request's messages: replies written to `conn` (or held), woken sessions answered."""
        try:
            messages = orjson.loads(body)
        except orjson.JSONDecodeError:
            conn.respond(b'[{"successful":false,"error":"400::bad json"}]')
            return
        if isinstance(messages, dict):
            messages = [messages]
        replies: list[bytes] = []
        woken: set[Session] = set()
        hold: tuple[Session, object] | None = None
        for m in messages:
            channel = m.get("channel")
            session = self.sessions.get(m.get("clientId"))
            if channel == "/meta/handshake":
                session = Session(os.urandom(16).hex())
                self.sessions[session.client_id] = session
                replies.append(orjson.dumps({"channel": channel, "successful": True, "clientId": session.client_id,
                                             "version": "1.0", "supportedConnectionTypes": ["long-polling"],
                                             "advice": ADVICE, "id": m.get("id")}))
            elif session is None:
                replies.append(orjson.dumps({"channel": channel, "successful": False, "error": "402::session_unknown",
                                             "advice": {"reconnect": "handshake", "interval": 0}, "id": m.get("id")}))
            elif channel == "/meta/connect":
                if session.connected and not session.queue and len(messages) == 1:
                    hold = (session, m.get("id"))
                else:
                    replies.extend(session.queue)
                    session.queue = []
                    replies.append(self.connect_reply(session, m.get("id"), not session.connected))
                    session.connected = True
                    self.release(session)  # a newer connect answers the one held before it
            elif channel == "/meta/subscribe":
                name = m.get("subscription")
                if name not in session.channels:
                    session.channels.add(name)
                    self.subscribers.setdefault(name, []).append(session)
                replies.append(orjson.dumps({"channel": channel, "successful": True, "subscription": name,
                                             "clientId": session.client_id, "id": m.get("id")}))
            elif channel == "/meta/disconnect":
                self.forget(session)
                replies.append(orjson.dumps({"channel": channel, "successful": True, "id": m.get("id")}))
            else:
                subscribers = self.subscribers.get(channel)
                if subscribers:
                    event = orjson.dumps({"channel": channel, "data": m.get("data")})
                    for target in subscribers:
                        queue = target.queue
                        queue.append(event)
                        if len(queue) > MAX_QUEUE:
                            del queue[0]
                        if target.held is not None:
                            woken.add(target)
                ack = {"channel": channel, "successful": True}
                if "id" in m:
                    ack["id"] = m["id"]
                replies.append(orjson.dumps(ack))
        for session in woken:
            self.release(session)
        if hold is not None:
            self.park(conn, *hold)
        else:
            conn.respond(b"[" + b",".join(replies) + b"]")

    @staticmethod
    def connect_reply(session: Session, message_id: object, first: bool = False) -> bytes:
        reply = {"channel": "/meta/connect", "successful": True, "clientId": session.client_id, "id": message_id}
        if first:
            reply["advice"] = ADVICE
        return orjson.dumps(reply)

    def park(self, conn: HttpConnection, session: Session, message_id: object) -> None:
        self.release(session)
        session.held, session.held_id = conn, message_id
        session.held_since = asyncio.get_running_loop().time()
        conn.holding = session
        self.held.add(session)

    def release(self, session: Session) -> None:
        """Answer the session's held connect, if any, with its queued events."""
        conn = session.held
        if conn is None:
            return
        session.held = None
        conn.holding = None
        self.held.discard(session)
        events, session.queue = session.queue, []
        events.append(self.connect_reply(session, session.held_id))
        conn.respond(b"[" + b",".join(events) + b"]")

    def forget(self, session: Session) -> None:
        self.release(session)
        self.sessions.pop(session.client_id, None)
        for name in session.channels:
            subscribers = self.subscribers.get(name)
            if subscribers and session in subscribers:
                subscribers.remove(session)

    def dropped(self, session: Session) -> None:
        """The connection of a held connect closed: nothing to answer."""
        session.held = None
        self.held.discard(session)

    async def sweep(self) -> None:
        """Answer held connects older than the timeout: one pass a second, not a timer per connect."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(HOLD_SWEEP_SECONDS)
            limit = loop.time() - self.timeout
            for session in [s for s in self.held if s.held_since <= limit]:
                self.release(session)


class HttpConnection(asyncio.Protocol):
    """One keep-alive connection: httptools parses the head, the body is collected and handed on."""

    def __init__(self, floor: Floor) -> None:
        self.floor = floor
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.body: list[bytes] = []
        self.size = 0
        self.keep_alive = True
        self.holding: Session | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        if self.holding is not None:
            self.floor.dropped(self.holding)
            self.holding = None
        self.transport = None

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.close()

    # httptools callbacks
    def on_message_begin(self) -> None:
        self.body, self.size = [], 0
        if self.holding is not None:  # pipelined behind a held connect: answer that first
            self.floor.release(self.holding)

    def on_body(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > MAX_BODY:
            self.close()
            return
        self.body.append(chunk)

    def on_message_complete(self) -> None:
        if self.transport is None:
            return
        self.keep_alive = self.parser.should_keep_alive()
        self.floor.handle(self, b"".join(self.body))

    def respond(self, body: bytes) -> None:
        if self.transport is None:
            return
        self.transport.write(HEAD % len(body) + body)
        if not self.keep_alive:
            self.close()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def serve(host: str, port: int, timeout: float) -> None:
    floor = Floor(timeout)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: HttpConnection(floor), host, port, backlog=1024)
    stop = loop.create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
    sweeper = loop.create_task(floor.sweep())
    print(f"floor listening on http://{host}:{port}/cometd", flush=True)
    try:
        await stop
    finally:
        sweeper.cancel()
        server.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("port", type=int)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--timeout", type=float, default=25.0, help="seconds a /meta/connect is held (default 25)")
    args = p.parse_args()
    uvloop.run(serve(args.host, args.port, args.timeout))


if __name__ == "__main__":
    main()
