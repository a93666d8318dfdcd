"""A server session: its bounded event queue, the parked /meta/connect (held as poll_hold says) and its expiry."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import TYPE_CHECKING, Any, Protocol

from .extensions.ack import AckState
from .extensions.replay import ReplayMark
from .poll_hold import SUPERSEDED, TIMEOUT, Held, HoldSlot, HoldTimers, Release
from .security import Principal

if TYPE_CHECKING:
    from .stats import BrokerStats

_monotonic = time.monotonic

# Why a parked /meta/connect was answered, besides poll_hold's TIMEOUT (answer with an empty
# successful reply) and SUPERSEDED (a newer connect of the same session replaced it).
MESSAGES = "messages"        # events are queued: answer with them
REMOVED = "removed"          # the session ended (disconnect, expiry, slow consumer)
SHUTDOWN = "shutdown"        # the server is stopping

DISCONNECT_POLICY = "disconnect"
DROP_OLDEST_POLICY = "drop-oldest"
QUEUE_POLICIES = (DISCONNECT_POLICY, DROP_OLDEST_POLICY)


class SessionQueue:
    """Serialized events waiting for a session, bounded in count and bytes.

    Items are the shared bytes of a published message: the same object sits in
    every matching session's queue, so a fan-out costs one serialization.
    """

    __slots__ = ("_items", "size_bytes", "max_messages", "max_bytes", "drop_oldest", "dropped", "since", "stats")

    def __init__(self, max_messages: int, max_bytes: int, drop_oldest: bool,
                 stats: BrokerStats | None = None) -> None:
        self._items: deque[bytes] = deque()
        self.since = 0.0  # monotonic time the oldest queued item arrived (delivery latency)
        self.stats = stats
        self.size_bytes = 0
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.drop_oldest = drop_oldest
        self.dropped = 0

    def push(self, item: bytes) -> bool:
        """Append; False when the queue is full and the policy is to refuse (disconnect)."""
        size = len(item)
        if len(self._items) >= self.max_messages or self.size_bytes + size > self.max_bytes:
            if not self.drop_oldest or size > self.max_bytes:
                return False
            while self._items and (len(self._items) >= self.max_messages
                                   or self.size_bytes + size > self.max_bytes):
                self.size_bytes -= len(self._items.popleft())
                self.dropped += 1
        if not self._items:
            self.since = _monotonic()
        self._items.append(item)
        self.size_bytes += size
        return True

    def requeue(self, items: list[bytes]) -> None:
        """Put events that were sent but not acknowledged back in front, in order. They were
        admitted once already, so the limits do not refuse them; newer events meet the limits."""
        if items and not self._items:
            self.since = _monotonic()
        self._items.extendleft(reversed(items))
        self.size_bytes += sum(map(len, items))

    def drain(self) -> list[bytes]:
        items = list(self._items)
        self._items.clear()
        self.size_bytes = 0
        if items and self.stats is not None:
            self.stats.delivered_batch(len(items), self.since)
        return items

    def __len__(self) -> int:
        return len(self._items)


class Sink(Protocol):
    """A transport connection that writes a session's events as soon as they are queued."""

    def wake(self) -> None: ...


class ParkedConnect(Held):
    """A /meta/connect held open until events arrive or its timeout passes."""

    __slots__ = ("reply",)

    def __init__(self, reply: dict[str, Any], release: Release | None = None) -> None:
        """`release(reason)` answers it when it is finished; None for a subclass that overrides `finish`."""
        Held.__init__(self, release)
        self.reply = reply


class ServerSession(HoldSlot):
    """One handshaken client. Owned by the Broker; transports only read the queue. It is the slot
    of its parked /meta/connect: the newest connect wins."""

    __slots__ = ("client_id", "principal", "browser_id", "cookie_seen", "queue", "subscriptions", "connected",
                 "expires_at", "sink", "transport", "ack", "replay", "replay_from", "replay_epoch",
                 "catch_up", "drained", "latest_connect")

    def __init__(self, client_id: str, principal: Principal, browser_id: str | None,
                 queue: SessionQueue, transport: str) -> None:
        self.client_id = client_id
        self.principal = principal
        self.browser_id = browser_id
        # True once a request after the handshake carried the browser cookie the session is bound to
        # (a client that keeps cookies): from then on every request naming it must carry that cookie.
        self.cookie_seen = False
        self.queue = queue
        self.subscriptions: set[str] = set()
        self.connected = False  # True once the first /meta/connect was answered
        self.parked: ParkedConnect | None = None  # type: ignore[assignment]  # HoldSlot's, narrowed
        self.expires_at = float("inf")
        self.sink: Sink | None = None
        self.transport = transport
        self.ack: AckState | None = None  # set when the client handshook with ext.ack
        self.replay: dict[str, ReplayMark] = {}  # stream -> where its replayed subscription stands
        self.replay_from: dict[str, int] = {}  # channel -> id, from the handshake's ext.replay map
        self.replay_epoch: str | None = None  # the epoch those ids belong to, from the handshake's ext
        self.catch_up: asyncio.Task[None] | None = None  # reads the log for replayed subscriptions
        self.drained: asyncio.Event | None = None  # set whenever the queue is emptied (catch-up pacing)
        # The reply of the newest /meta/connect: only it may take events (an older one released
        # but not yet answered, maybe on a dead connection, must not - see Broker.complete_connect).
        self.latest_connect: dict[str, Any] | None = None

    @property
    def user_id(self) -> str | None:
        return self.principal.user_id

    def enqueue(self, item: bytes) -> bool:
        """Queue an event and wake whoever delivers it; False if the queue refused it."""
        if not self.queue.push(item):
            return False
        if self.sink is not None and self.ack is None:
            self.sink.wake()  # websocket: push now; with acks, events travel only in connect replies
        elif self.parked is not None:
            self.unpark(MESSAGES)
        return True

    def park(self, parked: ParkedConnect, timeout: float, holds: HoldTimers,  # type: ignore[override]
             loop: asyncio.AbstractEventLoop) -> None:
        """Hold a connect; a previously parked one is answered as superseded (newest wins)."""
        HoldSlot.park(self, parked, timeout, holds, loop)
        self.expires_at = float("inf")  # a parked connect proves the client is alive

    def __repr__(self) -> str:
        return f"<ServerSession {self.client_id[:8]} user={self.user_id!r} transport={self.transport}>"


# The hold mechanics live in poll_hold; the names the broker and its tests know them by stay here too.
__all__ = ["DISCONNECT_POLICY", "DROP_OLDEST_POLICY", "MESSAGES", "QUEUE_POLICIES", "REMOVED", "SHUTDOWN",
           "SUPERSEDED", "TIMEOUT", "HoldTimers", "ParkedConnect", "ServerSession", "SessionQueue", "Sink"]
