"""The exchange: the one place that runs a client's batch and owns the hold of a /meta/connect.

A transport turns bytes into a batch of messages and a `RequestContext`, and hands them to
`Exchange.submit` with a `Responder`: the way to write an answer now or later. The exchange runs
the broker on the batch; it then answers at once with the replies and the session's queued events,
or parks the connect and answers it when events arrive, its hold time passes, a newer connect
supersedes it or the session ends. It is also the only code that takes events out of a session's
queue, for an answer or for a websocket push (`push`), so the pacing of a replay (the session's
`drained` event) holds on every transport.

The same shape as Faye's `Server.process(messages, request, callback)` with the hold owned by the
engine, and CometD's `ServerSessionImpl.flush()` handing the transport what to write.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from typing import Any, Protocol

import orjson

from . import bayeux
from .bayeux import Message
from .broker import Broker, HandleResult, PendingConnect, RequestContext
from .poll_hold import ABANDONED  # the client of a held connect went away
from .session import MESSAGES, REMOVED, SHUTDOWN, SUPERSEDED, ParkedConnect, ServerSession, Sink

log = logging.getLogger("cometd_broker")


class Answer:
    """What a transport writes for a batch: an HTTP status, the replies, then the events (already
    serialized, shared bytes), and a browser cookie to set (HTTP only)."""

    __slots__ = ("status", "replies", "events", "cookie")

    def __init__(self, status: int, replies: list[Message], events: list[bytes] | None = None,
                 cookie: str | None = None) -> None:
        self.status = status
        self.replies = replies
        self.events = events if events is not None else []
        self.cookie = cookie

    def body(self) -> bytes:
        """The JSON array of the replies then the events."""
        return encode(self.replies, self.events)

    def parts(self) -> list[bytes]:
        """Each reply and event serialized on its own (a websocket frame joins several answers)."""
        return [*map(orjson.dumps, self.replies), *self.events]


def encode(replies: Iterable[Message], events: Iterable[bytes] = ()) -> bytes:
    """One JSON array of replies then events; events are already-serialized shared bytes."""
    # One orjson call for all the replies (a batch of publishes has hundreds), then the events
    # spliced in before its closing bracket.
    head = orjson.dumps(replies if isinstance(replies, list) else list(replies))
    if not events:
        return head
    tail = b",".join(events)
    if not tail:
        return head
    return (b"[" if head == b"[]" else head[:-1] + b",") + tail + b"]"


class Responder(Protocol):
    """A transport's side of one request (HTTP) or one connection (websocket)."""

    def writable(self) -> bool:
        """False once the client is gone: events then stay queued for its next connect."""
        ...

    def respond(self, answer: Answer) -> None:
        """Write `answer` (called once per batch, now or when a held connect is released)."""
        ...


class HoldPolicy(Protocol):
    """Who may hold a long-poll: the HTTP layer's per-browser limit (http/browser.py). The
    exchange asks before holding a connect that came over HTTP."""

    def hold(self, session: ServerSession, replacing: bool) -> object:
        """Count one more held connect of `session` and return a token for `released`, or REFUSED
        when it may not be held now (`replacing`: it replaces the session's own held connect)."""
        ...

    def refuse(self, reply: Message) -> None:
        """Turn `reply` into the answer of a connect that may not be held (its advice)."""
        ...

    def released(self, token: object) -> None:
        """A connect counted by `hold` is no longer held."""
        ...


REFUSED = object()  # HoldPolicy.hold's answer for a connect that may not be held
# Inbound units (websocket frames, pipelined requests) one connection has served per event-loop turn
# before it yields: a flood of cheap messages must not hold the loop for a whole read's worth of them.
PER_TURN = 64


class _Hold(ParkedConnect):
    """A parked connect, whom to answer, and the hold policy that counts it."""

    __slots__ = ("exchange", "session", "responder", "cookie", "policy", "token", "done")

    def __init__(self, exchange: Exchange, session: ServerSession, reply: Message, responder: Responder,
                 cookie: str | None) -> None:
        super().__init__(reply)  # no release callback: finish() is overridden
        self.exchange = exchange
        self.session = session
        self.responder = responder
        self.cookie = cookie
        self.policy: HoldPolicy | None = None  # while it counts towards the policy's limit
        self.token: Any = None
        self.done = False

    def finish(self, reason: str) -> None:
        """Released by the session (events, timeout, superseded, removed): the exchange answers it."""
        self.cancel_timeout()
        self.exchange._release(self, reason)


class Exchange:
    """Runs batches on the broker and answers them through their responders."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self._holds: dict[Responder, _Hold] = {}
        # Held connects released during this loop turn, answered together on the next one, so the
        # events published in this turn travel with them; one callback for all of them.
        self._released: list[tuple[_Hold, str]] = []
        self._attached: dict[Sink, ServerSession] = {}  # websocket connection -> its session

    # ------------------------------------------------------------------ batches

    def submit(self, messages: list[Message], ctx: RequestContext, responder: Responder) -> asyncio.Task[None] | None:
        """Run a batch. The answer goes to `responder.respond`, at once, after the batch's awaits, or
        when its held connect is released. Returns the task while the batch is still running (a
        websocket handles its next batch after it), None when it is settled (answered or held)."""
        self.broker.reap()  # settle (and deliver) what was committed meanwhile before taking new work
        result = self.broker.handle_now(messages, ctx)
        if result is not None:
            self._settle(result, ctx, responder, True)
            return None
        return asyncio.get_running_loop().create_task(self._handle(messages, ctx, responder))

    async def process(self, messages: list[Message], ctx: RequestContext, writable: Any) -> Answer:
        """`submit` for a request handler that awaits its answer (aiohttp). `writable()` tells
        whether the client is still there. Cancelling it releases a held connect."""
        responder = _Awaiting(writable)
        task = self.submit(messages, ctx, responder)
        try:
            if task is not None:
                await task
            return await responder.future
        finally:
            future = responder.future
            if future.cancelled() or not future.done():  # the handler was cancelled: the client is gone
                self.hang_up(responder)

    async def _handle(self, messages: list[Message], ctx: RequestContext, responder: Responder) -> None:
        try:
            result = await self.broker.handle(messages, ctx)
        except Exception:  # a bug costs this batch, not the connection's later ones
            log.exception("handling a %s batch failed", ctx.transport)
            responder.respond(Answer(500, bayeux.body_error_reply(bayeux.error(500, "internal server error"))))
            return
        self._settle(result, ctx, responder, responder.writable())

    def _settle(self, result: HandleResult, ctx: RequestContext, responder: Responder, live: bool) -> None:
        """Answer a handled batch, or hold its connect. `live`: the client is still there (it is, when
        the batch was handled without waiting)."""
        pending = result.park
        sink = ctx.sink
        if sink is not None:
            session = pending.session if pending is not None else result.deliver_to
            if session is not None and session.sink is sink:
                self._attached[sink] = session
        if pending is not None:
            if not live:  # gone while the batch was handled
                self._abandoned(pending.session)
                return
            # Over HTTP, the browser policy limits held long-polls per browser; a websocket holds none.
            policy = ctx.browser if sink is None else None
            token = None if policy is None else policy.hold(pending.session, pending.session.parked is not None)
            if token is not REFUSED:
                self._park(pending, responder, result.new_browser_id, policy, token)
                return
            policy.refuse(pending.reply)  # answered at once, with advice to poll instead
            self.broker.connected(pending.session)
            result.deliver_to, result.connect_reply = pending.session, pending.reply
        events = self._take(result.deliver_to, result.connect_reply)
        responder.respond(Answer(200, result.replies, events, result.new_browser_id))

    def _take(self, session: ServerSession | None, connect_reply: Message | None) -> list[bytes]:
        if session is None or self.broker.sessions.get(session.client_id) is not session:
            return []
        return self.take_events(session, connect_reply)

    # ------------------------------------------------------------------ holds

    def _park(self, pending: PendingConnect, responder: Responder, cookie: str | None,
              policy: HoldPolicy | None, token: object) -> None:
        session = pending.session
        broker = self.broker
        hold = _Hold(self, session, pending.reply, responder, cookie)
        hold.policy, hold.token = policy, token  # counted: uncounted when released, whatever the reason
        if session.client_id not in broker.sessions:
            self._release(hold, REMOVED)
            return
        if len(session.queue):
            self._release(hold, MESSAGES)
            return
        if session.parked is not None:
            session.unpark(SUPERSEDED)
        self._holds[responder] = hold
        session.park(hold, pending.timeout, broker.holds, asyncio.get_running_loop())

    def _release(self, hold: _Hold, reason: str) -> None:
        """The broker released a held connect: uncount it now, answer it on the next loop turn."""
        policy = hold.policy
        if policy is not None:
            hold.policy = None
            policy.released(hold.token)
        holds = self._holds
        if holds.get(hold.responder) is hold:
            del holds[hold.responder]
        released = self._released
        if not released:
            asyncio.get_running_loop().call_soon(self._answer_released)
        released.append((hold, reason))

    def _answer_released(self) -> None:
        released, self._released = self._released, []
        for hold, reason in released:
            if hold.done:
                continue
            hold.done = True
            responder = hold.responder
            try:
                answer = self.complete(hold.session, hold.reply, reason, responder.writable())
                answer.cookie = hold.cookie
                responder.respond(answer)
            except Exception:  # a bug answering one must not leave the others unanswered
                log.exception("answering a held connect failed")

    def complete(self, session: ServerSession, reply: Message, reason: str, deliverable: bool = True) -> Answer:
        """The answer of a released connect. `deliverable` is False when the client went away, so
        queued events stay queued for its next connect."""
        broker = self.broker
        config = broker.config
        if reason != SHUTDOWN and session.latest_connect is not reply:
            # Released, then overtaken by a newer connect before it could be answered (a client
            # that gave up on this connection): the events belong to the newer one.
            reason = SUPERSEDED
        if reason == SUPERSEDED:
            broker.stats.superseded_connects += 1
            return Answer(config.duplicate_connect_status, [bayeux.error_reply(
                reply, bayeux.error(409, "connect_superseded (a newer /meta/connect of this session replaced it)"),
                bayeux.advice(bayeux.RETRY, config.interval))])
        alive = broker.sessions.get(session.client_id) is session
        events = self.take_events(session, reply) if deliverable and (alive or reason == SHUTDOWN) else []
        if reason == SHUTDOWN:
            return Answer(200, [bayeux.error_reply(reply, bayeux.error(503, "server_shutdown (the broker is stopping)"),
                                                   bayeux.advice(bayeux.HANDSHAKE_ADVICE, 0))], events)
        if not alive:
            error, reconnect = broker.ended(session.client_id)
            return Answer(200, [bayeux.error_reply(reply, error, bayeux.advice(reconnect, 0))])
        session.connected = True
        if session.parked is None:
            session.expires_at = time.monotonic() + broker.expiry_window
        return Answer(200, [reply], events)

    def take_events(self, session: ServerSession, connect_reply: Message | None) -> list[bytes]:
        """The session's queued events, to send now with `connect_reply`; with acknowledgements they
        become the reply's numbered batch, kept until the client acknowledges it. Emptying the queue
        lets a paced replay (the broker's catch-up) read its next page."""
        events = session.queue.drain()
        if session.ack is not None and connect_reply is not None:
            connect_reply["ext"] = {"ack": session.ack.send(events)}
        if session.drained is not None:
            session.drained.set()
        return events

    def hang_up(self, responder: Responder) -> None:
        """The client of `responder` went away: a connect it held stops being held, and its session
        expires normally unless the client comes back."""
        hold = self._holds.pop(responder, None)
        if hold is None:
            return  # nothing held (a released one is answered with writable() False: events stay queued)
        hold.done = True
        session = hold.session
        session.unpark(ABANDONED)  # it is the session's parked connect: a newer one would have released it
        self._abandoned(session)

    def _abandoned(self, session: ServerSession) -> None:
        if session.parked is None:
            session.expires_at = time.monotonic() + self.broker.expiry_window

    # ------------------------------------------------------------------ websocket push

    def push(self, sink: Sink) -> list[bytes]:
        """The events to push now to a websocket connection (`sink`) for its session. With the ack
        extension events travel only in connect replies, so nothing is pushed."""
        session = self._attached.get(sink)
        if session is None or session.sink is not sink or session.ack is not None or not len(session.queue):
            return []
        if self.broker.sessions.get(session.client_id) is not session:
            return []
        return self.take_events(session, None)

    def detach(self, sink: Sink) -> None:
        """A websocket closed: its session stays until expiry so the client can reconnect, and its
        queued events wait for that."""
        self.hang_up(sink)  # type: ignore[arg-type]  # a websocket connection is its own responder
        session = self._attached.pop(sink, None)
        if session is not None:
            self.broker.detach(session, sink)

    def close(self) -> None:
        """Answer what is still waiting for the next loop turn (the server is stopping)."""
        if self._released:
            self._answer_released()


class _Awaiting:
    """The responder of an awaiting request handler: the answer resolves a future."""

    __slots__ = ("future", "writable")

    def __init__(self, writable: Any) -> None:
        self.future: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self.writable = writable

    def respond(self, answer: Answer) -> None:
        if not self.future.done():
            self.future.set_result(answer)


__all__ = ["ABANDONED", "REFUSED", "SHUTDOWN", "Answer", "Exchange", "HoldPolicy", "Responder", "encode"]
