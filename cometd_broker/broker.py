"""The Broker: sessions, the five meta channels, publish routing and per-user channels.

Transports decode a body into messages and call `Broker.handle`; the result
holds the replies, whose session's queue to drain into the response, and
possibly a connect to park. Everything protocol-specific is decided here or in
`bayeux.py`; transports only move bytes.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from . import bayeux
from .bayeux import Message
from .channel import Pattern, SubscriptionIndex, channel_error, is_meta, is_service, is_wildcard
from .config import BrokerConfig
from .engine import Engine, EngineUnavailable, Outgoing, Published, open_engine
from .eventlog import EventLog, EventLogUnavailable, Retention, RetentionTask, is_redis_url, open_event_log
from .extensions import ack, replay
from .extensions.ack import AckState
from .login_throttle import LoginThrottle, claimed_login, retry_seconds
from .logs import LineBudget, bound, session_fields
from .security import (
    AuthenticationError,
    Authenticator,
    Authorizer,
    ChannelAuthorizer,
    CredentialsAuthenticator,
    HandshakeRequest,
    Principal,
)
from .session import (
    DROP_OLDEST_POLICY,
    REMOVED,
    SHUTDOWN,
    SUPERSEDED,
    HoldTimers,
    ServerSession,
    SessionQueue,
    Sink,
)
from .stats import BrokerStats, Disconnect
from .tasks import cancel_and_wait

log = logging.getLogger("cometd_broker")

# Meta messages handled without waiting on anything (see Broker.handle_now).
_AT_ONCE = frozenset((bayeux.CONNECT, bayeux.UNSUBSCRIBE, bayeux.DISCONNECT))
_TOMBSTONES = 10_000  # recently ended sessions remembered so their next message gets a specific error
_CATCH_UP_RETRY_MIN = 0.1  # seconds before a catch-up retries an unavailable event log; doubles ...
_CATCH_UP_RETRY_MAX = 5.0  # ... up to this

# Listeners are plain functions called synchronously; they must not block.
SessionListener = Callable[[ServerSession], None]
RemovalListener = Callable[[ServerSession, str], None]
ServiceHandler = Callable[[ServerSession, Message], "Awaitable[Any] | Any"]


@dataclass(slots=True)
class RequestContext:
    """Where a batch of messages came from."""

    transport: str
    headers: Mapping[str, str] = field(default_factory=dict)
    cookies: Mapping[str, str] = field(default_factory=dict)
    remote: str | None = None
    browser_id: str | None = None  # the browser cookie presented, if it is one the broker could have issued
    sink: Sink | None = None  # the websocket connection, for websocket batches
    # The HTTP layer's browser policy (http/browser.py): binds sessions to browser cookies and
    # limits held long-polls per browser. None: no binding (an in-process client, a forwarded request).
    browser: Any = None


@dataclass(slots=True)
class PendingConnect:
    """A /meta/connect the transport must park with `Broker.park`."""

    session: ServerSession
    reply: Message
    timeout: float  # seconds


@dataclass(slots=True)
class HandleResult:
    replies: list[Message]
    deliver_to: ServerSession | None = None  # this session's events go in the response ...
    connect_reply: Message | None = None  # ... with this connect reply (see Broker.take_events)
    park: PendingConnect | None = None
    new_browser_id: str | None = None  # set the browser cookie to this


@dataclass(slots=True)
class _Ended:
    """Why a session ended. `reconnect` is the advice for the connect it had parked then (a
    client's own /meta/disconnect: "none"); any later message naming it is told to handshake."""

    error: str
    reconnect: str


class Broker:
    """A Bayeux server without I/O of its own: transports feed it, `publish` routes events."""

    def __init__(self, config: BrokerConfig | None = None, *, authenticator: Authenticator | None = None,
                 authorizer: Authorizer | None = None) -> None:
        self.config = config or BrokerConfig()
        self.config.validate()
        cfg = self.config
        self.stats = BrokerStats()  # counters for /metrics: one attribute increment where each thing happens
        self.authenticator: Authenticator = authenticator or CredentialsAuthenticator(
            cfg.user_map, tokens=cfg.token_map, allow_anonymous=cfg.allow_anonymous, roles=cfg.role_map,
            token_verifier=cfg.jwt_verifier)
        self.authorizer: Authorizer = authorizer or ChannelAuthorizer(cfg.personal_prefix, cfg.rule_list)
        # Failed logins per user and address; the contact-center REST API shares it (one budget per guesser).
        self.login_throttle = LoginThrottle(cfg.login_max_failures, cfg.login_window,
                                            max_keys=cfg.login_tracked_keys)
        self.personal = Pattern.parse(cfg.personal_prefix)
        self.transports = cfg.transport_list
        self.sessions: dict[str, ServerSession] = {}
        self._refusal_lines = LineBudget()  # lines about requests refused for want of the session's cookie
        # Starts every clientId this process issues; in a cluster the process tag (cluster/routing.py) that
        # lets the other processes forward a session's requests here.
        self.client_id_prefix = ""
        self._users: dict[str, set[ServerSession]] = {}
        self._index: SubscriptionIndex[ServerSession] = SubscriptionIndex()
        self._user_index: dict[str, SubscriptionIndex[ServerSession]] = {}
        self.holds = HoldTimers()  # the timeouts of parked connects
        self._ended: OrderedDict[str, _Ended] = OrderedDict()
        self._services: list[tuple[Pattern, ServiceHandler]] = []
        self._added_listeners: list[SessionListener] = []
        self._removed_listeners: list[RemovalListener] = []
        self.expiry_window = (cfg.interval + cfg.max_interval) / 1000
        self._sweeper: asyncio.Task[None] | None = None
        self._closing = False
        self._connect_advice = bayeux.advice(bayeux.RETRY, cfg.interval, cfg.timeout)
        # A Redis log's keys start with the deployment's namespace (redis_names.py), the prefix its part.
        store_options = {"prefix": cfg.redis_prefix} if is_redis_url(cfg.event_log_url) else {}
        self.event_log: EventLog = open_event_log(
            cfg.event_log_url, Retention(max_age=cfg.retention_age, max_count=cfg.retention_count),
            sqlite_options={"checkpoint_period": cfg.wal_checkpoint_period,
                            "wal_limit": cfg.wal_limit_mb * 1024 * 1024}, **store_options)
        self._retention = RetentionTask(self.event_log, period=cfg.retention_period)
        # What `reap` calls as each batch of requests comes in: the event log's, and what owners add.
        self._reapers: list[Callable[[], None]] = [self.event_log.reap]
        # The newest id of each stream whose delivery has started (see ReplayMark and _catch_up).
        self._latest_ids: dict[str, int] = {}
        # False while the engine may be missing fan-out messages (its Redis connection is down):
        # catch-ups then keep reading the log instead of going live (see _fanout_lost).
        self._fanout_live = True
        self._fanout_restored = asyncio.Event()
        self._fanout_restored.set()
        self.engine: Engine = open_engine(cfg.redis, self.event_log, self._dispatch,
                                          on_lost=self._fanout_lost, on_restored=self._fanout_resume)

    # ----------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep_forever(), name="session-sweeper")
            self._retention.start()
            await self.engine.start()

    async def close(self) -> None:
        """Answer every parked connect with re-handshake advice, end every session, stop the sweeper."""
        self._closing = True
        sweeper, self._sweeper = self._sweeper, None
        await cancel_and_wait(sweeper)
        self.stats.ended(Disconnect.SHUTDOWN, len(self.sessions))
        for session in list(self.sessions.values()):
            session.unpark(SHUTDOWN)
            self._remove(session, bayeux.error(503, "server_shutdown (the broker is stopping)"),
                         bayeux.HANDSHAKE_ADVICE)
        self.holds.close()
        await self.engine.close()
        await self._retention.stop()
        await self.event_log.close()

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self.config.sweep_period)
            self.sweep(time.monotonic())

    def sweep(self, now: float) -> int:
        """End sessions whose expiry passed; returns how many ended."""
        expired = [s for s in self.sessions.values() if s.expires_at < now]
        self.stats.ended(Disconnect.EXPIRED, len(expired))
        for session in expired:
            self._remove(session, bayeux.error(402, "session_unknown (expired: no /meta/connect within "
                                                    f"{self.config.max_interval} ms)"), bayeux.HANDSHAKE_ADVICE)
        return len(expired)

    # ----------------------------------------------------------------- public API

    def on_session_added(self, listener: SessionListener) -> None:
        self._added_listeners.append(listener)

    def on_session_removed(self, listener: RemovalListener) -> None:
        """`listener(session, reason)` runs after a session ended (disconnect, expiry, slow consumer...)."""
        self._removed_listeners.append(listener)

    def on_service(self, pattern: str, handler: ServiceHandler) -> None:
        """Handle client publishes on a /service channel; a non-None result is sent back to the caller only."""
        if channel_error(pattern) or not is_service(pattern):
            raise ValueError(f"{pattern!r} is not a valid /service channel or pattern")
        self._services.append((Pattern.parse(pattern), handler))

    def session(self, client_id: str) -> ServerSession | None:
        return self.sessions.get(client_id)

    def principal_of(self, client_id: str) -> Principal | None:
        session = self.sessions.get(client_id)
        return session.principal if session else None

    def sessions_of(self, user_id: str) -> list[ServerSession]:
        return list(self._users.get(user_id, ()))

    def is_personal(self, channel: str) -> bool:
        return Pattern.parse(channel).within(self.personal)

    def reap(self) -> None:
        """Settle what the stores' threads finished so far (cometd_broker.job_thread.LoopHandoff). The
        exchange calls it as each batch of requests comes in: on a busy loop, a commit is then delivered
        within the turn that learns of it, not after the turn's other callbacks."""
        for reap in self._reapers:
            reap()

    def add_reaper(self, reap: Callable[[], None]) -> None:
        """Have `reap` called with the event log's (the contact center's state store adds its own)."""
        self._reapers.append(reap)

    def remove_reaper(self, reap: Callable[[], None]) -> None:
        """Stop calling `reap` (its store is closed)."""
        if reap in self._reapers:
            self._reapers.remove(reap)

    async def publish(self, channel: str, data: Any, *, ext: dict[str, Any] | None = None) -> int:
        """Publish to every session subscribed to a shared channel; returns how many received it."""
        self._check_server_channel(channel)
        if self.is_personal(channel):
            raise ValueError(f"{channel} is a per-user channel: use publish_to_user")
        return await self._publish_event(channel, None, channel, bayeux.delivered(channel, data, ext=ext))

    async def publish_to_user(self, user_id: str, channel: str, data: Any, *,
                              ext: dict[str, Any] | None = None) -> int:
        """Publish on a per-user channel: only `user_id`'s sessions (all of them) can receive it.
        Recorded even when none is connected, so the user's desktop can replay it later."""
        self._check_personal_channel(channel)
        return await self._publish_event(channel, user_id, user_stream(user_id, channel),
                                         bayeux.delivered(channel, data, ext=ext))

    async def publish_to_users(self, events: Sequence[tuple[str, str, Any]]) -> list[Published | EngineUnavailable]:
        """`publish_to_user` for several (user_id, channel, data) in order, as one unit of work for the
        engine (one round trip, for SQLite one commit): per event, Published or why it was not recorded.
        Every channel is checked before anything is published."""
        for channel in {channel for _, channel, _ in events}:
            self._check_personal_channel(channel)
        started = time.monotonic()
        outgoing = [Outgoing(user_stream(user_id, channel), channel, user_id,
                             orjson.dumps(bayeux.delivered(channel, data)), False)
                    for user_id, channel, data in events]
        results = await self.engine.publish_many(outgoing)
        took = time.monotonic() - started
        for result in results:
            if not isinstance(result, EngineUnavailable):
                self.stats.published_one(took)
        return results

    def _check_personal_channel(self, channel: str) -> None:
        self._check_server_channel(channel)
        if not self.is_personal(channel):
            raise ValueError(f"{channel} is not under the per-user prefix {self.config.personal_prefix}")

    @staticmethod
    def _check_server_channel(channel: str) -> None:
        problem = channel_error(channel)
        if problem is None and (is_wildcard(channel) or is_meta(channel) or is_service(channel)):
            problem = "server publishes go to a broadcast channel, not a wildcard, /meta or /service channel"
        if problem:
            raise ValueError(f"cannot publish to {channel!r}: {problem}")

    async def _publish_event(self, channel: str, user_id: str | None, stream: str, message: Message) -> int:
        """Hand the event to the engine, which records it and has every broker process dispatch it."""
        started = time.monotonic()
        payload = orjson.dumps(message)  # serialized once, shared by every queue
        published = await self.engine.publish(stream, channel, user_id, payload, "ext" in message)
        self.stats.published_one(time.monotonic() - started)
        return published.delivered

    def _dispatch(self, stream: str, channel: str, user_id: str | None, payload: bytes, event_id: int,
                  has_ext: bool) -> int:
        """Queue a recorded event for every matching session of this process; returns how many.

        The engine calls this in id order per stream. It never awaits: a catch-up that compares
        with _latest_ids sees either none of this delivery or all of it."""
        self._latest_ids[stream] = max(event_id, self._latest_ids.get(stream, 0))
        self.stats.dispatched += 1
        index = self._index if user_id is None else self._user_index.get(user_id)
        targets = index.match(channel) if index is not None else None
        if not targets:
            return 0
        payload = replay.with_replay_id(payload, event_id, has_ext)
        delivered = 0
        slow: list[ServerSession] = []
        for session in targets:
            if session.replay:
                mark = session.replay.get(stream)
                if mark is not None:
                    if not mark.admits(event_id):
                        continue  # its catch-up reads (or already read) this event from the log
                    mark.last_id = event_id
            if session.enqueue(payload):
                delivered += 1
            else:
                slow.append(session)
        for session in slow:
            self._slow_consumer(session)
        self.stats.enqueued += delivered
        return delivered

    def _slow_consumer(self, session: ServerSession) -> None:
        queue = session.queue
        self.stats.ended(Disconnect.SLOW_CONSUMER)
        log.warning("session too slow: queue full at %d events / %d bytes; disconnecting",
                    len(queue), queue.size_bytes, extra=_ids(session))
        self._remove(session, bayeux.error(
            402, f"session_unknown (disconnected as a slow consumer: its queue reached {len(queue)} events "
                 f"/ {queue.size_bytes} bytes; limits are {queue.max_messages} events / {queue.max_bytes} bytes)"),
            bayeux.HANDSHAKE_ADVICE)

    # ----------------------------------------------------------------- message handling

    async def handle(self, messages: list[Message], ctx: RequestContext) -> HandleResult:
        """Process one batch from a client, in order; replies keep the request order."""
        result = HandleResult([])
        if not messages:
            return result
        first = messages[0]
        if first.get("channel") == bayeux.HANDSHAKE:
            # The spec: other messages batched with a handshake are ignored.
            result.replies.append(await self._handshake(first, ctx, result))
            return result
        alone = len(messages) == 1
        together = self.engine.concurrent_publishes and not alone
        publishes: list[tuple[int, ServerSession, Message]] = []  # to start together; where their replies go
        for message in messages:
            joins = together and _plain_publish(message)
            if publishes and not joins:  # what follows sees the effects of the publishes before it
                await self._publish_together(publishes, result.replies)
            reply = self._handle_at_once(message, ctx, alone, result)
            if reply is None:  # validated, with a live session, and it needs to wait
                session = self.sessions[message["clientId"]]
                if message["channel"] == bayeux.SUBSCRIBE:
                    reply = await self._subscribe(session, message)
                elif joins:
                    publishes.append((len(result.replies), session, message))
                    reply = {}  # its place, filled in by _publish_together
                else:
                    reply = await self._client_publish(session, message)
            result.replies.append(reply)
        if publishes:
            await self._publish_together(publishes, result.replies)
        return result

    async def _publish_together(self, publishes: list[tuple[int, ServerSession, Message]],
                                replies: list[Message]) -> None:
        """Publish plain broadcast publishes as one engine call (one round trip, one echo wait), put
        each one's reply (success, denial or failure) in its place and empty `publishes`."""
        started, publishes[:] = publishes[:], []
        began = time.monotonic()
        outgoing: list[Outgoing] = []
        sent: list[tuple[int, ServerSession, Message]] = []
        for place, session, message in started:
            channel = message["channel"]
            denied = self._publish_denied(session, message)
            if denied is not None:
                replies[place] = denied
                continue
            # As in _client_publish: the publisher's id is not forwarded.
            event = bayeux.delivered(channel, message["data"])
            outgoing.append(Outgoing(channel, channel, None, orjson.dumps(event), "ext" in event))
            sent.append((place, session, message))
        if not outgoing:
            return
        results = await self.engine.publish_many(outgoing)
        took = time.monotonic() - began
        for (place, session, message), result in zip(sent, results, strict=True):
            if isinstance(result, EngineUnavailable):
                replies[place] = self._publish_failed(session, message, result)
            else:
                self.stats.published_one(took)
                replies[place] = bayeux.reply_to(message)

    def handle_now(self, messages: list[Message], ctx: RequestContext) -> HandleResult | None:
        """`handle` without a coroutine, for a batch that never waits: only connects, unsubscribes
        and disconnects (a long-poll's usual request). None for any other batch: use `handle`."""
        for message in messages:
            channel = message.get("channel")
            if not isinstance(channel, str) or channel not in _AT_ONCE:  # a list or object is unhashable
                return None
        result = HandleResult([])
        alone = len(messages) == 1
        for message in messages:
            reply = self._handle_at_once(message, ctx, alone, result)
            assert reply is not None
            result.replies.append(reply)
        return result

    def _handle_at_once(self, message: Message, ctx: RequestContext, alone: bool,
                        result: HandleResult) -> Message | None:
        """The reply to one message of a batch, or None when it is a valid subscribe or publish of a
        live session, which the caller awaits."""
        problem = bayeux.validate_message(message)
        if problem is not None:
            return bayeux.error_reply(message, problem)
        channel = message["channel"]
        if channel == bayeux.HANDSHAKE:
            return bayeux.error_reply(message, bayeux.error(
                400, "handshake_not_first (a handshake must be sent alone, or first in its batch)"))
        session = self._session_for(message, ctx)
        if session is None:
            return self._unknown_session_reply(message)
        if session.parked is None:
            session.expires_at = max(session.expires_at, time.monotonic() + self.expiry_window)
        if channel == bayeux.CONNECT:
            return self._connect(session, message, ctx, alone, result)
        if channel == bayeux.UNSUBSCRIBE:
            return self._unsubscribe(session, message)
        if channel == bayeux.DISCONNECT:
            return self._disconnect(session, message)
        return None

    def _session_for(self, message: Message, ctx: RequestContext) -> ServerSession | None:
        client_id = message.get("clientId")
        session = self.sessions.get(client_id) if isinstance(client_id, str) else None
        if session is None:
            return None
        browser = ctx.browser
        if browser is not None and not browser.may_use(session, ctx):
            # A clientId is no secret: a request without the browser cookie the session is bound to
            # must not drive it (clientId hijack protection, see http/browser.py).
            # Anyone can send these, so their lines are rate-limited like malformed requests.
            if self._refusal_lines.take():
                log.info("refused a %s request naming this session: not its browser cookie%s", ctx.transport,
                         self._refusal_lines.held_back(), extra=_ids(session))
            return None
        return session

    def ended(self, client_id: str) -> tuple[str, str]:
        """The error and reconnect advice for a session that is gone (ended here, or unknown)."""
        ended = self._ended.get(client_id)
        if ended is None:
            return bayeux.SESSION_UNKNOWN, bayeux.HANDSHAKE_ADVICE
        return ended.error, ended.reconnect

    def _unknown_session_reply(self, message: Message) -> Message:
        self.stats.unknown_sessions += 1
        client_id = message.get("clientId")
        ended = self._ended.get(client_id) if isinstance(client_id, str) else None
        if ended is not None:
            # "handshake", whatever ended it, as CometD answers any unknown session: a request that
            # arrives after the end (a late retry, another tab with that clientId) may start again.
            reply = bayeux.error_reply(message, ended.error, bayeux.advice(bayeux.HANDSHAKE_ADVICE, 0))
        elif client_id is None:
            reply = bayeux.unknown_session_reply(message, "this message needs the clientId of a handshaken session")
        else:
            reply = bayeux.unknown_session_reply(message)
        # Without `subscription` in the reply: aiocometd forgets any subscription named in a
        # failed reply, so after a restart it would not re-subscribe on its new session.
        reply.pop("subscription", None)
        return reply

    async def _handshake(self, message: Message, ctx: RequestContext, result: HandleResult) -> Message:
        problem = bayeux.validate_message(message)
        if problem is not None:
            return bayeux.error_reply(message, problem, bayeux.advice(bayeux.NONE, 0))
        if self._closing:
            return bayeux.error_reply(message, bayeux.error(503, "server_shutdown (the broker is stopping)"),
                                      bayeux.advice(bayeux.HANDSHAKE_ADVICE, 0))
        common = bayeux.common_transports(message["supportedConnectionTypes"], self.transports)
        if not common:
            reply = bayeux.error_reply(message, bayeux.error(
                400, "no common connection type: this server supports " + ", ".join(self.transports)),
                bayeux.advice(bayeux.NONE, 0))
            reply["supportedConnectionTypes"] = self.transports
            return reply
        presented, user = claimed_login(ctx.headers, message)
        throttle = self.login_throttle
        if presented and (wait := throttle.check(user, ctx.remote, "handshake")):
            return self._throttled_handshake(message, wait)
        try:
            principal = await self.authenticator.authenticate(
                HandshakeRequest(ctx.headers, ctx.cookies, message, ctx.remote))
        except AuthenticationError as exc:
            if not presented:  # no password was guessed: not a failed login for the throttle
                log.info("handshake denied from %s: %s", ctx.remote, exc)
            elif wait := throttle.failed(user, ctx.remote, "handshake", str(exc)):
                return self._throttled_handshake(message, wait)
            self.stats.handshakes_denied += 1
            reply = bayeux.error_reply(message, bayeux.HANDSHAKE_DENIED, bayeux.advice(bayeux.NONE, 0))
            reply["ext"] = {"authentication": {"failureReason": str(exc)}}
            return reply
        if presented and (wait := throttle.succeeded(user, ctx.remote, "handshake",
                                                     proven=principal.user_id == user)):
            return self._throttled_handshake(message, wait)
        replay_requested = replay.requested(message)
        # Read before the session exists: nothing below awaits, so a handshake is all or nothing.
        epoch = await self._replay_epoch() if replay_requested else None
        browser_id = None
        if ctx.browser is not None:  # the HTTP layer binds the session to a browser cookie, maybe a new one
            browser_id, result.new_browser_id = ctx.browser.bind(ctx, principal)
        cfg = self.config
        session = ServerSession(
            self.client_id_prefix + bayeux.new_client_id(), principal, browser_id,
            SessionQueue(cfg.max_queue, cfg.max_queue_bytes, cfg.queue_full == DROP_OLDEST_POLICY, self.stats),
            ctx.transport)
        session.expires_at = time.monotonic() + self.expiry_window
        self.sessions[session.client_id] = session
        self.stats.handshakes += 1
        if principal.user_id is not None:
            self._users.setdefault(principal.user_id, set()).add(session)
        if ack.requested(message):
            session.ack = AckState()
        if replay_requested:
            session.replay_from = replay.replay_map(message)
            session.replay_epoch = replay.epoch_of(message)
        log.debug("handshake: session opened over %s", ctx.transport, extra=_ids(session))
        with bound(session.client_id, session.user_id):  # what listeners log is about this session
            for listener in self._added_listeners:
                try:
                    listener(session)
                except Exception:  # a listener's bug must not break the handshake
                    log.exception("session-added listener failed")
        reply = bayeux.handshake_reply(message, session.client_id, self.transports, dict(self._connect_advice))
        reply_ext: dict[str, Any] = {}
        if session.ack is not None:
            reply_ext["ack"] = True
        if replay_requested:
            reply_ext["replay"] = True
            if epoch is not None:
                reply_ext["replayEpoch"] = epoch
        if reply_ext:
            reply["ext"] = reply_ext
        return reply

    def _throttled_handshake(self, message: Message, wait: float) -> Message:
        """A handshake refused because its user or address is locked out. Advice "handshake" with the
        lockout as interval: the CometD JavaScript client handshakes again after interval + its backoff
        (with "none" it would give up; "retry" would make it send a /meta/connect without a session)."""
        self.stats.handshakes_denied += 1
        seconds = retry_seconds(wait)
        reply = bayeux.error_reply(message, bayeux.error(429, f"too_many_failed_logins (retry in {seconds} s)"),
                                   bayeux.advice(bayeux.HANDSHAKE_ADVICE, seconds * 1000))
        reply["ext"] = {"authentication": {
            "failureReason": f"too many failed logins: retry in {seconds} s", "retryAfter": seconds}}
        return reply

    def _connect(self, session: ServerSession, message: Message, ctx: RequestContext, alone: bool,
                 result: HandleResult) -> Message:
        if message["connectionType"] not in self.transports:
            return bayeux.error_reply(message, bayeux.error(
                400, f"connection type {message['connectionType']!r} is not offered; use one of "
                     + ", ".join(self.transports)), bayeux.advice(bayeux.RETRY, self.config.interval))
        session.transport = ctx.transport
        if ctx.sink is not None:
            session.sink = ctx.sink
        elif session.sink is not None:
            session.sink = None  # the client switched from websocket to HTTP
        if session.ack is not None:
            # Whatever the client has not acknowledged goes out again, ahead of newer events.
            session.queue.requeue(session.ack.acknowledge(ack.connect_batch(message)))
        reply = bayeux.reply_to(message)
        reply["clientId"] = session.client_id
        reply["advice"] = self._connect_advice
        session.latest_connect = reply
        timeout = self._hold_time(message)
        if alone and session.connected and timeout > 0 and not len(session.queue):
            result.park = PendingConnect(session, reply, timeout)  # the exchange holds it
            return reply
        self.connected(session)
        result.deliver_to = session
        result.connect_reply = reply
        return reply

    def connected(self, session: ServerSession) -> None:
        """A connect of `session` is answered at once: a held one is superseded, and the session
        must connect again within the expiry window."""
        if session.parked is not None:
            session.unpark(SUPERSEDED)
        session.connected = True
        session.expires_at = time.monotonic() + self.expiry_window

    def _hold_time(self, message: Message) -> float:
        """Seconds to hold this connect: the server timeout, or less when the client asks (advice.timeout)."""
        timeout = self.config.timeout
        advice = message.get("advice")
        if isinstance(advice, dict):
            asked = advice.get("timeout")
            if isinstance(asked, (int, float)) and not isinstance(asked, bool) and 0 <= asked < timeout:
                timeout = asked
        return timeout / 1000

    def detach(self, session: ServerSession, sink: Sink) -> None:
        """A websocket closed: its session stays until expiry so the client can reconnect."""
        if session.sink is sink:
            session.sink = None
            if session.parked is not None:
                parked, session.parked = session.parked, None
                parked.cancel_timeout()
            session.expires_at = time.monotonic() + self.expiry_window

    async def _subscribe(self, session: ServerSession, message: Message) -> Message:
        names = bayeux.subscriptions_of(message) or []
        for name in names:
            problem = bayeux.subscription_error(name)
            if problem is None:
                denied = self.authorizer.subscribe_denied(session.principal, name)
                if denied is not None:
                    problem = bayeux.error(403, f"subscribe_denied ({denied})", session.client_id, name)
            if problem is not None:
                return bayeux.error_reply(message, problem)
        problem = self._subscription_limit_error(session, names)
        if problem is not None:
            return bayeux.error_reply(message, problem)
        wanted = {**session.replay_from, **replay.replay_map(message)}
        claimed_epoch = replay.epoch_of(message)  # the epoch of this message's ids, else the handshake's
        if claimed_epoch is None:
            claimed_epoch = session.replay_epoch
        replay_report: dict[str, Any] = {}
        epoch = ""
        for name in names:
            if is_service(name) or name in session.subscriptions:
                continue  # service channels are request/response: nothing to record
            if name in wanted and not is_wildcard(name):
                try:
                    epoch, replay_report[name] = await self._start_replay(session, name, wanted[name],
                                                                          claimed_epoch)
                except EventLogUnavailable as exc:
                    log.warning("replay of %s failed: %s", name, exc, extra=_ids(session))
                    return bayeux.error_reply(message, bayeux.error(
                        503, f"subscribe_failed (the event log is unavailable: {exc}; retry later)",
                        session.client_id, name))
            session.subscriptions.add(name)
            self._index_subscription(session, name, add=True)
        reply = _subscription_reply(session, message)
        if replay_report:
            reply["ext"] = {"replay": _replay_summary(replay_report, epoch)}
        return reply

    def _subscription_limit_error(self, session: ServerSession, names: list[str]) -> str | None:
        """The error of a subscribe that would take the session past max_subscriptions (checked before
        anything is applied: a subscribe naming several channels is all or nothing), else None."""
        held = len(session.subscriptions)
        added = len({n for n in names if not is_service(n) and n not in session.subscriptions})
        limit = self.config.max_subscriptions
        if held + added <= limit:
            return None
        return bayeux.error(403, f"subscription_limit (this session holds {held} subscriptions and this subscribe "
                                 f"adds {added}; max_subscriptions is {limit}: unsubscribe first)")

    def stream_of(self, session: ServerSession, channel: str) -> str:
        """The event-log stream a session's subscription to `channel` reads."""
        if session.user_id is not None and self.is_personal(channel):
            return user_stream(session.user_id, channel)
        return channel

    async def _replay_epoch(self) -> str | None:
        """The event log's epoch for a handshake reply, or None while the log is unreachable (the
        subscribe replies carry it too, and a handshake must not fail for want of it)."""
        try:
            return await self.event_log.epoch()
        except EventLogUnavailable as exc:  # the log itself warns once when it goes down
            log.debug("handshake without the replay epoch: %s", exc)
            return None

    async def _start_replay(self, session: ServerSession, channel: str, requested_id: int,
                            claimed_epoch: str | None) -> tuple[str, dict[str, Any]]:
        """Mark a subscription as catching up from `requested_id` and start the session's catch-up.
        Returns the log's epoch and the subscription's recovered/oldest/latest."""
        stream = self.stream_of(session, channel)
        epoch, bounds = await self.event_log.bounds_with_epoch(stream)
        latest = max(bounds.latest, self._latest_ids.get(stream, 0))
        foreign = False
        if requested_id == replay.NEW_ONLY:
            after = latest
        elif requested_id == replay.ALL_RETAINED:
            after = max(bounds.oldest - 1, 0)
        elif requested_id > latest or (claimed_epoch is not None and claimed_epoch != epoch):
            # An id this log never issued: another log's (one that started over, or was replaced).
            # What the client has seen is unknown here, so it is a gap like a trimmed one:
            # recovered false, and the subscription gets everything retained.
            foreign, after = True, max(bounds.oldest - 1, 0)
        else:
            after = requested_id
        recovered = not foreign and bounds.covers(after)  # false: events after the id are gone
        self.stats.replay(recovered)
        mark = replay.ReplayMark(max(after, bounds.oldest - 1))
        if self._fanout_live and (requested_id == replay.NEW_ONLY or mark.last_id >= latest):
            mark.catching_up = False  # nothing to read: live from the next event on
        session.replay[stream] = mark
        if mark.catching_up and session.catch_up is None:
            session.catch_up = asyncio.get_running_loop().create_task(
                self._catch_up(session), name=f"catch-up-{session.client_id[:8]}")
        return epoch, {"recovered": recovered, "oldest": bounds.oldest, "latest": latest}

    async def _catch_up(self, session: ServerSession) -> None:
        """Feed a session's replayed subscriptions from the log, a page at a time, until each reaches
        the live stream; the session's queue must drain before the next page (bounded memory).
        An unavailable log is retried with backoff for as long as the session lives."""
        page = min(self.config.replay_page, session.queue.max_messages)
        retry = _CATCH_UP_RETRY_MIN
        try:
            while self.sessions.get(session.client_id) is session:
                pending = [(stream, mark) for stream, mark in session.replay.items() if mark.catching_up]
                if not pending:
                    return
                for stream, mark in pending:
                    while len(session.queue) + page > session.queue.max_messages:
                        session.drained = session.drained or asyncio.Event()
                        session.drained.clear()
                        await session.drained.wait()
                    try:
                        events = await self.event_log.read(stream, mark.last_id, page)
                    except EventLogUnavailable as exc:
                        log.warning("catch-up of %s paused: %s; retrying in %.1f s", stream, exc, retry,
                                    extra=_ids(session))
                        await asyncio.sleep(retry)
                        retry = min(retry * 2, _CATCH_UP_RETRY_MAX)
                        break
                    retry = _CATCH_UP_RETRY_MIN
                    for event in events:
                        if event.id <= mark.last_id:
                            continue
                        payload = replay.with_replay_id(event.payload, event.id, b'"ext"' in event.payload)
                        if not session.enqueue(payload):
                            self._slow_consumer(session)
                            return
                        self.stats.replayed += 1
                        mark.last_id = event.id
                    if events:
                        continue
                    if not self._fanout_live:
                        # Live events may be going past unseen: going live now could leave a gap.
                        await self._fanout_restored.wait()
                    elif mark.last_id >= self._latest_ids.get(stream, 0):
                        mark.catching_up = False  # caught up: later events arrive live
                    else:
                        await asyncio.sleep(0.001)  # an append is committing: its event comes next read
        finally:
            session.catch_up = None

    def _fanout_lost(self) -> None:
        """The engine may miss fan-out messages from now on (its Redis connection dropped).

        Every live replayed subscription goes back to catching up, at once and before any later
        message is dispatched: it must not take a live event past the gap for "caught up". Its
        catch-up starts when the fan-out is back (`_fanout_resume`). Subscriptions without replay
        have no position to resume from: they get what arrives once the fan-out is back."""
        self._fanout_live = False
        self._fanout_restored.clear()
        for session in self.sessions.values():
            for mark in session.replay.values():
                mark.catching_up = True

    async def _fanout_resume(self) -> None:
        """The engine is subscribed again: learn how far each replayed stream got meanwhile, then
        let every waiting subscription catch up from the log (it skips live events until it has)."""
        streams = {stream for session in self.sessions.values() for stream in session.replay}
        for stream in streams:
            # Fan-out messages from now on arrive live; this bounds what the catch-up must read.
            latest = (await self.event_log.bounds(stream)).latest
            self._latest_ids[stream] = max(latest, self._latest_ids.get(stream, 0))
        self._fanout_live = True
        self._fanout_restored.set()
        loop = asyncio.get_running_loop()
        for session in list(self.sessions.values()):
            if session.catch_up is None and any(mark.catching_up for mark in session.replay.values()):
                session.catch_up = loop.create_task(self._catch_up(session),
                                                    name=f"catch-up-{session.client_id[:8]}")

    def _unsubscribe(self, session: ServerSession, message: Message) -> Message:
        names = bayeux.subscriptions_of(message) or []
        for name in names:
            problem = bayeux.subscription_error(name)
            if problem is not None:
                return bayeux.error_reply(message, problem)
        for name in names:
            if name in session.subscriptions:
                session.subscriptions.discard(name)
                self._index_subscription(session, name, add=False)
        return _subscription_reply(session, message)

    def _index_subscription(self, session: ServerSession, name: str, *, add: bool) -> None:
        """A pattern reaching shared channels goes in the shared index; one reaching per-user
        channels goes in the subscriber's own index, so it can only ever see its own events."""
        pattern = Pattern.parse(name)
        if not pattern.within(self.personal):
            (self._index.add if add else self._index.remove)(name, session)
        user = session.user_id
        if user is not None and pattern.overlaps(self.personal):
            if add:
                self._user_index.setdefault(user, SubscriptionIndex()).add(name, session)
            else:
                index = self._user_index.get(user)
                if index is not None:
                    index.remove(name, session)
                    if not len(index):
                        del self._user_index[user]

    def _disconnect(self, session: ServerSession, message: Message) -> Message:
        # reconnect "none" for its parked connect: the client asked to end, that answer must not make
        # it come back. A later message with this clientId is told "handshake" (_unknown_session_reply).
        self.stats.ended(Disconnect.CLIENT)
        self._remove(session, bayeux.error(402, "session_unknown (disconnected by the client)"), bayeux.NONE)
        reply = bayeux.reply_to(message)
        reply["clientId"] = session.client_id
        return reply

    def _publish_denied(self, session: ServerSession, message: Message) -> Message | None:
        """The 403 reply when `session` may not publish `message`, else None."""
        channel = message["channel"]
        denied = self.authorizer.publish_denied(session.principal, channel)
        if denied is None:
            return None
        return bayeux.error_reply(message, bayeux.error(403, f"publish_denied ({denied})", session.client_id, channel))

    @staticmethod
    def _publish_failed(session: ServerSession, message: Message, exc: EngineUnavailable) -> Message:
        """The 503 reply of a publish the engine could not take (logged)."""
        channel = message["channel"]
        log.warning("publish on %s failed: %s", channel, exc, extra=_ids(session))
        return bayeux.error_reply(message, bayeux.error(503, f"publish_failed ({exc}; retry later)", channel))

    async def _client_publish(self, session: ServerSession, message: Message) -> Message:
        channel = message["channel"]
        denied = self._publish_denied(session, message)
        if denied is not None:
            return denied
        reply = bayeux.reply_to(message)
        if is_service(channel):
            try:
                with bound(session.client_id, session.user_id):  # what the handler logs is about this session
                    await self._call_services(session, message)
            except Exception:  # the handler's bug fails this publish only, not the batch
                log.exception("service handler for %s failed", channel, extra=_ids(session))
                return bayeux.error_reply(message, bayeux.error(
                    500, "service_failed (the server's handler for this channel failed)", channel))
            return reply
        # The publisher's id is not forwarded (as CometD does): over websocket a subscriber
        # would take an event carrying its own pending request's id for that request's reply.
        try:
            await self._publish_event(channel, None, channel, bayeux.delivered(channel, message["data"]))
        except EngineUnavailable as exc:
            return self._publish_failed(session, message, exc)
        return reply

    async def _call_services(self, session: ServerSession, message: Message) -> None:
        channel = message["channel"]
        for pattern, handler in self._services:
            if Pattern.parse(channel).within(pattern):
                answer = await _call(handler, session, message)
                if answer is not None:
                    payload = orjson.dumps(bayeux.delivered(channel, answer, message.get("id")))
                    if not session.enqueue(payload):
                        self._slow_consumer(session)

    def _remove(self, session: ServerSession, error: str, reconnect: str) -> None:
        if self.sessions.pop(session.client_id, None) is None:
            return
        self.stats.dropped_by_ended_sessions += session.queue.dropped
        self._ended[session.client_id] = _Ended(error, reconnect)
        while len(self._ended) > _TOMBSTONES:
            self._ended.popitem(last=False)
        for name in list(session.subscriptions):
            self._index_subscription(session, name, add=False)
        session.subscriptions.clear()
        user = session.user_id
        if user is not None:
            mine = self._users.get(user)
            if mine is not None:
                mine.discard(session)
                if not mine:
                    del self._users[user]
        session.unpark(REMOVED)
        if session.catch_up is not None:
            session.catch_up.cancel()
        sink = session.sink
        session.sink = None
        if sink is not None:
            sink.wake()
        log.debug("session removed: %s", error, extra=_ids(session))
        with bound(session.client_id, session.user_id):
            for listener in self._removed_listeners:
                try:
                    listener(session, error)
                except Exception:  # a listener's bug must not break session removal
                    log.exception("session-removed listener failed")


def _plain_publish(message: Message) -> bool:
    """A publish to a broadcast channel: no service handler, nothing that depends on the batch's order
    except per-channel order, which the engine keeps for publishes started together."""
    channel = message.get("channel")
    return isinstance(channel, str) and not is_meta(channel) and not is_service(channel)


def _ids(session: ServerSession) -> dict[str, str | None]:
    """`extra=` of a log line about `session` (see logs.py)."""
    return session_fields(session.client_id, session.user_id)


def user_stream(user_id: str, channel: str) -> str:
    """The event-log stream of one user's per-user channel."""
    return f"@{user_id}{channel}"


def _replay_summary(report: dict[str, dict[str, Any]], epoch: str) -> dict[str, Any]:
    """The subscribe reply's ext.replay: recovered/oldest/latest of the (first) replayed channel,
    the log's epoch, and per channel when several were replayed. recovered false: the log does not
    cover the id (trimmed, or an id of another log)."""
    first = next(iter(report.values()))
    summary = {"recovered": all(r["recovered"] for r in report.values()), "oldest": first["oldest"],
               "latest": first["latest"], "epoch": epoch}
    if len(report) > 1:
        summary["channels"] = report
    return summary


def _subscription_reply(session: ServerSession, message: Message) -> Message:
    reply = bayeux.reply_to(message)
    reply["clientId"] = session.client_id
    reply["subscription"] = message["subscription"]
    return reply


async def _call(function: Callable[..., Any], *args: Any) -> Any:
    outcome = function(*args)
    if inspect.isawaitable(outcome):
        outcome = await outcome
    return outcome
