"""LocalEngine: one broker process. Append to the event log, then dispatch at once."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..eventlog import EventLog, EventLogUnavailable
from .base import Dispatch, EngineUnavailable, Outgoing, Published


class LocalEngine:
    """Today's single-process behaviour: the log assigns the id, the broker delivers synchronously."""

    concurrent_publishes = False  # one append at a time: nothing to gain from starting them together

    def __init__(self, event_log: EventLog, dispatch: Dispatch) -> None:
        self._log = event_log
        self._dispatch = dispatch

    async def start(self) -> None:
        return None

    async def publish(self, stream: str, channel: str, user_id: str | None, payload: bytes,
                      has_ext: bool) -> Published:
        try:
            [event_id] = await self._log.append(stream, [payload])
        except EventLogUnavailable as exc:  # a Redis event log without the Redis engine
            raise EngineUnavailable(str(exc)) from exc
        return Published(event_id, self._dispatch(stream, channel, user_id, payload, event_id, has_ext))

    async def publish_many(self, events: Sequence[Outgoing]) -> list[Published | EngineUnavailable]:
        # One after another: each is dispatched before the next is appended, as separate publishes are.
        results: list[Published | EngineUnavailable] = []
        for event in events:
            try:
                results.append(await self.publish(*event))
            except EngineUnavailable as exc:
                results.append(exc)
        return results

    async def close(self) -> None:
        return None

    def stats(self) -> dict[str, Any]:
        """The same shape of counters as the Redis engine's, for metrics."""
        return {"engine": "local", "connected": True}
