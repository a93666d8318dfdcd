"""LocalEngine: one broker process. Append to the event log, then dispatch at once."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..eventlog import EventLog, EventLogUnavailable
from .base import Dispatch, EngineUnavailable, Outgoing, Published


class LocalEngine:
    """Today's single-process behaviour: the log assigns the id, the broker delivers synchronously."""

    # A batch's publishes are appended together: one call, and for SQLite one commit and one
    # wake-up of the loop instead of a round trip to the writer thread per publish.
    concurrent_publishes = True

    def __init__(self, event_log: EventLog, dispatch: Dispatch) -> None:
        self._log = event_log
        self._dispatch = dispatch

    async def start(self) -> None:
        return None

    async def publish(self, stream: str, channel: str, user_id: str | None, payload: bytes,
                      has_ext: bool) -> Published:
        def deliver(ids: list[int]) -> Published:
            return Published(ids[0], self._dispatch(stream, channel, user_id, payload, ids[0], has_ext))

        try:
            return await self._log.append_many_then([(stream, payload)], deliver)
        except EventLogUnavailable as exc:  # a Redis event log without the Redis engine
            raise EngineUnavailable(str(exc)) from exc

    async def publish_many(self, events: Sequence[Outgoing]) -> list[Published | EngineUnavailable]:
        # Recorded together (all or none), then dispatched in order: nothing is delivered before
        # the whole batch is committed, and each stream's ids still follow the batch's order.
        # Dispatched from the log's commit callback, not after this task resumes: a loop turn sooner.
        dispatch = self._dispatch

        def deliver(ids: list[int]) -> list[Published | EngineUnavailable]:
            return [Published(event_id, dispatch(stream, channel, user_id, payload, event_id, has_ext))
                    for (stream, channel, user_id, payload, has_ext), event_id in zip(events, ids, strict=True)]

        try:
            return await self._log.append_many_then([(event.stream, event.payload) for event in events], deliver)
        except EventLogUnavailable as exc:  # a Redis event log without the Redis engine
            return [EngineUnavailable(str(exc))] * len(events)

    async def close(self) -> None:
        return None

    def stats(self) -> dict[str, Any]:
        """The same shape of counters as the Redis engine's, for metrics."""
        return {"engine": "local", "connected": True}
