"""RedisEngine: broker processes share fan-out through Redis pub/sub.

Publishing is one Lua script (see RedisEventLog's append script): it assigns the events' ids,
appends them to their streams in Redis Streams and PUBLISHes them on the cluster's fan-out channel,
atomically, so the order of ids and the order of fan-out messages always agree. Publishes made in
the same loop turn share one call and one fan-out message: a long-poll batch of N publishes costs
one round trip, not N. The channel is `{namespace}:fanout`: pub/sub ignores Redis databases, so its
name is what keeps deployments on one Redis server apart (redis_names.py).

The engine talks to Redis over one RESP3 connection of its own (RedisLink) that both calls the
script and is subscribed to the fan-out channel: Redis writes the messages of every process and
this one's replies into it in the order it ran them, so a publish's own fan-out message comes
back with its reply, in the same read. Calls are pipelined on it (Redis runs a connection's
commands in the order sent, so the order of publishes holds without waiting for each reply),
and the script is loaded (SCRIPT LOAD) each time the link connects, before any publish: a Redis
that forgets it while connected (SCRIPT FLUSH) costs a reconnect, never a reordered publish.

A fan-out message is "<id>,<id>,...\n<header>\n<payload><payload>...": the header (JSON) names
the publishing process, the send time and, per event, its stream, channel, user, ext flag, the
publisher's reference and the payload's length, so a process slices out each payload without
parsing it (the broker then looks up its subscription index and usually finds no local subscriber).

Every process, the publisher included, delivers to its own sessions only what comes back through
pub/sub, in the order it arrives. So all processes deliver a stream in the same order, and a
publisher never delivers an event locally that the others might not see. The publishing call
waits for its own message to come back (a bounded table of pending calls, with a timeout, though on
the shared connection the message is normally there before the reply) and returns how many local
sessions it was queued for, so `Broker.publish` keeps its meaning. `publish_many` (a long-poll
batch's publishes) is one such call for all its events: one submission, one script call, one
fan-out message and one wait, not one of each per event.

Connection loss: the link notices (the socket closes, or a call goes unanswered for
`stall_timeout`), the engine logs a WARNING, calls `on_lost` and reconnects with exponential
backoff; publishes fail at once with EngineUnavailable meanwhile (nothing is published, the caller
may retry). Once subscribed again it logs INFO "redis reconnected" and awaits `on_restored` before
dispatching anything newer: the broker re-reads from the log every replayed subscription, so a
session that resumes by replay misses nothing. Sessions without replay have no position to resume
from and may miss what was published while the subscription was down (the same at-most-once a
Bayeux client without replay always has).

Not detected: an idle Redis that stops answering without closing the connection, until TCP
keepalive gives up on it; a publish whose echo does not come back in `echo_timeout` returns
delivered=0 and is counted.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import hiredis
import orjson

from ..eventlog import EventLogUnavailable
from ..eventlog.redis import RedisEventLog, require_version
from ..tasks import cancel_and_wait
from .base import Dispatch, EngineUnavailable, Outgoing, Published
from .redis_link import RedisLink

log = logging.getLogger("cometd_broker.engine")

_DISCONNECTS = (EventLogUnavailable, OSError)  # OSError: ConnectionError, TimeoutError and the socket's own
_CONFIRM_TIMEOUT = 10.0  # seconds Redis has to confirm a SUBSCRIBE before we try again


class _Group:
    """The events of one publish call: they share one script call, one fan-out message and one
    wait for that message to come back (the echo), however many they are."""

    __slots__ = ("events", "ref", "ids", "echo", "delivered")

    def __init__(self, events: Sequence[Outgoing], ref: int, loop: asyncio.AbstractEventLoop) -> None:
        self.events = events
        self.ref = ref  # in the fan-out header, so the echo finds this group
        self.ids: asyncio.Future[list[int]] = loop.create_future()  # the events' ids, from the reply
        self.echo: asyncio.Future[None] = loop.create_future()  # every event came back (or the link was lost)
        self.delivered: list[int] = []  # per event, as the echo dispatches it

    def fail(self, error: Exception) -> None:
        if not self.ids.done():
            self.ids.set_exception(error)


class RedisEngine:
    concurrent_publishes = True  # publishes started together go to Redis together (one loop turn's flush)

    def __init__(
        self,
        event_log: RedisEventLog,
        dispatch: Dispatch,
        *,
        on_lost: Callable[[], None] | None = None,
        on_restored: Callable[[], Awaitable[None]] | None = None,
        channel: str | None = None,
        echo_timeout: float = 5.0,  # seconds a publish waits for its own fan-out message
        max_pending: int = 10_000,  # publish calls awaiting their echo at once; more wait for a slot
        max_batch: int = 500,  # events per script call (the script blocks Redis while it runs)
        backoff_min: float = 0.05,  # seconds before the first reconnect attempt; doubles ...
        backoff_max: float = 2.0,  # ... up to this
        startup_wait: float = 5.0,  # seconds start() waits for the first subscription
        stall_timeout: float | None = None,  # seconds a call may go unanswered; the log's socket timeout
    ) -> None:
        self._log = event_log
        self._dispatch = dispatch
        self._on_lost = on_lost
        self._on_restored = on_restored
        self.channel = channel or f"{event_log.prefix}:fanout"  # the log's prefix is the namespace
        self.node_id = secrets.token_hex(8)  # tells this process's echoes from the others' messages
        self._echo_timeout = echo_timeout
        self._slots = asyncio.Semaphore(max_pending)
        self._max_batch = max_batch
        self._outbox: list[_Group] = []  # this loop turn's publishes, sent together by _flush
        self._backoff = (backoff_min, backoff_max)
        self._startup_wait = startup_wait
        self._stall_timeout = event_log.socket_timeout if stall_timeout is None else stall_timeout
        self._link: RedisLink | None = None  # while subscribed
        self._pending: dict[int, _Group] = {}
        self._next_ref = 0
        self._seen: dict[str, int] = {}  # newest id per stream seen on the fan-out: the ids' floor
        self._subscribed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._down_since: float | None = None  # monotonic time the subscription was lost
        self._down_reason = ""
        self._ever_connected = False
        # Counters for metrics.
        self.reconnects = 0  # subscriptions restored after a loss
        self.disconnects = 0  # subscriptions lost
        self.published = 0  # events this process published
        self.publish_calls = 0  # script calls they took (published / publish_calls: the batching)
        self.received = 0  # events dispatched from the fan-out (every process's events)
        self.fanout_messages = 0  # fan-out messages they came in (one per script call)
        self.echo_timeouts = 0  # publishes whose own message did not come back in time
        self.lag_last = 0.0  # seconds from publish (publisher's clock) to dispatch, last message
        self.lag_max = 0.0

    @property
    def connected(self) -> bool:
        return self._subscribed.is_set()

    def stats(self) -> dict[str, Any]:
        """The engine's counters, for metrics and the admin API."""
        return {
            "engine": "redis",
            "connected": self.connected,
            "reconnects": self.reconnects,
            "disconnects": self.disconnects,
            "published": self.published,
            "publish_calls": self.publish_calls,
            "received": self.received,
            "fanout_messages": self.fanout_messages,
            "echo_timeouts": self.echo_timeouts,
            "pending": len(self._pending),
            "fanout_lag_seconds": self.lag_last,
            "fanout_lag_max_seconds": self.lag_max,
        }

    # ---- lifetime ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Subscribe to the fan-out channel; wait (bounded) for the first subscription so a broker
        that reports "listening" can publish. If Redis is down it keeps retrying in the background."""
        if self._task is not None:
            return
        self._task = asyncio.get_running_loop().create_task(self._run(), name="redis-engine-subscriber")
        try:
            await asyncio.wait_for(self._subscribed.wait(), self._startup_wait)
        except TimeoutError:
            log.warning("redis at %s not reachable after %.0f s; publishes fail until it is (retrying)",
                        self._log.url, self._startup_wait)

    async def close(self) -> None:
        self._closing = True
        task, self._task = self._task, None
        await cancel_and_wait(task)
        self._subscribed.clear()
        stopping = EventLogUnavailable("the broker is stopping")
        for group in self._pending.values():
            group.fail(stopping)
        self._fail_pending()

    # ---- publishing --------------------------------------------------------------------------

    async def publish(self, stream: str, channel: str, user_id: str | None, payload: bytes,
                      has_ext: bool) -> Published:
        [result] = await self.publish_many([Outgoing(stream, channel, user_id, payload, has_ext)])
        if isinstance(result, EngineUnavailable):
            raise result
        return result

    async def publish_many(self, events: Sequence[Outgoing]) -> list[Published | EngineUnavailable]:
        # All or nothing: the events share one script call, so they are recorded together or not at all.
        if not events:
            return []
        if not self._subscribed.is_set():
            return [EngineUnavailable(self._unavailable_text())] * len(events)
        async with self._slots:
            self._next_ref += 1
            loop = asyncio.get_running_loop()
            group = _Group(events, self._next_ref, loop)
            self._pending[group.ref] = group
            if not self._outbox:
                loop.call_soon(self._flush)  # after the rest of this turn's publishes joined the outbox
            self._outbox.append(group)
            try:
                try:
                    ids = await group.ids
                except EventLogUnavailable as exc:
                    # Almost always not recorded; only a connection lost after Redis ran the script
                    # leaves it recorded (and then fanned out) without this reply.
                    return [EngineUnavailable(str(exc))] * len(events)
                if not group.echo.done():  # normally back already: it comes before (or with) the reply
                    try:
                        await asyncio.wait_for(group.echo, self._echo_timeout)
                    except TimeoutError:
                        # Recorded and fanned out, but not seen back here yet: replayed sessions get it
                        # from the log; report no local delivery rather than a failure (no re-publish).
                        missing = len(events) - len(group.delivered)
                        self.echo_timeouts += missing
                        log.warning("%d event(s) from %s#%d: their fan-out message did not come back within "
                                    "%.1f s", missing, events[0].stream, ids[0], self._echo_timeout)
                delivered = group.delivered + [0] * (len(events) - len(group.delivered))
                return [Published(event_id, count) for event_id, count in zip(ids, delivered, strict=True)]
            finally:
                self._pending.pop(group.ref, None)

    def _flush(self) -> None:
        """Send this loop turn's publishes: one script call per `max_batch` events (a group is never
        split), pipelined on the link without waiting for earlier replies."""
        outbox, self._outbox = self._outbox, []
        link = self._link
        if link is None:
            error = EventLogUnavailable(self._unavailable_text())
            for group in outbox:
                group.fail(error)
            return
        chunk: list[_Group] = []
        weight = 0
        for group in outbox:
            if chunk and weight + len(group.events) > self._max_batch:
                self._send(link, chunk)
                chunk, weight = [], 0
            chunk.append(group)
            weight += len(group.events)
        self._send(link, chunk)

    def _send(self, link: RedisLink, groups: list[_Group]) -> None:
        """One script call for the groups of publishes; its reply gives each group its ids."""
        entries: list[tuple[str, str, str | None, bool, int, int]] = []
        events: list[tuple[str, bytes, int]] = []
        seen = self._seen
        for group in groups:
            ref = group.ref
            for stream, channel, user_id, payload, has_ext in group.events:
                entries.append((stream, channel, user_id, has_ext, ref, len(payload)))
                events.append((stream, payload, seen.get(stream, 0)))
        header = orjson.dumps([self.node_id, time.time(), entries])
        args = self._log.append_args(events, channel=self.channel, header=header)
        reply = link.send(hiredis.pack_command(("EVALSHA", self._log.append_sha, 0, *args)))
        reply.add_done_callback(lambda done: self._replied(link, groups, done))
        self.published += len(events)
        self.publish_calls += 1

    def _replied(self, link: RedisLink, groups: list[_Group], reply: asyncio.Future[Any]) -> None:
        error = None if reply.cancelled() else reply.exception()
        if reply.cancelled() or isinstance(error, ConnectionError):
            failure = EventLogUnavailable(str(error) if error else "redis connection closed")
        elif isinstance(error, hiredis.ReplyError):
            if str(error).startswith("NOSCRIPT"):  # SCRIPT FLUSH: reconnecting loads it before any publish
                link.close(ConnectionError("redis forgot the publish script (SCRIPT FLUSH?)"))
                failure = EventLogUnavailable(f"redis at {self._log.url} forgot the publish script; reconnecting")
            else:  # e.g. OOM, or a replica that is read-only: nothing appended
                failure = EventLogUnavailable(f"redis at {self._log.url} refused the append: {error}")
        elif error is not None:
            failure = EventLogUnavailable(f"redis append failed: {error!r}")
        else:
            ids = self._log.parse_ids(reply.result())
            start = 0
            for group in groups:
                end = start + len(group.events)
                if not group.ids.done():
                    group.ids.set_result(ids[start:end])
                start = end
            return
        for group in groups:
            group.fail(failure)

    def _unavailable_text(self) -> str:
        if self._down_since is None:
            return "redis is not connected yet"
        down_for = time.monotonic() - self._down_since
        if not self._ever_connected:
            return f"redis unreachable for {down_for:.1f} s ({self._down_reason}); retrying"
        return f"redis connection lost {down_for:.1f} s ago ({self._down_reason}); reconnecting"

    def _fail_pending(self) -> None:
        """Publishes waiting for an echo that may never come: they report no local delivery."""
        for group in self._pending.values():
            if not group.echo.done():
                group.echo.set_result(None)

    # ---- the subscriber ----------------------------------------------------------------------

    async def _run(self) -> None:
        delay = self._backoff[0]
        while not self._closing:
            link: RedisLink | None = None
            try:
                link = await RedisLink.open(self._log.url, client_name=self._log.client_name,
                                            timeout=self._log.connect_timeout + self._log.socket_timeout)
                require_version(self._log.url, link.server_version, "the cluster")  # the log's XADD 0-*
                await link.subscribe(self.channel, _CONFIRM_TIMEOUT)
                await link.call("SCRIPT", "LOAD", self._log.append_script)  # before any publish's EVALSHA
                if self._down_since is not None:
                    # Order matters: the broker re-reads the log (on_restored) before anything newer
                    # is dispatched; the link keeps what arrives meanwhile until deliver_to.
                    if self._on_restored is not None:
                        await self._on_restored()
                    down_for = time.monotonic() - self._down_since
                    if self._ever_connected:
                        self.reconnects += 1
                        log.info("redis reconnected after %.1f s (reconnect #%d); fan-out resumed",
                                 down_for, self.reconnects)
                    else:
                        log.info("redis at %s reachable after %.1f s; fan-out started", self._log.url, down_for)
                    self._down_since = None
                link.deliver_to(self._on_message)
                self._link = link
                self._subscribed.set()
                self._ever_connected = True
                delay = self._backoff[0]
                await self._watch(link)
            except _DISCONNECTS as exc:
                self._lost(exc)
            except Exception as exc:  # a bug must not end the cluster's fan-out for good
                log.exception("redis engine subscriber failed; resubscribing")
                self._lost(exc)
            finally:
                self._link = None
                if link is not None:
                    link.close()
            if not self._closing:
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._backoff[1])

    async def _watch(self, link: RedisLink) -> None:
        """Until the link closes (raising what closed it). A call still unanswered after a whole
        `stall_timeout` (no reply at all since the check before) closes it: Redis stopped answering."""
        waited_on = -1  # replies counted at the last check, if calls were in flight then
        while True:
            try:
                async with asyncio.timeout(self._stall_timeout):
                    cause = await link.wait_closed()
            except TimeoutError:
                if link.replies == waited_on and link.in_flight:
                    stalled = TimeoutError(f"redis answered nothing for {self._stall_timeout:.1f} s")
                    link.close(stalled)  # its calls in flight fail with this reason
                    raise stalled from None
                waited_on = link.replies if link.in_flight else -1
                continue
            raise cause if cause is not None else ConnectionError("redis connection closed")

    def _on_message(self, channel: bytes, data: bytes) -> None:
        self._handle(data)  # the link is subscribed to the fan-out channel alone

    def _handle(self, data: bytes) -> None:
        try:
            id_text, header, payloads = data.split(b"\n", 2)
            origin, sent_at, entries = orjson.loads(header)
            ids = self._log.parse_ids(id_text)
            if len(ids) != len(entries):
                raise ValueError("ids and header disagree")
        except (ValueError, TypeError):
            log.error("ignoring a malformed fan-out message on %s: %r", self.channel, data[:200])
            return
        mine = origin == self.node_id
        seen, dispatch, pending = self._seen, self._dispatch, self._pending
        end = 0
        for (stream, channel, user_id, has_ext, ref, size), event_id in zip(entries, ids, strict=True):
            start, end = end, end + size
            if event_id > seen.get(stream, 0):
                seen[stream] = event_id
            delivered = dispatch(stream, channel, user_id, payloads[start:end], event_id, has_ext)
            if mine:
                group = pending.get(ref)
                if group is not None and not group.echo.done():
                    group.delivered.append(delivered)
                    if len(group.delivered) == len(group.events):
                        group.echo.set_result(None)
        self.received += len(ids)
        self.fanout_messages += 1
        self.lag_last = lag = max(0.0, time.time() - sent_at)
        self.lag_max = max(self.lag_max, lag)

    def _lost(self, exc: BaseException) -> None:
        if self._down_since is not None:
            return  # still reconnecting: said already
        self._down_since = time.monotonic()
        self._down_reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if self._subscribed.is_set():
            self.disconnects += 1
            log.warning("redis connection lost (%s); reconnecting; publishes fail until then",
                        self._down_reason)
        else:
            log.warning("redis at %s unavailable (%s); retrying", self._log.url, self._down_reason)
        self._subscribed.clear()
        if self._on_lost is not None:
            self._on_lost()
        self._fail_pending()

