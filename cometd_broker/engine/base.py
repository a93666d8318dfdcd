"""The engine interface: how a published event reaches every broker process's sessions.

Like Faye's engines, the broker talks to one small interface. An engine assigns the event its id
(by appending it to the event log) and makes sure every broker process that shares the log
delivers it to its own sessions, by calling that process's `Dispatch` in id order per stream.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple, Protocol, runtime_checkable

# Broker._dispatch(stream, channel, user_id, payload, event_id, has_ext) -> sessions queued for.
# It must not await: the broker's catch-up relies on a dispatch being all-or-nothing per tick.
Dispatch = Callable[[str, str, "str | None", bytes, int, bool], int]


class Published(NamedTuple):
    event_id: int  # the event's id in its stream
    delivered: int  # sessions of this process it was queued for


class Outgoing(NamedTuple):
    """One event to publish: what `Engine.publish` takes, for `Engine.publish_many`."""
    stream: str
    channel: str
    user_id: str | None
    payload: bytes
    has_ext: bool


class EngineUnavailable(RuntimeError):
    """The engine cannot publish right now (its backend is unreachable); nothing was published."""


@runtime_checkable
class Engine(Protocol):
    # Whether publishes started together are recorded together (one round trip): the broker then
    # starts a batch's consecutive publishes at once instead of one after another.
    concurrent_publishes: bool

    async def start(self) -> None:
        """Start background work (subscriptions, reconnects); idempotent."""
        ...

    async def publish(self, stream: str, channel: str, user_id: str | None, payload: bytes,
                      has_ext: bool) -> Published:
        """Record the event and deliver it everywhere; return its id and this process's delivered count.

        `payload` is the serialized Bayeux message without `ext.replayId` (the dispatch adds it);
        `has_ext` says whether the message already has an ext object. Raises EngineUnavailable when
        the event could not be recorded."""
        ...

    async def publish_many(self, events: Sequence[Outgoing]) -> list[Published | EngineUnavailable]:
        """`publish` for several events, in order, as one unit of work (a long-poll batch's publishes):
        per event its Published, or the EngineUnavailable that says it was not recorded."""
        ...

    async def close(self) -> None:
        """Stop background work and release connections; idempotent."""
        ...
